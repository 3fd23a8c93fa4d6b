"""bench/gpu_check.sh in its CPU form: the script the GPU machine runs must not rot between loans."""

import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA form takes minutes: run bench/gpu_check.sh itself")
def test_the_gpu_check_runs_its_cpu_fallback_and_prints_one_table(tmp_path):
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "CPU fallback" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    loaders = ["plain", "stream", "stream float", "stream resized", "stream on cpu"]
    assert [row.split(" | ")[0] for row in rows] == [
        "| step ours",
        "| step timm_blocks",
        "| app CPU fp32",
        *(f"| loader {name} 224 px, 1 workers" for name in loaders),
    ]
    app = rows[2].split(" | ")
    assert float(app[1]) > 0 and float(app[5]) >= 1  # images/s, and the host reads per step were counted
    assert all(float(row.split(" | ")[1]) > 0 for row in rows[3:])

"""``pretrain/plan.py``: the README's ViT-B DeepSpeed command planned from the command line, for the network and
layout that ``pretrain/run.py`` builds from the same overrides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
from yaml_defaults import composed

from pretrain.engine.architecture import backbone_options
from pretrain.engine.memory_plan import model_size
from pretrain.objectives.build import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
README_RUN = (
    "model=vit_base",
    "objective=mae",
    "data=shards",
    "data.shards='/data/in1k/train-{000000..001023}.tar'",
    "trainer=deepspeed_zero2",
    "trainer.devices=8",
)


def plan(*overrides: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pretrain" / "plan.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_plan_of_the_readme_command_describes_the_network_and_layout_run_py_builds(tmp_path):
    output = plan(*README_RUN, "trainer.global_batch_size=4096", cwd=tmp_path)
    config = composed("pretrain", *README_RUN, "trainer.global_batch_size=4096")
    torch.manual_seed(0)
    size = model_size(build_model(config["objective"], backbone_options(config["model"])))
    assert f"{size.total / 1e6:.1f} M parameters" in output
    assert "1 node(s) x 8 device(s) = 8 processes; micro-batch 256 x accumulation 2 = global batch 4096" in output
    table = [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()]
    header = next(cells for cells in table if "ZeRO-0" in cells)
    assert header == ["DDP", "ZeRO-0", "ZeRO-1", "ZeRO-2*", "ZeRO-3", "ZeRO-2 off", "ZeRO-3 off"]
    rows = {label: values for label, *values in table if label.endswith("(GiB)")}
    parameters, gradients = (list(map(float, rows[name])) for name in ("parameters (GiB)", "gradients (GiB)"))
    assert parameters[0] == round(4 * size.total / 2**30, 2)  # DDP: fp32 weights under bf16-mixed
    assert parameters[3] == round(2 * size.total / 2**30, 2) and gradients[3] == round(2 * size.total / 8 / 2**30, 2)
    fits = re.search(r"peak ([\d.]+) GiB of 80 GiB per device: fits", output)
    assert fits and 1 < float(fits.group(1)) < 80, output
    assert re.search(r"[\d,]+ images/s, [\d.,]+ min per epoch of 1,281,167 images", output), output
    assert not list(tmp_path.iterdir())  # a plan writes nothing


def test_plan_help_names_the_devices_it_assumes(tmp_path):
    output = plan("--help", cwd=tmp_path)
    assert "Plan a pretraining run" in output and "plan.gpu_memory_gib" in output

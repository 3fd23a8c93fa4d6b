"""DeepSpeed's edge paths through our module, Lightning's strategy and our trainer factory, on 2 CPU processes:
the non-finite-step skip under ZeRO-2 and ZeRO-3, grad norms logged from DeepSpeed, optimizer offload with
DeepSpeedCPUAdam, the loss in fp32 under bf16, a ZeRO-3 run resumed to the parameters of an uninterrupted one,
and ZeRO-2/3 checkpoints resumed on another number of processes (through DeepSpeed's universal checkpoint).

Each case is one ``torch.distributed.run`` of ``lightning_deepspeed_cpu.py`` (about 15 s; the first offload run
on a machine also compiles DeepSpeedCPUAdam into ``TORCH_EXTENSIONS_DIR``, about a minute).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_deepspeed_cpu import free_port, worker_errors

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("lightning_deepspeed_cpu.py")
RUN_TIMEOUT_S = 600
NAN_STEPS = (1, 3, 4, 5)  # one bad step the run survives, then max_bad_steps=3 in a row


def run(output_dir: Path, *arguments: str, processes: int = 2) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    arguments = (*arguments, f"--processes={processes}")
    rendezvous = ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    command = [*launcher, *rendezvous, str(SCRIPT), f"--output-dir={output_dir}", *arguments]
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    errors = worker_errors(result.stdout + result.stderr)
    assert result.returncode == 0, f"run failed (exit {result.returncode}):\n{errors}"
    return json.loads((output_dir / "results.json").read_text())


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def poisoned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    output_dir = tmp_path_factory.mktemp(f"nan-zero{request.param}")
    poison = ",".join(map(str, NAN_STEPS))
    return run(output_dir, f"--zero-stage={request.param}", "--steps=8", f"--poison-steps={poison}")


def test_non_finite_steps_are_skipped_and_counted_on_every_rank_then_stop_the_run(poisoned):
    assert poisoned["stopped_by"] and "3 consecutive steps had a non-finite loss" in poisoned["stopped_by"]
    assert poisoned["global_step"] == NAN_STEPS[-1]  # it went on after the first bad step and stopped at the third
    assert [rank["bad_steps"] for rank in poisoned["counters_per_rank"]] == [len(NAN_STEPS)] * 2
    assert poisoned["deepspeed_skipped_steps"] >= len(NAN_STEPS) - 1  # the last one raised before its step
    assert poisoned["parameters_finite"], "a NaN step reached the weights"


def test_grad_norms_come_from_deepspeed_under_zero(poisoned):
    norms = poisoned["grad_norms"]
    good_steps = [step for step in range(NAN_STEPS[-1]) if step not in NAN_STEPS]
    assert len(norms) == len(good_steps) and all(math.isfinite(norm) and norm > 0 for norm in norms), norms


def test_optimizer_offload_steps_deepspeed_cpu_adam_and_bf16_keeps_the_loss_in_fp32(tmp_path):
    results = run(tmp_path, "--zero-stage=2", "--steps=4", "--precision=bf16-mixed", "--offload-optimizer")
    assert results["optimizer"] == "DeepSpeedCPUAdam"
    assert results["loss_dtypes"] == ["torch.float32"]
    assert results["parameters_finite"] and len(results["losses"]) == 4


def test_a_zero3_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path):
    common = ("--zero-stage=3", "--steps=6", "--batches-per-epoch=3", "--poison-steps=1")
    run(tmp_path / "full", *common)
    stopped = run(tmp_path / "part", *common, "--stop-after=3")
    resumed = run(tmp_path / "resumed", *common, f"--resume={tmp_path / 'part' / 'stopped.ckpt'}")
    assert stopped["global_step"] == 3 and resumed["global_step"] == 6
    assert resumed["counters_per_rank"] == [{"bad_steps": 1, "corrupt": 12}] * 2  # restored, then counted on
    full, part, after = (torch.load(tmp_path / name / "parameters.pt") for name in ("full", "part", "resumed"))
    assert any(not torch.equal(full[name], part[name]) for name in full), "the resumed steps changed nothing"
    for name, expected in full.items():
        torch.testing.assert_close(after[name], expected, rtol=0, atol=0, msg=name)


# Both stages and both directions, in two runs: ZeRO-3's conversion and load differ from ZeRO-2's.
@pytest.mark.parametrize(("stage", "before", "after"), [(3, 2, 1), (2, 1, 2)], ids=["zero3-2to1", "zero2-1to2"])
def test_a_zero_checkpoint_resumes_on_another_number_of_processes_with_the_same_global_batch(
    tmp_path, stage, before, after
):
    # Global batch 8: 2 processes x 4, or 1 process x 4 x 2 accumulated. Every micro-batch counts one corrupt
    # sample, so the count tells how many micro-batches each step took.
    common = (f"--zero-stage={stage}", "--steps=6", "--batches-per-epoch=3")
    stopped = run(tmp_path / "part", *common, "--stop-after=3", processes=before)
    checkpoint = tmp_path / "part" / "stopped.ckpt"
    resumed = run(tmp_path / "resumed", *common, f"--resume={checkpoint}", processes=after)
    assert (checkpoint / "latest_universal").is_file()  # converted once, by rank 0
    saved = torch.load(tmp_path / "part" / "parameters.pt")
    loaded = torch.load(tmp_path / "resumed" / "start_parameters.pt")
    for name, expected in saved.items():  # the resumed engine starts from exactly the saved state
        torch.testing.assert_close(loaded[name], expected, rtol=0, atol=0, msg=name)
    assert stopped["optimizer_steps"] == [3] and resumed["optimizer_steps"] == [6]  # moments kept, not restarted
    assert resumed["global_step"] == 6 and len(resumed["losses"]) == 3
    micro_batches_per_step = 8 // 4
    assert resumed["counters_per_rank"][0]["corrupt"] == 6 * micro_batches_per_step

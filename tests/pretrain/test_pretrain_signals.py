"""Real signals sent to real pretraining runs: a SIGKILLed run resumes from its last periodic checkpoint; SIGTERM
and SIGINT checkpoint after the current step, export nothing
and exit 128 + the signal number; the resumed run ends where an uninterrupted one does; a second signal exits at
once; Ctrl-C to the whole process group (workers included) stops after a checkpoint; in a 2-process DDP run a
signal to rank 0 alone stops both ranks together."""

import csv
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from app_runner import app_overrides, run_app, start_app, wait_for_file

from pretrain.engine.checkpoints import checkpoint_step, find_resume_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 48  # far from step 4, where the signal is sent, on any machine
SETTINGS = {
    "trainer.max_steps": MAX_STEPS,
    "trainer.checkpoint_every_n_steps": 4,
    "trainer.keep_checkpoints": -1,
    "logger": "csv",
    "data.batches_per_epoch": 12,  # 5 demo epochs: 60 steps, capped at MAX_STEPS
}


def signalled_run(demo_shards: Path, run_dir: Path, *signals: int, **extra) -> int:
    """Start a run, send ``signals`` (50 ms apart) once its step-4 checkpoint exists; its exit code."""
    process = start_app(app_overrides(demo_shards, run_dir, **SETTINGS, **extra))
    wait_for_file(run_dir / "checkpoints" / "step_000004.ckpt", process)
    assert process.poll() is None, "the run finished before it could be signalled"
    for signum in signals:
        os.kill(process.pid, signum)
        time.sleep(0.05)
    return process.wait(timeout=120)


def newest_step(run_dir: Path) -> int:
    newest = find_resume_checkpoint(run_dir / "checkpoints")
    assert newest is not None
    return checkpoint_step(newest)


def final_checkpoint(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / f"step_{MAX_STEPS:06d}.ckpt"
    return torch.load(path, map_location="cpu", weights_only=False)


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as metrics:
        return [(int(row["step"]), float(row["train/loss"])) for row in csv.DictReader(metrics) if row["train/loss"]]


def assert_same_curve(actual_dir: Path, expected_dir: Path) -> None:
    """The CSV log of a resumed run holds each step's loss once, as the uninterrupted run logged it."""
    expected, actual = logged_losses(expected_dir), logged_losses(actual_dir)
    assert [step for step, _ in actual] == [step for step, _ in expected]
    for (step, loss), (_, reference) in zip(actual, expected, strict=True):
        assert loss == pytest.approx(reference, abs=1e-5), step


def assert_same_end(actual_dir: Path, expected_dir: Path) -> None:
    expected, actual = final_checkpoint(expected_dir), final_checkpoint(actual_dir)
    assert actual["epoch"] == expected["epoch"]  # the resumed epoch ran to its end, not to an early Lightning end
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], value, atol=1e-6, rtol=0, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(demo_shards, tmp_path_factory) -> Path:
    """The run the interrupted ones must end like."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_app(app_overrides(demo_shards, run_dir, **SETTINGS))
    return run_dir


def test_a_killed_run_resumes_to_the_parameters_of_an_uninterrupted_one(demo_shards, tmp_path, uninterrupted):
    interrupted = tmp_path / "interrupted"
    process = start_app(app_overrides(demo_shards, interrupted, **SETTINGS))
    checkpoint = interrupted / "checkpoints" / "step_000008.ckpt"
    wait_for_file(checkpoint, process)
    os.kill(process.pid, signal.SIGKILL)  # nothing runs: the newest periodic checkpoint is what is left
    process.wait()
    assert not (interrupted / "checkpoints" / f"step_{MAX_STEPS:06d}.ckpt").exists(), "it finished before the kill"

    resumed = run_app(app_overrides(demo_shards, interrupted, **SETTINGS))
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert_same_end(interrupted, uninterrupted)
    assert_same_curve(interrupted, uninterrupted)


def test_sigterm_checkpoints_exits_143_and_the_resumed_run_equals_an_uninterrupted_one(
    demo_shards, tmp_path, uninterrupted
):
    interrupted = tmp_path / "interrupted"
    assert signalled_run(demo_shards, interrupted, signal.SIGTERM) == 128 + signal.SIGTERM
    stopped_at = newest_step(interrupted)
    assert 4 <= stopped_at < MAX_STEPS
    assert not (interrupted / "backbone.safetensors").exists(), "an interrupted run exported a backbone"

    resumed = run_app(app_overrides(demo_shards, interrupted, **SETTINGS))
    output = resumed.stdout + resumed.stderr
    assert f"step_{stopped_at:06d}.ckpt" in output  # "resuming from ..."
    for noise in ("not resumable", "litlogger", "weights_only", "another data layout"):
        assert noise not in output, noise  # an exact resume says nothing misleading about itself
    assert (interrupted / "backbone.safetensors").exists()
    assert_same_end(interrupted, uninterrupted)
    assert_same_curve(interrupted, uninterrupted)


def test_a_second_signal_ends_the_process_at_once(demo_shards, tmp_path):
    # Ctrl-C after a SIGTERM: killed by the second signal (the shell's 130), not a graceful exit 143 after the
    # stop checkpoint.
    run_dir = tmp_path / "run"
    assert signalled_run(demo_shards, run_dir, signal.SIGTERM, signal.SIGINT) == -signal.SIGINT
    assert not (run_dir / "backbone.safetensors").exists()


def test_ctrl_c_to_the_whole_process_group_stops_after_a_checkpoint(demo_shards, tmp_path):
    # The terminal signals the training process and its DataLoader workers alike; the workers leave it to the rank.
    run_dir = tmp_path / "run"
    process = start_app(app_overrides(demo_shards, run_dir, **SETTINGS), new_session=True)
    wait_for_file(run_dir / "checkpoints" / "step_000004.ckpt", process)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 128 + signal.SIGINT
    assert 4 <= newest_step(run_dir) < MAX_STEPS


def test_sigterm_to_rank_0_of_two_ddp_processes_stops_both_at_one_checkpoint(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    ddp = {"trainer": "ddp_cpu", "data.batch_size": 8}
    assert signalled_run(demo_shards, run_dir, signal.SIGTERM, **ddp) == 128 + signal.SIGTERM
    stopped_at = newest_step(run_dir)
    assert 4 <= stopped_at < MAX_STEPS
    assert not (run_dir / "backbone.safetensors").exists()

    run_app(app_overrides(demo_shards, run_dir, **SETTINGS, **ddp))
    assert newest_step(run_dir) == MAX_STEPS
    assert (run_dir / "backbone.safetensors").exists()

"""The pretraining app's run directory never lies (issue 26): a second run on it fails at once naming the first,
resume=none never mixes runs, the export is always the checkpoint the run just wrote (also after falling back from a
damaged one), and a run that does not fit the checkpoint it resumes says so before rewriting ``.hydra/``."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from app_runner import REPO_ROOT, app_overrides, run_app, start_app, wait_for_file
from safetensors.torch import load_file

from pretrain.engine.backbone_io import read_backbone_state
from pretrain.engine.checkpoints import checkpoint_path, file_digest

pytestmark = pytest.mark.slow

STEPS = 4
SETTINGS = {"trainer.max_steps": STEPS, "trainer.checkpoint_every_n_steps": 2, "logger": "csv"}


def failed_app(overrides: list[str]) -> str:
    """Run the app expecting a failure; its output."""
    result = subprocess.run(
        [sys.executable, "pretrain/run.py", *overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stdout + result.stderr


def assert_export_is(run_dir: Path, checkpoint: Path) -> None:
    """The exported backbone holds exactly ``checkpoint``'s weights, and its metadata names it and its digest."""
    exported = load_file(run_dir / "backbone.safetensors")
    expected, _ = read_backbone_state(checkpoint)
    assert exported.keys() == {key for key in expected if not key.startswith("head.")}
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, expected[name].float(), rtol=0, atol=0, msg=name)
    meta = json.loads((run_dir / "backbone.json").read_text())
    assert meta["source_checkpoint"] == str(checkpoint)
    assert meta["source_sha256"] == file_digest(checkpoint)


@pytest.fixture(scope="module")
def finished(demo_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_app(app_overrides(demo_shards, run_dir, **SETTINGS))
    return run_dir


@pytest.fixture
def copy_of_finished(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def test_a_second_run_on_a_run_dir_in_use_fails_at_once_naming_the_first(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    first = start_app(
        app_overrides(demo_shards, run_dir, **{**SETTINGS, "trainer.max_steps": 10_000, "epochs": 100, "seed": 1})
    )
    wait_for_file(checkpoint_path(run_dir / "checkpoints", 2), first)
    output = failed_app(app_overrides(demo_shards, run_dir, **SETTINGS))
    assert first.poll() is None, "the first run ended before the second one tried"
    assert f"is in use by another run (pid {first.pid}" in output
    os.kill(first.pid, signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    assert "seed=1" in (run_dir / ".hydra" / "overrides.yaml").read_text(), "the second run rewrote .hydra/"
    with open(run_dir / "csv" / "metrics.csv") as metrics:
        steps = [row["step"] for row in csv.DictReader(metrics) if row["train/loss"]]
    assert len(steps) == len(set(steps)), "two runs logged into one metrics.csv"


def test_resume_none_on_a_finished_run_refuses_and_overwrite_starts_over(demo_shards, copy_of_finished):
    run_dir = copy_of_finished
    before = file_digest(run_dir / "backbone.safetensors")
    output = failed_app(app_overrides(demo_shards, run_dir, **SETTINGS, resume="none", **{"optim.lr": 0.01}))
    assert "resume=none but run_dir" in output and "overwrite=true" in output
    assert file_digest(run_dir / "backbone.safetensors") == before
    assert "optim.lr" not in (run_dir / ".hydra" / "overrides.yaml").read_text()

    run_app(app_overrides(demo_shards, run_dir, **SETTINGS, resume="none", overwrite="true", **{"optim.lr": 0.01}))
    assert file_digest(run_dir / "backbone.safetensors") != before
    assert_export_is(run_dir, checkpoint_path(run_dir / "checkpoints", STEPS))
    (replaced,) = (run_dir / "replaced").iterdir()
    assert file_digest(replaced / "backbone.safetensors") == before
    assert "optim.lr=0.01" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert not list((run_dir / "checkpoints").glob("*-v*")), "no versioned twins of a checkpoint name"


@pytest.mark.parametrize("damage", ["truncated", "corrupted inside"])
def test_a_rerun_after_a_damaged_final_checkpoint_exports_what_it_wrote(demo_shards, copy_of_finished, damage):
    run_dir = copy_of_finished
    final = checkpoint_path(run_dir / "checkpoints", STEPS)
    if damage == "truncated":
        final.write_bytes(final.read_bytes()[:1000])
    else:
        content = bytearray(final.read_bytes())
        content[len(content) // 2 : len(content) // 2 + 1000] = bytes(1000)
        final.write_bytes(bytes(content))
    rerun = run_app(app_overrides(demo_shards, run_dir, **SETTINGS))
    output = rerun.stdout + rerun.stderr
    assert "skipping damaged checkpoint step_000004.ckpt" in output
    assert f"resuming from {checkpoint_path(run_dir / 'checkpoints', 2)}" in output
    assert (run_dir / "checkpoints" / "damaged" / final.name).exists()
    assert_export_is(run_dir, final)
    again = run_app(app_overrides(demo_shards, run_dir, **SETTINGS))  # nothing damaged is read twice
    output = again.stdout + again.stderr
    assert "skipping damaged" not in output and f"resuming from {final}" in output
    assert_export_is(run_dir, final)


def test_resuming_with_another_model_fails_in_one_line_before_rewriting_hydra(demo_shards, copy_of_finished):
    run_dir = copy_of_finished
    recorded = (run_dir / ".hydra" / "config.yaml").read_text()
    output = failed_app(app_overrides(demo_shards, run_dir, **SETTINGS, model="vit_tiny"))
    (line,) = [
        line for line in output.splitlines() if line.startswith("pretrain.engine.lifecycle.BackboneMismatchError")
    ]
    assert "embed_dim=64" in line and "embed_dim=192" in line and "use a new run_dir" in line
    assert (run_dir / ".hydra" / "config.yaml").read_text() == recorded

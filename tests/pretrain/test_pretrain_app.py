"""The pretraining app end to end: real shards, real Lightning trainer, real offline W&B run read back."""

import csv
import math
import subprocess
import sys

import pytest
import torch
from app_runner import REPO_ROOT, app_overrides, run_app
from wandb_offline import read_offline_run

from data_pipelines.demo import demo_listing
from data_pipelines.writer import WriteOptions, write_listing
from pretrain.engine.backbone_io import load_backbone

pytestmark = pytest.mark.slow


def mean(values):
    return sum(values) / len(values)


def test_short_mae_run_lowers_loss_logs_to_wandb_and_exports(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_app(
        app_overrides(
            demo_shards,
            run_dir,
            **{
                "trainer.max_steps": 60,
                "trainer.checkpoint_every_n_steps": 30,
                "optim.lr": 2e-3,
                "warmup_epochs": 0.15,
                "logger": "wandb",
                "logger.log_images_every_n_steps": 30,
            },
        )
    )
    run = read_offline_run(run_dir / "wandb")
    losses = run.values("train/loss")
    assert len(losses) >= 10
    assert mean(losses[-3:]) < 0.8 * mean(losses[:3])
    for key in (
        "train/device/samples_per_sec",
        "train/device/items_per_sec",
        "train/device/flops_per_sec",
        "lr-AdamW/pg1",
        "train/grad_norm",
        "data/corrupt_samples_skipped",
    ):
        assert run.values(key), f"{key} was not logged"
    assert run.images, "no reconstruction panel was logged"
    assert run.config["model"]["preset"] == "vit_test_patch4"
    assert "api_key" not in str(run.config).lower()
    backbone, meta = load_backbone(run_dir / "backbone.safetensors")
    assert meta.step == 60 and meta.objective == "mae"
    assert torch.isfinite(backbone(torch.randn(1, 3, 32, 32))).all()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["step_000030.ckpt", "step_000060.ckpt"]


def test_supervised_objective_trains_with_csv_logger(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_app(app_overrides(demo_shards, run_dir, objective="supervised", logger="csv", **{"trainer.max_steps": 10}))
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics
    _, meta = load_backbone(run_dir / "backbone.safetensors")
    assert meta.objective == "supervised"


def test_two_ddp_processes_train_from_jpegs_decoded_on_their_devices(tmp_path):
    # JPEG shards with data.decode=gpu: the workers hand the bytes over, each rank decodes them (on the CPU here).
    listing = demo_listing("train", 256, 32, seed=0)
    write_listing(listing, tmp_path / "train", WriteOptions("demo", 64, image_format="jpg"), {"source": "demo"})
    run_dir = tmp_path / "run"
    overrides = app_overrides(tmp_path, run_dir, trainer="ddp_cpu", logger="csv", **{"trainer.max_steps": 6})
    result = run_app([*overrides, "data.decode=gpu"])
    output = result.stdout + result.stderr
    assert "1 node(s) x 2 device(s) = 2 processes; global batch 32" in output
    assert "data.decode=gpu without a GPU: the training process decodes the JPEGs on the CPU" in output
    with open(run_dir / "csv" / "metrics.csv") as metrics:
        losses = [float(row["train/loss"]) for row in csv.DictReader(metrics) if row.get("train/loss")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert (run_dir / "checkpoints" / "step_000006.ckpt").exists()
    assert (run_dir / "backbone.safetensors").exists()


def test_unreadable_resume_checkpoint_fails_with_a_clear_message(demo_shards, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("garbage")
    result = subprocess.run(
        [sys.executable, "pretrain/run.py", *app_overrides(demo_shards, tmp_path / "run", resume=str(bad))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cannot read checkpoint" in result.stderr + result.stdout


def test_multirun_gives_each_job_its_own_run_directory(demo_shards, tmp_path):
    overrides = [
        o
        for o in app_overrides(demo_shards, tmp_path / "unused", logger="none", **{"trainer.max_steps": 2})
        if not o.startswith("run_dir=")
    ]
    run_app(["-m", "optim.lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "backbone.safetensors").is_file()
    assert "optim.lr=0.002" in (tmp_path / "sweep" / "1" / ".hydra" / "overrides.yaml").read_text()

"""The finetune app end to end on the demo shards, from a briefly pretrained backbone (chance is 10 %)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from official_files import write_cifar10, write_cifar100, write_flowers102
from wandb_offline import read_offline_run

from finetune.run import RESULTS_FILE, finetune
from pretrain.engine.backbone_io import load_backbone
from pretrain.engine.checkpoints import checkpoint_step, find_resume_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT_FIELDS = {  # results.json, as the design fixes it
    "task",
    "mode",
    "checkpoint",
    "config_hash",
    "metrics",
    "num_train",
    "num_test",
    "images_per_s",
    "seed",
    "git_commit",
}


@pytest.fixture
def run_app(finetune_config, demo_root: Path, pretrained: Path, tmp_path: Path):
    """Run the app in this process on the demo shards with the exported backbone; returns results.json's content."""

    def run(*overrides: str) -> dict[str, Any]:
        backbone = pretrained / "backbone.safetensors"
        config = finetune_config(f"data_root={demo_root}", f"ckpt={backbone}", "num_workers=0", *overrides)
        returned = finetune(config, tmp_path)
        assert json.loads((tmp_path / RESULTS_FILE).read_text()) == returned
        return returned

    return run


def test_knn_on_the_demo_is_clearly_above_chance(run_app) -> None:
    results = run_app("mode=knn")
    assert results["metrics"]["top1"] > 30
    assert CONTRACT_FIELDS <= results.keys()
    assert (results["task"], results["mode"], results["num_train"], results["num_test"]) == ("demo", "knn", 640, 320)
    assert results["images_per_s"] > 0 and results["pretraining"]["objective"] == "mae"


def test_default_linear_probe_on_the_demo_selects_on_validation_and_records_it(run_app) -> None:
    results = run_app()
    assert results["mode"] == "linear" and results["metrics"]["top1"] > 30
    selection = results["selection"]
    assert "hold-out of 10%" in selection["validation"] and selection["refit_on"] == "train"
    assert len(selection["candidates"]) == len(selection["grid"]["features"]) * len(selection["grid"]["lrs"]) * len(
        selection["grid"]["weight_decays"]
    )
    best = max(candidate["val_top1"] for candidate in selection["candidates"])
    chosen = [c for c in selection["candidates"] if {k: c[k] for k in selection["chosen"]} == selection["chosen"]]
    assert chosen[0]["val_top1"] == best


def test_augmented_mae_linear_probe_leaves_the_backbone_untouched(run_app, pretrained: Path, tmp_path: Path) -> None:
    run_app("mode=linear_mae", "trainer.max_steps=3", "mode.batch_size=32")
    checkpoint = torch.load(next((tmp_path / "checkpoints").glob("step_000003.ckpt")), weights_only=False)
    trained = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    original, _ = load_backbone(pretrained / "backbone.safetensors")
    assert all(torch.equal(trained[name], value) for name, value in original.state_dict().items() if name in trained)


@pytest.mark.slow
def test_finetune_on_the_demo_is_clearly_above_chance(run_app) -> None:
    results = run_app("mode=finetune", "mode.epochs=3", "mode.batch_size=32", "mode.lr_grid=[0.01,0.03]")
    assert results["metrics"]["top1"] > 30
    selection = results["selection"]
    assert [c["lr"] for c in selection["candidates"]] == [0.01, 0.03, *selection["extended"]["lr"]]
    best = max(selection["candidates"], key=lambda candidate: candidate["val_top1"])
    assert selection["chosen"] == {"lr": best["lr"]}
    assert results["linear_probe"]["metrics"]["top1"] > 30 and "below_linear_probe" in results


def test_a_fine_tune_below_the_linear_probe_says_so(run_app, caplog) -> None:
    with caplog.at_level("WARNING", logger="finetune.modes.fitting"):
        results = run_app("mode=finetune", "mode.lr_grid=null", "trainer.max_steps=1", "mode.batch_size=16")
    assert results["below_linear_probe"] and results["metrics"]["top1"] < results["linear_probe"]["metrics"]["top1"]
    assert "below the selecting linear probe" in caplog.text


def test_lightning_checkpoint_and_exported_backbone_give_the_same_knn_accuracy(run_app, pretrained: Path) -> None:
    from_export = run_app("mode=knn")["metrics"]
    checkpoint = next((pretrained / "checkpoints").glob("step_*.ckpt"))
    assert run_app("mode=knn", f"ckpt='{checkpoint}'")["metrics"] == from_export


def test_random_init_baseline_needs_an_architecture(run_app) -> None:
    with pytest.raises(ValueError, match="model=vit_base"):
        run_app("ckpt=null", "mode=knn")
    assert run_app("ckpt=null", "model=vit_test", "mode=knn")["checkpoint"] is None


def test_finetune_at_a_higher_resolution_saves_a_loadable_model(run_app, tmp_path: Path) -> None:
    results = run_app(
        "mode=finetune", "mode.lr_grid=null", "image_size=48", "trainer.max_steps=2", "mode.batch_size=16"
    )
    assert results["image_size"] == 48 and all(value == value for value in results["metrics"].values())
    model, meta = load_backbone(tmp_path / "checkpoints" / "step_000002.ckpt")
    assert meta.options["img_size"] == 48 and model.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.isfinite(model(torch.randn(1, 3, 48, 48))).all()


def test_finetune_with_ema_tests_the_averaged_weights(run_app) -> None:
    plain = run_app(
        "mode=finetune", "mode.lr_grid=null", "trainer.max_steps=2", "mode.batch_size=16", "mode.optim.lr=0.5"
    )
    averaged = run_app(
        "mode=finetune",
        "mode.lr_grid=null",
        "trainer.max_steps=2",
        "mode.batch_size=16",
        "mode.optim.lr=0.5",
        "mode.ema_decay=0.5",
        "resume=none",
    )
    assert averaged["metrics"] != plain["metrics"]


def test_results_go_to_the_wandb_summary(run_app, tmp_path: Path) -> None:
    results = run_app("mode=knn", "logger=wandb", "logger.mode=offline")
    summary = read_offline_run(tmp_path / "wandb").summary
    assert summary["task"] == "demo" and summary["metrics"]["top1"] == pytest.approx(results["metrics"]["top1"])


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.slow
def test_knn_on_two_ddp_processes_gives_the_single_process_accuracy(
    run_app, demo_root: Path, pretrained: Path, tmp_path: Path
) -> None:
    single = run_app("mode=knn")["metrics"]
    completed = run_cli(
        "finetune/run.py",
        "mode=knn",
        "trainer=ddp_cpu",
        f"data_root={demo_root}",
        "num_workers=1",
        "logger=none",
        f"ckpt={pretrained / 'backbone.safetensors'}",
        f"run_dir={tmp_path / 'ddp'}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / RESULTS_FILE).read_text())["metrics"] == single


@pytest.mark.slow
def test_cifar100_from_the_command_line_writes_results(tmp_path: Path, pretrained: Path) -> None:
    data_root = write_cifar100(tmp_path / "data", num_classes=20)
    completed = run_cli(
        "finetune/run.py",
        "task=cifar100",
        f"data_root={data_root}",
        f"ckpt={pretrained / 'backbone.safetensors'}",
        f"run_dir={tmp_path / 'run'}",
        "logger=csv",
        "num_workers=0",
        "mode.batch_size=64",
        "trainer.max_steps=3",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert (results["task"], results["num_train"], results["num_test"]) == ("cifar100", 200, 20)
    assert set(results["metrics"]) == {"top1", "top5"}


@pytest.mark.slow
def test_multirun_over_tasks_and_modes_is_tabulated_by_the_report(tmp_path: Path, pretrained: Path) -> None:
    pytest.importorskip("scipy")
    data_root = write_flowers102(write_cifar10(tmp_path / "data"))
    completed = run_cli(
        "finetune/run.py",
        "-m",
        "task=cifar10,flowers102",
        "mode=linear,knn",
        f"data_root={data_root}",
        f"ckpt={pretrained / 'backbone.safetensors'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "logger=none",
        "num_workers=0",
        "mode.batch_size=4",
        "trainer.max_steps=2",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob(RESULTS_FILE))) == 4
    report = run_cli("finetune/report.py", str(tmp_path / "sweep"))
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "sweep" / "report.md").read_text()
    assert "| checkpoint | mode | setting | cifar10 | flowers102 |" in table
    assert table.count("| mode.batch_size=4 trainer.max_steps=2 |") == 2  # one row per mode
    assert (tmp_path / "sweep" / "report.csv").read_text().startswith("checkpoint,mode,setting,cifar10,flowers102\n")


def test_without_ckpt_the_app_says_what_to_pass(tmp_path: Path) -> None:
    completed = run_cli("finetune/run.py", f"hydra.run.dir={tmp_path}")
    assert completed.returncode != 0
    message = completed.stderr[-2000:]
    assert "needs ckpt=" in message and "ckpt=null model=vit_base" in message, message


@pytest.mark.slow
def test_a_fine_tune_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_parameters(
    tmp_path: Path, pretrained: Path
) -> None:
    # 200 CIFAR-10 images in batches of 8: 25 steps an epoch, so the stop lands mid-epoch and the resumed run
    # crosses an epoch boundary. Random crops, flips and drop path all have to come out the same.
    data_root = write_cifar10(tmp_path / "data", per_class=20)
    steps = 60

    def arguments(run_dir: Path) -> list[str]:
        return [
            "finetune/run.py",
            "task=cifar10",
            "mode=finetune",
            f"data_root={data_root}",
            f"ckpt={pretrained / 'backbone.safetensors'}",
            f"run_dir={run_dir}",
            "logger=csv",
            "trainer.log_every_n_steps=5",
            "num_workers=1",
            "mode.batch_size=8",
            "mode.lr_grid=null",
            "mode.compare_with_linear_probe=false",
            "mode.train_transform=mae",
            "mode.crop_scale=[0.35,1]",
            "mode.crop_ratio=[0.75,1.33]",
            "mode.drop_path_rate=0.1",
            f"trainer.max_steps={steps}",
            "trainer.checkpoint_every_n_steps=10",
            "trainer.keep_checkpoints=-1",
        ]

    straight = run_cli(*arguments(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, *arguments(interrupted)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = interrupted / "checkpoints" / "step_000010.ckpt"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the fine-tune ended before step 10"
        time.sleep(0.05)
    assert process.poll() is None, "the fine-tune finished before it could be signalled"
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert not (interrupted / RESULTS_FILE).exists(), "a stopped fine-tune wrote results"
    stopped_at = checkpoint_step(find_resume_checkpoint(interrupted / "checkpoints"))
    assert 10 <= stopped_at < steps

    resumed = run_cli(*arguments(interrupted))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = f"checkpoints/step_{steps:06d}.ckpt"
    expected = torch.load(tmp_path / "straight" / final, weights_only=False)["state_dict"]
    actual = torch.load(interrupted / final, weights_only=False)["state_dict"]
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    assert (
        json.loads((interrupted / RESULTS_FILE).read_text())["metrics"]
        == json.loads((tmp_path / "straight" / RESULTS_FILE).read_text())["metrics"]
    )
    # The CSV log survives the resume: each logged step's loss once, as the uninterrupted run logged it.
    expected_losses, actual_losses = logged_losses(tmp_path / "straight"), logged_losses(interrupted)
    assert [step for step, _ in actual_losses] == [step for step, _ in expected_losses]
    assert [loss for _, loss in actual_losses] == pytest.approx([loss for _, loss in expected_losses], abs=1e-5)


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as metrics:
        return [(int(row["step"]), float(row["train/loss"])) for row in csv.DictReader(metrics) if row["train/loss"]]

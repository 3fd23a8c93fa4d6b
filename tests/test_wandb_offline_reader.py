"""The offline W&B reader returns exactly what a run logged, through wandb directly and through Lightning."""

from pathlib import Path

import numpy as np
import pytest
import wandb
from wandb_offline import read_offline_run


def without_wandb_keys(values: dict) -> dict:
    return {key: value for key, value in values.items() if not key.startswith("_")}


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory offline runs are written to.

    conftest's `_hermetic_wandb` already keeps W&B offline and its cache, config and data directories temporary.
    """
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


def test_reader_returns_the_logged_scalars_config_summary_and_image(offline_wandb: Path) -> None:
    # A 70 kB config value makes the run record span three 32 kB blocks (FIRST, MIDDLE, LAST chunks).
    config = {"lr": 0.1, "model": {"depth": 2}, "notes": "x" * 70_000}
    run = wandb.init(project="reader-test", config=config, dir=str(offline_wandb), mode="offline")
    for step, loss in enumerate([1.0, 0.5, 0.25]):
        run.log({"train/loss": loss, "epoch": step})
    run.log({"reconstructions": wandb.Image(np.full((8, 16, 3), 200, dtype=np.uint8), caption="grid")})
    run.summary["best_loss"] = 0.25
    run.finish()

    logged = read_offline_run(offline_wandb)

    assert [without_wandb_keys(row) for row in logged.history[:3]] == [
        {"train/loss": 1.0, "epoch": 0},
        {"train/loss": 0.5, "epoch": 1},
        {"train/loss": 0.25, "epoch": 2},
    ]
    assert [row["_step"] for row in logged.history] == [0, 1, 2, 3]
    assert without_wandb_keys(logged.config) == config
    assert logged.summary["best_loss"] == 0.25
    assert logged.summary["train/loss"] == 0.25
    image = logged.history[3]["reconstructions"]
    assert (image["_type"], image["width"], image["height"], image["caption"]) == ("image-file", 16, 8, "grid")
    assert (logged.directory / "files" / image["path"]).is_file()
    assert image["path"] in logged.files
    assert logged.images == [logged.directory / "files" / image["path"]]


def test_reader_sees_what_lightning_wandb_logger_logged(offline_wandb: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="reader-test", save_dir=str(offline_wandb), offline=True)
    logger.log_hyperparams({"optim": {"lr": 0.001}, "batch_size": 4})
    logger.log_metrics({"train/loss": 2.0, "lr": 0.001}, step=0)
    logger.log_metrics({"train/loss": 1.5, "lr": 0.002}, step=1)
    logger.log_image("reconstructions", [np.zeros((8, 8, 3), dtype=np.uint8)], step=2, caption=["step 2"])
    logger.experiment.finish()

    logged = read_offline_run(offline_wandb)

    assert logged.values("train/loss") == [2.0, 1.5]
    assert logged.values("lr") == [0.001, 0.002]
    assert logged.values("trainer/global_step") == [0, 1, 2]
    assert without_wandb_keys(logged.config) == {"optim": {"lr": 0.001}, "batch_size": 4}
    (panel,) = logged.values("reconstructions")
    assert panel["captions"] == ["step 2"]
    assert len(logged.images) == 1 and logged.images[0].stat().st_size > 0
    assert [image.name for image in logged.images] == [Path(name).name for name in panel["filenames"]]

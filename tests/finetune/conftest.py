"""Fixtures of the downstream tests: small demo shards, one briefly pretrained backbone, composed app configs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipelines.demo import write_demo_shards

REPO_ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_STEPS = 20


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_root holding demo/train (640 images) and demo/test (320), 32 px, 10 classes."""
    root = tmp_path_factory.mktemp("data")
    write_demo_shards(root / "demo", num_train=640, num_test=320, image_size=32, max_count=160, workers=1)
    return root


@pytest.fixture(scope="session")
def pretrained(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a short MAE pretraining of the test ViT on the demo shards (exported backbone inside)."""
    run_dir = tmp_path_factory.mktemp("pretrain")
    overrides = [
        f"trainer.max_steps={PRETRAIN_STEPS}",
        "trainer.progress_bar=false",
        "logger=none",
        f"run_dir={run_dir}",
        f"data.shards={demo_root / 'demo' / 'train'}",
        "data.make_demo=false",
        "data.batch_size=32",
        "data.num_workers=1",
        "warmup_epochs=0.25",
    ]
    completed = subprocess.run(
        [sys.executable, "pretrain/run.py", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return run_dir


def _finetune_config(*overrides: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose("finetune", overrides=["logger=none", "trainer.progress_bar=false", *overrides])
    return OmegaConf.to_container(config, resolve=True)


@pytest.fixture
def finetune_config() -> Callable[..., dict[str, Any]]:
    """``finetune_config("task=cifar10", ...)``: the app's resolved config for these command-line overrides."""
    return _finetune_config

"""Suite-wide settings: deterministic CPU runs and hermetic W&B/Hydra state."""

import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _hermetic_wandb(tmp_path_factory, monkeypatch):
    """No test may talk to W&B servers or write to the user's W&B directories."""
    root = tmp_path_factory.mktemp("wandb-env")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(root / name.lower()))
    yield

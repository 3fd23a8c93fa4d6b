"""Shared fixtures for the pretraining app tests: demo shards written once, and a runner for the real app."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.demo import write_demo_shards

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """A small demo set (train/ and test/), enough for a few epochs of 16-image batches."""
    root = tmp_path_factory.mktemp("demo-shards")
    write_demo_shards(root, num_train=512, num_test=128, max_count=128, workers=1)
    return root


def app_overrides(demo_shards: Path, run_dir: Path, **extra) -> list[str]:
    """Fast settings for the app on the demo shards: small batches, one loader worker, no progress bar."""
    settings = {
        "data.shards": str(demo_shards / "train"),
        "data.make_demo": "false",
        "data.batch_size": "16",
        "data.num_workers": "1",
        "trainer.progress_bar": "false",
        "trainer.log_every_n_steps": "5",
        "run_dir": str(run_dir),
    }
    settings.update({key: str(value) for key, value in extra.items()})
    return [f"{key}={value}" for key, value in settings.items()]


def run_app(overrides: list[str], timeout: int = 300, script: str = "pretrain/run.py", **popen) -> subprocess.CompletedProcess:
    """Run an app as users do (a fresh interpreter), failing with its output when it fails."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, script, *overrides],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result

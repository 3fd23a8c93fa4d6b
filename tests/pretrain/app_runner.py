"""Runs the apps as users do, in a fresh interpreter, with settings that keep tests fast."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def run_app(
    overrides: list[str], timeout: int = 300, script: str = "pretrain/run.py", **popen
) -> subprocess.CompletedProcess:
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

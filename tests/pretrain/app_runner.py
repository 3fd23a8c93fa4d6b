"""Runs the apps as users do, in a fresh interpreter, with settings that keep tests fast."""

import os
import subprocess
import sys
import time
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


def run_app(overrides: list[str], timeout: int = 300, script: str = "pretrain/run.py") -> subprocess.CompletedProcess:
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


def start_app(overrides: list[str], script: str = "pretrain/run.py", new_session: bool = False) -> subprocess.Popen:
    """Start an app in the background (its output discarded), to signal or kill it mid-run; ``new_session``: in a
    process group of its own (with its DataLoader workers), as a terminal runs a foreground job."""
    return subprocess.Popen(
        [sys.executable, script, *overrides],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``path`` exists, failing if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the app ended (exit {process.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)

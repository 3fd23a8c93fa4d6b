"""``results.json``, the record of one downstream run: written by ``finetune/run.py``, read by
``finetune/report.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS_FILE = "results.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The commit of the code that produced a result, when it runs from a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None

"""Checkpoint files: atomic writes and the choice of what to resume from.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over its
final name, so a job killed mid-write never leaves a truncated checkpoint behind. ``resume=auto`` takes the
checkpoint with the highest global step among those that load.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"  # below a run directory
STEP_PATTERN = re.compile(r"step[_=](\d+)")  # step_000300; step=000300 from runs before the rename


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint path that does not hold a loadable checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never exposes a partly written file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """``checkpoint_dir/step_000300.ckpt``: the name of every checkpoint a run writes, periodic or on a signal."""
    return checkpoint_dir / f"step_{step:06d}.ckpt"


def checkpoint_step(path: Path) -> int:
    """Global step of a checkpoint: from its name (``step_N``, or the older ``step=N``) when present, else from its
    content."""
    match = STEP_PATTERN.search(path.name)
    if match:
        return int(match.group(1))
    return int(read_checkpoint(path).get("global_step", -1))


def is_complete(path: Path) -> bool:
    """A file checkpoint is a zip archive whose directory lists torch's pickle; a DeepSpeed checkpoint directory
    names its tag in ``latest``.

    Only the archive's directory, at its end, is read: a write cut short has none (and atomic writes leave no such
    file behind), so every rank decides alike in a few kilobytes of reading; the data itself is read once, by the
    load. (A CRC scan of every member would read a multi-gigabyte checkpoint once more on every rank.)
    """
    if path.is_dir():
        return (path / "latest").is_file() or (path / "checkpoint" / "latest").is_file()
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def find_resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``checkpoint_dir``, or None when there is none."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = [p for p in checkpoint_dir.iterdir() if p.name.endswith(".ckpt") and not p.name.startswith(".")]
    for path in sorted(candidates, key=checkpoint_step, reverse=True):
        if is_complete(path):
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    return None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint file onto the CPU, with an error that says what was expected."""
    path = Path(path)
    if not path.exists():
        raise UnreadableCheckpointError(f"checkpoint {path} does not exist")
    try:
        # Our own training checkpoints hold optimizer state and config dataclasses, not only tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged archive
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {path}: {error}. Expected a Lightning .ckpt file, a DeepSpeed checkpoint "
            "directory, or an exported backbone.safetensors"
        ) from error

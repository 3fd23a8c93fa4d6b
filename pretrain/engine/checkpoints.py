"""Checkpoint files: atomic writes with a digest, the choice of what to resume from, and what is set aside.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over its final
name, so a job killed mid-write never leaves a truncated checkpoint behind; the SHA-256 of its bytes, computed
while writing, goes beside it (``step_N.ckpt.sha256``). ``resume=auto`` takes the newest checkpoint that verifies
(its digest, or for files without one, torch's CRCs); a damaged one is moved to ``checkpoints/damaged/`` with the
reason, never deleted and never read again. Temporary files left by a writer that died are removed when the next
run takes the run directory (:mod:`pretrain.engine.run_dir`), and at once when a write fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"  # below a run directory
DAMAGED_SUBDIR = "damaged"  # below the checkpoint directory: files resume found damaged, kept for inspection
SUPERSEDED_SUBDIR = "superseded"  # below it too: checkpoints newer than an older one a run was resumed from
DIGEST_SUFFIX = ".sha256"  # beside each checkpoint file: the hex SHA-256 of its bytes
STEP_PATTERN = re.compile(r"step[_=](\d+)")  # step_000300; step=000300 from runs before the rename
TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-\d+$")  # .step_000300.ckpt.tmp-<pid>, see AtomicCheckpointIO
READ_CHUNK = 16 << 20  # bytes read at a time when verifying a digest


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint path that does not hold a loadable checkpoint."""


class DiskFullError(OSError):
    """A checkpoint that did not fit on its file system (its temporary file is already removed)."""

    def __str__(self) -> str:  # the message alone: it is the last line a failed run prints
        return str(self.strerror)


class _HashingWriter:
    """A binary file that also hashes what is written to it, so the digest costs no second read."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never exposes a partly written file and writes each file's digest beside it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                writer = _HashingWriter(handle)
                torch.save(checkpoint, writer)
                handle.flush()
                os.fsync(handle.fileno())
            digest_path(path).unlink(missing_ok=True)  # an old digest must never vouch for the new file
            os.replace(temporary, path)
            _write_text_atomic(digest_path(path), writer.digest.hexdigest() + "\n")
        except BaseException as error:
            temporary.unlink(missing_ok=True)
            if _is_disk_full(error):
                raise disk_full_error(path, checkpoint) from error
            raise


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or what it wraps is ENOSPC (torch reports a failed write as a RuntimeError of its own)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: Path, checkpoint: Any) -> DiskFullError:
    """One line that says how much the checkpoint needs and how much is free, measured once its temporary is gone."""
    free = shutil.disk_usage(path.parent).free
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on device: about {_tensor_bytes(checkpoint):,} bytes needed for {path.name}, "
        f"{free:,} free in {path.parent} (free space there, or lower trainer.keep_checkpoints)",
    )


def _tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in a checkpoint: what its file takes, give or take the pickled structure."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def digest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + DIGEST_SUFFIX)


def file_digest(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_digest(checkpoint: Path) -> str | None:
    """The digest written beside a checkpoint file when it was saved (None: none was, e.g. an older run's)."""
    path = digest_path(checkpoint)
    return path.read_text().strip() if path.is_file() else None


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """``checkpoint_dir/step_000300.ckpt``: the name of every checkpoint a run writes, periodic or on a signal."""
    return checkpoint_dir / f"step_{step:06d}.ckpt"


def checkpoint_step(path: Path) -> int:
    """Global step of a checkpoint: from its name (``step_N``, or the older ``step=N``) when present, else from its
    content."""
    match = STEP_PATTERN.search(path.name)
    if match:
        return int(match.group(1))
    return int(read_checkpoint_lazily(path).get("global_step", -1))


def damage(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it verifies.

    A file with a recorded digest must match it (one read of the file: a flipped byte anywhere is found); a file
    without one must be a zip archive whose members match their CRCs. A DeepSpeed checkpoint directory names its
    tag in ``latest``, and that tag's folder must hold the model states.
    """
    try:
        if path.is_dir():
            return _deepspeed_damage(path)
        if path.stat().st_size == 0:
            return "the file is empty"
        expected = recorded_digest(path)
        if expected is not None:
            found = file_digest(path)
            return None if found == expected else f"its SHA-256 is {found[:12]}..., {expected[:12]}... was written"
        return _zip_damage(path)
    except FileNotFoundError:  # moved aside by rank 0 while this rank was reading it
        return "it was moved away while being verified"
    # Any other OSError (EIO, ESTALE, EACCES) says nothing about the file's bytes: it is raised, never set aside.


def _zip_damage(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "it is a zip archive without torch's data.pkl"
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        return f"it is not a complete checkpoint archive ({error})"
    return None if bad is None else f"member {bad} does not match its CRC"


def _deepspeed_damage(path: Path) -> str | None:
    root = path if (path / "latest").is_file() else path / "checkpoint"
    if not (root / "latest").is_file():
        return "a directory without DeepSpeed's 'latest' file"
    tag = root / (root / "latest").read_text().strip()
    if not any(tag.glob("*model_states.pt")):
        return f"DeepSpeed's tag folder {tag.name} holds no model states"
    return None


def checkpoint_candidates(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints in ``checkpoint_dir`` (files and DeepSpeed directories), newest step first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        path
        for path in checkpoint_dir.iterdir()
        if path.name.endswith(".ckpt") and not path.name.startswith(".") and STEP_PATTERN.search(path.name)
    ]
    return sorted(found, key=checkpoint_step, reverse=True)


def find_resume_checkpoint(checkpoint_dir: Path, set_aside: bool = False) -> Path | None:
    """The newest checkpoint in ``checkpoint_dir`` that verifies (:func:`damage`), or None when there is none.

    Every damaged one newer than it is named in a warning, and with ``set_aside`` (one process of the run: rank 0)
    moved to ``checkpoint_dir/damaged/``, so that no rerun reads it again and no new checkpoint collides with it.
    Only candidates down to the first good one are read.
    """
    for path in checkpoint_candidates(checkpoint_dir):
        reason = damage(path)
        if reason is None:
            return path
        if set_aside:
            moved = set_aside_damaged(path)
            log.warning("skipping damaged checkpoint %s (%s): moved to %s", path.name, reason, moved)
        else:
            log.warning("skipping damaged checkpoint %s (%s)", path.name, reason)
    return None


def set_aside_damaged(path: Path, subdir: str = DAMAGED_SUBDIR) -> Path:
    """Move a checkpoint (and its digest) to ``subdir`` beside it (``damaged/``), under a name no other file has."""
    target_dir = path.parent / subdir
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    copy = 1
    while target.exists():
        target = target_dir / f"{path.name}.{copy}"
        copy += 1
    with contextlib.suppress(FileNotFoundError):  # another process of the run may have moved it first
        os.replace(path, target)
        if digest_path(path).exists():
            os.replace(digest_path(path), target.with_name(target.name + DIGEST_SUFFIX))
    return target


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file with its digest, or a DeepSpeed checkpoint directory."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


def set_aside_newer(checkpoint_dir: Path, step: int) -> list[Path]:
    """Move the checkpoints of ``checkpoint_dir`` with a step above ``step`` to ``superseded/``: a run resumed from
    an older checkpoint would otherwise see them as its newest (rotation, a later ``resume=auto``)."""
    return [
        set_aside_damaged(path, SUPERSEDED_SUBDIR)
        for path in checkpoint_candidates(checkpoint_dir)
        if checkpoint_step(path) > step
    ]


def rotate_checkpoints(checkpoint_dir: Path, keep: int, protected: Path | None = None) -> list[Path]:
    """Keep the ``keep`` newest checkpoints in ``checkpoint_dir`` (all with ``keep=-1``), whichever run wrote them,
    and ``protected`` (the one a run just wrote) in any case; return the removed ones."""
    if keep < 0:
        return []
    removed = [path for path in checkpoint_candidates(checkpoint_dir)[keep:] if path != protected]
    for path in removed:
        remove_checkpoint(path)
    return removed


def temporary_files(checkpoint_dir: Path) -> Iterator[Path]:
    """Half-written checkpoint and digest files (``.NAME.tmp-PID``) in ``checkpoint_dir``."""
    if checkpoint_dir.is_dir():
        yield from (path for path in checkpoint_dir.iterdir() if TEMPORARY_PATTERN.match(path.name))


def remove_temporary_files(checkpoint_dir: Path) -> list[Path]:
    """Remove what writers that are gone left half written: only call it while owning the run directory (no writer
    of this run is alive then). Returns what was removed."""
    removed = list(temporary_files(checkpoint_dir))
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def read_checkpoint_lazily(path: Path) -> dict[str, Any]:
    """A checkpoint's content without reading its tensors (memory-mapped): cheap for its metadata. For a DeepSpeed
    directory, the client state saved with rank 0's model states."""
    if path.is_dir():
        root = path if (path / "latest").is_file() else path / "checkpoint"
        states = sorted((root / (root / "latest").read_text().strip()).glob("*mp_rank_00_model_states.pt"))
        return torch.load(states[0], map_location="cpu", weights_only=False, mmap=True) if states else {}
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


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

"""One owner per run directory, and a fresh start that never mixes two runs.

Rank 0 of a run holds an exclusive lock on ``run_dir/.lock`` from before it writes anything until it exits. The lock
is a POSIX record lock (``fcntl.lockf``): the kernel releases it when the process dies, SIGKILL included, so on a
local file system it is never stale; forked loader workers do not inherit it. It works on NFS with a lock daemon
(v3) or v4, where the server frees the lock of a client that died only when its lease expires or its lock daemon
restarts; on Lustre only when mounted with ``flock`` (or ``localflock``: then it guards one node only). Where the
file system refuses locks, the run says so and goes on unguarded. A second run on a locked directory fails at once,
naming the holder's host, pid and start time. Hydra's ``run.log`` is opened before the lock is taken: it stays in
place (``overwrite=true`` too) and a refused run's error may land in it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from pretrain.engine.backbone_io import BACKBONE_FILE
from pretrain.engine.checkpoints import (
    CHECKPOINT_SUBDIR,
    checkpoint_candidates,
    remove_temporary_files,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
REPLACED_SUBDIR = "replaced"  # overwrite=true moves a previous run here, under the time of the move
KEPT_IN_PLACE = (LOCK_FILE, REPLACED_SUBDIR, "run.log")  # run.log: Hydra's log of this very job, already open
UNSUPPORTED_LOCK_ERRORS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
HOLDER_BYTES = 4096


class RunDirectoryBusyError(RuntimeError):
    """Another live process owns the run directory."""


class RunDirectoryNotEmptyError(RuntimeError):
    """``resume=none`` on a run directory that holds another run's checkpoints or export."""


def _holder() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


@contextmanager
def own_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (rank 0; the other ranks of the run pass through) for the duration of the block."""
    if rank_zero_only.rank != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if _lock(descriptor, run_dir):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, _holder().encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock (and a dying process's lock goes with it)


def _lock(descriptor: int, run_dir: Path) -> bool:
    """Take the lock; False when the file system has no locks (the run goes on unguarded)."""
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            holder = _describe_holder(os.pread(descriptor, HOLDER_BYTES, 0).decode(errors="replace"))
            raise RunDirectoryBusyError(
                f"run_dir {run_dir} is in use by another run ({holder}): wait for it to end, or pass another run_dir"
            ) from None
        if error.errno in UNSUPPORTED_LOCK_ERRORS:
            log.warning(
                "the file system of %s does not support locks (%s): nothing stops a second run from using it",
                run_dir,
                os.strerror(error.errno),
            )
            return False
        raise


def previous_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows that a run already trained there: checkpoints or an export."""
    found = [str(path.relative_to(run_dir)) for path in checkpoint_candidates(run_dir / CHECKPOINT_SUBDIR)]
    if (run_dir / BACKBONE_FILE).exists():
        found.append(BACKBONE_FILE)
    return found


def claim_run_dir(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Make ``run_dir`` ready for this run (rank 0, while holding its lock): remove half-written files of writers
    that are gone, and for ``resume=none`` refuse a directory that holds another run, unless ``overwrite``, which
    moves that run to ``run_dir/replaced/<time>/`` first."""
    for path in remove_temporary_files(run_dir / CHECKPOINT_SUBDIR):
        log.info("removed %s, left half-written by a run that ended during a save", path)
    if resume != "none":
        return
    found = previous_run(run_dir)
    if not found:
        return
    if not overwrite:
        raise RunDirectoryNotEmptyError(
            f"resume=none but run_dir {run_dir} holds a run ({', '.join(found[:3])}): pass another run_dir, "
            "resume=auto to continue it, or overwrite=true to move it aside and start over"
        )
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    destination, copy = run_dir / REPLACED_SUBDIR / stamp, 1
    while destination.exists():  # two overwrites within one second
        destination, copy = run_dir / REPLACED_SUBDIR / f"{stamp}.{copy}", copy + 1
    destination.mkdir(parents=True)
    for path in run_dir.iterdir():
        if path.name not in KEPT_IN_PLACE:
            os.replace(path, destination / path.name)
    log.info("overwrite=true: moved the previous run of %s to %s", run_dir, destination)

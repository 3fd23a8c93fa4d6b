"""How worker processes answer stop signals: DataLoader workers leave them to the process they feed until it
exits; the shard writer's encoding processes end on them."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import multiprocessing.util
import os
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# multiprocessing runs exit finalizers of priority >= 0 before it stops the daemonic children; highest first.
EXIT_MARK_PRIORITY = 100

_exit_mark: tuple[int, ctypes.c_bool] | None = None  # (pid, shared flag) of the process whose workers read it


def leave_stop_signals_to_parent() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` under which SIGTERM and SIGINT leave the worker running until its parent
    exits. Call it in the parent, before the workers start.

    Ctrl-C, ``scancel`` and ``pkill`` signal every process of the group; a worker that dies of the signal fails the
    step it feeds ("DataLoader worker ... is killed by signal: Terminated") before its training process can save a
    checkpoint. At exit, though, ``multiprocessing`` stops the workers with SIGTERM and waits for them, so a worker
    that ignored that one too would keep any script that exits holding a loader iterator from ever ending. The
    parent sets a shared flag first, from an exit finalizer of its own; the flag decides, not the sender, which no
    handler can learn. The flag is lock-free: a handler that waited on a lock could deadlock when signals nest.
    While the parent runs, the SIGTERM torch's loader sends a worker still busy 5 s after a shutdown is ignored as
    well; such a worker ends when PyTorch's watchdog sees the parent gone.
    """
    global _exit_mark
    if _exit_mark is None or _exit_mark[0] != os.getpid():  # a forked child inherits the mark, not its finalizer
        flag = multiprocessing.RawValue(ctypes.c_bool, False)
        multiprocessing.util.Finalize(None, _set_flag, args=(flag,), exitpriority=EXIT_MARK_PRIORITY)
        _exit_mark = (os.getpid(), flag)
    return functools.partial(_stay_unless_parent_exits, _exit_mark[1])


def _set_flag(flag: ctypes.c_bool) -> None:
    flag.value = True


def _stay_unless_parent_exits(parent_exiting: ctypes.c_bool, worker_id: int) -> None:
    handler = functools.partial(_on_stop_signal, parent_exiting)
    for stop in STOP_SIGNALS:
        signal.signal(stop, handler)


def _on_stop_signal(parent_exiting: ctypes.c_bool, signum: int, frame: FrameType | None) -> None:
    if parent_exiting.value:
        # End quietly (unflushed prints of the worker are lost): a worker dead of a signal makes torch's SIGCHLD
        # handler raise inside the parent's exit.
        os._exit(0)


def end_on_stop_signals() -> None:
    """``multiprocessing.Pool`` initializer: SIGTERM and SIGINT end the process again.

    A process forked while a run handles its signals (``pretrain.engine.signals``: a downstream task writing its
    shards on first use) inherits handlers that leave stopping to the run and do nothing in it; ``Pool.terminate``
    stops its workers with SIGTERM and would then wait for them forever.
    """
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)

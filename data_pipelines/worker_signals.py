"""How worker processes answer stop signals: DataLoader workers leave them to the process they feed until it
exits, and die with it when it is killed; the shard writer's encoding processes end on them."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# multiprocessing runs exit finalizers of priority >= 0 before it stops the daemonic children; highest first.
EXIT_MARK_PRIORITY = 100
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when the thread that forked it ends

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

    A parent that dies without exiting (SIGKILL, the OOM killer) runs no finalizer; on Linux the kernel then kills
    the workers (:func:`_die_with_parent`), which stop signals never do.
    """
    global _exit_mark
    if _exit_mark is None or _exit_mark[0] != os.getpid():  # a forked child inherits the mark, not its finalizer
        flag = multiprocessing.RawValue(ctypes.c_bool, False)
        multiprocessing.util.Finalize(None, _set_flag, args=(flag,), exitpriority=EXIT_MARK_PRIORITY)
        _exit_mark = (os.getpid(), flag)
    return functools.partial(_stay_unless_parent_exits, _exit_mark[1], os.getpid())


def _set_flag(flag: ctypes.c_bool) -> None:
    flag.value = True


def _stay_unless_parent_exits(parent_exiting: ctypes.c_bool, parent_pid: int, worker_id: int) -> None:
    _die_with_parent(parent_pid)
    handler = functools.partial(_on_stop_signal, parent_exiting)
    for stop in STOP_SIGNALS:
        signal.signal(stop, handler)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies, however it dies.

    Without it a worker whose parent was SIGKILLed lives on, holding memory and shared-memory batches, until
    PyTorch's watchdog, polled between waits for work, notices (about 20 s measured). The signal comes when the
    *thread* that forked the worker ends: a DataLoader forks its workers in the thread that iterates it, the main
    thread in our apps (Lightning's fit loop); a loader iterated from a short-lived thread would lose its workers
    with that thread. ``parent_pid`` is the process that built the loader, the workers' parent under the fork and
    spawn start methods; one that died before the request sent no signal, so the worker ends itself. Under
    ``forkserver`` the server is the parent, and the kernel cannot help: the worker ends only if its creator is
    already gone (PyTorch's watchdog later).
    """
    if not sys.platform.startswith("linux"):
        return
    if os.getppid() != parent_pid:
        creator = multiprocessing.parent_process()
        if creator is None or not creator.is_alive():
            os.kill(os.getpid(), signal.SIGKILL)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


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

"""How worker processes answer stop signals: DataLoader workers leave them to the process they feed until it
exits; the shard writer's encoding processes end on them."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.synchronize import Event
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_parent_exiting: Event | None = None  # set in this process at interpreter exit; DataLoader workers inherit it


def leave_stop_signals_to_parent() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` under which SIGTERM and SIGINT leave the worker running until its parent
    exits. Call it in the parent, before the workers start.

    Ctrl-C, ``scancel`` and ``pkill`` signal every process of the group; a worker that dies of the signal fails the
    step it feeds ("DataLoader worker ... is killed by signal: Terminated") before its training process can save a
    checkpoint. At interpreter exit, though, ``multiprocessing`` stops the workers with SIGTERM and waits for them,
    so a worker that ignored that one too would keep any script that exits holding a loader iterator from ever
    ending. The parent marks its exit before that (``atexit`` runs the hooks registered last first). The mark
    decides, not the sender: workers also run native threads that torch starts before any ``worker_init_fn``, and
    with their signals unblocked no thread of the worker can wait for a signal to learn who sent it.
    """
    global _parent_exiting
    if _parent_exiting is None:
        _parent_exiting = multiprocessing.Event()
        atexit.register(_parent_exiting.set)
    return _stay_unless_parent_exits


def _stay_unless_parent_exits(worker_id: int) -> None:
    for stop in STOP_SIGNALS:
        signal.signal(stop, _on_stop_signal)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _parent_exiting is not None and _parent_exiting.is_set():
        signal.signal(signum, signal.SIG_DFL)  # die of the signal, so the parent reads the honest cause
        os.kill(os.getpid(), signum)


def end_on_stop_signals() -> None:
    """``multiprocessing.Pool`` initializer: SIGTERM and SIGINT end the process again.

    A process forked while a run handles its signals (``pretrain.engine.signals``: a downstream task writing its
    shards on first use) inherits handlers that leave stopping to the run and do nothing in it; ``Pool.terminate``
    stops its workers with SIGTERM and would then wait for them forever.
    """
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)

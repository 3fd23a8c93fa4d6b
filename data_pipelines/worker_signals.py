"""How worker processes answer stop signals: DataLoader workers leave them to the process they feed, unless that
process sends them; the shard writer's encoding processes end on them."""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: SIGTERM and SIGINT end the worker only when its parent sends them.

    Ctrl-C, ``scancel`` and ``pkill`` signal every process of the group; a worker that dies of the signal fails the
    step it feeds ("DataLoader worker ... is killed by signal: Terminated") before its training process can save a
    checkpoint. Its parent, though, stops it with SIGTERM in earnest: ``multiprocessing`` does so at interpreter
    exit, then waits for it, so a worker that ignored its parent too would keep any script that exits holding a
    loader iterator from ever ending. The sender is known only to ``sigwaitinfo``, so the signals are blocked and a
    thread waits for them. Workers also end with their parent (PyTorch's watchdog) or when the loader shuts them
    down.
    """
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)  # not a handler inherited from the training process
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started later inherit the mask
    threading.Thread(target=_end_on_parents_stop, args=(os.getppid(),), name="stop-signals", daemon=True).start()


def _end_on_parents_stop(parent: int) -> None:
    while True:
        received = signal.sigwaitinfo(STOP_SIGNALS)
        if received.si_pid == parent:
            # Die of the signal itself (default action), so the parent reads the honest cause.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {received.si_signo})
            signal.pthread_kill(threading.get_ident(), received.si_signo)


def end_on_stop_signals() -> None:
    """``multiprocessing.Pool`` initializer: SIGTERM and SIGINT end the process again.

    A process forked while a run handles its signals (``pretrain.engine.signals``: a downstream task writing its
    shards on first use) inherits handlers that leave stopping to the run and do nothing in it; ``Pool.terminate``
    stops its workers with SIGTERM and would then wait for them forever.
    """
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)

"""How worker processes answer stop signals: DataLoader workers leave them to the process they feed; the shard
writer's encoding processes end on them."""

from __future__ import annotations

import signal


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: ignore SIGTERM and SIGINT.

    Ctrl-C, ``scancel`` and ``pkill`` signal every process of the group; a worker that dies of the signal fails the
    step it feeds ("DataLoader worker ... is killed by signal: Terminated") before its training process can save a
    checkpoint. Workers still end with their parent (PyTorch's watchdog) or when the loader shuts them down.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def end_on_stop_signals() -> None:
    """``multiprocessing.Pool`` initializer: SIGTERM and SIGINT end the process again.

    A process forked while a run handles its signals (``pretrain.engine.signals``: a downstream task writing its
    shards on first use) inherits handlers that leave stopping to the run and do nothing in it; ``Pool.terminate``
    stops its workers with SIGTERM and would then wait for them forever.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

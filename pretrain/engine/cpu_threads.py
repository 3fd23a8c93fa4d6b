"""Compute threads on CPU: the cores the data loader does not use, measured during the run.

Leaving a core per loader worker (the old rule) ran ViT-Ti/4 at 32 px at 0.57x of a bare loop on 2 cores: a worker
decoding 32 px PNGs uses about 5% of a core. Taking every core while the workers need whole ones oversubscribes
them (OpenMP threads spin: 10x slower). So compute starts with every core of its process and, after a few steps,
gives back the cores the workers were measured to use.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import Callback

from pretrain.engine.step_metrics import StepEnds

log = logging.getLogger(__name__)


def cores_per_process(devices: int) -> int:
    """This machine's cores shared out over the ``devices`` training processes on it."""
    return max(1, (os.cpu_count() or 1) // devices)


def set_cpu_threads(trainer: Mapping[str, Any], devices: int) -> None:
    """On CPU: ``trainer.cpu_threads``, else every core of this process (:class:`LoaderAwareThreads` gives back
    what the loader uses)."""
    if trainer["accelerator"] != "cpu":
        return
    threads = trainer["cpu_threads"] or cores_per_process(devices)
    torch.set_num_threads(threads)
    log.info("using %d CPU thread(s) for compute", threads)


def threads_beside_loader(cores: int, loader_cores: float) -> int:
    """Compute threads once the loader's workers were measured at ``loader_cores`` cores: the rest, rounded to the
    nearest core (a worker at 5% of a core leaves compute all of them), at least one."""
    return max(1, cores - round(loader_cores))


def helper_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each process this one started to help it (loader workers, a logger's service), by pid.

    Other training ranks that Lightning's launcher started as children carry their own ``LOCAL_RANK`` and are
    left out: they have cores of their own.
    """
    rank = os.environ.get("LOCAL_RANK")
    seconds = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.environ().get("LOCAL_RANK") != rank:
                continue
            times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[child.pid] = times.user + times.system
    return seconds


class LoaderAwareThreads(Callback):
    """Measures the CPU time of this process's helpers (its loader workers) over ``probe_steps`` optimizer steps,
    from the second step of this fit on (the first starts the workers), and sets the compute threads to the cores
    they leave."""

    def __init__(self, cores: int, probe_steps: int) -> None:
        self.cores = cores
        self.probe_steps = probe_steps
        self.loader_cores: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_ends = StepEnds()
        self._step_ends.start(trainer)
        self._steps = 0
        self._start: tuple[float, dict[int, float]] | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.loader_cores is not None or not self._step_ends(trainer):
            return
        self._steps += 1
        if self._steps == 1:
            self._start = (time.perf_counter(), helper_cpu_seconds())
        elif self._start is not None and self._steps == 1 + self.probe_steps:
            started, before = self._start
            # Workers started in between (a new epoch's) count from zero; those that ended are lost.
            used = sum(seconds - before.get(pid, 0.0) for pid, seconds in helper_cpu_seconds().items())
            self.loader_cores = used / (time.perf_counter() - started)
            threads = threads_beside_loader(self.cores, self.loader_cores)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            log.info(
                "loader workers used %.2f core(s) over %d steps: %d CPU thread(s) for compute",
                self.loader_cores,
                self.probe_steps,
                threads,
            )

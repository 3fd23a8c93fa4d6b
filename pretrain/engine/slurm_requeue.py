"""Checkpoint-and-requeue on SLURM's warning signal, at a step boundary that every rank agrees on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from pretrain.engine.checkpoints import checkpoint_path

log = logging.getLogger(__name__)


class SlurmRequeue(Callback):
    """On SLURM's warning signal: checkpoint and requeue the job, at a step boundary all ranks agree on.

    Replaces Lightning's ``SLURMEnvironment(auto_requeue=True)``, which checkpoints inside the signal handler: its
    barrier runs wherever the signal lands and deadlocks against DDP's own collectives, and SLURM signals every
    process of the step, so forked DataLoader workers run it too (stale checkpoints, more requeues). Here the
    handler only sets a flag, in the process that installed it; after the next optimizer step the ranks learn
    whether any of them got the signal, save one checkpoint together and stop, and rank 0 requeues the job.
    ``resume=auto`` then picks that checkpoint, ``checkpoint_dir/step_N.ckpt``: it is the newest. ModelCheckpoint
    does not track it, so its rotation (``keep_checkpoints``) leaves it in place.
    """

    def __init__(self, checkpoint_dir: Path, signum: int = signal.SIGUSR1) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.signum = signum
        self.requeued = False
        self._requested = False
        self._pid = os.getpid()
        self._previous_handler: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pid = os.getpid()
        self._previous_handler = signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() == self._pid:  # forked DataLoader workers inherit this handler and get the signal too
            self._requested = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # between two optimizer steps
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):  # one collective per step
            return
        trainer.save_checkpoint(checkpoint_path(self.checkpoint_dir, trainer.global_step))
        self.requeued = True
        trainer.should_stop = True
        if trainer.is_global_zero:
            job_id = os.environ["SLURM_JOB_ID"]
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
            if result.returncode == 0:
                log.info(
                    "signal %d: checkpointed step %d, requeued SLURM job %s", self.signum, trainer.global_step, job_id
                )
            else:
                log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

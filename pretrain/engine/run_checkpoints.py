"""The checkpoints one run writes: periodic, on a stop signal and at the end, all through :meth:`RunCheckpoints.save`.

One name per step (``step_N.ckpt``: no ``-v1`` twins), the ``keep`` newest of the directory kept whichever run wrote
them, and the path of the newest checkpoint this process wrote, which is what the export reads: it is never looked
up again by name. Lightning's ``ModelCheckpoint`` is not used: it versions colliding names and rotates only the files
it saved itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from pretrain.engine.checkpoints import checkpoint_path, rotate_checkpoints
from pretrain.engine.step_metrics import StepEnds

log = logging.getLogger(__name__)


class RunCheckpoints(Callback):
    """Saves ``directory/step_N.ckpt`` every ``every_n_steps`` optimizer steps and whenever :meth:`save` is called,
    keeping the ``keep`` newest checkpoints of ``directory`` (-1: all)."""

    def __init__(self, directory: Path, every_n_steps: int, keep: int) -> None:
        self.directory = directory
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.latest: Path | None = None  # the newest checkpoint this process saved, or the one it resumed from
        self.latest_step: int | None = None
        self._step_ends = StepEnds()

    def resumed_from(self, path: Path, step: int) -> None:
        """The checkpoint the fit starts from: at that step it is the checkpoint, not rewritten in place (a rerun of
        a finished run exports it as it is)."""
        self.latest, self.latest_step = path, step

    def save(self, trainer: L.Trainer) -> Path:
        """The checkpoint of ``trainer``'s current step, written unless this process already wrote it or resumed
        from it (every rank calls this together: DeepSpeed writes one partition per rank)."""
        if self.latest_step != trainer.global_step:
            path = checkpoint_path(self.directory, trainer.global_step)
            trainer.save_checkpoint(path, weights_only=False)  # the whole training state; saying so is quiet
            self.latest, self.latest_step = path, trainer.global_step
            if trainer.is_global_zero:
                for removed in rotate_checkpoints(self.directory, self.keep, protected=path):
                    log.debug("removed %s (trainer.keep_checkpoints=%d)", removed, self.keep)
        assert self.latest is not None
        return self.latest

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_ends.start(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_ends(trainer) and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)


def run_checkpoints(trainer: L.Trainer) -> RunCheckpoints:
    """The :class:`RunCheckpoints` of a trainer built by :func:`~pretrain.engine.trainer.build_trainer`."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunCheckpoints):
            return callback
    raise LookupError("this Trainer has no RunCheckpoints callback: build it with pretrain.engine.trainer")

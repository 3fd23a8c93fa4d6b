"""A checkpoint's training-loop progress, re-expressed for the data layout of the run that resumes it.

Lightning restores how many micro-batches of the current epoch a checkpoint had consumed and counts accumulation
boundaries and the epoch's end from it. Those counts are in the saving run's micro-batches: a run resumed with
another accumulation (another number of processes, the same global batch) must count in its own, or it steps
after the wrong micro-batches. This module is the one place that touches Lightning's loop state, through its
checkpoint format (``checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]``), from a public hook.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from pretrain.engine.plan import RunPlan

log = logging.getLogger(__name__)
BATCH_PROGRESS = ("fit_loop", "epoch_loop.batch_progress")


def rebase_batch_progress(checkpoint: dict[str, Any], consumed_in_epoch: int, consumed_total: int) -> None:
    """Set the micro-batches the checkpoint counts as consumed (this epoch, and in all) to the resuming run's,
    keeping Lightning's own offsets between its ready/started/processed/completed counters."""
    loops = checkpoint.get("loops")
    if not loops:
        return
    progress = loops[BATCH_PROGRESS[0]][BATCH_PROGRESS[1]]
    for scope, consumed in (("current", consumed_in_epoch), ("total", consumed_total)):
        counters = progress[scope]
        shift = consumed - counters["ready"]
        for name in counters:
            counters[name] += shift


class LayoutChange(Callback):
    """Saves the run's layout in its checkpoints; resuming one of another layout rebases the loop progress."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan

    def state_dict(self) -> dict[str, Any]:
        return {"world_size": self.plan.world_size, "accumulate": self.plan.accumulate}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("callbacks", {}).get(self.state_key)
        if saved is None or saved == self.state_dict():
            return
        step = int(checkpoint["global_step"])
        _, skip = self.plan.resume_position(step)
        rebase_batch_progress(checkpoint, skip, step * self.plan.accumulate)
        log.info(
            "resuming step %d of a run of %d processes x %d accumulation on %d x %d (global batch %d)",
            step,
            saved["world_size"],
            saved["accumulate"],
            self.plan.world_size,
            self.plan.accumulate,
            self.plan.global_batch,
        )

"""What a run prints: a progress bar that knows the run's length, and none of Lightning's messages that are untrue
of, or useless for, this pipeline's runs (each is listed below with the reason)."""

from __future__ import annotations

import logging
import math
import warnings

from lightning.pytorch.callbacks import RichProgressBar

from pretrain.engine.plan import RunPlan

# Messages of Lightning's that do not hold for these runs, with why.
UNTRUE_WARNINGS = {
    # The fine-tune module's on_before_batch_transfer (mixup, cutmix) is the one meant to run; its data module has
    # none, so there is nothing to choose between.
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
    # Frozen backbones (the MAE linear probe's) are in eval mode on purpose: no drop path, fixed statistics.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # Lightning's own tree utilities against torch's newer API: nothing a user of the pipeline can act on.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
}
UNTRUE_INFO = (
    "💡 Tip: For seamless cloud logging",  # an advertisement, printed by every Trainer
    "`weights_only` was not set",  # our checkpoints hold the whole training state (optimizer, loops) on purpose
)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropUntrueInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(UNTRUE_INFO)


_DROP_UNTRUE_INFO = _DropUntrueInfo()


def quiet_lightning() -> None:
    """Leave Lightning's untrue messages out of the run's output (idempotent)."""
    for pattern in UNTRUE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_UNTRUE_INFO not in logger.filters:
            logger.addFilter(_DROP_UNTRUE_INFO)


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the epoch counted against the run's epochs ("Epoch 3/30").

    The Trainer runs with ``max_epochs=-1`` (the plan's ``max_steps`` ends the run), which Lightning's own bar shows
    as ``Epoch 29/-2``.
    """

    def __init__(self, plan: RunPlan) -> None:
        super().__init__()
        steps_per_epoch = math.ceil(plan.batches_per_epoch / plan.accumulate)
        self.epochs = max(1, math.ceil(plan.total_steps / steps_per_epoch)) if steps_per_epoch else 1

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's label
        return f"Epoch {current_epoch + 1}/{self.epochs}"

"""What a run prints: a progress bar that knows the run's length, and none of Lightning's messages that are untrue
of, or useless for, this pipeline's runs (each is listed below with the reason)."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator

from lightning.pytorch.callbacks import RichProgressBar

from pretrain.engine.plan import RunPlan

# Lightning's messages that do not hold for these runs or that no user of the pipeline can act on, with why.
SUPPRESSED_WARNINGS = {
    # The fine-tune module's on_before_batch_transfer (mixup, cutmix) is the one meant to run; its data module has
    # none, so there is nothing to choose between.
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
    # Lightning's own tree utilities against torch's newer API: nothing a user of the pipeline can act on.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
}
SUPPRESSED_INFO = (
    "💡 Tip: For seamless cloud logging",  # an advertisement, printed by every Trainer
    "`weights_only` was not set",  # our checkpoints hold the whole training state (optimizer, loops) on purpose
)
# Lightning's warning when a fit starts with modules in eval mode: expected of modules with a frozen part.
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropSuppressedInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SUPPRESSED_INFO)


_DROP_SUPPRESSED_INFO = _DropSuppressedInfo()


def quiet_lightning() -> None:
    """Leave those messages of Lightning's out of the run's output (idempotent)."""
    for pattern in SUPPRESSED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_SUPPRESSED_INFO not in logger.filters:
            logger.addFilter(_DROP_SUPPRESSED_INFO)


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the epoch counted against the run's epochs ("Epoch 3/30").

    The Trainer runs with ``max_epochs=-1`` (the plan's ``max_steps`` ends the run), which Lightning's own bar shows
    as ``Epoch 29/-2``.
    """

    def __init__(self, plan: RunPlan) -> None:
        super().__init__()
        steps_per_epoch = plan.steps_per_epoch
        self.epochs = max(1, math.ceil(plan.total_steps / steps_per_epoch)) if steps_per_epoch else 1

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's label
        return f"Epoch {current_epoch + 1}/{self.epochs}"


@contextlib.contextmanager
def frozen_parts_expected() -> Iterator[None]:
    """A fit of a module that keeps a part in eval mode on purpose (the MAE linear probe's frozen backbone: no
    drop path, fixed statistics), without Lightning's warning about it; other modules still get the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
        yield

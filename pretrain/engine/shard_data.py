"""Lightning data module over the shard stream of :mod:`data_pipelines`.

Epochs have a fixed number of batches per rank (resampled shards), so every rank steps in lockstep and a resumed
run knows from the global step alone which epoch it is in and how many batches of it were already consumed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L

from data_pipelines.stream import StreamConfig, build_loader
from pretrain.engine.plan import RunPlan
from pretrain.engine.positioned_loader import StepPositionedLoader


class ShardDataModule(L.LightningDataModule):
    """Builds this rank's loader for the current epoch, skipping what a resumed run already consumed."""

    def __init__(self, stream: StreamConfig, plan: RunPlan) -> None:
        super().__init__()
        if not stream.batches_per_epoch:
            raise ValueError("the pretraining stream needs batches_per_epoch (a fixed epoch length per rank)")
        if stream.batches_per_epoch % plan.accumulate:
            raise ValueError(
                f"data.batches_per_epoch={stream.batches_per_epoch} is not a multiple of "
                f"trainer.accumulate_grad_batches={plan.accumulate}: an epoch would end mid-accumulation"
            )
        self.stream = stream
        self.plan = plan

    def train_dataloader(self) -> Any:
        trainer = self.trainer
        epoch, skip = self.plan.resume_position(trainer.global_step)
        config = replace(
            self.stream,
            epoch=epoch,
            skip_batches=skip,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return StepPositionedLoader(build_loader(config), self.plan.data_layout(self.stream.seed))

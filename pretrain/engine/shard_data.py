"""Lightning data module over the shard stream of :mod:`data_pipelines`.

Epochs have a fixed number of batches per rank (resampled shards), so every rank steps in lockstep and a resumed
run knows from the global step alone which epoch it is in and how many batches of it were already consumed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L

from data_pipelines.stream import StreamConfig, build_loader


def resume_position(global_step: int, accumulate_grad_batches: int, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches already consumed in it)`` after ``global_step`` optimizer steps."""
    consumed = global_step * accumulate_grad_batches
    return consumed // batches_per_epoch, consumed % batches_per_epoch


class ShardDataModule(L.LightningDataModule):
    """Builds this rank's loader for the current epoch, skipping what a resumed run already consumed."""

    def __init__(self, stream: StreamConfig, accumulate_grad_batches: int = 1) -> None:
        super().__init__()
        if not stream.batches_per_epoch:
            raise ValueError("the pretraining stream needs batches_per_epoch (a fixed epoch length per rank)")
        if stream.batches_per_epoch % accumulate_grad_batches:
            raise ValueError(
                f"data.batches_per_epoch={stream.batches_per_epoch} is not a multiple of "
                f"trainer.accumulate_grad_batches={accumulate_grad_batches}: an epoch would end mid-accumulation"
            )
        self.stream = stream
        self.accumulate_grad_batches = accumulate_grad_batches

    def train_dataloader(self) -> Any:
        trainer = self.trainer
        epoch, skip = resume_position(trainer.global_step, self.accumulate_grad_batches, self.stream.batches_per_epoch)
        config = replace(
            self.stream,
            epoch=epoch,
            skip_batches=skip,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return build_loader(config)

"""Lightning data module over the shard streams of :mod:`data_pipelines`.

Epochs have a fixed number of batches per rank, so every rank steps in lockstep and a resumed run knows from the
global step alone which epoch it is in and how many batches of it were already consumed. Two orders: resampled
shards (:mod:`data_pipelines.stream`), or the elastic order (:mod:`data_pipelines.elastic`), whose epochs read
every sample once in the same order on any number of processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import lightning as L
import torch

from data_pipelines.device_decode import is_handover
from data_pipelines.elastic import build_elastic_loader
from data_pipelines.registry import check_name
from data_pipelines.stream import StreamConfig, build_loader, device_decoder
from data_pipelines.transforms import Normalize
from pretrain.engine.plan import RunPlan
from pretrain.engine.positioned_loader import StepPositionedLoader

ORDERS = ("resampled", "elastic")
log = logging.getLogger(__name__)


class ShardDataModule(L.LightningDataModule):
    """Builds this rank's loader for the current epoch, skipping what a resumed run already consumed.

    Workers hand over uint8 images (or, with ``decode_on_device``, encoded JPEGs) and the batch is normalized on
    the training device: 4x fewer bytes through shared memory and to the GPU, and no float pass on the loader's
    CPU (bench/loader.py measures both).
    """

    def __init__(self, stream: StreamConfig, plan: RunPlan, order: str, shuffle_shards: int) -> None:
        """``order``: one of :data:`ORDERS`; ``shuffle_shards``: the elastic order's shuffle block, in shards."""
        super().__init__()
        check_name(order, ORDERS, "data.order")
        if not stream.batches_per_epoch:
            raise ValueError("the pretraining stream needs batches_per_epoch (a fixed epoch length per rank)")
        if stream.batches_per_epoch % plan.accumulate:
            raise ValueError(
                f"data.batches_per_epoch={stream.batches_per_epoch} is not a multiple of "
                f"trainer.accumulate_grad_batches={plan.accumulate}: an epoch would end mid-accumulation"
            )
        self.stream = replace(stream, normalize=False)
        self.normalize = Normalize(stream.mean, stream.std)
        self.plan = plan
        self.order, self.shuffle_shards = order, shuffle_shards
        self.device_decoder = device_decoder(stream) if stream.decode_on_device else None

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
        elastic = self.order == "elastic"
        loader: Iterable[Any] = (
            build_elastic_loader(config, self.plan.accumulate, self.shuffle_shards) if elastic else build_loader(config)
        )
        layout = self.plan.data_layout(self.stream.seed, elastic)
        if self.device_decoder is not None and trainer.strategy.root_device.type != "cuda":
            log.warning("data.decode=gpu without a GPU: the training process decodes the JPEGs on the CPU")
        return StepPositionedLoader(loader, layout, self.plan.batches_per_epoch)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """The batch on ``device``, normalized there; JPEGs the workers left encoded (data.decode=gpu) are decoded
        there first."""
        if self.device_decoder is not None and is_handover(batch):
            batch = self.device_decoder(batch, device)
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        batch["image"] = self.normalize(batch["image"])
        return batch

"""Frozen features of a split, computed once: what the selecting linear probe and k-NN work on.

One pass of the backbone over a split (eval transform, every image once over all ranks) gives several feature
sets at once (DINOv2's linear evaluation: the CLS token, the average of the patch tokens, both, and the CLS tokens
of the last blocks), gathered from every rank into one :class:`FeatureTable` on the CPU. :func:`feature_tables` is
the pass of the feature modes (``linear``, ``knn``) over the splits they need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed
from torch import Tensor

from data_pipelines.holdout import HoldOut
from data_pipelines.registry import check_name
from finetune.data import TaskDataModule, TaskSplit, loader_specs
from finetune.modes.common import Batch, DownstreamContext, downstream_plan, normalization
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.trainer import build_trainer
from pretrain.models.vit import VisionTransformer

LAST_BLOCKS = 4  # last4_cls: the CLS tokens of the last four blocks, concatenated (DINOv2's n_last_blocks=4)

# Each feature set from the outputs of the last blocks ([B, 1 + L, D] each, the final one last).
FEATURE_SETS: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "cls": lambda blocks: blocks[-1][:, 0],
    "avg": lambda blocks: blocks[-1][:, 1:].mean(dim=1),
    "cls_avg": lambda blocks: torch.cat([blocks[-1][:, 0], blocks[-1][:, 1:].mean(dim=1)], dim=1),
    "last4_cls": lambda blocks: torch.cat([tokens[:, 0] for tokens in blocks[-LAST_BLOCKS:]], dim=1),
}


@dataclass
class FeatureTable:
    """Feature sets (name -> ``[N, D]``), labels ``[N]`` and sample keys of one split, on the CPU."""

    features: dict[str, Tensor]
    labels: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, keep: Tensor) -> FeatureTable:
        """The rows where the boolean mask ``keep`` is true."""
        kept_keys = [key for key, kept in zip(self.keys, keep.tolist(), strict=True) if kept]
        return FeatureTable(
            {name: values[keep] for name, values in self.features.items()}, self.labels[keep], kept_keys
        )

    def sorted_by_key(self) -> FeatureTable:
        """The rows in key order: the same table whatever the number of ranks and workers that computed it."""
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        index = torch.tensor(order, dtype=torch.long)
        return FeatureTable(
            {name: values[index] for name, values in self.features.items()},
            self.labels[index],
            [self.keys[position] for position in order],
        )

    def held_out(self, holdout: HoldOut) -> FeatureTable:
        """The rows on ``holdout.side``, by sample key (the same images a hold-out of the split itself reads)."""
        selection = holdout.select(self.keys)
        return self.rows(torch.tensor([selection.keeps(key) for key in self.keys], dtype=torch.bool))


class FeatureExtractor(L.LightningModule):
    """``predict_step``: the frozen backbone's feature sets of a batch, with its labels and keys, on the CPU."""

    def __init__(self, backbone: VisionTransformer, names: Sequence[str]) -> None:
        super().__init__()
        for name in names:
            check_name(name, FEATURE_SETS, "feature set")
        self.model = backbone.requires_grad_(False).eval()
        self.names = list(names)
        self.last = min(LAST_BLOCKS, len(backbone.blocks)) if "last4_cls" in names else 1

    @torch.no_grad()
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        blocks = self.model.forward_intermediates(batch["image"], self.last)
        features = {name: FEATURE_SETS[name](blocks).float().cpu() for name in self.names}
        return {"features": features, "label": batch["label"].cpu(), "key": list(batch["key"])}


def extract_features(trainer: L.Trainer, extractor: FeatureExtractor, loader: Any) -> FeatureTable:
    """Every image of ``loader`` (each rank reads its share) through ``extractor``, gathered on every rank."""
    batches = trainer.predict(extractor, dataloaders=loader)
    local = FeatureTable(
        {name: torch.cat([batch["features"][name] for batch in batches]) for name in extractor.names},
        torch.cat([batch["label"] for batch in batches]),
        [key for batch in batches for key in batch["key"]],
    )
    if trainer.world_size == 1:
        return local.sorted_by_key()
    device = trainer.strategy.root_device
    keys: list[list[str]] = [[] for _ in range(trainer.world_size)]
    torch.distributed.all_gather_object(keys, local.keys)
    gathered = FeatureTable(
        {name: gather_rows(trainer, values.to(device)).cpu() for name, values in local.features.items()},
        gather_rows(trainer, local.labels.to(device)).cpu(),
        [key for rank_keys in keys for key in rank_keys],
    )
    return gathered.sorted_by_key()


def gather_rows(trainer: L.Trainer, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` concatenated in rank order (ranks may hold different counts): pad, gather, trim.

    ``rows`` must live on the strategy's device (NCCL gathers GPU tensors only).
    """
    counts = trainer.strategy.all_gather(torch.tensor(rows.shape[0], device=rows.device)).view(-1)
    padded = rows.new_zeros((int(counts.max()), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = trainer.strategy.all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts.tolist(), strict=True)])


def feature_tables(
    context: DownstreamContext, names: list[str], splits: Mapping[str, TaskSplit]
) -> tuple[dict[str, FeatureTable], L.Trainer, BackboneMeta, int, float]:
    """Frozen features of each split, and the Trainer, metadata, image size and images per second of the pass."""
    config, task = context.config, context.task
    backbone, meta = context.load_backbone()
    image_size = backbone.patch_embed.img_size
    eval_spec, _ = loader_specs(config, task.eval_crop_fraction, image_size, *normalization(config, meta, task.train))
    plan = downstream_plan(config, config["mode"], task.train, trains=False)
    trainer = build_trainer(
        config["trainer"],
        config["logger"],
        context.run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["label"].shape[0],
    )
    extractor = FeatureExtractor(backbone, names)
    started, tables = time.perf_counter(), {}
    for name, split in splits.items():
        tables[name] = extract_features(trainer, extractor, TaskDataModule(split, split, None, eval_spec))
    images_per_s = round(sum(len(table) for table in tables.values()) / (time.perf_counter() - started), 2)
    return tables, trainer, meta, image_size, images_per_s

"""k-NN evaluation: no training; cosine k-NN over the training images' frozen features, weighted votes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.modes.common import Batch, DownstreamRun, TopKAccuracy, frozen, pooled_features
from pretrain.models.vit import VisionTransformer


def knn_scores(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """Weighted k-NN votes. ``queries: [Q, D]``, ``bank: [N, D]`` (both L2-normalized), ``bank_labels: [N]``
    -> ``[Q, num_classes]``: the k most similar bank entries vote for their label with ``exp(cos / temperature)``."""
    similarity, index = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=queries.dtype)
    return votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())


class KnnModule(L.LightningModule):
    """Test dataloader 0 fills the bank with training features, dataloader 1 holds the test images."""

    QUERY_CHUNK = 1024  # test images scored at a time: bounds the [chunk, bank] similarity matrix

    def __init__(self, backbone: VisionTransformer, num_classes: int, pool: str, k: int, temperature: float) -> None:
        super().__init__()
        self.model = frozen(backbone, pool)
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.accuracy = TopKAccuracy(num_classes)
        self.stored: dict[int, tuple[list[Tensor], list[Tensor]]] = {}

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(pooled_features(self.model, images).float(), dim=-1)

    def on_test_epoch_start(self) -> None:
        self.stored = {0: ([], []), 1: ([], [])}

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        features, labels = self.stored[dataloader_idx]
        features.append(self(batch["image"]))
        labels.append(batch["label"])

    def on_test_epoch_end(self) -> None:
        (bank, bank_labels), (queries, labels) = (
            (torch.cat(features), torch.cat(labels)) for features, labels in self.stored.values()
        )
        bank, bank_labels = gather_rows(self, bank), gather_rows(self, bank_labels)
        for start in range(0, queries.shape[0], self.QUERY_CHUNK):
            chunk = slice(start, start + self.QUERY_CHUNK)
            scores = knn_scores(queries[chunk], bank, bank_labels, self.k, self.temperature, self.num_classes)
            self.accuracy.update(scores, labels[chunk])
        self.stored = {}
        self.log_dict(self.accuracy.compute_and_reset())


def gather_rows(module: L.LightningModule, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` concatenated (ranks may hold different counts): pad to the longest, gather, trim."""
    if module.trainer.world_size == 1:
        return rows
    counts = module.all_gather(torch.tensor(rows.shape[0], device=rows.device)).view(-1)
    padded = rows.new_zeros((int(counts.max()), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = module.all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts.tolist(), strict=True)])


def build_knn(backbone: VisionTransformer, mode: Mapping[str, Any], run: DownstreamRun) -> KnnModule:
    return KnnModule(backbone, run.num_classes, mode["pool"], mode["k"], mode["temperature"])

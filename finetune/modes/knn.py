"""k-NN evaluation (Wu et al., 2018; the DINO protocol): no training; cosine k-NN over the training images'
frozen features, the k nearest voting for their label with weights exp(similarity / temperature).

``run_knn``: the mode (one frozen pass over the training and test images, then the vote).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.modes.common import DownstreamContext, ModeOutcome, topk_accuracy
from finetune.modes.features import FeatureTable, feature_tables

QUERY_CHUNK = 1024  # test images scored at a time: bounds the [chunk, bank] similarity matrix


def knn_scores(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """Weighted k-NN votes. ``queries: [Q, D]``, ``bank: [N, D]`` (both L2-normalized), ``bank_labels: [N]``
    -> ``[Q, num_classes]``: the k most similar bank entries vote for their label with ``exp(cos / temperature)``."""
    similarity, index = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=queries.dtype)
    return votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())


def knn_accuracy(
    bank: FeatureTable,
    queries: FeatureTable,
    feature: str,
    k: int,
    temperature: float,
    num_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """Top-1 (and top-5 with more than 5 classes) in percent of the ``queries`` against the labelled ``bank``,
    computed on ``device``."""
    bank_rows = F.normalize(bank.features[feature].to(device), dim=-1)
    bank_labels = bank.labels.to(device)
    query_rows = F.normalize(queries.features[feature].to(device), dim=-1)
    scores = torch.cat(
        [
            knn_scores(query_rows[start : start + QUERY_CHUNK], bank_rows, bank_labels, k, temperature, num_classes)
            for start in range(0, len(queries), QUERY_CHUNK)
        ]
    )
    return topk_accuracy(scores, queries.labels.to(device))


def run_knn(context: DownstreamContext) -> ModeOutcome:
    """k-NN of the test images among the training images' frozen features."""
    mode, task = context.config["mode"], context.task
    tables, trainer, meta, image_size, speed = feature_tables(
        context, [mode["feature"]], {"train": task.train, "test": task.test}
    )
    metrics = knn_accuracy(
        tables["train"],
        tables["test"],
        mode["feature"],
        mode["k"],
        mode["temperature"],
        task.num_classes,
        trainer.strategy.root_device,
    )
    return ModeOutcome(metrics, trainer, image_size, meta, speed)

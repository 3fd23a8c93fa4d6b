"""k-NN evaluation (Wu et al., 2018; the DINO protocol): no training; cosine k-NN over the training images'
frozen features, the k nearest voting for their label with weights exp(similarity / temperature)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.modes.features import FeatureTable

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
    bank: FeatureTable, queries: FeatureTable, feature: str, k: int, temperature: float, num_classes: int
) -> dict[str, float]:
    """Top-1 (and top-5 with more than 5 classes) in percent of the ``queries`` against the labelled ``bank``."""
    bank_rows = F.normalize(bank.features[feature], dim=-1)
    query_rows = F.normalize(queries.features[feature], dim=-1)
    top = min(5, num_classes)
    hits = torch.zeros(top, dtype=torch.long)
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = slice(start, start + QUERY_CHUNK)
        scores = knn_scores(query_rows[chunk], bank_rows, bank.labels, k, temperature, num_classes)
        ranked = scores.topk(top, dim=1).indices
        correct = ranked == queries.labels[chunk, None]
        hits += correct.cumsum(dim=1).clamp(max=1).sum(dim=0)
    metrics = {"top1": round(100 * hits[0].item() / len(queries), 4)}
    if num_classes > 5:
        metrics["top5"] = round(100 * hits[4].item() / len(queries), 4)
    return metrics

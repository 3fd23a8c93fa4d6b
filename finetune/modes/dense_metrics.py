"""Semantic-segmentation scores from a confusion matrix: mIoU, pixel accuracy and per-class IoU, as MMSegmentation
and the ADE20K/VOC benchmarks count them.

Pixels labelled ``ignore_index`` (VOC's 255 borders, ADE20K's "other" after reducing its zero label) count nowhere.
A class that appears neither in the labels nor in the predictions has no IoU (NaN) and is left out of the mean;
a class in the labels that is never predicted has IoU 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``[K, K]`` int64 counts of pixels, rows the label, columns the prediction (any matching shapes)."""
    kept = labels != ignore_index
    if kept.any() and (labels[kept].min() < 0 or labels[kept].max() >= num_classes):
        raise ValueError(f"labels outside 0-{num_classes - 1} (besides the ignore index {ignore_index})")
    pairs = labels[kept].long() * num_classes + predictions[kept].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, float | list[float | None]]:
    """``miou`` and ``pixel_accuracy`` in percent, and ``per_class_iou`` (percent, None for absent classes)."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
    iou = torch.where(union > 0, hits / union.clamp_min(1), torch.nan)
    present = ~iou.isnan()
    mean = 100 * iou[present].mean().item() if present.any() else math.nan
    return {
        "miou": round(mean, 4),
        "pixel_accuracy": round(100 * (hits.sum() / confusion.sum().clamp_min(1)).item(), 4),
        "per_class_iou": [round(100 * value, 4) if not math.isnan(value) else None for value in iou.tolist()],
    }

"""What the downstream modes share: the run they are built for, frozen features, top-k accuracy over ranks, and
the classifier test loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan
from pretrain.models.vit import VisionTransformer

Batch = dict[str, Any]


@dataclass(frozen=True)
class DownstreamRun:
    """What a mode needs from the run besides its own config: classes, plan, provenance."""

    num_classes: int
    plan: RunPlan
    seed: int
    meta: BackboneMeta  # the pretrained backbone's metadata, carried on into fine-tuned checkpoints
    max_bad_steps: int


def reported_ks(num_classes: int) -> tuple[int, ...]:
    """Top-1, and top-5 when there are more than 5 classes."""
    return (1, 5) if num_classes > 5 else (1,)


class TopKAccuracy(nn.Module):
    """Top-1 and (more than 5 classes) top-5 accuracy in percent, synchronized over ranks when computed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(
            {f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro") for k in reported_ks(num_classes)}
        )

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """``scores: [N, C]`` (logits or votes), ``labels: [N]``."""
        for metric in self.metrics.values():
            metric.update(scores, labels)

    def compute_and_reset(self) -> dict[str, Tensor]:
        values = {f"test/{name}": 100 * metric.compute() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        return values


@torch.no_grad()
def topk_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 (and, with more than 5 classes, top-5) accuracy in percent of ``scores: [N, C]`` against ``labels``,
    on one process (the feature modes score gathered tables)."""
    num_classes = scores.shape[1]
    return {
        f"top{k}": round(100 * multiclass_accuracy(scores, labels, num_classes, top_k=k, average="micro").item(), 4)
        for k in reported_ks(num_classes)
    }


class ClassifierTest:
    """Test loop of the modes with a classifier head: accuracy of ``self(images)`` on the test images."""

    accuracy: TopKAccuracy

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.accuracy.update(self(batch["image"]), batch["label"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.accuracy.compute_and_reset())


def pooled_features(backbone: VisionTransformer, images: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, D]``: the backbone's pooled tokens (CLS or patch average), without gradients."""
    with torch.no_grad():
        return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def frozen(backbone: VisionTransformer, pool: str) -> VisionTransformer:
    """The backbone without head, pooling ``pool``, in eval mode and excluded from optimization."""
    backbone.reset_classifier(0, global_pool=pool)
    return backbone.requires_grad_(False).eval()

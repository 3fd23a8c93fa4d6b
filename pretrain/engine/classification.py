"""The classification loss of supervised pretraining and of fine-tuning: mixup/cutmix, then smoothed cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2


class MixedLabelLoss(nn.Module):
    """``loss(model, images, labels)``: mixes the batch (mixup or cutmix, one drawn per batch), classifies it and
    returns the cross-entropy with ``label_smoothing`` against the mixed targets."""

    def __init__(self, num_classes: int, label_smoothing: float, mixup_alpha: float, cutmix_alpha: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def forward(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        if (labels < 0).any():
            raise ValueError("classification got unlabeled samples (label -1): write the shards with labels")
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        return F.cross_entropy(model(images), targets, label_smoothing=self.label_smoothing)

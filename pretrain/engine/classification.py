"""The classifier module of supervised pretraining and of fine-tuning, and its loss with timm's reference
augmentations.

As in the DeiT and MAE fine-tuning recipes: RandomErasing per sample (``pixel`` mode, one box, on normalized
images), then Mixup or CutMix per batch with label smoothing folded into the soft targets
(``timm.data.Mixup``), then soft-target cross-entropy; without mixing, cross-entropy with label smoothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from pretrain.engine.module import TrainingModule
from pretrain.models.vit import VisionTransformer


def require_labels(labels: Tensor) -> None:
    """Refuse unlabeled samples (label -1). Called on the host batch before it moves to the device: on the device
    the check would stall the GPU every step."""
    if (labels < 0).any():
        raise ValueError("classification got unlabeled samples (label -1): write the shards with labels")


class MixedLabelLoss(nn.Module):
    """``loss(model, images, labels)``: erase, mix, classify and score one batch of normalized images."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float,
        mixup_alpha: float,
        cutmix_alpha: float,
        mixup_prob: float,
        mixup_switch_prob: float,
        random_erasing: float,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.erasing = None
        if random_erasing > 0:
            self.erasing = RandomErasing(random_erasing, mode="pixel", max_count=1, device="cpu")
        self.soft_cross_entropy = SoftTargetCrossEntropy()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_classes: int) -> MixedLabelLoss:
        """From a config section holding the augmentation keys (an objective's or a fine-tuning mode's)."""
        keys = ("label_smoothing", "mixup_alpha", "cutmix_alpha", "mixup_prob", "mixup_switch_prob", "random_erasing")
        return cls(num_classes, **{key: config[key] for key in keys})

    def forward(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        if self.erasing is not None:
            self.erasing.device = images.device  # the noise is drawn where the batch lives
            images = self.erasing(images.clone())
        if self.mixup is None:
            return F.cross_entropy(model(images).float(), labels, label_smoothing=self.label_smoothing)
        if len(images) % 2:  # timm mixes a batch with its reverse and needs pairs: a skipped sample left one over
            images, labels = images[:-1], labels[:-1]
        images, targets = self.mixup(images, labels)
        return self.soft_cross_entropy(model(images).float(), targets)  # fp32 loss under bf16 weights too


class ClassifierModule(TrainingModule):
    """A classifier ViT trained on labels; ``loss`` erases, mixes, classifies and scores one batch. Supervised
    pretraining trains it as built; fine-tuning gives a pretrained backbone a new head first."""

    model: VisionTransformer

    def __init__(self, *args: Any, loss: MixedLabelLoss, **kwargs: Any) -> None:
        """``args``, ``kwargs``: the :class:`TrainingModule` arguments (the classifier, optim, plan, ...)."""
        super().__init__(*args, **kwargs)
        self.loss = loss

    @property
    def backbone(self) -> VisionTransformer:
        return self.model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def on_before_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        if self.training:
            require_labels(batch["label"])
        return batch

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.loss(self.model, batch["image"], batch["label"])

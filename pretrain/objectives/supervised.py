"""Supervised pretraining: cross-entropy with label smoothing on mixup/cutmix-mixed batches."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pretrain.engine.classification import MixedLabelLoss, require_labels
from pretrain.engine.module import TrainingModule
from pretrain.models.vit import VisionTransformer


class SupervisedModule(TrainingModule):
    """A classifier ViT trained on labels; ``loss`` mixes, classifies and scores one batch."""

    model: VisionTransformer

    def __init__(self, *args: Any, loss: MixedLabelLoss, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss = loss

    @property
    def backbone(self) -> VisionTransformer:
        return self.model

    def on_before_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        if self.training:
            require_labels(batch["label"])
        return batch

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.loss(self.model, batch["image"], batch["label"])

"""MAE's linear probe as a fixed recipe (He et al., 2022, A.2): frozen backbone -> BatchNorm(affine=False) ->
Linear, trained with LARS (or SGD) on augmented images; ``mode=linear`` is the selecting probe instead.

``run_linear_mae``: the mode (:mod:`finetune.modes.fitting`; ``mode.cache_features`` trains the head on features
computed once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipelines.registry import check_name
from finetune.modes.common import (
    Batch,
    ClassifierTest,
    DownstreamContext,
    DownstreamRun,
    ModeOutcome,
    TopKAccuracy,
    frozen,
    pooled_features,
)
from finetune.modes.fitting import FitMode, no_callbacks, run_fit
from pretrain.engine.optim import LARS, scaled_lr, warmup_cosine
from pretrain.models.vit import VisionTransformer

PROBE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lars": LARS,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
}


class LinearProbeModule(ClassifierTest, L.LightningModule):
    """Frozen backbone -> BatchNorm1d(affine=False) -> Linear; only the head trains."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        pool: str,
        optimizer: str,
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int,
    ) -> None:
        super().__init__()
        check_name(optimizer, PROBE_OPTIMIZERS, "optimizer")
        self.model = frozen(backbone, pool)
        linear = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(backbone.embed_dim, affine=False, eps=1e-6), linear)
        self.accuracy = TopKAccuracy(num_classes)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def train(self, mode: bool = True) -> LinearProbeModule:
        """The backbone stays in eval mode (no drop path) while the head trains."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.head(pooled_features(self.model, images))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = batch["features"] if "features" in batch else pooled_features(self.model, batch["image"])
        loss = F.cross_entropy(self.head(features), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def predict_step(self, batch: Batch, batch_idx: int) -> Batch:
        """Frozen features of a batch, kept on the CPU (``cache_features``)."""
        return {"features": pooled_features(self.model, batch["image"]).float().cpu(), "label": batch["label"].cpu()}

    def configure_optimizers(self) -> dict[str, Any]:
        build = PROBE_OPTIMIZERS[self.optimizer_name]
        optimizer = build(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(self.warmup_steps, self.total_steps, 0.0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def build_linear(backbone: VisionTransformer, mode: Mapping[str, Any], run: DownstreamRun) -> LinearProbeModule:
    """MAE's probe from a ``linear_mae`` mode config: lr scaled by the global batch, warmup in steps."""
    plan = run.plan
    return LinearProbeModule(
        backbone,
        run.num_classes,
        mode["pool"],
        mode["optimizer"],
        scaled_lr(mode["base_lr"], plan.global_batch),
        mode["weight_decay"],
        plan.total_steps,
        plan.steps_for_epochs(mode["warmup_epochs"]),
    )


def run_linear_mae(context: DownstreamContext) -> ModeOutcome | None:
    """Train MAE's probe on the frozen backbone, test once; None when a signal stopped the fit."""
    return run_fit(context, FitMode(build_linear, no_callbacks, frozen_backbone=True))

"""Full fine-tuning: the whole backbone plus a new head on the engine's training module, with layer-wise lr decay,
mixup/cutmix and label smoothing (non-finite guarding and per-step seeding come with the engine)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch import Tensor, nn

from finetune.modes.common import ClassifierTest, DownstreamRun, TopKAccuracy
from pretrain.engine.classification import MixedLabelLoss
from pretrain.engine.config import from_settings
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.models.vit import VisionTransformer


class FinetuneModule(ClassifierTest, TrainingModule):
    """A backbone with a new head, trained on labels with layer-wise lr decay."""

    model: VisionTransformer

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        pool: str,
        loss: MixedLabelLoss,
        meta: BackboneMeta,
        **training: Any,
    ) -> None:
        """``training``: the :class:`TrainingModule` arguments besides model and metadata (optim, plan, ...)."""
        backbone.reset_classifier(num_classes, global_pool=pool)
        nn.init.trunc_normal_(backbone.head.weight, std=2e-5)  # MAE: a near-zero head leaves the features intact
        # Checkpoints describe the fine-tuned backbone (pooling, resolution), so the weight loader rebuilds it.
        options = {**meta.options, "img_size": backbone.patch_embed.img_size, "global_pool": pool}
        super().__init__(backbone, meta=meta.updated(options=options), **training)
        self.loss = loss
        self.accuracy = TopKAccuracy(num_classes)

    @property
    def backbone(self) -> VisionTransformer:
        return self.model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.loss(self.model, batch["image"], batch["label"])

    def layer_decay_depth(self) -> int:
        return len(self.model.blocks)


def build_finetune(backbone: VisionTransformer, mode: Mapping[str, Any], run: DownstreamRun) -> FinetuneModule:
    warmup_steps = run.plan.steps_for_epochs(mode["warmup_epochs"])
    return FinetuneModule(
        backbone,
        run.num_classes,
        mode["pool"],
        loss=MixedLabelLoss(run.num_classes, mode["label_smoothing"], mode["mixup_alpha"], mode["cutmix_alpha"]),
        optim=from_settings(OptimConfig, mode["optim"], "mode.optim", warmup_steps=warmup_steps),
        plan=run.plan,
        meta=run.meta,
        seed=run.seed,
        max_bad_steps=run.max_bad_steps,
        flops_per_batch=None,
    )


def ema_callbacks(mode: Mapping[str, Any]) -> list[Callback]:
    """Fine-tuning with ``ema_decay`` tests the moving average of the weights (copied in when training ends)."""
    return [EMAWeightAveraging(decay=mode["ema_decay"])] if mode["ema_decay"] else []

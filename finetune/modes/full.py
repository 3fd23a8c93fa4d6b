"""Full fine-tuning: the whole backbone (position embedding included) plus a new head, on the engine's training
module, with the mode's optimizer (SGD for transfer, AdamW with layer-wise lr decay for the MAE recipe) and
timm's erasing and mixing (non-finite guarding and per-micro-batch seeding come with the engine).

``run_finetune``: the ``finetune`` and ``finetune_mae`` modes (:mod:`finetune.modes.fitting`: lr chosen on
validation, refit, tested once, compared with the selecting linear probe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch import nn

from finetune.modes.common import ClassifierTest, DownstreamContext, DownstreamRun, ModeOutcome, TopKAccuracy
from finetune.modes.fitting import FitMode, run_fit
from pretrain.engine.architecture import classifier_flops_per_batch
from pretrain.engine.classification import ClassifierModule, MixedLabelLoss
from pretrain.engine.config import from_settings
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.optim import OptimConfig
from pretrain.models.vit import VisionTransformer


class FinetuneModule(ClassifierTest, ClassifierModule):
    """A backbone with a new head, trained on labels (the engine's classifier module, as supervised pretraining's).

    The position embedding trains too, starting from the pretrained table (sin-cos or learned, resampled or
    not), as the MAE reference fine-tunes it. The head starts from ``trunc_normal(std=head_init_std)`` weights and
    zero bias (the ViT paper's transfer: std 0, a zero head; MAE: 2e-5).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        pool: str,
        head_init_std: float,
        loss: MixedLabelLoss,
        meta: BackboneMeta,
        **training: Any,
    ) -> None:
        """``training``: the :class:`~pretrain.engine.module.TrainingModule` arguments besides model and metadata
        (optim, plan, ...)."""
        backbone.reset_classifier(num_classes, global_pool=pool)
        if head_init_std > 0:
            nn.init.trunc_normal_(backbone.head.weight, std=head_init_std)
        else:
            nn.init.zeros_(backbone.head.weight)
        nn.init.zeros_(backbone.head.bias)
        backbone.pos_embed.requires_grad_(True)
        # Checkpoints describe the fine-tuned backbone (pooling, resolution, a now learned position embedding),
        # so the weight loader rebuilds it.
        options = {**meta.options, "img_size": backbone.patch_embed.img_size, "global_pool": pool, "pos_embed": "learn"}
        super().__init__(backbone, meta=meta.updated(options=options), loss=loss, **training)
        self.accuracy = TopKAccuracy(num_classes)


def build_finetune(backbone: VisionTransformer, mode: Mapping[str, Any], run: DownstreamRun) -> FinetuneModule:
    """The fine-tuning module of a ``finetune`` or ``finetune_mae`` mode config, warmup converted to steps."""
    warmup_steps = run.plan.steps_for_epochs(mode["warmup_epochs"])
    return FinetuneModule(
        backbone,
        run.num_classes,
        mode["pool"],
        mode["head_init_std"],
        loss=MixedLabelLoss.from_config(mode, run.num_classes),
        optim=from_settings(OptimConfig, mode["optim"], "mode.optim", warmup_steps=warmup_steps),
        plan=run.plan,
        meta=run.meta,
        seed=run.seed,
        max_bad_steps=run.max_bad_steps,
        flops_per_batch=classifier_flops_per_batch(
            {**run.meta.options, "num_classes": run.num_classes}, run.plan.batch_size
        ),
    )


def ema_callbacks(mode: Mapping[str, Any]) -> list[Callback]:
    """Fine-tuning with ``ema_decay`` tests the moving average of the weights (copied in when training ends)."""
    return [EMAWeightAveraging(decay=mode["ema_decay"])] if mode["ema_decay"] else []


FINE_TUNING = FitMode(build_finetune, ema_callbacks, frozen_backbone=False)


def run_finetune(context: DownstreamContext) -> ModeOutcome | None:
    """Fine-tune the whole backbone (lr chosen on validation with ``mode.lr_grid``), test once; None when a signal
    stopped a fit."""
    return run_fit(context, FINE_TUNING)

"""What the downstream modes share: the context a mode runs in and the outcome it reports, the mode's run plan,
normalization and Trainer, the edges of a selection's grid; and for their modules the run they are built for, frozen
features, top-k accuracy over ranks and the classifier test loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from finetune.data import TaskSplit
from finetune.tasks import Task
from pretrain.engine.config import Settings
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan, plan_run
from pretrain.engine.trainer import build_trainer
from pretrain.models.vit import VisionTransformer

log = logging.getLogger(__name__)

Batch = dict[str, Any]
BackboneLoader = Callable[[], tuple[VisionTransformer, BackboneMeta]]


@dataclass
class DownstreamContext:
    """What every mode runs on: the resolved config, the task, the run directory and a fresh backbone on demand."""

    config: Settings
    task: Task
    run_dir: Path
    load_backbone: BackboneLoader  # a new copy per call: fine-tuning changes the weights it is given


@dataclass
class ModeOutcome:
    """What a mode reports: test metrics, the selection it made, and the Trainer whose loggers get the summary."""

    metrics: dict[str, float]
    trainer: L.Trainer
    image_size: int
    meta: BackboneMeta
    images_per_s: float
    selection: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mode:
    """How a mode runs (``run(context)`` -> its outcome, None when a signal stopped it)."""

    run: Callable[[DownstreamContext], ModeOutcome | None]


def downstream_plan(config: Mapping[str, Any], mode: Mapping[str, Any], split: TaskSplit, trains: bool) -> RunPlan:
    """``mode.steps``, else ``mode.epochs`` over ``split``'s images (``trainer.max_steps`` caps them); evaluation
    alone trains no steps."""
    plan = plan_run(
        config["trainer"],
        mode["batch_size"],
        samples_per_epoch=split.num_samples,
        epochs=mode["epochs"] if trains else 0,
        steps=mode["steps"] if trains else None,
    )
    if trains and plan.steps_per_epoch == 0:
        raise ValueError(
            f"{split.num_samples} training images are fewer than one global batch ({plan.global_batch}): "
            "lower mode.batch_size"
        )
    return plan


def normalization(
    config: Mapping[str, Any], meta: BackboneMeta, train: TaskSplit
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's own pretraining mean/std; without them (timm/HF weights, random init, weights adapted to
    another channel count, or pretrained on the other kind of input: images are normalized in [0, 1] pixel units,
    arrays in their stored units) the training split's channel statistics for arrays, else the configured ones."""
    kind = "arrays" if train.arrays else "images"
    if meta.inputs is not None and meta.inputs != kind:
        log.info("the backbone was pretrained on %s, the task holds %s: its mean/std do not apply", meta.inputs, kind)
    elif meta.mean is not None and meta.std is not None:
        return tuple(meta.mean), tuple(meta.std)
    if train.arrays:
        mean, std = train.channel_normalization(config["bands"])
        log.info("normalizing with the training split's channel statistics: mean %s, std %s", mean, std)
        return tuple(mean), tuple(std)
    return tuple(config["mean"]), tuple(config["std"])


def fit_trainer(
    config: Mapping[str, Any],
    mode: Mapping[str, Any],
    logger: Mapping[str, Any],
    run_dir: Path,
    plan: RunPlan,
    batch_size_fn: Callable[[Batch], int],
    start_step: int,
    callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """The Trainer of a mode's fit in ``run_dir``: the app's trainer settings with the mode's own gradient clipping
    (a recipe's: the ViT paper clips at global norm 1; null keeps ``trainer.gradient_clip_val``), its logs continuing
    from ``start_step`` (the step of the checkpoint it resumes from)."""
    trainer_config = dict(config["trainer"])
    if mode["gradient_clip_val"] is not None:
        trainer_config["gradient_clip_val"] = mode["gradient_clip_val"]
    return build_trainer(
        trainer_config,
        logger,
        run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=batch_size_fn,
        callbacks=list(callbacks),
        start_step=start_step,
    )


def grid_edges(chosen: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """The numeric axes of ``grid`` (two values or more) on whose edge the ``chosen`` setting lies: ``{"lr":
    "largest"}`` says a larger value than any searched might score better. A chosen 0 is no edge (nothing lies
    below it)."""
    edges = {}
    for axis, values in grid.items():
        numbers = [value for value in values if isinstance(value, int | float)]
        if len(set(numbers)) < 2 or axis not in chosen:
            continue
        if chosen[axis] == max(numbers):
            edges[axis] = "largest"
        elif chosen[axis] == min(numbers) and chosen[axis] != 0:
            edges[axis] = "smallest"
    return edges


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

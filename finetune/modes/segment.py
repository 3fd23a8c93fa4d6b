"""Semantic segmentation (``mode=segment``): a head on the backbone's patch tokens, trained with cross-entropy on
random crops (pixels of the ignore index count nowhere), tested on whole images by sliding windows; scored by
mIoU, pixel accuracy and per-class IoU over every test pixel of every rank.

``head: linear`` with ``freeze_backbone: true`` is DINOv2's linear protocol; ``setr_pup`` and ``setr_mla`` are
SETR's decoders (usually with the backbone fine-tuned); ``unetr`` segments volumes with UNETR's decoder.

``run_segment``: the mode, a fixed recipe (no selection on validation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipelines.registry import lookup
from data_pipelines.seeding import seed_all, stable_seed
from data_pipelines.transforms import TransformOptions
from finetune.data import LoaderSpec, TaskDataModule
from finetune.modes.common import (
    DownstreamContext,
    DownstreamRun,
    ModeOutcome,
    downstream_plan,
    fit_trainer,
    normalization,
)
from finetune.modes.dense_metrics import confusion_matrix, segmentation_scores
from pretrain.engine.config import from_settings
from pretrain.engine.lifecycle import fit, resolve_resume, resume_step
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.models.segmentation import SETRMLA, SETRPUP, LinearHead, Segmenter, UNETRDecoder, sliding_window_logits
from pretrain.models.vit import VisionTransformer

log = logging.getLogger(__name__)

HeadBuilder = Callable[[VisionTransformer, int, Mapping[str, Any]], nn.Module]
VOLUME_HEADS = {"unetr"}  # heads of 3-D backbones; the others segment images
HEADS: dict[str, HeadBuilder] = {
    "linear": lambda backbone, classes, mode: LinearHead(backbone.embed_dim, classes),
    "setr_pup": lambda backbone, classes, mode: SETRPUP(
        backbone.embed_dim, classes, backbone.patch_size, mode["head_channels"]
    ),
    "setr_mla": lambda backbone, classes, mode: SETRMLA(
        backbone.embed_dim, classes, mode["mla_levels"], mode["head_channels"]
    ),
    "unetr": lambda backbone, classes, mode: UNETRDecoder(
        backbone.embed_dim, classes, backbone.patch_embed.in_chans, backbone.patch_size, mode["unetr_features"]
    ),
}


class SegmentationModule(TrainingModule):
    """A :class:`Segmenter` trained on masks; its test accumulates one confusion matrix over all ranks."""

    model: Segmenter

    def __init__(
        self, segmenter: Segmenter, num_classes: int, ignore_index: int, window_stride: int, **training: Any
    ) -> None:
        super().__init__(segmenter, **training)
        self.num_classes, self.ignore_index, self.window_stride = num_classes, ignore_index, window_stride
        self.confusion: Tensor | None = None  # the test's pixel counts, made when testing starts
        self.scores: dict[str, Any] = {}

    @property
    def backbone(self) -> VisionTransformer:
        return self.model.backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def on_before_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Labels outside the classes fail here, on the host, with the numbers (on a GPU cross-entropy would
        stop with a device assert)."""
        labels = batch["mask"][batch["mask"] != self.ignore_index]
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"mask labels {int(labels.min())}-{int(labels.max())} outside the task's {self.num_classes} classes "
                f"(and the ignore index {self.ignore_index}): check the masks or task.num_classes"
            )
        return batch

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["image"])
        return F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index)

    def on_test_epoch_start(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        window = max(self.backbone.patch_embed.image_shape)
        logits = sliding_window_logits(self.model, batch["image"], window, self.window_stride, self.num_classes)
        self.confusion += confusion_matrix(logits.argmax(dim=1), batch["mask"], self.num_classes, self.ignore_index)

    def on_test_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self.confusion, reduce_op="sum")
        self.scores = segmentation_scores(total.cpu())
        self.log_dict({f"test/{name}": self.scores[name] for name in ("miou", "pixel_accuracy")}, sync_dist=False)


def build_segmentation(
    backbone: VisionTransformer, mode: Mapping[str, Any], run: DownstreamRun, ignore_index: int
) -> SegmentationModule:
    """The segmentation module of a ``segment`` mode config, warmup converted to steps."""
    volumes = len(backbone.patch_embed.grid_size) == 3
    if (mode["head"] in VOLUME_HEADS) != volumes:
        raise ValueError(
            f"mode.head={mode['head']} segments {'volumes' if mode['head'] in VOLUME_HEADS else 'images'}, and "
            f"this backbone reads {'volumes' if volumes else 'images'}: choose among "
            f"{sorted(VOLUME_HEADS if volumes else set(HEADS) - VOLUME_HEADS)}"
        )
    if not 0 < mode["window_stride_fraction"] <= 1:
        raise ValueError(f"mode.window_stride_fraction={mode['window_stride_fraction']} must be in (0, 1]")
    head = lookup(HEADS, mode["head"], "segmentation head")(backbone, run.num_classes, mode)
    segmenter = Segmenter(backbone, head, freeze_backbone=mode["freeze_backbone"])
    window = max(backbone.patch_embed.image_shape)
    warmup_steps = run.plan.steps_for_epochs(mode["warmup_epochs"])
    return SegmentationModule(
        segmenter,
        run.num_classes,
        ignore_index,
        window_stride=max(1, round(window * mode["window_stride_fraction"])),
        optim=from_settings(OptimConfig, mode["optim"], "mode.optim", warmup_steps=warmup_steps),
        plan=run.plan,
        meta=run.meta,
        seed=run.seed,
        max_bad_steps=run.max_bad_steps,
        flops_per_batch=None,
    )


def segmentation_specs(
    config: Mapping[str, Any], image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[LoaderSpec, LoaderSpec]:
    """(training crops of ``image_size``, whole test images one at a time: their sizes differ) for ``segment``."""
    mode = config["mode"]
    common = dict(
        num_workers=config["num_workers"],
        mean=mean,
        std=std,
        seed=config["seed"],
        shuffle_buffer=config["shuffle_buffer"],
        pin_memory=config["pin_memory"],
    )
    geometry = dict(image_size=image_size, eval_crop_fraction=None, randaugment=None, intensity_scale=None, bands=None)
    crops = TransformOptions(**geometry, crop_scale=mode["crop_scale"], crop_ratio=mode["crop_ratio"])
    whole = TransformOptions(**geometry, crop_scale=None, crop_ratio=None)
    train = LoaderSpec(mode["train_transform"], crops, batch_size=mode["batch_size"], training=True, **common)
    return train, LoaderSpec("segment_eval", whole, batch_size=1, training=False, **common)


def run_segment(context: DownstreamContext) -> ModeOutcome | None:
    """Train the mode's segmentation head (and the backbone unless frozen) on the training split, test once on
    whole test images by sliding windows. A fixed recipe: no selection on validation. None when a signal stopped
    the fit."""
    config, task = context.config, context.task
    mode = config["mode"]
    if task.ignore_index is None:
        raise ValueError(f"mode=segment needs a segmentation task (ade20k, voc2012, segfolder); {task.name} classifies")
    seed_all(stable_seed(config["seed"], "fit", "segment"))
    backbone, meta = context.load_backbone()
    image_size = backbone.patch_embed.img_size
    train_spec, test_spec = segmentation_specs(config, image_size, *normalization(config, meta, task.train))
    plan = downstream_plan(config, mode, task.train, trains=True)
    run = DownstreamRun(task.num_classes, plan, config["seed"], meta, config["trainer"]["max_bad_steps"])
    module = build_segmentation(backbone, mode, run, task.ignore_index)
    data = TaskDataModule(task.train, task.test, train_spec, test_spec, plan)
    checkpoint = resolve_resume(str(config["resume"]), context.run_dir)
    trainer = fit_trainer(
        config,
        mode,
        config["logger"],
        context.run_dir,
        plan,
        batch_size_fn=lambda batch: batch["image"].shape[0],
        start_step=resume_step(checkpoint),
    )
    log.info(
        "segment (%s head) on %s (%d images): %s", mode["head"], task.name, task.train.num_samples, plan.describe()
    )
    wait_s = config["trainer"]["universal_checkpoint_wait_s"]
    if fit(trainer, module, data, checkpoint, wait_s, frozen_parts=mode["freeze_backbone"]) is None:
        return None
    started = time.perf_counter()
    trainer.test(module, datamodule=data)
    speed = round(task.test.num_samples / (time.perf_counter() - started), 2)
    metrics = {name: module.scores[name] for name in ("miou", "pixel_accuracy")}
    names = [*task.train.classes, *(f"class_{k}" for k in range(len(task.train.classes), task.num_classes))]
    per_class = dict(zip(names, module.scores["per_class_iou"], strict=True))
    return ModeOutcome(metrics, trainer, image_size, meta, speed, notes={"per_class_iou": per_class})

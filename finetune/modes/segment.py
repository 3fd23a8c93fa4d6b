"""Semantic segmentation (``mode=segment``): a head on the backbone's patch tokens, trained with cross-entropy on
random crops (pixels of the ignore index count nowhere), tested on whole images by sliding windows; scored by
mIoU, pixel accuracy and per-class IoU over every test pixel of every rank.

``head: linear`` with ``freeze_backbone: true`` is DINOv2's linear protocol; ``setr_pup`` and ``setr_mla`` are
SETR's decoders (usually with the backbone fine-tuned); ``unetr`` segments volumes with UNETR's decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipelines.registry import lookup
from finetune.modes.common import DownstreamRun
from finetune.modes.dense_metrics import confusion_matrix, segmentation_scores
from pretrain.engine.config import from_settings
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.models.segmentation import SETRMLA, SETRPUP, LinearHead, Segmenter, UNETRDecoder, sliding_window_logits
from pretrain.models.vit import VisionTransformer

HeadBuilder = Callable[[VisionTransformer, int, Mapping[str, Any]], nn.Module]
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
        self.register_buffer("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), persistent=False)
        self.scores: dict[str, Any] = {}

    @property
    def backbone(self) -> VisionTransformer:
        return self.model.backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["image"])
        return F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index)

    def on_test_epoch_start(self) -> None:
        self.confusion.zero_()

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

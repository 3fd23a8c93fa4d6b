"""The downstream modes (``mode=`` in conf/), each a Lightning module built from its ``mode`` config:

- ``linear``: frozen backbone -> BatchNorm(affine=False) -> Linear, trained with LARS or SGD (MAE's probe);
- ``finetune``: the whole backbone plus a new head, with layer-wise lr decay, mixup/cutmix, label smoothing;
- ``knn``: no training; cosine k-NN over the training images' features, weighted votes.

Every mode reports ``test/top1`` (and ``test/top5`` when the task has more than 5 classes) in percent, exact over
all ranks. The modes use the engine and the models, never a pretraining objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from data_pipelines.registry import lookup
from finetune.modes.common import DownstreamRun
from finetune.modes.full import build_finetune, ema_callbacks
from finetune.modes.knn import build_knn
from finetune.modes.linear import build_linear
from pretrain.models.vit import VisionTransformer


def no_callbacks(mode: Mapping[str, Any]) -> list[Callback]:
    return []


@dataclass(frozen=True)
class Mode:
    """How a mode is built, whether it trains, and whether it also reads the training images at test time."""

    build: Callable[[VisionTransformer, Mapping[str, Any], DownstreamRun], L.LightningModule]
    trains: bool
    tests_on_training_images: bool
    callbacks: Callable[[Mapping[str, Any]], list[Callback]]


MODES: dict[str, Mode] = {
    "linear": Mode(build_linear, trains=True, tests_on_training_images=False, callbacks=no_callbacks),
    "finetune": Mode(build_finetune, trains=True, tests_on_training_images=False, callbacks=ema_callbacks),
    "knn": Mode(build_knn, trains=False, tests_on_training_images=True, callbacks=no_callbacks),
}


def get_mode(name: str) -> Mode:
    return lookup(MODES, name, "mode")

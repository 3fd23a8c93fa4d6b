"""Supervised pretraining: cross-entropy with label smoothing on mixup/cutmix-mixed batches (the DeiT recipe), on
the engine's classifier module, the one fine-tuning uses too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pretrain.checks import check_num_classes
from pretrain.engine.classification import ClassifierModule, MixedLabelLoss
from pretrain.engine.module import TrainingModule
from pretrain.models.vit import VisionTransformer
from pretrain.objectives.objective import Objective, register_objective


@register_objective
class Supervised(Objective):
    """``objective=supervised``: classify one RandAugmented crop per labeled image."""

    name = "supervised"
    transform = "supervised"  # one crop with timm's RandAugment, and its label
    module_class = ClassifierModule

    def check(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
        check_num_classes(config["num_classes"], manifest["num_classes"])

    def num_classes(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> int:
        """``objective.num_classes``, or null: the classes of the shards' manifest."""
        return config["num_classes"] or manifest["num_classes"]

    def build_network(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> VisionTransformer:
        return VisionTransformer(**backbone)

    def build_module(
        self, network: VisionTransformer, config: Mapping[str, Any], num_classes: int, **training: Any
    ) -> TrainingModule:
        return self.module_class(network, loss=MixedLabelLoss.from_config(config, num_classes), **training)

"""What a pretraining objective declares, and the registry the builder looks objectives up in by name.

An objective is one module of this package holding one :class:`Objective` subclass, registered with
:func:`register_objective`, plus its config group ``conf/objective/<name>.yaml`` (whose ``name`` key selects it).
The builder (:mod:`pretrain.objectives.build`) and the app only call the methods below: adding an objective touches
neither. Every method receives ``config``, the run's resolved ``objective`` group, and ``backbone``, the complete
:class:`~pretrain.models.vit.VisionTransformer` options the app computed once for the run.

Extra state a checkpoint carries (an EMA teacher, centers) lives in the objective's Lightning module: submodules
and buffers are in its state dict already; anything else goes in through the module's ``on_save_checkpoint`` and
back through ``on_load_checkpoint``, each calling ``super()`` first (the engine's module writes the backbone
metadata and the run's counters there).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from lightning.pytorch.callbacks import Callback
from torch import nn

from data_pipelines.registry import lookup
from pretrain.engine.architecture import classifier_flops_per_batch, patch_tokens
from pretrain.engine.config import plain
from pretrain.engine.module import TrainingModule

OBJECTIVES: dict[str, Objective] = {}  # name -> objective, filled by register_objective
ObjectiveClass = TypeVar("ObjectiveClass", bound="type[Objective]")


class Objective:
    """One pretraining objective: its network, Lightning module, stream views, costs, panels and metadata.

    ``name`` is the config group's ``name``; ``transform`` names the :mod:`data_pipelines.transforms` transform
    whose views the training stream yields per sample (``mae``: one random-resized crop, ``image``;
    ``supervised``: one RandAugmented crop and its label, ``image`` + ``label``; a multi-crop objective names a
    transform of several crops); ``module_class`` is its module on the engine's :class:`TrainingModule`.
    """

    name: ClassVar[str]
    transform: ClassVar[str]
    module_class: ClassVar[type[TrainingModule]]

    def check(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
        """Raise a :class:`ValueError` naming the key and its fix for a value that cannot train on these shards
        (``manifest``: their manifest; ``total`` and ``num_classes`` None without one). Called before the run
        directory is touched."""

    def num_classes(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> int:
        """Outputs of the backbone's classifier head during pretraining (0: no head)."""
        return 0

    def build_network(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> nn.Module:
        """The trained network around ``VisionTransformer(**backbone)`` (``backbone["num_classes"]``: the head)."""
        raise NotImplementedError

    def build_module(
        self, network: nn.Module, config: Mapping[str, Any], num_classes: int, **training: Any
    ) -> TrainingModule:
        """The Lightning module training ``network``; ``training``: the :class:`TrainingModule` arguments."""
        return self.module_class(network, **training)

    def flops_per_batch(self, config: Mapping[str, Any], backbone: Mapping[str, Any], batch_size: int) -> int:
        """Forward + backward FLOPs of one per-device batch (MFU is measured against them). By default those of the
        backbone as a classifier on every token of one view per image."""
        return classifier_flops_per_batch(backbone, batch_size)

    def tokens_per_image(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> int:
        """Tokens the encoder processes per image (the logged tokens/s): by default every patch plus CLS."""
        return patch_tokens(backbone) + 1

    def panels(self, run_config: Mapping[str, Any], backbone: Mapping[str, Any]) -> list[Callback]:
        """The W&B panels of this objective, as callbacks of the Trainer (``run_config``: the whole run's config,
        its ``logger`` and ``data`` groups included). By default none."""
        return []

    def metadata(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What checkpoints and exports record of the objective (``BackboneMeta.objective_config``): by default its
        whole config group (MAE's decoder options let the analysis app rebuild the decoder)."""
        return plain(config)


def register_objective(objective_class: ObjectiveClass) -> ObjectiveClass:
    """Class decorator: register one instance of ``objective_class`` under its ``name`` (which must be new)."""
    if objective_class.name in OBJECTIVES:
        raise ValueError(f"objective {objective_class.name!r} is registered twice")
    OBJECTIVES[objective_class.name] = objective_class()
    return objective_class


def objective_named(name: str) -> Objective:
    """The registered objective ``name``; an unknown name raises an error listing the known ones.

    The modules of this package register their objectives when imported, so all of them are imported first: a new
    objective module is found without being listed anywhere.
    """
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    return lookup(OBJECTIVES, name, "objective")

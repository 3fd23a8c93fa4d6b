"""From the pretraining app's config to the objective's network, Lightning module and training stream.

The app looks the objective up by name (:func:`~pretrain.objectives.objective.objective_named`) and passes it in;
it says everything that differs between objectives, so nothing here knows one by name. Nothing here reads Hydra:
the app resolves its config to :class:`~pretrain.engine.config.Settings` and passes them in, together with the
:class:`~pretrain.engine.plan.RunPlan` it settled first and the backbone options it computed once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from data_pipelines.registry import lookup
from data_pipelines.stream import StreamConfig
from data_pipelines.transforms import TransformOptions
from pretrain.engine.config import config_hash, from_settings
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.engine.plan import RunPlan
from pretrain.objectives.objective import Objective, objective_named

DECODE_ON_DEVICE = {"cpu": False, "gpu": True}  # data.decode: where JPEGs are decoded (data_pipelines.device_decode)


def build_model(objective: Mapping[str, Any], backbone: Mapping[str, Any]) -> nn.Module:
    """The network of the objective group ``objective`` around a backbone built from ``backbone`` options."""
    return objective_named(objective["name"]).build_network(objective, backbone)


def flops_per_batch(objective: Mapping[str, Any], backbone: Mapping[str, Any], batch_size: int) -> int:
    """Forward + backward FLOPs of one per-device batch of the objective group ``objective``."""
    return objective_named(objective["name"]).flops_per_batch(objective, backbone, batch_size)


def pretraining_meta(
    config: Mapping[str, Any], objective: Objective, backbone: Mapping[str, Any], arrays: bool
) -> BackboneMeta:
    """What every checkpoint and export of this run says about its backbone (the step is added when saved);
    ``arrays``: the shards hold arrays (normalized in stored units), not encoded images."""
    data = config["data"]
    return BackboneMeta(
        options={**backbone, "num_classes": 0},
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        objective=objective.name,
        objective_config=objective.metadata(config["objective"]),
        step=None,
        config_hash=config_hash(config),
        source_checkpoint=None,
        inputs="arrays" if arrays else "images",
        bands=None if data["bands"] is None else tuple(data["bands"]),
    )


def build_module(
    config: Mapping[str, Any],
    plan: RunPlan,
    objective: Objective,
    backbone: Mapping[str, Any],
    num_classes: int,
    arrays: bool = False,
) -> TrainingModule:
    """The Lightning module of ``objective`` (configured by ``config["objective"]``) around a backbone of
    ``backbone`` options with a head of ``num_classes`` outputs (0: none). ``arrays``: the training shards hold
    arrays (the metadata records how inputs were normalized)."""
    backbone = {**backbone, "num_classes": num_classes}
    warmup_steps = plan.steps_for_epochs(config["warmup_epochs"])
    model = objective.build_network(config["objective"], backbone)
    model.set_grad_checkpointing(config["trainer"]["grad_checkpointing"])
    if config["trainer"]["compile"]:
        model.compile()  # in place: parameter names and checkpoints stay those of the eager model
    return objective.build_module(
        model,
        config["objective"],
        num_classes,
        optim=from_settings(OptimConfig, config["optim"], "optim", warmup_steps=warmup_steps),
        plan=plan,
        meta=pretraining_meta(config, objective, backbone, arrays),
        seed=config["seed"],
        max_bad_steps=config["trainer"]["max_bad_steps"],
        flops_per_batch=objective.flops_per_batch(config["objective"], backbone, plan.batch_size),
    )


def stream_config(config: Mapping[str, Any], plan: RunPlan, objective: Objective) -> StreamConfig:
    """The training stream of the ``data`` group, of the views ``objective`` trains on, ``plan.batches_per_epoch``
    per rank (resampled shards, or the elastic order's whole epochs: ``data.order``)."""
    data = config["data"]
    return StreamConfig(
        shards=data["shards"],
        batch_size=plan.batch_size,
        num_workers=data["num_workers"],
        transform=objective.transform,
        augment=TransformOptions(
            image_size=data["image_size"],
            crop_scale=data["crop_scale"],
            crop_ratio=data["crop_ratio"],
            eval_crop_fraction=None,
            randaugment=config["objective"]["randaugment"],
            intensity_scale=data["intensity_scale"],
            bands=data["bands"],
        ),
        mean=data["mean"],
        std=data["std"],
        seed=config["seed"],
        shuffle_buffer=data["shuffle_buffer"],
        manifest=data["manifest"],
        pin_memory=data["pin_memory"],
        resampled=data["order"] == "resampled",
        decode_on_device=lookup(DECODE_ON_DEVICE, data["decode"], "data.decode"),
        batches_per_epoch=plan.batches_per_epoch,
    )

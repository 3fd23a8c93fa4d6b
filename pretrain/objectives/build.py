"""From the pretraining app's config to the objective's network, Lightning module and training stream.

Nothing here reads Hydra: the app resolves its config to :class:`~pretrain.engine.config.Settings` and passes
them in, together with the :class:`~pretrain.engine.plan.RunPlan` it settled first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops

from data_pipelines.registry import lookup
from data_pipelines.stream import StreamConfig
from data_pipelines.transforms import TransformOptions
from pretrain.engine.architecture import backbone_options, classifier_flops_per_batch, input_shape, patch_tokens
from pretrain.engine.classification import MixedLabelLoss
from pretrain.engine.config import config_hash, from_settings, plain
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.engine.plan import RunPlan
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer
from pretrain.objectives.mae import MAEModule
from pretrain.objectives.supervised import SupervisedModule

OBJECTIVES: dict[str, type[TrainingModule]] = {"mae": MAEModule, "supervised": SupervisedModule}
DECODE_ON_DEVICE = {"cpu": False, "gpu": True}  # data.decode: where JPEGs are decoded (data_pipelines.device_decode)
MAE_OPTIONS = ("mask_ratio", "norm_pix_loss", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def build_model(objective: Mapping[str, Any], backbone: Mapping[str, Any]) -> torch.nn.Module:
    """The objective's network around a backbone built from ``backbone`` options."""
    if objective["name"] == "mae":
        encoder = VisionTransformer(**{**backbone, "num_classes": 0})
        return MaskedAutoencoder(encoder, **{key: objective[key] for key in MAE_OPTIONS})
    return VisionTransformer(**backbone)


def pretraining_meta(config: Mapping[str, Any], arrays: bool) -> BackboneMeta:
    """What every checkpoint and export of this run says about its backbone (the step is added when saved);
    ``arrays``: the shards hold arrays (normalized in stored units), not encoded images."""
    data, objective = config["data"], config["objective"]
    return BackboneMeta(
        options=backbone_options(config["model"]),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        objective=objective["name"],
        objective_config=plain(objective),
        step=None,
        config_hash=config_hash(config),
        source_checkpoint=None,
        inputs="arrays" if arrays else "images",
        bands=None if data["bands"] is None else tuple(data["bands"]),
    )


def build_module(config: Mapping[str, Any], plan: RunPlan, num_classes: int, arrays: bool = False) -> TrainingModule:
    """The Lightning module for ``config["objective"]["name"]``; unknown names list the known ones. ``arrays``:
    the training shards hold arrays (the metadata records how inputs were normalized)."""
    objective = config["objective"]
    module_class = lookup(OBJECTIVES, objective["name"], "objective")
    backbone = backbone_options(config["model"], num_classes if objective["name"] == "supervised" else 0)
    extra: dict[str, Any] = {}
    if module_class is SupervisedModule:
        extra["loss"] = MixedLabelLoss.from_config(objective, num_classes)
    warmup_steps = plan.steps_for_epochs(config["warmup_epochs"])
    model = build_model(objective, backbone)
    model.set_grad_checkpointing(config["trainer"]["grad_checkpointing"])
    if config["trainer"]["compile"]:
        model.compile()  # in place: parameter names and checkpoints stay those of the eager model
    return module_class(
        model,
        optim=from_settings(OptimConfig, config["optim"], "optim", warmup_steps=warmup_steps),
        plan=plan,
        meta=pretraining_meta(config, arrays),
        seed=config["seed"],
        max_bad_steps=config["trainer"]["max_bad_steps"],
        flops_per_batch=flops_per_batch(objective, backbone, plan.batch_size),
        **extra,
    )


def flops_per_batch(objective: Mapping[str, Any], backbone: Mapping[str, Any], batch_size: int) -> int:
    """Forward + backward FLOPs of one per-device batch, counted on the meta device (no memory, no compute)."""
    if objective["name"] != "mae":
        return classifier_flops_per_batch(backbone, batch_size)
    with torch.device("meta"):
        model = build_model(objective, backbone)
        images = torch.empty(batch_size, *input_shape(model.encoder))
    return measure_flops(model, lambda: model(images).loss, lambda loss: loss)


def tokens_per_image(objective: Mapping[str, Any], model: Mapping[str, Any]) -> int:
    """Tokens the encoder processes per image: visible patches plus CLS for MAE, all of them otherwise."""
    patches = patch_tokens(backbone_options(model))
    if objective["name"] == "mae":
        return int(patches * (1 - objective["mask_ratio"])) + 1
    return patches + 1


def stream_config(config: Mapping[str, Any], plan: RunPlan) -> StreamConfig:
    """The training stream of the ``data`` group, ``plan.batches_per_epoch`` per rank (resampled shards, or the
    elastic order's whole epochs: ``data.order``)."""
    data, objective = config["data"], config["objective"]
    return StreamConfig(
        shards=data["shards"],
        batch_size=plan.batch_size,
        num_workers=data["num_workers"],
        transform=objective["name"],
        augment=TransformOptions(
            image_size=data["image_size"],
            crop_scale=data["crop_scale"],
            crop_ratio=data["crop_ratio"],
            eval_crop_fraction=None,
            randaugment=objective["randaugment"],
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

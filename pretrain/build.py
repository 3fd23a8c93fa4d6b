"""From plain config dicts (the apps' composed Hydra config) to models, modules and streams.

Nothing here reads Hydra: the apps resolve their config to dicts and pass them in.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops

from data_pipelines.stream import StreamConfig
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer, preset_options
from pretrain.modules import OBJECTIVES, PretrainModule
from pretrain.optim import OptimConfig

MAE_OPTIONS = ("mask_ratio", "norm_pix_loss", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
MODULE_OPTIONS = {"mae": (), "supervised": ("label_smoothing", "mixup_alpha", "cutmix_alpha")}


# Keys that name where and how a run is kept, not what it computes: two runs differing only here hash alike.
UNHASHED_KEYS = ("run_dir", "resume", "logger")


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable fingerprint of what a resolved config computes, recorded in checkpoints, exports and results."""
    kept = {key: value for key, value in config.items() if key not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def backbone_options(model: Mapping[str, Any], num_classes: int = 0) -> dict[str, Any]:
    """Every VisionTransformer argument, spelled out: constructor defaults, then the preset's, then every key of
    the ``model`` group. Complete options keep an exported backbone rebuildable if defaults change later."""
    signature = inspect.signature(VisionTransformer.__init__).parameters.values()
    options = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
    options.update(preset_options(model["preset"]))
    options.update({key: value for key, value in model.items() if key != "preset"})
    options["num_classes"] = num_classes
    return options


def build_model(objective: Mapping[str, Any], backbone: Mapping[str, Any]) -> torch.nn.Module:
    """The objective's network around a backbone built from ``backbone`` options."""
    if objective["name"] == "mae":
        encoder = VisionTransformer(**{**backbone, "num_classes": 0})
        return MaskedAutoencoder(encoder, **{key: objective[key] for key in MAE_OPTIONS})
    return VisionTransformer(**backbone)


def build_module(
    config: Mapping[str, Any], num_classes: int, global_batch: int, meta: Mapping[str, Any]
) -> PretrainModule:
    """The Lightning module for ``config["objective"]["name"]``; unknown names list the known ones."""
    objective = config["objective"]
    if objective["name"] not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective['name']!r}; choose one of: {', '.join(sorted(OBJECTIVES))}")
    backbone = backbone_options(config["model"], num_classes if objective["name"] == "supervised" else 0)
    extra = {key: objective[key] for key in MODULE_OPTIONS[objective["name"]]}
    module = OBJECTIVES[objective["name"]](
        build_model(objective, backbone),
        optim=OptimConfig(**config["optim"]),
        total_steps=config["trainer"]["max_steps"],
        global_batch=global_batch,
        meta={**meta, "options": {**backbone, "num_classes": 0}},
        seed=config["seed"],
        max_bad_steps=config["trainer"]["max_bad_steps"],
        **extra,
    )
    module.flops_per_batch = flops_per_batch(objective, backbone, config["data"]["batch_size"])
    return module


def flops_per_batch(objective: Mapping[str, Any], backbone: Mapping[str, Any], batch_size: int) -> int:
    """Forward + backward FLOPs of one per-device batch, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build_model(objective, backbone)
        images = torch.empty(batch_size, backbone["in_chans"], backbone["img_size"], backbone["img_size"])
    if isinstance(model, MaskedAutoencoder):
        return measure_flops(model, lambda: model(images).loss, lambda loss: loss)
    return measure_flops(model, lambda: model(images), lambda logits: logits.sum())


def tokens_per_image(objective: Mapping[str, Any], backbone: Mapping[str, Any]) -> int:
    """Tokens the encoder processes per image: visible patches plus CLS for MAE, all of them otherwise."""
    patches = (backbone["img_size"] // backbone["patch_size"]) ** 2
    if objective["name"] == "mae":
        return int(patches * (1 - objective["mask_ratio"])) + 1
    return patches + 1


def stream_config(data: Mapping[str, Any], batches_per_epoch: int, seed: int, transform: str) -> StreamConfig:
    """The training stream for the ``data`` group: resampled shards, a fixed epoch length per rank."""
    return StreamConfig(
        shards=data["shards"],
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        transform=transform,
        image_size=data["image_size"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        seed=seed,
        resampled=True,
        batches_per_epoch=batches_per_epoch,
        shuffle_buffer=data["shuffle_buffer"],
        crop_scale=tuple(data["crop_scale"]),
        manifest=data["manifest"],
        pin_memory=data["pin_memory"],
    )

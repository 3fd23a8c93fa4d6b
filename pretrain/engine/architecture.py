"""The ``model`` config group -> the complete :class:`VisionTransformer` options of one backbone.

Ownership is fixed: a preset (``vit_base_patch16``) owns the architecture and the patch size; the ``model``
group owns everything else (image size, channels, position embedding, pooling, drop path, layer scale). A
``model`` key that restates a preset-owned value must agree with the preset, or building fails and says which
preset to pick instead, so the two can never silently disagree.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops

from pretrain.models.vit import PRESET_KEYS, VisionTransformer, preset_options


def backbone_options(model: Mapping[str, Any], num_classes: int = 0) -> dict[str, Any]:
    """Every VisionTransformer argument, spelled out: constructor defaults, then the preset's, then every key of
    the ``model`` group. Complete options keep an exported backbone rebuildable if defaults change later."""
    preset = preset_options(model["preset"])
    for key in PRESET_KEYS:
        if key in model and key in preset and model[key] != preset[key]:
            raise ValueError(
                f"model.{key}={model[key]} disagrees with model.preset={model['preset']} ({key}={preset[key]}): "
                f"the preset owns {key}; choose a preset with the {key} you want (for example "
                f"{_suggested_preset(model['preset'], key, model[key])})"
            )
    signature = inspect.signature(VisionTransformer.__init__).parameters.values()
    options = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
    options.update(preset)
    options.update({key: value for key, value in model.items() if key != "preset"})
    options["num_classes"] = num_classes
    return options


def _suggested_preset(preset: str, key: str, value: Any) -> str:
    if key == "patch_size" and "_patch" in preset:
        return f"{preset.rsplit('_patch', 1)[0]}_patch{value}"
    return "another preset"


def classifier_flops_per_batch(options: Mapping[str, Any], batch_size: int) -> int:
    """Forward + backward FLOPs of the classifier ``VisionTransformer(**options)`` on one per-device batch, counted
    on the meta device (no memory, no compute): what MFU is measured against."""
    with torch.device("meta"):
        model = VisionTransformer(**options)
        images = torch.empty(batch_size, *input_shape(model))
    return measure_flops(model, lambda: model(images), lambda logits: logits.sum())


def input_shape(model: VisionTransformer) -> tuple[int, ...]:
    """``(C, *spatial)`` of one input of ``model``: ``(3, 224, 224)``, ``(13, 64, 64)``, ``(1, 32, 32, 32)``."""
    return (model.patch_embed.in_chans, *model.patch_embed.image_shape)


def patch_tokens(options: Mapping[str, Any]) -> int:
    """Patch tokens of one input of ``VisionTransformer(**options)`` (channel tokens: one per channel per patch)."""
    with torch.device("meta"):
        model = VisionTransformer(**options)
        return model.patch_embed(torch.empty(1, *input_shape(model))).shape[1]

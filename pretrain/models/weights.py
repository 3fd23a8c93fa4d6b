"""Adapt state dicts from other layouts to ours, in one place (timm, HF, resized position embeddings).

Our parameter names are timm's, so timm state dicts need no renaming; HF ``ViTModel`` / ``ViTMAEModel`` /
``ViTMAEForPreTraining`` weights (old ``encoder.layer.N.attention.attention.query`` and new
``layers.N.attention.q_proj`` layouts) are renamed and their separate q/k/v projections fused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

StateDict = dict[str, Tensor]

# HF per-block names -> ours, for both the transformers 4.x and 5.x layouts.
_HF_BLOCK_RENAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "q": ("attention.attention.query", "attention.q_proj"),
    "k": ("attention.attention.key", "attention.k_proj"),
    "v": ("attention.attention.value", "attention.v_proj"),
}
_HF_BLOCK = re.compile(r"^(?:encoder\.layer|layers|decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


def _hf_blocks(state: Mapping[str, Tensor], prefix: str, target_prefix: str) -> StateDict:
    """Rename HF transformer layers under ``prefix`` to ``<target_prefix>.<i>.*``, fusing q/k/v into ``qkv``."""
    out: StateDict = {}
    qkv_parts: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        match = _HF_BLOCK.match(key[len(prefix) :])
        if match is None:
            continue
        index, inner, kind = int(match.group(1)), match.group(2), match.group(3)
        qkv_role = next((role for role, names in _HF_QKV.items() if inner in names), None)
        if qkv_role is not None:
            qkv_parts.setdefault((index, kind), {})[qkv_role] = value
        elif inner in _HF_BLOCK_RENAMES:
            out[f"{target_prefix}.{index}.{_HF_BLOCK_RENAMES[inner]}.{kind}"] = value
    for (index, kind), parts in qkv_parts.items():
        out[f"{target_prefix}.{index}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> StateDict:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def backbone_from_hf(state: Mapping[str, Tensor]) -> StateDict:
    """HF ``ViTModel``/``ViTForImageClassification``/``ViTMAE*`` weights -> our backbone (timm names).

    The HF pooler and classifier are dropped: a downstream head is task-specific. HF's default LayerNorm eps is
    1e-12 (ours 1e-6): build the backbone with ``norm_eps=1e-12`` to reproduce an HF model bit for bit.
    """
    prefix = "vit." if any(key.startswith("vit.") for key in state) else ""
    out = {
        "cls_token": state[f"{prefix}embeddings.cls_token"],
        "pos_embed": state[f"{prefix}embeddings.position_embeddings"],
        "patch_embed.proj.weight": state[f"{prefix}embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state[f"{prefix}embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state[f"{prefix}layernorm.weight"],
        "norm.bias": state[f"{prefix}layernorm.bias"],
    }
    out.update(_hf_blocks(state, prefix, "blocks"))
    return out


def mae_from_hf(state: Mapping[str, Tensor]) -> StateDict:
    """HF ``ViTMAEForPreTraining`` weights -> our :class:`~pretrain.models.mae.MaskedAutoencoder` state dict."""
    out = {f"encoder.{key}": value for key, value in backbone_from_hf(state).items()}
    decoder = _strip_prefix(state, "decoder.")
    for name in ("mask_token", "decoder_pos_embed"):
        out[name] = decoder[name]
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        out[f"{name}.weight"] = decoder[f"{name}.weight"]
        out[f"{name}.bias"] = decoder[f"{name}.bias"]
    out.update(_hf_blocks(decoder, "", "decoder_blocks"))
    return out


def backbone_from_timm(state: Mapping[str, Tensor]) -> StateDict:
    """timm ``VisionTransformer`` weights -> ours: the names already match; the classifier head is dropped."""
    return {key: value for key, value in state.items() if not key.startswith("head.")}


def resample_pos_embed(
    pos_embed: Tensor, new_grid: Sequence[int], num_prefix_tokens: int = 1, interpolation: str = "bicubic"
) -> Tensor:
    """Resize a ``[1, prefix + prod(grid), D]`` table to ``new_grid`` (FixRes fine-tuning at a new image size).

    Prefix (CLS) rows are kept as they are; the grid (square in 2-D, cubic in 3-D: the old grid is inferred from
    the row count) is interpolated in float32: with ``interpolation`` (antialiased) in 2-D, trilinear in 3-D
    (torch has no bicubic 3-D interpolation).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    axes = len(new_grid)
    side = round(grid.shape[1] ** (1 / axes))
    if side**axes != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} position rows do not form a {axes}-D grid with equal sides")
    if (side,) * axes == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    volume = grid.float().reshape(1, *(side,) * axes, dim).movedim(-1, 1)
    if axes == 2:
        volume = F.interpolate(volume, size=tuple(new_grid), mode=interpolation, antialias=True, align_corners=False)
    else:
        volume = F.interpolate(volume, size=tuple(new_grid), mode="trilinear", align_corners=False)
    resized = volume.movedim(1, -1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """A patch projection ``[D, C, *patch]`` for ``in_chans`` input channels, with timm's ``adapt_input_conv`` rule.

    One channel: the sum over the old ones. More or fewer: the old channels repeated in turn (cut at
    ``in_chans``) and scaled by ``C / in_chans``. An input whose channels all hold the same value keeps the
    response that value had on every old channel (a grey image keeps its RGB response): exactly when
    ``in_chans`` is 1 or a multiple of ``C``, approximately otherwise (RGB -> 13 bands repeats R once more).
    """
    old = weight.shape[1]
    if in_chans == old:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / old)
    tiled = weight.repeat(1, repeats, *(1,) * (weight.ndim - 2))[:, :in_chans]
    return tiled * (old / in_chans)


def select_input_channels(weight: Tensor, bands: Sequence[int]) -> Tensor:
    """The rows of a patch projection ``[D, C, *patch]`` for the input channels ``bands`` (band selection: a model
    pretrained on all bands of a sensor, evaluated on some of them, as terratorch's ``bands`` option)."""
    if not bands or max(bands) >= weight.shape[1] or min(bands) < 0:
        raise ValueError(f"bands {list(bands)} do not select among the checkpoint's {weight.shape[1]} input channels")
    return weight[:, list(bands)]


PATCH_WEIGHT = "patch_embed.proj.weight"


def adapt_to_model(
    state: Mapping[str, Tensor], model_state: Mapping[str, Tensor], grid_size: Sequence[int]
) -> StateDict:
    """Fit loadable weights to a target model of patch grid ``grid_size``: resample ``pos_embed`` when the grid
    differs, adapt the patch projection when the number of input channels differs (:func:`adapt_input_channels`)."""
    out = dict(state)
    if "pos_embed" in out and "pos_embed" in model_state and out["pos_embed"].shape != model_state["pos_embed"].shape:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], grid_size, num_prefix_tokens=1)
    if PATCH_WEIGHT in out and PATCH_WEIGHT in model_state:
        target = model_state[PATCH_WEIGHT].shape
        if out[PATCH_WEIGHT].shape[1] != target[1] and out[PATCH_WEIGHT].shape[2:] == target[2:]:
            out[PATCH_WEIGHT] = adapt_input_channels(out[PATCH_WEIGHT], target[1])
    return out

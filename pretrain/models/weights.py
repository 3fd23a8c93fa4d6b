"""Adapt state dicts from other layouts to ours, in one place (timm, HF, resized position embeddings).

Our parameter names are timm's, so timm state dicts need no renaming; HF ``ViTModel`` / ``ViTMAEModel`` /
``ViTMAEForPreTraining`` weights (old ``encoder.layer.N.attention.attention.query`` and new
``layers.N.attention.q_proj`` layouts) are renamed and their separate q/k/v projections fused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.models.vit import grid_side

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
    pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1, interpolation: str = "bicubic"
) -> Tensor:
    """Resize a square ``[1, prefix + g*g, D]`` table to ``new_grid`` (FixRes fine-tuning at a new image size).

    Prefix (CLS) rows are kept as they are; the grid is interpolated (bicubic, antialiased) in float32.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = grid_side(grid.shape[1])
    if (side, side) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    image = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(new_grid), mode=interpolation, antialias=True, align_corners=False)
    resized = image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


def adapt_to_model(state: Mapping[str, Tensor], model_state: Mapping[str, Tensor]) -> StateDict:
    """Fit loadable weights to a target model: resample ``pos_embed`` when the patch grid differs."""
    out = dict(state)
    if "pos_embed" in out and "pos_embed" in model_state and out["pos_embed"].shape != model_state["pos_embed"].shape:
        target = model_state["pos_embed"]
        num_prefix = 1
        side = grid_side(target.shape[1] - num_prefix)
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], (side, side), num_prefix)
    return out

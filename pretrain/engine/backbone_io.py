"""The one weight loader: anything a user may hold -> a :class:`VisionTransformer` backbone.

Accepted: an exported ``backbone.safetensors`` (+ ``backbone.json``), a Lightning ``.ckpt`` of our pretraining
or fine-tuning, a DeepSpeed checkpoint directory, a timm or MAE-reference state dict (``.pth``/``.pt``/``.bin``/
``.safetensors``), or HF ``ViTModel``/``ViTMAE*`` weights. Keys are adapted in :mod:`pretrain.models.weights`;
the position embedding is resampled when the requested image size differs (FixRes fine-tuning). The metadata
that travels with the weights is :class:`~pretrain.engine.metadata.BackboneMeta`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from data_pipelines.arrays import select_channels
from pretrain.engine.checkpoints import UnreadableCheckpointError, file_digest, read_checkpoint, recorded_digest
from pretrain.engine.metadata import BackboneMeta, meta_from_checkpoint, read_meta_file, write_meta_file
from pretrain.models.vit import VisionTransformer
from pretrain.models.weights import (
    PATCH_WEIGHT,
    adapt_to_model,
    backbone_from_hf,
    backbone_from_timm,
    select_input_channels,
)

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
META_FILE = "backbone.json"
# Wrappers that trainers put around our modules' parameter names, outermost first.
_WRAPPER_PREFIXES = ("_forward_module.", "module.", "model.", "encoder.")


def save_backbone(out_dir: str | os.PathLike, backbone: VisionTransformer, meta: BackboneMeta) -> Path:
    """Write ``backbone.safetensors`` (fp32, timm names, no head) and ``backbone.json``; both atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float().contiguous().cpu() for k, v in backbone.state_dict().items() if not k.startswith("head.")
    }
    weights_tmp = out_dir / f".{BACKBONE_FILE}.tmp"
    save_file(state, str(weights_tmp))
    os.replace(weights_tmp, out_dir / BACKBONE_FILE)
    write_meta_file(out_dir / META_FILE, meta)
    return out_dir / BACKBONE_FILE


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove trainer prefixes (``_forward_module.model.encoder.`` etc.) and keep backbone keys only."""
    out = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if any(key.startswith(prefix) for key in out):
            out = {key[len(prefix) :]: value for key, value in out.items() if key.startswith(prefix)}
    return out


def _deepspeed_state(directory: Path) -> tuple[dict[str, Tensor], BackboneMeta | None]:
    """Consolidate ZeRO shards to fp32; the metadata is the client state saved with the tag named in ``latest``."""
    root = directory / "checkpoint" if not (directory / "latest").is_file() else directory
    if not (root / "latest").is_file():
        raise FileNotFoundError(f"{directory} is {_what_folder_holds(directory)}; pass {ACCEPTED_WEIGHTS}")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # slow: only when needed

    state = get_fp32_state_dict_from_zero_checkpoint(str(root))
    tag_dir = root / (root / "latest").read_text().strip()
    # ZeRO-2 writes mp_rank_00_model_states.pt, ZeRO-3 zero_pp_rank_0_mp_rank_00_model_states.pt
    model_states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not model_states:
        return state, None
    return state, meta_from_checkpoint(torch.load(model_states[0], map_location="cpu", weights_only=False))


def _what_folder_holds(directory: Path) -> str:
    """Why ``directory`` is no checkpoint, with the Lightning checkpoints in it (a run directory) if any."""
    if not any(directory.iterdir()):
        return "an empty folder, not a checkpoint"
    lightning = sorted(directory.glob("*.ckpt")) + sorted(directory.glob("checkpoints/*.ckpt"))
    held = f" (it holds Lightning checkpoints, e.g. {lightning[-1]}: pass one of them)" if lightning else ""
    return f"not a checkpoint folder: no {BACKBONE_FILE} and no DeepSpeed 'latest' file in it or in checkpoint/{held}"


# What the loader reads, for the errors that say what would have worked.
ACCEPTED_WEIGHTS = (
    f"an exported {BACKBONE_FILE} (or its folder), a Lightning .ckpt, a DeepSpeed checkpoint folder, "
    "or a timm/HF state dict (.pth/.pt/.bin/.safetensors)"
)


class UnreadableWeightsError(ValueError):
    """A weights file that is not what its name says."""


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError, which says nothing of the file
        raise UnreadableWeightsError(
            f"{path} is not a readable safetensors file ({error}): pass {ACCEPTED_WEIGHTS}"
        ) from error


def _read_torch_weights(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's pickle errors name neither the file nor what would have worked
        raise UnreadableWeightsError(
            f"{path} is not a readable torch state dict ({type(error).__name__}: {error}): pass "
            f"{ACCEPTED_WEIGHTS} (a state dict saved with torch.save)"
        ) from error


def read_backbone_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], BackboneMeta | None]:
    """Backbone weights (our names, no head, no decoder) and their metadata when the source carries any."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta = None
    if path.is_dir():
        if (path / BACKBONE_FILE).is_file():
            return read_backbone_state(path / BACKBONE_FILE)
        state, meta = _deepspeed_state(path)
    elif path.suffix == ".safetensors":
        state = _read_safetensors(path)
        meta_path = path.with_name(META_FILE) if path.name == BACKBONE_FILE else path.with_suffix(".json")
        meta = read_meta_file(meta_path)
    elif path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        state, meta = checkpoint["state_dict"], meta_from_checkpoint(checkpoint)
    else:
        state = _read_torch_weights(path)
        for key in ("model", "state_dict"):  # MAE-reference and generic training checkpoints nest the weights
            if isinstance(state.get(key), Mapping):
                state = state[key]
    if any("embeddings.patch_embeddings" in key for key in state):
        return backbone_from_hf(state), meta
    state = _strip_wrappers(state)
    backbone = {k: v for k, v in backbone_from_timm(state).items() if not k.startswith(("decoder", "mask_token"))}
    return backbone, meta


def load_backbone(
    path: str | os.PathLike,
    options: Mapping[str, Any] | None = None,
    strict: bool = True,
    bands: Sequence[int] | None = None,
) -> tuple[VisionTransformer, BackboneMeta]:
    """Build and load a backbone. ``options`` (VisionTransformer arguments) override the checkpoint's own.

    Without metadata in the checkpoint (timm/HF files), ``options`` must describe the architecture. ``bands``
    (stored channels of the data, as the stream's ``bands`` selects them) keeps the checkpoint's channels that
    hold them (:func:`narrow_to_bands`). An ``in_chans`` that differs from the checkpoint's adapts the patch
    projection (timm's rule, :func:`adapt_input_channels`); the recorded mean/std, which no longer fit, are dropped.
    """
    state, meta = read_backbone_state(path)
    merged = {**(meta.options if meta is not None else {}), **(options or {})}
    if not merged:
        raise ValueError(
            f"{path} carries no architecture description: pass the backbone options (preset, img_size, ...)"
        )
    meta = BackboneMeta.for_architecture(merged) if meta is None else meta
    trained_chans = meta.options.get("in_chans", merged.get("in_chans"))
    if merged.get("channel_tokens") and merged.get("in_chans") != trained_chans:
        raise ValueError(
            f"a channel-token backbone keeps the {trained_chans} channel embeddings it was trained with: choose "
            "the channels it reads with bands=[...], not in_chans"
        )
    active = None
    if bands is not None:
        merged, state, meta, active = narrow_to_bands(merged, state, meta, list(bands))
    model = VisionTransformer(**merged)
    if active is not None:
        model.patch_embed.select_channels(active)
    model_state = model.state_dict()
    source, target = state.get(PATCH_WEIGHT), model_state[PATCH_WEIGHT]
    if source is not None and source.shape[1] != target.shape[1] and source.shape[2:] == target.shape[2:]:
        log.info("adapting the patch projection from %d to %d input channels", source.shape[1], target.shape[1])
        meta = meta.updated(mean=None, std=None)
    state = adapt_to_model(state, model_state, model.patch_embed.grid_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    if strict and (missing or unexpected):
        raise ValueError(f"weights in {path} do not fit the backbone: missing {missing}, unexpected {unexpected}")
    return model, meta.updated(options=merged)


def narrow_to_bands(
    options: dict[str, Any], state: dict[str, Tensor], meta: BackboneMeta, bands: list[int]
) -> tuple[dict[str, Any], dict[str, Tensor], BackboneMeta, list[int] | None]:
    """The backbone options, weights and metadata for reading the stored channels ``bands``, and for channel
    tokens the channel embeddings to activate.

    A checkpoint knows which stored channels its inputs were (``meta.bands``; all of them for array data without
    that record): the inputs holding ``bands`` are kept, their projection rows or channel embeddings, and their
    mean/std. A checkpoint of images (or of unknown inputs) with exactly ``len(bands)`` channels takes the
    chosen bands as its inputs (an RGB checkpoint on ``bands=[3,2,1]`` of 13-band tiles).
    """
    channels = options["in_chans"]
    if meta.bands is None and meta.inputs != "arrays" and channels == len(bands):
        return options, state, meta.updated(bands=tuple(bands)), None
    stored = list(meta.bands) if meta.bands is not None else list(range(channels))
    absent = [band for band in bands if band not in stored]
    if absent:
        raise ValueError(f"bands {absent} are not among the stored channels {stored} this checkpoint was trained on")
    inputs = [stored.index(band) for band in bands]
    if meta.mean is not None and meta.std is not None:
        meta = meta.updated(mean=select_channels(meta.mean, inputs), std=select_channels(meta.std, inputs))
    meta = meta.updated(bands=tuple(bands))
    if options.get("channel_tokens"):
        return options, state, meta, inputs
    state = {**state, PATCH_WEIGHT: select_input_channels(state[PATCH_WEIGHT], inputs)}
    return {**options, "in_chans": len(inputs)}, state, meta, None


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/backbone.safetensors`` and ``backbone.json`` from a training checkpoint of this pipeline;
    the metadata names the checkpoint and the SHA-256 of its bytes (a file's recorded digest is checked first)."""
    digest = verified_digest(Path(checkpoint))
    backbone, meta = load_backbone(checkpoint)
    if meta.step is None:
        raise ValueError(f"{checkpoint} is not a checkpoint of this pipeline's pretraining (no metadata)")
    return save_backbone(out_dir, backbone, meta.updated(source_checkpoint=str(checkpoint), source_sha256=digest))


def verified_digest(checkpoint: Path) -> str | None:
    """The SHA-256 of a checkpoint file, which must equal the digest recorded when it was saved (if one was);
    None for a DeepSpeed directory."""
    if checkpoint.is_dir() or not checkpoint.exists():
        return None
    found, recorded = file_digest(checkpoint), recorded_digest(checkpoint)
    if recorded is not None and found != recorded:
        raise UnreadableCheckpointError(
            f"checkpoint {checkpoint} is damaged: its SHA-256 is {found}, {recorded} was written with it"
        )
    return found

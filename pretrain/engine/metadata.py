"""The metadata contract: what a checkpoint and an exported ``backbone.json`` say about the backbone they hold.

One versioned dataclass, written and read only here. Format 2 is written; format 1 files (``vitfm-backbone/1``
exports, and checkpoints of that version, whose metadata had no ``format`` key) still load: their extra keys
(``optim``, ``counters``) are dropped, keys they lack are None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from data_pipelines.manifest import write_json_atomic

FORMAT = "vitfm-backbone/2"
LEGACY_FORMAT = "vitfm-backbone/1"
# Key of the metadata in a Lightning checkpoint (and in DeepSpeed's client state).
CHECKPOINT_META_KEY = "vitfm"
# Key of the training counters (bad steps, corrupt samples) in a checkpoint: run state, not backbone metadata.
CHECKPOINT_COUNTERS_KEY = "vitfm_counters"
# Not in the metadata: the optimizer settings (the run's .hydra/config.yaml and config_hash record them).


class MetadataFormatError(ValueError):
    """Metadata written by a newer or foreign program."""


@dataclass(frozen=True)
class BackboneMeta:
    """Everything needed to rebuild a backbone exactly, and where it came from.

    ``options`` are the complete :class:`~pretrain.models.vit.VisionTransformer` arguments (preset architecture,
    ``img_size``, ``patch_size``, ``in_chans``, position embedding, pooling). The rest is None for weights
    that carry no metadata (timm/HF files, a random initialization).
    """

    options: dict[str, Any]
    mean: tuple[float, ...] | None  # the normalization the backbone was trained with
    std: tuple[float, ...] | None
    objective: str | None  # pretraining objective (mae | supervised)
    objective_config: dict[str, Any] | None  # its config group, e.g. the MAE decoder options
    step: int | None  # optimizer steps of the run that wrote it
    config_hash: str | None  # fingerprint of that run's resolved config
    source_checkpoint: str | None  # the checkpoint an export was made from
    # What the input channels are (None when unknown, as in files written before these keys): "images" (encoded
    # pictures, normalized after scaling to [0, 1]) or "arrays" (stored values, normalized in their own units), and
    # for arrays the stored channels read, in order (None: all of them).
    inputs: str | None = None
    bands: tuple[int, ...] | None = None
    source_sha256: str | None = None  # the SHA-256 of the checkpoint file an export was made from

    @classmethod
    def for_architecture(cls, options: Mapping[str, Any]) -> BackboneMeta:
        """Metadata of a backbone known only by its architecture."""
        return cls(dict(options), None, None, None, None, None, None, None)

    def updated(self, **changes: Any) -> BackboneMeta:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        content = asdict(self)
        for key in ("mean", "std", "bands"):
            content[key] = None if content[key] is None else list(content[key])
        return {"format": FORMAT, **content}

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> BackboneMeta:
        """Format 2, or format 1 (``vitfm-backbone/1``, or no ``format`` key: checkpoints of that version)."""
        found = content.get("format", LEGACY_FORMAT)
        if found not in (FORMAT, LEGACY_FORMAT):
            raise MetadataFormatError(
                f"backbone metadata format {found!r} is not readable by this version (it reads {FORMAT} and "
                f"{LEGACY_FORMAT}): update vitfm"
            )
        values = {field.name: content.get(field.name) for field in fields(cls)}
        if values["options"] is None:
            raise MetadataFormatError("backbone metadata without 'options' cannot rebuild the backbone")
        for key in ("mean", "std", "bands"):
            values[key] = None if values[key] is None else tuple(values[key])
        return cls(**values)


def meta_from_checkpoint(checkpoint: Mapping[str, Any]) -> BackboneMeta | None:
    """The metadata of a Lightning checkpoint dict (or DeepSpeed client state); None when it has none."""
    content = checkpoint.get(CHECKPOINT_META_KEY)
    return None if content is None else BackboneMeta.from_dict(content)


def counters_to_checkpoint(checkpoint: dict[str, Any], bad_steps: int, corrupt_samples: int) -> None:
    """Store the training counters beside the metadata, for an exact resume."""
    checkpoint[CHECKPOINT_COUNTERS_KEY] = {"bad_steps": bad_steps, "corrupt_samples": corrupt_samples}


def counters_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, int]:
    """The training counters of a checkpoint (format 1 kept them inside the metadata); empty when it has none."""
    if CHECKPOINT_COUNTERS_KEY in checkpoint:
        return dict(checkpoint[CHECKPOINT_COUNTERS_KEY])
    return dict(checkpoint.get(CHECKPOINT_META_KEY, {}).get("counters", {}))


def read_meta_file(path: Path) -> BackboneMeta | None:
    """``backbone.json`` (or ``<weights>.json``) beside exported weights; None when there is no such file or it is
    not ours (every format writes a ``format`` key; a JSON file of another program has none)."""
    if not path.is_file():
        return None
    content = json.loads(path.read_text())
    return BackboneMeta.from_dict(content) if isinstance(content, dict) and "format" in content else None


def write_meta_file(path: Path, meta: BackboneMeta) -> None:
    write_json_atomic(path, meta.to_dict())

"""The `manifest.json` beside a set of shards: what readers use for epoch lengths, class names and resume.

Written by the shard writer; read with `read_manifest(shards)`, which returns the counts of exactly the shards
a pattern selects (a subset of a directory counts only its own samples).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

from data_pipelines.shards import ShardSpec, expand_shards, local_path

MANIFEST_NAME = "manifest.json"


@dataclass
class ShardStats:
    """Sample count, bytes and image-size range of one shard, accumulated while it is written."""

    file: str
    count: int = 0
    bytes: int = 0
    width_min: int = 0
    width_max: int = 0
    width_sum: int = 0
    height_min: int = 0
    height_max: int = 0
    height_sum: int = 0

    def add(self, width: int, height: int, size: int) -> None:
        first = self.count == 0
        self.width_min = width if first else min(self.width_min, width)
        self.height_min = height if first else min(self.height_min, height)
        self.width_max = max(self.width_max, width)
        self.height_max = max(self.height_max, height)
        self.width_sum += width
        self.height_sum += height
        self.bytes += size
        self.count += 1


def image_size_summary(shards: list[ShardStats]) -> dict[str, dict[str, float]]:
    """Min, max and mean width and height over all samples of `shards`."""
    total = sum(shard.count for shard in shards)
    return {
        axis: {
            "min": min(getattr(shard, f"{axis}_min") for shard in shards),
            "max": max(getattr(shard, f"{axis}_max") for shard in shards),
            "mean": round(sum(getattr(shard, f"{axis}_sum") for shard in shards) / total, 2),
        }
        for axis in ("width", "height")
    }


def shard_stats_from_json(entries: list[dict[str, Any]]) -> list[ShardStats]:
    return [ShardStats(**entry) for entry in entries]


def shard_stats_to_json(shards: list[ShardStats]) -> list[dict[str, Any]]:
    return [asdict(shard) for shard in shards]


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write JSON so that a killed process leaves either the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_manifest(shards: ShardSpec, manifest: str | None = None) -> dict[str, Any]:
    """Counts and classes of the shards `shards` selects.

    Returns `{"total", "counts" (url -> samples), "classes" (names or None), "num_classes", "manifests"
    (location -> full manifest)}`. The manifest is looked for beside each shard unless `manifest` names one
    (needed for `pipe:` URLs, whose folder cannot be derived).
    """
    urls = expand_shards(shards)
    locations = {url: manifest or _manifest_beside(url) for url in urls}
    manifests = {location: _load_manifest(location) for location in sorted(set(locations.values()))}
    counts = {url: _count_of(url, location, manifests[location]) for url, location in locations.items()}
    classes = _common_classes(manifests)
    return {
        "total": sum(counts.values()),
        "counts": counts,
        "classes": classes,
        "num_classes": None if classes is None else len(classes),
        "manifests": manifests,
    }


def _manifest_beside(url: str) -> str:
    path = local_path(url)
    if path is not None:
        return str(path.parent / MANIFEST_NAME)
    if url.startswith("pipe:"):
        raise ValueError(f"cannot find the manifest of {url!r}: pass manifest=PATH_OR_URL of its manifest.json")
    return posixpath.join(posixpath.dirname(url), MANIFEST_NAME)


def _load_manifest(location: str) -> dict[str, Any]:
    try:
        with wds.gopen(location, "rb") as stream:
            return json.load(stream)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} at {location}: shards written by data_pipelines.write_shards have one beside "
            "them; pass manifest=PATH if it lives elsewhere"
        ) from error


def _count_of(url: str, location: str, manifest: dict[str, Any]) -> int:
    name = posixpath.basename(url)
    counts = {shard["file"]: shard["count"] for shard in manifest["shards"]}
    if name not in counts:
        raise ValueError(f"shard {url} is not listed in {location}: was it written by another conversion?")
    return counts[name]


def _common_classes(manifests: dict[str, dict[str, Any]]) -> list[str] | None:
    class_lists = {location: manifest.get("classes") for location, manifest in manifests.items()}
    distinct = {json.dumps(classes) for classes in class_lists.values()}
    if len(distinct) > 1:
        raise ValueError(
            f"the selected shards come with different class lists ({', '.join(class_lists)}): "
            "stream them separately or write them with one class list"
        )
    return next(iter(class_lists.values()))

"""The `manifest.json` beside a set of shards: what readers use for epoch lengths, class names and resume.

Written by the shard writer; read with `read_manifest(shards)`, which returns the counts of exactly the shards
a pattern selects (a subset of a directory counts only its own samples). `verify_manifest_counts` checks those
counts against the local tar shards themselves: a manifest that disagrees with its shards gives wrong epoch
lengths, phantom lost samples and, in the elastic order, short batches, all without an error of their own.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import webdataset as wds

from data_pipelines.arrays import ARRAY_FORMATS, ChannelMoments, select_channels
from data_pipelines.shards import ShardSpec, expand_shards, local_path
from data_pipelines.tar_members import count_samples

if TYPE_CHECKING:
    from data_pipelines.sources.base import EncodedImage

MANIFEST_NAME = "manifest.json"
# How a user points the apps at a manifest that is not beside the shards; every message that asks for one says it.
SET_MANIFEST = "set data.manifest=PATH (pretraining; fine-tuning reads the manifest.json beside the shards)"
REWRITE_SHARDS = "python -m data_pipelines.write_shards ... --overwrite"
MISMATCHES_SHOWN = 3

logger = logging.getLogger(__name__)


class ManifestMismatchError(ValueError):
    """A manifest's sample count disagrees with the shard it describes, or the shard is not a tar archive."""


@dataclass
class ShardStats:
    """Sample count, bytes, size range (and for arrays channel moments) of one shard, accumulated while written."""

    file: str
    count: int = 0
    bytes: int = 0
    width_min: int = 0
    width_max: int = 0
    width_sum: int = 0
    height_min: int = 0
    height_max: int = 0
    height_sum: int = 0
    depth_min: int = 0  # volumes only (0 for images)
    depth_max: int = 0
    depth_sum: int = 0
    channels: int = 0
    moment_count: float = 0.0  # arrays: per-channel sums of values and squares (data_pipelines.arrays)
    channel_sums: list[float] = field(default_factory=list)
    channel_squares: list[float] = field(default_factory=list)
    source_bytes: int = 0  # of the images as their source held them (more than `bytes` where resized on write)
    resized: int = 0

    def add(self, image: EncodedImage, source_bytes: int, resized: bool) -> None:
        first = self.count == 0
        for axis, size in (("width", image.width), ("height", image.height), ("depth", image.depth or 0)):
            setattr(self, f"{axis}_min", size if first else min(getattr(self, f"{axis}_min"), size))
            setattr(self, f"{axis}_max", max(getattr(self, f"{axis}_max"), size))
            setattr(self, f"{axis}_sum", getattr(self, f"{axis}_sum") + size)
        if not first and image.channels != self.channels:
            raise ValueError(f"a sample with {image.channels} channels in a shard of {self.channels}-channel samples")
        self.channels = image.channels
        if image.moments is not None:
            self.moments_add(image.moments)
        self.bytes += len(image.data)
        self.source_bytes += source_bytes
        self.resized += resized
        self.count += 1

    def moments(self) -> ChannelMoments:
        return ChannelMoments(self.moment_count, list(self.channel_sums), list(self.channel_squares))

    def moments_add(self, moments: ChannelMoments) -> None:
        total = self.moments()
        total.add(moments)
        self.moment_count, self.channel_sums, self.channel_squares = total.count, total.sums, total.squares


def image_size_summary(shards: list[ShardStats]) -> dict[str, dict[str, float]]:
    """Min, max and mean width and height (and depth, for volumes) over all samples of `shards`."""
    total = sum(shard.count for shard in shards)
    volumes = any(shard.depth_max for shard in shards)
    return {
        axis: {
            "min": min(getattr(shard, f"{axis}_min") for shard in shards),
            "max": max(getattr(shard, f"{axis}_max") for shard in shards),
            "mean": round(sum(getattr(shard, f"{axis}_sum") for shard in shards) / total, 2),
        }
        for axis in ("width", "height", *(("depth",) if volumes else ()))
    }


def channel_statistics(shards: list[ShardStats]) -> dict[str, list[float]] | None:
    """Per-channel mean and std over every value of the arrays in `shards` (None for encoded images)."""
    total = ChannelMoments()
    for shard in shards:
        if shard.moment_count:
            total.add(shard.moments())
    if not total.count:
        return None
    mean, std = total.mean_std()
    return {"mean": mean, "std": std, "values_per_channel": total.count}


def channel_normalization(found: dict[str, Any], bands: Sequence[int] | None) -> tuple[list[float], list[float]]:
    """The per-channel mean and std of array shards (``found`` from :func:`read_manifest`), of ``bands`` only when
    given; the statistics of several manifests are pooled exactly (weighted by their number of values)."""
    stats = [manifest.get("channel_stats") for manifest in found["manifests"].values()]
    if any(entry is None for entry in stats):
        raise ValueError(
            "the shards' manifest has no channel statistics (encoded images, or written by an older version): "
            "set data.mean and data.std"
        )
    total = ChannelMoments()
    for entry in stats:
        count = entry["values_per_channel"]
        squares = [count * (s * s + m * m) for m, s in zip(entry["mean"], entry["std"], strict=True)]
        total.add(ChannelMoments(count, [count * m for m in entry["mean"]], squares))
    mean, std = total.mean_std()
    return list(select_channels(mean, bands)), list(select_channels(std, bands))


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

    Returns `{"total", "counts" (url -> samples), "classes" (names or None), "num_classes", "arrays" (the samples
    are arrays, not encoded images), "manifests" (location -> full manifest), "locations" (url -> the location of
    its manifest)}`. The manifest is looked for beside each shard unless `manifest` names one (needed for `pipe:`
    URLs, whose folder cannot be derived).
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
        "arrays": _stores_arrays(manifests),
        "manifests": manifests,
        "locations": locations,
    }


def verify_manifest_counts(found: dict[str, Any]) -> None:
    """Check the per-shard counts of ``found`` (from :func:`read_manifest`) against the local ``.tar`` shards.

    Each shard's samples are counted from its tar headers (:func:`data_pipelines.tar_members.count_samples`, the
    grouping the streams read with), once per file version in a process: a loader built every epoch costs a
    ``stat`` per shard after the first. Remote (``pipe:``, ``http``) and compressed shards are not checked. A count
    that differs, or a shard that is not a tar archive, raises :class:`ManifestMismatchError`; a tar damaged after
    some samples is warned about, as the streams skip and count what it lost.
    """
    problems = [
        problem
        for url, expected in found["counts"].items()
        if (problem := _count_problem(url, expected, found["locations"][url])) is not None
    ]
    if problems:
        more = f" (and {len(problems) - MISMATCHES_SHOWN} more)" if len(problems) > MISMATCHES_SHOWN else ""
        raise ManifestMismatchError(
            f"{len(problems)} of {len(found['counts'])} shards disagree with their manifest: "
            f"{'; '.join(problems[:MISMATCHES_SHOWN])}{more}; write shards and manifest again together "
            f"({REWRITE_SHARDS}) or restore the shards the manifest describes"
        )


def _count_problem(url: str, expected: int, location: str) -> str | None:
    """Why the shard at ``url`` disagrees with its manifest's count, or None when it agrees."""
    path = local_path(url)
    if path is None or not url.endswith(".tar"):
        return None
    status = path.stat()
    counted, damage = _tar_sample_count(str(path), status.st_size, status.st_mtime_ns)
    if damage is not None and counted == 0:
        return f"{url} is not a readable tar archive ({damage})"
    if damage is not None and counted <= expected:
        logger.warning(
            "shard %s is damaged after %d of the %d samples %s lists (%s): the stream skips and counts the rest",
            url,
            counted,
            expected,
            location,
            damage,
        )
        return None
    if counted != expected:
        return f"{url} holds {counted} samples, {location} lists {expected}"
    return None


@functools.cache
def _tar_sample_count(path: str, size: int, mtime_ns: int) -> tuple[int, str | None]:
    """(samples, damage) of one version of a tar file: its size and mtime key the cache."""
    counted, damage = count_samples(path)
    return counted, None if damage is None else str(damage)


def _manifest_beside(url: str) -> str:
    path = local_path(url)
    if path is not None:
        return str(path.parent / MANIFEST_NAME)
    if url.startswith("pipe:"):
        raise ValueError(f"cannot find the manifest of {url!r}: {SET_MANIFEST}")
    return posixpath.join(posixpath.dirname(url), MANIFEST_NAME)


def _load_manifest(location: str) -> dict[str, Any]:
    try:
        with wds.gopen(location, "rb") as stream:
            return json.load(stream)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} at {location}: shards written by data_pipelines.write_shards have one beside "
            f"them; if it lives elsewhere, {SET_MANIFEST}"
        ) from error


def _count_of(url: str, location: str, manifest: dict[str, Any]) -> int:
    name = posixpath.basename(url)
    counts = {shard["file"]: shard["count"] for shard in manifest["shards"]}
    if name not in counts:
        raise ValueError(f"shard {url} is not listed in {location}: was it written by another conversion?")
    return counts[name]


def _stores_arrays(manifests: dict[str, dict[str, Any]]) -> bool:
    kinds = {location: manifest.get("format") in ARRAY_FORMATS for location, manifest in manifests.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"the selected shards mix arrays and encoded images ({', '.join(kinds)}): stream them apart")
    return next(iter(kinds.values()))


def _common_classes(manifests: dict[str, dict[str, Any]]) -> list[str] | None:
    class_lists = {location: manifest.get("classes") for location, manifest in manifests.items()}
    distinct = {json.dumps(classes) for classes in class_lists.values()}
    if len(distinct) > 1:
        raise ValueError(
            f"the selected shards come with different class lists ({', '.join(class_lists)}): "
            "stream them separately or write them with one class list"
        )
    return next(iter(class_lists.values()))

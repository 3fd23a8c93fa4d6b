"""Write a source's items into `NAME-%06d.tar` shards with webdataset's ShardWriter, plus `manifest.json`.

One directory holds one conversion. Running the same conversion again resumes after the last finished shard
(recorded in `.write_progress.json`) or, when it is complete, returns its manifest. Shards from any other
conversion make it refuse unless `overwrite=True`, so old and new shards never mix.

Items are written in a seeded random order, so that every shard mixes all classes (a stream shuffles only
within a buffer); keys come from the source's sorted listing, so they do not depend on that order.

Images larger than the resize options allow are stored smaller (:mod:`data_pipelines.resize`); the manifest
records the limits, how many images were resized and the bytes before and after.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_pipelines.arrays import ARRAY_FORMATS
from data_pipelines.manifest import (
    MANIFEST_NAME,
    ShardStats,
    channel_statistics,
    image_size_summary,
    read_json,
    shard_stats_from_json,
    shard_stats_to_json,
    write_json_atomic,
)
from data_pipelines.registry import check_name
from data_pipelines.resize import ResizePolicy, resize_encoded
from data_pipelines.segmentation_transforms import MASK_MEMBER, VOLUME_MASK_MEMBER
from data_pipelines.sources.base import ENCODINGS, EncodedImage, Item, Listing
from data_pipelines.worker_signals import end_on_stop_signals

PROGRESS_NAME = ".write_progress.json"
MAX_SKIPPED_EXAMPLES = 20
# What a broken or unreadable image raises; anything else is a bug and must stop the conversion.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class WriteOptions:
    name: str
    max_count: int = 5000
    max_size: int = 500_000_000
    image_format: str = "png"
    workers: int = 1
    seed: int = 0
    overwrite: bool = False
    resize_short_side: int | None = None  # store images with a shorter side of at most this many pixels
    resize_max_pixels: int | None = None  # ... and at most this many pixels in all

    def __post_init__(self) -> None:
        check_name(self.image_format, [*ENCODINGS, *ARRAY_FORMATS], "image format")
        if self.max_count < 1 or self.max_size < 1:
            raise ValueError(f"max_count and max_size must be positive, got {self.max_count} and {self.max_size}")
        for name in ("resize_short_side", "resize_max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number of pixels, got {getattr(self, name)}")

    @property
    def resize(self) -> ResizePolicy:
        return ResizePolicy(self.resize_short_side, self.resize_max_pixels)


@dataclass(frozen=True)
class EncodedSample:
    key: str
    label: int | None
    image: EncodedImage
    source_bytes: int  # of the image as the source holds it
    resized: bool  # stored smaller than the source holds it


@dataclass(frozen=True)
class UnreadableItem:
    key: str
    error: str


@dataclass
class Progress:
    """What the finished shards of an interrupted conversion hold; saved after every shard."""

    settings: dict[str, Any]
    shards: list[ShardStats] = field(default_factory=list)
    consumed: int = 0  # items, in write order, that finished shards cover (unreadable ones included)
    skipped_count: int = 0
    skipped_examples: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "shards": shard_stats_to_json(self.shards)}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Progress:
        return cls(**{**saved, "shards": shard_stats_from_json(saved["shards"])})


def write_listing(listing: Listing, out_dir: Path, options: WriteOptions, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write `listing` into shards under `out_dir` (resuming or refusing as the module says); return the manifest."""
    if not listing.items:
        raise ValueError(f"no images to write from {provenance}")
    if listing.arrays != (options.image_format in ARRAY_FORMATS):
        kind, formats = ("arrays", ARRAY_FORMATS) if listing.arrays else ("images", tuple(ENCODINGS))
        raise ValueError(
            f"{provenance.get('source')} holds {kind}: store them as {' or '.join(formats)}, not {options.image_format}"
        )
    if listing.arrays and options.resize.active:
        raise ValueError(f"{provenance.get('source')} holds arrays, stored as they are: resizing applies to images")
    settings = {**provenance, **asdict(options), "items": len(listing.items)}
    del settings["workers"], settings["overwrite"]  # they change how, not what, is written
    if not options.resize.active:  # as conversions recorded them before resizing existed: they still resume
        del settings["resize_short_side"], settings["resize_max_pixels"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.overwrite:
        remove_conversion(out_dir)
    manifest = read_json(out_dir / MANIFEST_NAME)
    if manifest is not None and manifest.get("settings") == settings:
        return manifest
    progress = load_progress(out_dir, settings)
    if progress.consumed < len(listing.items):
        _write_remaining(listing, out_dir, options, progress)
    manifest = build_manifest(progress, listing, options, provenance)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    (out_dir / PROGRESS_NAME).unlink()
    return manifest


def remove_conversion(out_dir: Path) -> None:
    """Delete the shards, manifest and progress record in `out_dir` (and nothing else)."""
    for path in [*out_dir.glob("*.tar"), out_dir / MANIFEST_NAME, out_dir / PROGRESS_NAME]:
        path.unlink(missing_ok=True)


def load_progress(out_dir: Path, settings: dict[str, Any]) -> Progress:
    """The progress of this same conversion if one was interrupted here; refuse if others' shards are present."""
    saved = read_json(out_dir / PROGRESS_NAME)
    if saved is not None and saved["settings"] == settings:
        progress = Progress.from_json(saved)
        finished = {shard.file for shard in progress.shards}
        for unfinished in (path for path in out_dir.glob("*.tar") if path.name not in finished):
            unfinished.unlink()
        return progress
    present = sorted(path.name for path in out_dir.glob("*.tar"))
    present += [name for name in (MANIFEST_NAME, PROGRESS_NAME) if (out_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(present[:3])}{' ...' if len(present) > 3 else ''} from another "
            "conversion or other settings; pass --overwrite to replace them, or choose another --out"
        )
    return Progress(settings)


def build_manifest(
    progress: Progress, listing: Listing, options: WriteOptions, provenance: dict[str, Any]
) -> dict[str, Any]:
    total = sum(shard.count for shard in progress.shards)
    if total == 0:
        first_errors = progress.skipped_examples[:3]
        raise ValueError(f"none of the {len(listing.items)} images could be read; first errors: {first_errors}")
    return {
        "name": options.name,
        **provenance,
        "format": options.image_format,
        "total": total,
        "classes": listing.classes,
        "num_classes": None if listing.classes is None else len(listing.classes),
        "shards": [{"file": shard.file, "count": shard.count, "bytes": shard.bytes} for shard in progress.shards],
        "channels": progress.shards[0].channels,
        "spatial_dims": 3 if any(shard.depth_max for shard in progress.shards) else 2,
        "channel_stats": channel_statistics(progress.shards),
        "segmentation": None if listing.ignore_index is None else {"ignore_index": listing.ignore_index},
        "image_size": image_size_summary(progress.shards),
        "resize": resize_summary(progress.shards, options.resize),
        "skipped": {"count": progress.skipped_count, "examples": progress.skipped_examples},
        "settings": progress.settings,
    }


def resize_summary(shards: list[ShardStats], policy: ResizePolicy) -> dict[str, int | None] | None:
    """The resize limits, the images they made smaller, and the bytes of all images before and after."""
    if not policy.active:
        return None
    return {
        "short_side": policy.short_side,
        "max_pixels": policy.max_pixels,
        "resized": sum(shard.resized for shard in shards),
        "source_bytes": sum(shard.source_bytes for shard in shards),
        "bytes": sum(shard.bytes for shard in shards),
    }


def encode_item(item: Item, image_format: str, resize: ResizePolicy) -> EncodedSample | UnreadableItem:
    """Runs in a worker process: the item's tar-ready bytes (resized when larger than ``resize`` allows), or why
    it could not be read."""
    try:
        image = item.encode(image_format)
        stored = resize_encoded(image, resize)
        return EncodedSample(item.key, item.label, stored, len(image.data), resized=stored is not image)
    except UNREADABLE_IMAGE_ERRORS as error:
        return UnreadableItem(item.key, f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def encoded_stream(
    items: Iterable[Item], image_format: str, resize: ResizePolicy, workers: int
) -> Iterator[Iterator[EncodedSample | UnreadableItem]]:
    """Encode items in `workers` processes, keeping their order (the shards must not depend on scheduling)."""
    encode = functools.partial(encode_item, image_format=image_format, resize=resize)
    if workers <= 1:
        yield map(encode, items)
        return
    with multiprocessing.Pool(workers, initializer=end_on_stop_signals) as pool:
        yield pool.imap(encode, items, chunksize=16)


class _ShardRecorder:
    """Follows ShardWriter's shards: their statistics, and the progress record saved as each one closes."""

    def __init__(self, progress: Progress, out_dir: Path) -> None:
        self.progress = progress
        self.out_dir = out_dir
        self.position = progress.consumed
        self.current = ShardStats(file="")
        # Running totals for the progress bar, so that a sample costs no pass over the finished shards.
        self.source_bytes = sum(shard.source_bytes for shard in progress.shards)
        self.stored_bytes = sum(shard.bytes for shard in progress.shards)

    def add(self, sample: EncodedSample) -> None:
        self.current.add(sample.image, sample.source_bytes, sample.resized)
        self.source_bytes += sample.source_bytes
        self.stored_bytes += len(sample.image.data)

    def bytes_saved(self) -> str:
        """Bytes saved by resizing so far, for the progress bar."""
        return f"{self.source_bytes / 1e6:.1f} -> {self.stored_bytes / 1e6:.1f} MB" if self.source_bytes else ""

    def skip(self, item: UnreadableItem) -> None:
        self.progress.skipped_count += 1
        if len(self.progress.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.progress.skipped_examples.append({"key": item.key, "error": item.error})

    def shard_finished(self, filename: str) -> None:
        """ShardWriter's `post` hook: the shard is closed, and it covers every item before `position`."""
        if self.current.count == 0:
            Path(filename).unlink()
        else:
            self.current.file = Path(filename).name
            self.progress.shards.append(self.current)
        self.progress.consumed = self.position
        write_json_atomic(self.out_dir / PROGRESS_NAME, self.progress.to_json())
        self.current = ShardStats(file="")


def _write_remaining(listing: Listing, out_dir: Path, options: WriteOptions, progress: Progress) -> None:
    order = np.random.default_rng(options.seed).permutation(len(listing.items))
    remaining = (listing.items[index] for index in order[progress.consumed :])
    recorder = _ShardRecorder(progress, out_dir)
    writer = wds.ShardWriter(
        str(out_dir / f"{options.name}-%06d.tar"),
        maxcount=options.max_count,
        maxsize=options.max_size,
        start_shard=len(progress.shards),
        post=recorder.shard_finished,
        verbose=0,
        encoder=False,
        mtime=0,  # identical bytes on every run, so a resumed conversion equals an uninterrupted one
    )
    bar = tqdm(total=len(listing.items), initial=progress.consumed, desc=f"writing {options.name}", unit="img")
    resizing = options.resize.active
    with encoded_stream(remaining, options.image_format, options.resize, options.workers) as results, bar:
        for position, result in enumerate(results, start=progress.consumed):
            recorder.position = position
            bar.update()
            if isinstance(result, UnreadableItem):
                recorder.skip(result)
                bar.write(f"skipping unreadable image {result.key}: {result.error}")
                continue
            writer.write(tar_sample(result))
            recorder.add(result)
            if resizing:
                bar.set_postfix_str(recorder.bytes_saved(), refresh=False)
    recorder.position = len(listing.items)
    writer.close()


def tar_sample(sample: EncodedSample) -> dict[str, Any]:
    """The tar members of one sample: `key.<ext>`, when labeled `key.cls` holding the decimal label, `key.json`
    when the sample has metadata (a volume's spacing), `key.seg.png` when it has a segmentation mask."""
    members: dict[str, Any] = {"__key__": sample.key, sample.image.extension: sample.image.data}
    if sample.label is not None:
        members["cls"] = str(sample.label).encode()
    if sample.image.metadata:
        members["json"] = json.dumps(sample.image.metadata, sort_keys=True).encode()
    if sample.image.mask is not None:
        members[VOLUME_MASK_MEMBER if sample.image.extension in ARRAY_FORMATS else MASK_MEMBER] = sample.image.mask
    return members

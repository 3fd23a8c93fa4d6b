"""Stream decoded, augmented, batched images from WebDataset shards: what a training or eval step reads.

    crops = TransformOptions(image_size=32, crop_scale=(0.2, 1), crop_ratio=(3 / 4, 4 / 3), eval_crop_fraction=1,
                             randaugment=None, intensity_scale=None, bands=None)
    loader = build_loader(StreamConfig("data/demo/train", batch_size=64, num_workers=2, transform="mae", augment=crops,
                                       mean=(0.5,) * 3, std=(0.25,) * 3, seed=0, shuffle_buffer=1000, manifest=None,
                                       pin_memory=False))
    for batch in loader:  # {"image": float [B,3,S,S], "label": long [B], "corrupt_skipped": long [], "key": [B]}
        ...  # segmentation shards give "mask": long [B,S,S] instead of "label"; array shards [B,C,*spatial] images

The stages of one dataloader worker, in order (`ShardStream.pipeline`):
    shards of this epoch (shuffled by seed+epoch, same on every rank; or resampled with replacement)
    -> this rank's share -> this worker's share -> tar members grouped into samples
    -> shuffle buffer -> number samples -> group into batches -> skip batches already consumed (resume)
    -> decode + transform + collate + normalize (or leave uint8 for the device to normalize: normalize=False; or
       hand JPEGs over encoded with their crops drawn, for the device to decode: decode_on_device=True)

Order: for a given (seed, epoch, rank, world_size, num_workers) the batches and their pixels are the same on every
run: each shuffle and each sample's augmentation draws from its own seed (data_pipelines.seeding).

Resume: `skip_batches=k` yields exactly what an uninterrupted loader yields from its batch k on. Skipped batches
are read from the tar but never decoded. Non-resampled streams with several workers need the manifest's per-shard
counts for this (see data_pipelines.resume).

Corrupt data: a sample whose image or label cannot be decoded, or that a damaged tar lost, is skipped and
counted, never fatal. What cannot be told from damage is refused before the first batch: a manifest whose counts
disagree with its local shards, or a shard that is not a tar archive (`shard_facts`). Each batch carries
`corrupt_skipped`, the samples skipped in its place (see `read_shards` and `BatchDecoder`), so summing
`batch["corrupt_skipped"]` over every batch a rank receives gives that rank's total, each skip counted once, also
across a resume (all-reduce with sum across ranks for the global count). A skipped sample leaves its batch smaller
rather than shifting later batch boundaries, so resume stays exact over corrupt data (a batch with no decodable
sample at all is the exception: it is not yielded).

Epoch length: non-resampled streams read every sample of the selected shards exactly once per epoch across all
ranks and workers; ranks may then get different batch counts, which multi-rank training must not have, so use
`resampled=True` (or `batches_per_epoch`, which caps every rank at the same count) there. Resampled streams draw
shards with replacement and every rank yields exactly `batches_per_epoch` batches.
"""

from __future__ import annotations

import itertools
import logging
import math
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed
import webdataset as wds

from data_pipelines.decode import StoredImage
from data_pipelines.device_decode import DeviceDecoder, PendingJpeg, handover_batch
from data_pipelines.holdout import KeySelection
from data_pipelines.manifest import SET_MANIFEST, read_manifest, verify_manifest_counts
from data_pipelines.registry import check_name
from data_pipelines.resume import plan_skip
from data_pipelines.seeding import seeded_rng, stable_seed
from data_pipelines.shards import expand_shards, local_path
from data_pipelines.tar_members import local_tar_samples
from data_pipelines.transforms import (
    CORRUPT_SAMPLE_ERRORS,
    TRANSFORM_NAMES,
    ImageTransform,
    Normalize,
    PlannedCrop,
    TransformOptions,
    build_transform,
    collate_targets,
    open_input,
    open_mask,
    read_label,
)
from data_pipelines.worker_signals import leave_stop_signals_to_parent

__all__ = ["ShardLoader", "StreamConfig", "build_loader", "read_manifest"]

logger = logging.getLogger(__name__)
# Errors of reading a tar that mean damaged data; others (a missing shard, a failing `pipe:` command) are raised.
CORRUPT_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, zlib.error)


@dataclass
class StreamConfig:
    """Everything that decides which batches a rank yields. Tuples may be given as lists (Hydra).

    The first fields come from the apps' config (no defaults here); the rest place the stream in a run (epoch,
    rank, resume position, hold-out side) or choose what it hands over (``normalize``).
    """

    shards: str | list[str]
    batch_size: int
    num_workers: int
    transform: str  # mae | supervised | eval (data_pipelines.transforms)
    augment: TransformOptions
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    shuffle_buffer: int  # samples; 0 reads shards in order (with shards still shuffled unless resampled)
    manifest: str | None  # manifest.json location when it is not beside the shards (pipe: URLs); None: beside
    pin_memory: bool
    epoch: int = 0
    resampled: bool = False
    batches_per_epoch: int | None = None  # per rank; required when resampled, a cap otherwise
    skip_batches: int = 0  # resume: batches of this epoch this rank already consumed
    rank: int | None = None  # None: from torch.distributed when initialized, else 0 of 1
    world_size: int | None = None
    holdout: KeySelection | None = None  # read only one side of a seeded hold-out split (by sample key)
    # False: "image" stays uint8 and the consumer applies transforms.Normalize on its device, which saves the
    # loader's CPU a float pass and moves 4x fewer bytes (see bench/loader.py).
    normalize: bool = True
    # True: JPEGs are handed over still encoded, with their crops drawn, for the consumer to decode on its device
    # (data_pipelines.device_decode.DeviceDecoder; nvJPEG on CUDA); other formats are decoded here as usual.
    decode_on_device: bool = False

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        check_name(self.transform, TRANSFORM_NAMES, "transform")
        if self.batch_size < 1 or self.num_workers < 0 or self.skip_batches < 0:
            raise ValueError(
                "need batch_size >= 1, num_workers >= 0, skip_batches >= 0; "
                f"got {self.batch_size}, {self.num_workers}, {self.skip_batches}"
            )
        if self.resampled and self.batches_per_epoch is None:
            raise ValueError("resampled=True needs batches_per_epoch: an endless stream has no epoch end of its own")
        if self.batches_per_epoch is not None and self.skip_batches > self.batches_per_epoch:
            raise ValueError(f"skip_batches={self.skip_batches} exceeds batches_per_epoch={self.batches_per_epoch}")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("give both rank and world_size, or neither (to read them from torch.distributed)")


def resolve_rank(cfg: StreamConfig) -> tuple[int, int]:
    """(rank, world_size) from the config, else from torch.distributed when initialized, else (0, 1)."""
    if cfg.rank is not None:
        if not 0 <= cfg.rank < cfg.world_size:
            raise ValueError(f"rank {cfg.rank} is outside world_size {cfg.world_size}")
        return cfg.rank, cfg.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def epoch_shards(urls: Sequence[str], seed: int, epoch: int) -> list[str]:
    """All shards in this epoch's order: webdataset's seeded shard shuffle, with one seed shared by every rank."""
    return [shard["url"] for shard in wds.SimpleShardList(list(urls), seed=stable_seed(seed, epoch, "shards"))]


def worker_batch_counts(
    cfg: StreamConfig, urls: Sequence[str], counts: dict[str, int], epoch: int, rank: int, world_size: int
) -> list[int]:
    """Batches each worker role of `rank` yields in a non-resampled epoch, from per-shard sample counts."""
    num_workers = max(1, cfg.num_workers)
    rank_shards = share(epoch_shards(urls, cfg.seed, epoch), rank, world_size)
    samples = [sum(counts[url] for url in share(rank_shards, role, num_workers)) for role in range(num_workers)]
    return [math.ceil(count / cfg.batch_size) for count in samples]


def share(items: Sequence[str], index: int, count: int) -> list[str]:
    """Member `index` of `count`'s share: webdataset's split_by_node/split_by_worker slicing, with the index given.

    webdataset's splitters read the rank and worker id from the environment; we pass them in, because the config
    fixes the rank and a resumed loader's workers play rotated roles (data_pipelines.resume).
    """
    return list(items[index::count])


class CorruptCounter:
    """Samples one worker lost to damaged data and has not yet handed over with a sample or a batch."""

    def __init__(self, counts_known: bool) -> None:
        self.pending = 0
        self.counts_known = counts_known  # the manifest's counts tell how many samples a damaged shard lost

    def tar_error(self, error: Exception, url: str) -> bool:
        """Go on after damaged tar data in the shard at ``url``; raise anything else (e.g. a missing shard).

        Without per-shard counts, each error counts as one lost sample (at least one sample lost per damaged spot).
        """
        if not isinstance(error, CORRUPT_TAR_ERRORS):
            raise error
        logger.warning("skipping unreadable tar data in %s: %s", url, error)
        if not self.counts_known:
            self.pending += 1
        return True

    def take(self) -> int:
        taken, self.pending = self.pending, 0
        return taken


def read_shards(
    shards: Iterator[dict[str, Any]],
    counts: dict[str, int] | None,
    counter: CorruptCounter,
    keep: Callable[[dict[str, Any]], bool] | None,
) -> Iterator[dict[str, Any]]:
    """The samples of each shard in turn, those ``keep`` accepts (a hold-out side).

    Samples a damaged shard lost are counted per sample: its manifest count less the samples read from it. Every
    sample carries in ``__lost__`` the losses found since the sample before it, and the worker's last sample also
    those found after it, so each loss travels into a batch with a sample: counted once, when that batch is
    consumed, and dropped with it when a resumed stream skips the batch (it was counted before the checkpoint).
    """
    held = None
    for shard in shards:
        read = 0
        for sample in shard_samples(shard, counter):
            read += 1
            if keep is not None and not keep(sample):
                continue
            if held is not None:
                held["__lost__"] = counter.take()
                yield held
            held = sample
        if counts is not None:
            counter.pending += max(0, counts[shard["url"]] - read)
    if held is not None:
        held["__lost__"] = counter.take()
        yield held


def shard_samples(shard: dict[str, Any], counter: CorruptCounter) -> Iterator[dict[str, Any]]:
    """One shard's samples: local ``.tar`` files through a memory map (:mod:`data_pipelines.tar_members`), other
    URLs (``pipe:``, ``http:``, compressed) through webdataset; damage ends the shard and goes to ``counter``."""
    url = shard["url"]
    path = local_path(url)
    if path is None or not url.endswith(".tar"):
        yield from wds.tariterators.tarfile_samples([shard], handler=lambda error: counter.tar_error(error, url))
        return
    try:
        yield from local_tar_samples(path, url)
    except CORRUPT_TAR_ERRORS as error:
        counter.tar_error(error, url)


def number_samples(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Tag each sample with its position in this worker's stream, which seeds its augmentation."""
    for position, sample in enumerate(samples):
        sample["__position__"] = position
        yield sample


class BatchDecoder:
    """Groups of raw samples -> batches: decode, transform, collate, normalize; corrupt samples are dropped.

    Each batch's ``corrupt_skipped`` counts its own corrupt and lost samples. A group with no decodable sample
    yields no batch; its count goes to the worker's next batch, or at the worker's end to its last one (each batch
    is held until the next is decoded), so no count is lost.
    """

    def __init__(
        self, transform: ImageTransform, normalize: Normalize | None, seed: int, arrays: bool, handover: bool
    ) -> None:
        """``arrays``: the transform takes arrays (the manifest says the shards hold them), not encoded images;
        ``handover``: JPEGs stay encoded with their crops drawn (:func:`device_decode.handover_batch`)."""
        self.transform = transform
        self.normalize = normalize
        self.seed = seed
        self.arrays = arrays
        self.handover = handover

    def __call__(self, groups: Iterator[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        return self.decode_batches((group, 0) for group in groups)

    def decode_batches(self, groups: Iterator[tuple[list[dict[str, Any]], int]]) -> Iterator[dict[str, Any]]:
        """Batches of ``(group, samples lost in its place before it was read)`` pairs."""
        held, pending = None, 0
        for group, lost in groups:
            batch, skipped = self.decode_group(group)
            pending += skipped + lost
            if batch is None:
                continue
            if held is not None:
                yield held
            batch["corrupt_skipped"] = torch.tensor(pending, dtype=torch.long)
            held, pending = batch, 0
        if held is not None:
            held["corrupt_skipped"] += pending
            yield held

    def decode_group(self, group: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int]:
        """(the batch of the group's decodable samples or None, the corrupt and lost samples it accounts for)."""
        lost = sum(sample["__lost__"] for sample in group)
        decoded = [pair for pair in map(self.decode, group) if pair is not None]
        skipped = lost + len(group) - len(decoded)
        if not decoded:
            return None, skipped
        if self.handover:
            outputs, targets, keys = zip(*decoded, strict=True)
            return handover_batch(outputs, targets, list(keys), self.transform.size), skipped
        images = torch.stack([image for image, _, _ in decoded])
        batch = {
            "image": images if self.normalize is None else self.normalize(images),
            **collate_targets([target for _, target, _ in decoded]),
            "key": [key for _, _, key in decoded],
        }
        return batch, skipped

    def decode(self, sample: dict[str, Any]) -> tuple[torch.Tensor | PendingJpeg, int | torch.Tensor, str] | None:
        """(image, class label or segmentation mask, key), or None for a corrupt sample; a JPEG to hand over
        gives its :class:`PendingJpeg` for the image."""
        try:
            mask = open_mask(sample)
            target = read_label(sample)
            opened = open_input(sample)
            if isinstance(opened, torch.Tensor) != self.arrays:
                raise TypeError(  # not a damaged sample: every sample of these shards would fail alike
                    f"sample {sample.get('__key__')} holds {'an image' if self.arrays else 'an array'} but "
                    f"the stream was set up for {'arrays' if self.arrays else 'images'} from the shards' manifest "
                    f"(none found means images): keep manifest.json beside the shards or {SET_MANIFEST}"
                )
            with seeded_rng(stable_seed(self.seed, sample["__position__"])):
                if self.handover and isinstance(opened, StoredImage) and opened.jpeg:
                    image = PendingJpeg(opened, self.transform.plan(opened))
                elif mask is None:
                    image = self.transform(opened)
                else:
                    image, target = self.transform(opened, mask)
        except CORRUPT_SAMPLE_ERRORS as error:
            logger.warning("skipping corrupt sample %s of %s: %s", sample.get("__key__"), sample.get("__url__"), error)
            return None
        return image, target, sample["__key__"]


class ShardStream(torch.utils.data.IterableDataset):
    """The per-worker pipeline. Picklable: each dataloader worker builds its own stages from it in `__iter__`."""

    def __init__(self, cfg: StreamConfig, urls: list[str], rank: int, world_size: int, facts: ShardFacts) -> None:
        super().__init__()
        self.cfg = cfg
        self.urls = urls
        self.rank = rank
        self.world_size = world_size
        self.counts = facts.counts
        self.arrays = facts.arrays
        self.num_workers = max(1, cfg.num_workers)
        self.set_epoch(cfg.epoch, cfg.skip_batches)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Make the next iteration yield `epoch`, starting after its first `skip_batches` batches."""
        self.epoch = epoch
        self.skip_batches = skip_batches
        self.skip_plan = plan_skip(skip_batches, self.worker_batches() if skip_batches else [None] * self.num_workers)

    def worker_batches(self) -> list[int | None]:
        """Batches each worker role yields this epoch: None for endless (resampled) streams, from the manifest
        otherwise; a skip across several workers needs them, a single stream does not."""
        if self.cfg.resampled or (self.num_workers == 1 and self.counts is None):
            return [None] * self.num_workers
        if self.counts is None:
            raise ValueError(
                "resuming (skip_batches > 0) with several workers needs each shard's sample count: keep the "
                f"manifest.json written with the shards beside them or {SET_MANIFEST}"
            )
        return worker_batch_counts(self.cfg, self.urls, self.counts, self.epoch, self.rank, self.world_size)

    def epoch_batches(self) -> int | None:
        """Batches this rank yields in the coming iteration (after any skip), or None when unknown."""
        if self.cfg.batches_per_epoch is not None:
            return self.cfg.batches_per_epoch - self.skip_batches
        if self.counts is None:
            return None
        return sum(self.worker_batches()) - self.skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        return iter(self.pipeline((worker + self.skip_plan.first_worker) % self.num_workers))

    def pipeline(self, role: int) -> wds.DataPipeline:
        """The declared stages of worker role `role` for this epoch."""
        cfg = self.cfg
        counter = CorruptCounter(counts_known=self.counts is not None)
        seed = stable_seed(cfg.seed, self.epoch, self.rank, role)
        shuffle = wds.shuffle(cfg.shuffle_buffer, seed=stable_seed(seed, "samples")) if cfg.shuffle_buffer > 1 else None
        transform = build_transform(cfg.transform, cfg.augment, cfg.mean, self.arrays)
        keep = cfg.holdout.keeps_sample if cfg.holdout is not None else None
        return wds.DataPipeline(
            self.shard_source(role, seed),
            lambda shards: read_shards(shards, self.counts, counter, keep),
            shuffle,
            number_samples,
            wds.batched(cfg.batch_size, collation_fn=None, partial=True),
            wds.slice(self.skip_plan.skips[role], None),
            BatchDecoder(transform, worker_normalize(cfg), seed, self.arrays, cfg.decode_on_device),
        )

    def shard_source(self, role: int, seed: int) -> wds.ResampledShards | wds.SimpleShardList:
        """Resampled: shards drawn with replacement from the worker's own seed; else this worker's share."""
        if self.cfg.resampled:
            epoch_seed = stable_seed(self.cfg.seed, self.epoch)
            return wds.ResampledShards(self.urls, seed=epoch_seed, worker_seed=lambda: seed, deterministic=True)
        shards = share(epoch_shards(self.urls, self.cfg.seed, self.epoch), self.rank, self.world_size)
        return wds.SimpleShardList(share(shards, role, self.num_workers))


def worker_normalize(cfg: StreamConfig) -> Normalize | None:
    """The normalization workers apply: none when the consumer normalizes (uint8 or device-decoded batches)."""
    return Normalize(cfg.mean, cfg.std) if cfg.normalize and not cfg.decode_on_device else None


class EpochStream(Protocol):
    """A stream that knows its epoch length and can move to another epoch: a :class:`ShardStream`, or the elastic
    order's stream (:mod:`data_pipelines.elastic`)."""

    cfg: StreamConfig

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None: ...

    def epoch_batches(self) -> int | None: ...


class ShardLoader(wds.WebLoader):
    """webdataset's WebLoader over an epoch stream, which knows its epoch length and can move to another epoch."""

    def __init__(self, stream: EpochStream, num_workers: int, pin_memory: bool) -> None:
        # Its own generator: DataLoader draws a base seed per iteration, which must not advance the caller's
        # generator (a resumed run would otherwise see different model randomness); our workers never use it.
        generator = torch.Generator().manual_seed(stream.cfg.seed)
        super().__init__(
            stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),  # pinning is for host-to-GPU copies only
            generator=generator,
            worker_init_fn=leave_stop_signals_to_parent(),
        )
        self.stream = stream

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Call before each epoch: the next iteration yields `epoch`, after its first `skip_batches` batches."""
        self.stream.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        batches = self.stream.epoch_batches()
        if batches is None:
            raise TypeError(f"epoch length unknown: no manifest.json beside the shards ({SET_MANIFEST})")
        return batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = super().__iter__()
        limit = self.stream.epoch_batches() if self.stream.cfg.batches_per_epoch is not None else None
        return batches if limit is None else itertools.islice(batches, limit)


def build_loader(cfg: StreamConfig) -> ShardLoader:
    """The batches of `cfg`'s rank, checked up front: shards exist, there are enough of them, epochs fit."""
    urls = expand_shards(cfg.shards)
    rank, world_size = resolve_rank(cfg)
    readers = world_size * max(1, cfg.num_workers)
    if not cfg.resampled and len(urls) < readers:
        raise ValueError(
            f"{len(urls)} shards cannot feed {world_size} ranks x {max(1, cfg.num_workers)} workers without leaving "
            "some empty: write smaller shards (write_shards --max-count), lower num_workers, or use resampled=True"
        )
    facts = shard_facts(urls, cfg.manifest)
    check_device_decoding(cfg, facts.arrays)
    check_stored_size(cfg, facts)
    stream = ShardStream(cfg, urls, rank, world_size, facts)
    check_equal_epochs(cfg, stream, world_size)
    return ShardLoader(stream, cfg.num_workers, cfg.pin_memory)


class ShardFacts(NamedTuple):
    """What the manifest tells a stream: per-shard sample counts (None without a manifest: epoch length unknown),
    whether the samples are arrays (N channels, volumes; no manifest: encoded images), and the shorter side images
    were resized to on write (None: stored as they came)."""

    counts: dict[str, int] | None
    arrays: bool
    resized_short_side: int | None = None


def shard_facts(urls: list[str], manifest: str | None) -> ShardFacts:
    """The :class:`ShardFacts` of ``urls`` from their manifest(s), when there are any, checked against the local
    shards (:func:`data_pipelines.manifest.verify_manifest_counts`)."""
    if manifest is None and any(local_path(url) is None for url in urls):
        return ShardFacts(None, False)
    try:
        found = read_manifest(urls, manifest)
    except FileNotFoundError:
        if manifest is not None:
            raise
        return ShardFacts(None, False)
    verify_manifest_counts(found)
    sides = [(entry.get("resize") or {}).get("short_side") for entry in found["manifests"].values()]
    sides = [side for side in sides if side is not None]
    return ShardFacts(found["counts"], found["arrays"], min(sides) if sides else None)


def check_stored_size(cfg: StreamConfig, facts: ShardFacts) -> None:
    """Shards resized on write below the output size give every crop upsampled: warned about, not refused."""
    side = facts.resized_short_side
    if side is not None and side < cfg.augment.image_size:
        warnings.warn(
            f"the shards were resized on write to a {side} px shorter side, below the {cfg.augment.image_size} px "
            "images the transform makes: every crop is upsampled (rewrite them with a larger --resize-short-side)",
            stacklevel=3,
        )


def check_device_decoding(cfg: StreamConfig, arrays: bool) -> None:
    """Decoding on the device takes transforms that are a crop, a resize and a flip, of encoded images."""
    if not cfg.decode_on_device:
        return
    transform = build_transform(cfg.transform, cfg.augment, cfg.mean, arrays)
    if arrays or not isinstance(transform, PlannedCrop):
        what = "array shards" if arrays else f"the {cfg.transform!r} transform with these options"
        raise ValueError(
            "decoding on the device takes encoded images and a crop, resize and flip: the mae, eval and flip "
            f"transforms, or supervised without RandAugment; {what} must decode in the loader workers "
            "(data.decode=cpu)"
        )


def device_decoder(cfg: StreamConfig) -> DeviceDecoder:
    """What finishes ``cfg``'s handover batches of encoded images on the training device."""
    check_device_decoding(cfg, arrays=False)
    transform = build_transform(cfg.transform, cfg.augment, cfg.mean)
    return DeviceDecoder(transform)


def check_equal_epochs(cfg: StreamConfig, stream: ShardStream, world_size: int) -> None:
    """Ranks of a non-resampled stream must get equal batch counts, or the short rank ends early and others hang:
    a cap (batches_per_epoch) must fit the shortest rank; without one, unequal counts are warned about."""
    if cfg.resampled or world_size == 1 or stream.counts is None:
        return
    per_rank = [
        sum(worker_batch_counts(cfg, stream.urls, stream.counts, stream.epoch, rank, world_size))
        for rank in range(world_size)
    ]
    shortest = min(per_rank)
    if cfg.batches_per_epoch is not None and cfg.batches_per_epoch > shortest:
        raise ValueError(
            f"batches_per_epoch={cfg.batches_per_epoch} but the shortest rank has {shortest} batches per epoch: "
            f"lower it to {shortest} at most, or use resampled=True"
        )
    if cfg.batches_per_epoch is None and len(set(per_rank)) > 1:
        warnings.warn(
            f"ranks get {shortest} to {max(per_rank)} batches per epoch; distributed training needs equal counts: "
            f"set batches_per_epoch={shortest} or resampled=True",
            stacklevel=3,
        )

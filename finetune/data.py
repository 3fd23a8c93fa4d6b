"""A task's training and test images as batches: from official files (map-style) or from shards (streams).

Both kinds yield what the pretraining stream yields, ``{"image": float [B, 3, S, S] normalized, "label": long [B],
"key": [B]}``, decoded and augmented by the same :mod:`data_pipelines.transforms`. A split can be narrowed to one
side of a seeded hold-out (:class:`~data_pipelines.holdout.HoldOut`, by sample key) to choose hyper-parameters.
Sharding over ranks follows one rule:

- training: every rank gets the same number of batches per epoch (DDP steps in lockstep), shuffled per epoch;
- testing: every image is read exactly once over all ranks (no padding, so metrics are exact).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from data_pipelines.arrays import ChannelMoments, select_channels
from data_pipelines.decode import StoredImage
from data_pipelines.holdout import HoldOut, KeySelection
from data_pipelines.manifest import channel_normalization, read_manifest
from data_pipelines.seeding import seeded_rng, stable_seed
from data_pipelines.shards import expand_shards, local_path
from data_pipelines.sources.base import Item, Listing, is_array_item
from data_pipelines.sources.segmentation import SegmentationItem
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.tar_members import sample_keys
from data_pipelines.transforms import ImageTransform, Normalize, TransformOptions, build_transform, collate_targets
from data_pipelines.worker_signals import leave_stop_signals_to_parent
from pretrain.engine.plan import RunPlan
from pretrain.engine.positioned_loader import StepPositionedLoader

Batch = dict[str, Any]
SIZE_SAMPLE = 32  # images whose size a listing reads to know its resolution


@dataclass(frozen=True)
class LoaderSpec:
    """How to read a split: transform (``mae`` | ``supervised`` | ``eval``), batch, normalization, sharding."""

    transform: str
    options: TransformOptions
    batch_size: int  # per device
    num_workers: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    shuffle_buffer: int  # shard tasks: samples shuffled in memory while training
    pin_memory: bool
    training: bool  # True: shuffled, equal batches per rank; False: every image once over all ranks


class TaskSplit(Protocol):
    """The images a task trains or tests on."""

    num_samples: int
    classes: list[str] | None

    def max_label(self) -> int: ...

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int, skip_batches: int = 0) -> Any:
        """This rank's batches of ``epoch``, after its first ``skip_batches`` (a resumed training epoch)."""
        ...

    def held_out(self, holdout: HoldOut) -> TaskSplit:
        """The part of this split on ``holdout.side`` of the hold-out."""
        ...

    def image_side(self) -> float:
        """The typical shorter side of the stored images, in pixels."""
        ...

    @property
    def arrays(self) -> bool:
        """Whether the images are arrays (N channels, volumes) rather than encoded RGB images."""
        ...

    @property
    def ignore_index(self) -> int | None:
        """Segmentation splits: the mask value that counts nowhere; None for classification."""
        ...

    def channel_normalization(self, bands: Sequence[int] | None) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the split's arrays (of ``bands`` only, when given)."""
        ...


def open_item(item: Item) -> StoredImage | torch.Tensor:
    """An item's image as the transforms take it: its own bytes with their header read (a JPEG stays a JPEG, so
    the reduced-size decoding applies), or an array item's values as float32 ``[C, *spatial]``."""
    if is_array_item(item):
        return torch.from_numpy(item.load()[0].astype(np.float32, copy=False))
    if isinstance(item, SegmentationItem):
        return StoredImage.read(Path(item.path).read_bytes())  # its mask is read beside it
    return StoredImage.read(item.encode("png").data)


class ItemDataset(Dataset):
    """Items of an official-format listing (files or decoded arrays) -> (uint8 [3, S, S] or float array, label).

    Each item's augmentation draws from its own seed, ``(seed, index)``: a resumed epoch that skips its first
    batches gives the rest the same pixels as an uninterrupted one, whichever worker decodes them.
    """

    def __init__(self, items: Sequence[Item], transform: ImageTransform, seed: int) -> None:
        self.items = items
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        item = self.items[index]
        image = open_item(item)
        with seeded_rng(stable_seed(self.seed, index)):
            if hasattr(item, "load_mask"):  # segmentation: the mask goes through the same transform
                mask = item.load_mask()
                mask = torch.from_numpy(mask.astype(np.int64)) if isinstance(image, torch.Tensor) else mask
                return (*self.transform(image, mask), item.key)
            return self.transform(image), item.label, item.key


class NormalizingCollate:
    """A list of (uint8 image, label or mask, key) -> the stream's batch dict, normalized once per batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.normalize = Normalize(mean, std)

    def __call__(self, samples: list[tuple[torch.Tensor, int | torch.Tensor, str]]) -> Batch:
        images, targets, keys = zip(*samples, strict=True)
        return {"image": self.normalize(torch.stack(images)), **collate_targets(targets), "key": list(keys)}


class ListingSplit:
    """A split read from a dataset's official files (``data_pipelines.sources`` listings)."""

    def __init__(self, items: Sequence[Item], classes: list[str] | None, ignore_index: int | None = None) -> None:
        """``ignore_index``: segmentation items' mask value that counts nowhere (None: classification)."""
        self.items = list(items)
        self.classes = classes
        self.num_samples = len(self.items)
        self.arrays = Listing(self.items, classes).arrays
        self.ignore_index = ignore_index

    def channel_normalization(self, bands: Sequence[int] | None) -> tuple[list[float], list[float]]:
        """Computed over every array of the split (one read of each file, the first time it is asked)."""
        if not self.arrays:
            raise ValueError("channel statistics are computed for arrays; encoded images use configured mean/std")
        mean, std = self._channel_statistics()
        return list(select_channels(mean, bands)), list(select_channels(std, bands))

    @functools.cache  # noqa: B019 - one split object per run; caching on it is the point
    def _channel_statistics(self) -> tuple[list[float], list[float]]:
        moments = ChannelMoments()
        for item in self.items:
            moments.add(ChannelMoments.of(item.load()[0]))
        return moments.mean_std()

    def max_label(self) -> int:
        if self.ignore_index is not None:  # masks: their labels are checked against the classes when scored
            return len(self.classes) - 1
        labels = [item.label for item in self.items]
        if any(label is None for label in labels):
            raise ValueError("the split has unlabeled images; downstream tasks need a label for every image")
        return max(labels)

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int, skip_batches: int = 0) -> DataLoader:
        transform = build_transform(spec.transform, spec.options, spec.mean, self.arrays)
        dataset = ItemDataset(self.items, transform, stable_seed(spec.seed, epoch))
        if spec.training:
            shuffled = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=spec.seed, drop_last=True)
            shuffled.set_epoch(epoch)
            sampler = list(shuffled)[skip_batches * spec.batch_size :]
        else:
            sampler = range(rank, len(dataset), world_size)[skip_batches * spec.batch_size :]
        return DataLoader(
            dataset,
            batch_size=spec.batch_size,
            sampler=sampler,
            num_workers=spec.num_workers,
            collate_fn=NormalizingCollate(spec.mean, spec.std),
            drop_last=spec.training,
            pin_memory=spec.pin_memory and torch.cuda.is_available(),  # pinning is for host-to-GPU copies only
            worker_init_fn=leave_stop_signals_to_parent(),
        )

    def held_out(self, holdout: HoldOut) -> ListingSplit:
        selection = holdout.select(item.key for item in self.items)
        kept = [item for item in self.items if selection.keeps(item.key)]
        return ListingSplit(kept, self.classes, self.ignore_index)

    def image_side(self) -> float:
        """The median shorter side of (at most) the first SIZE_SAMPLE images: a folder rarely mixes resolutions."""
        sides = sorted(min(item.size()) for item in self.items[:SIZE_SAMPLE])
        return float(sides[len(sides) // 2])


class ShardSplit:
    """A split read from labeled shards written by ``data_pipelines`` (their manifest gives counts and classes)."""

    def __init__(
        self, shards: Sequence[str], selection: KeySelection | None = None, num_samples: int | None = None
    ) -> None:
        """``selection`` narrows the split to one side of a hold-out, of ``num_samples`` images."""
        self.urls = expand_shards(list(shards))
        manifest = read_manifest(self.urls)
        self.classes = manifest["classes"]
        self.arrays = manifest["arrays"]
        segmentation = next(iter(manifest["manifests"].values())).get("segmentation")
        self.ignore_index = None if segmentation is None else segmentation["ignore_index"]
        self.selection = selection
        self.num_samples = manifest["total"] if num_samples is None else num_samples

    def held_out(self, holdout: HoldOut) -> ShardSplit:
        if self.selection is not None:
            raise ValueError("a hold-out split cannot be split again")
        keys = shard_keys(self.urls)
        selection = holdout.select(keys)
        return ShardSplit(self.urls, selection, sum(map(selection.keeps, keys)))

    def image_side(self) -> float:
        """The smallest mean shorter side over the shards' manifests (the writer records image sizes)."""
        manifests = read_manifest(self.urls)["manifests"].values()
        return min(min(m["image_size"]["width"]["mean"], m["image_size"]["height"]["mean"]) for m in manifests)

    def channel_normalization(self, bands: Sequence[int] | None) -> tuple[list[float], list[float]]:
        """From the manifest's statistics, which the writer accumulated over every value."""
        return channel_normalization(read_manifest(self.urls), bands)

    def max_label(self) -> int:
        if self.classes is None:
            raise ValueError(f"the shards {self.urls[0]}... list no classes in their manifest: are they labeled?")
        return len(self.classes) - 1

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int, skip_batches: int = 0) -> Any:
        common = dict(
            shards=self.urls,
            batch_size=spec.batch_size,
            transform=spec.transform,
            augment=spec.options,
            mean=spec.mean,
            std=spec.std,
            seed=spec.seed,
            manifest=None,
            pin_memory=spec.pin_memory and torch.cuda.is_available(),  # pinning is for host-to-GPU copies only
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            holdout=self.selection,
        )
        if spec.training:
            batches = self.num_samples // (spec.batch_size * world_size)
            return build_loader(
                StreamConfig(
                    **common,
                    num_workers=spec.num_workers,
                    shuffle_buffer=spec.shuffle_buffer,
                    resampled=True,
                    batches_per_epoch=batches,
                    skip_batches=skip_batches,
                )
            )
        # Each shard is read by one worker of one rank; never ask for more readers than there are shards.
        workers = min(spec.num_workers, len(self.urls) // world_size)
        return build_loader(StreamConfig(**common, num_workers=workers, shuffle_buffer=0, skip_batches=skip_batches))


def shard_keys(urls: Sequence[str]) -> list[str]:
    """The sample keys of local shards, as the streams group tar members into samples; only headers are read."""
    keys: dict[str, None] = {}
    for url in urls:
        path = local_path(url)
        if path is None:
            raise ValueError(f"a hold-out of remote shards ({url}) needs their keys: give the task a validation split")
        keys.update((key, None) for key in sample_keys(path))
    return list(keys)


class FeatureBatches(Dataset):
    """Batches of precomputed features, indexed by a list of sample indices."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> Batch:
        return {"features": self.features[indices], "label": self.labels[indices]}


class FeatureSplit:
    """This rank's share of a training split as frozen features computed once (``mode.cache_features``)."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, num_samples: int, per_rank: int, classes: list[str] | None
    ) -> None:
        self.features, self.labels = features, labels
        self.num_samples, self.per_rank, self.classes = num_samples, per_rank, classes

    def max_label(self) -> int:
        return int(self.labels.max())

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int, skip_batches: int = 0) -> DataLoader:
        # per_rank is the smallest share over the ranks (shards split unevenly): equal batch counts per rank.
        generator = torch.Generator().manual_seed(stable_seed(spec.seed, epoch, rank))
        order = torch.randperm(len(self.labels), generator=generator)[skip_batches * spec.batch_size : self.per_rank]
        batches = BatchSampler(order.tolist(), spec.batch_size, drop_last=True)
        return DataLoader(FeatureBatches(self.features, self.labels), sampler=batches, batch_size=None)


class TaskDataModule(L.LightningDataModule):
    """Training batches of the current epoch, the test loader, and the training images with the test transform
    (what frozen features are computed of).

    The training epoch and the batches of it already consumed follow from the global step and ``plan``: a run
    resumed mid-epoch reads the rest of that epoch, as the uninterrupted run does.
    """

    def __init__(
        self,
        train: TaskSplit,
        test: TaskSplit,
        train_spec: LoaderSpec | None,
        test_spec: LoaderSpec,
        plan: RunPlan | None = None,
    ) -> None:
        """``train_spec`` and ``plan`` are for training; without them the module only evaluates."""
        super().__init__()
        self.train: TaskSplit | FeatureSplit = train  # a FeatureSplit once training features are cached
        self.test = test
        self.train_spec, self.test_spec = train_spec, test_spec
        self.plan = plan

    def train_dataloader(self) -> Any:
        if self.train_spec is None or self.plan is None:
            raise RuntimeError("this data module reads its splits for evaluation only")
        trainer = self.trainer
        epoch, skip = self.plan.resume_position(trainer.global_step)
        loader = self.train.loader(self.train_spec, trainer.global_rank, trainer.world_size, epoch, skip)
        return StepPositionedLoader(loader, self.plan.data_layout(self.train_spec.seed), self.plan.batches_per_epoch)

    def predict_dataloader(self) -> Any:
        trainer = self.trainer
        return self.train.loader(self.test_spec, trainer.global_rank, trainer.world_size, 0)

    def cache_training_features(self, features: torch.Tensor, labels: torch.Tensor, per_rank: int) -> None:
        """Train on these features of this rank's share of the training images from now on, ``per_rank`` a step."""
        self.train = FeatureSplit(features, labels, self.train.num_samples, per_rank, self.train.classes)

    def test_dataloader(self) -> Any:
        trainer = self.trainer
        return self.test.loader(self.test_spec, trainer.global_rank, trainer.world_size, 0)


def loader_specs(
    config: Mapping[str, Any], eval_crop_fraction: float, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[LoaderSpec, LoaderSpec | None]:
    """(eval spec, training spec or None) for the run's mode at ``image_size``, normalized with ``mean``/``std``.

    The mode's ``train_transform`` (if it trains) crops with its ``crop_scale``/``crop_ratio`` and RandAugment;
    a task with ``augment: false`` (VTAB's structured tasks, whose labels crops and flips would change) trains on
    the eval transform's images instead (BiT's rule, which the ViT paper's VTAB runs follow).
    """
    mode = config["mode"]
    common = dict(
        batch_size=mode["batch_size"],
        num_workers=config["num_workers"],
        mean=tuple(mean),
        std=tuple(std),
        seed=config["seed"],
        shuffle_buffer=config["shuffle_buffer"],
        pin_memory=config["pin_memory"],
    )
    geometry = dict(image_size=image_size, eval_crop_fraction=eval_crop_fraction, bands=config["bands"])
    eval_options = TransformOptions(
        **geometry, crop_scale=None, crop_ratio=None, randaugment=None, intensity_scale=None
    )
    eval_spec = LoaderSpec("eval", eval_options, training=False, **common)
    if "train_transform" not in mode:
        return eval_spec, None
    if not config["task"]["augment"]:
        return eval_spec, LoaderSpec("eval", eval_options, training=True, **common)
    options = TransformOptions(
        **geometry,
        crop_scale=mode["crop_scale"],
        crop_ratio=mode["crop_ratio"],
        randaugment=mode["randaugment"],
        intensity_scale=None,  # downstream training augments geometry only
    )
    return eval_spec, LoaderSpec(mode["train_transform"], options, training=True, **common)

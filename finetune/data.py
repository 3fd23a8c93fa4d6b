"""A task's training and test images as batches: from official files (map-style) or from shards (streams).

Both kinds yield what the pretraining stream yields, ``{"image": float [B, 3, S, S] normalized, "label": long [B]}``,
decoded and augmented by the same :mod:`data_pipelines.transforms`. Sharding over ranks follows one rule:

- training: every rank gets the same number of batches per epoch (DDP steps in lockstep), shuffled per epoch;
- testing: every image is read exactly once over all ranks (no padding, so metrics are exact).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import lightning as L
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from data_pipelines.manifest import read_manifest
from data_pipelines.seeding import stable_seed
from data_pipelines.shards import expand_shards
from data_pipelines.sources.base import Item
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.transforms import ImageTransform, Normalize, TransformOptions, build_transform

Batch = dict[str, Any]


@dataclass(frozen=True)
class LoaderSpec:
    """How to read a split: transform (``mae`` | ``supervised`` | ``eval``), batch, normalization, sharding."""

    transform: str
    options: TransformOptions
    batch_size: int  # per device
    num_workers: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int
    shuffle_buffer: int  # shard tasks: samples shuffled in memory while training
    pin_memory: bool
    training: bool  # True: shuffled, equal batches per rank; False: every image once over all ranks


class TaskSplit(Protocol):
    """The images a task trains or tests on."""

    num_samples: int
    classes: list[str] | None

    def max_label(self) -> int: ...

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int) -> Any: ...


class ItemDataset(Dataset):
    """Items of an official-format listing (files or decoded arrays) -> (uint8 [3, S, S], label)."""

    def __init__(self, items: Sequence[Item], transform: ImageTransform) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        # The item's own bytes (a JPEG stays a JPEG, so the transforms' reduced-size decoding applies).
        image = Image.open(io.BytesIO(item.encode("png").data))
        return self.transform(image), item.label


class NormalizingCollate:
    """A list of (uint8 image, label) -> the stream's batch dict, normalized once per batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.normalize = Normalize(mean, std)

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> Batch:
        images, labels = zip(*samples, strict=True)
        return {"image": self.normalize(torch.stack(images)), "label": torch.tensor(labels, dtype=torch.long)}


class ListingSplit:
    """A split read from a dataset's official files (``data_pipelines.sources`` listings)."""

    def __init__(self, items: Sequence[Item], classes: list[str] | None) -> None:
        self.items = list(items)
        self.classes = classes
        self.num_samples = len(self.items)

    def max_label(self) -> int:
        labels = [item.label for item in self.items]
        if any(label is None for label in labels):
            raise ValueError("the split has unlabeled images; downstream tasks need a label for every image")
        return max(labels)

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int) -> DataLoader:
        dataset = ItemDataset(self.items, build_transform(spec.transform, spec.options))
        if spec.training:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=spec.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = range(rank, len(dataset), world_size)
        return DataLoader(
            dataset,
            batch_size=spec.batch_size,
            sampler=sampler,
            num_workers=spec.num_workers,
            collate_fn=NormalizingCollate(spec.mean, spec.std),
            drop_last=spec.training,
            pin_memory=spec.pin_memory,
        )


class ShardSplit:
    """A split read from labeled shards written by ``data_pipelines`` (their manifest gives counts and classes)."""

    def __init__(self, shards: Sequence[str]) -> None:
        self.urls = expand_shards(list(shards))
        manifest = read_manifest(self.urls)
        self.num_samples = manifest["total"]
        self.classes = manifest["classes"]

    def max_label(self) -> int:
        if self.classes is None:
            raise ValueError(f"the shards {self.urls[0]}... list no classes in their manifest: are they labeled?")
        return len(self.classes) - 1

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int) -> Any:
        common = dict(
            shards=self.urls,
            batch_size=spec.batch_size,
            transform=spec.transform,
            augment=spec.options,
            mean=spec.mean,
            std=spec.std,
            seed=spec.seed,
            manifest=None,
            pin_memory=spec.pin_memory,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
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
                )
            )
        # Each shard is read by one worker of one rank; never ask for more readers than there are shards.
        workers = min(spec.num_workers, len(self.urls) // world_size)
        return build_loader(StreamConfig(**common, num_workers=workers, shuffle_buffer=0))


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

    def loader(self, spec: LoaderSpec, rank: int, world_size: int, epoch: int) -> DataLoader:
        # per_rank is the smallest share over the ranks (shards split unevenly): equal batch counts per rank.
        generator = torch.Generator().manual_seed(stable_seed(spec.seed, epoch, rank))
        order = torch.randperm(len(self.labels), generator=generator)[: self.per_rank]
        batches = BatchSampler(order.tolist(), spec.batch_size, drop_last=True)
        return DataLoader(FeatureBatches(self.features, self.labels), sampler=batches, batch_size=None)


class TaskDataModule(L.LightningDataModule):
    """Training batches of the current epoch, and the test loaders a mode asks for (k-NN: train, then test)."""

    def __init__(
        self, train: TaskSplit, tests: Sequence[TaskSplit], train_spec: LoaderSpec | None, test_spec: LoaderSpec
    ) -> None:
        super().__init__()
        self.train, self.tests = train, list(tests)
        self.train_spec, self.test_spec = train_spec, test_spec

    def train_dataloader(self) -> Any:
        if self.train_spec is None:
            raise RuntimeError("this mode does not train")
        trainer = self.trainer
        return self.train.loader(self.train_spec, trainer.global_rank, trainer.world_size, trainer.current_epoch)

    def predict_dataloader(self) -> Any:
        """The training images with the test transform: what ``cache_features`` computes features of."""
        trainer = self.trainer
        return self.train.loader(self.test_spec, trainer.global_rank, trainer.world_size, 0)

    def cache_training_features(self, features: torch.Tensor, labels: torch.Tensor, per_rank: int) -> None:
        """Train on these features of this rank's share of the training images from now on, ``per_rank`` a step."""
        self.train = FeatureSplit(features, labels, self.train.num_samples, per_rank, self.train.classes)

    def test_dataloader(self) -> Any:
        trainer = self.trainer
        loaders = [split.loader(self.test_spec, trainer.global_rank, trainer.world_size, 0) for split in self.tests]
        return loaders[0] if len(loaders) == 1 else loaders

"""Epochs whose sample order does not depend on the number of processes, so a run resumed on another number of
processes reads the rest of the epoch exactly once (mosaicml streaming's "elastic determinism").

The epoch's samples form one global sequence: the shards in the epoch's seeded order (as the shard stream orders
them), cut into blocks of ``block_shards`` shards whose samples are permuted among themselves. Optimizer step ``i``
reads positions ``[i*G, (i+1)*G)`` of it, ``G`` the global batch; micro-batch ``a`` of rank ``r`` is the ``B``
positions from ``i*G + (a*W + r)*B`` (``W`` ranks, ``B`` per device). After ``k`` steps the first ``k*G`` positions
were read, on however many processes; a run resumed with the same global batch on another number of processes
(the accumulation adjusted) reads on from position ``k*G``. Each sample's augmentation is seeded by its position,
so the pixels do not depend on the layout either.

Reading by position needs random access: local uncompressed ``.tar`` shards with the manifest's per-shard counts.
A shard's member offsets come from its tar headers (seeks, no data reads) when it is first needed. Damaged data
is skipped and counted per sample, as in the shard stream.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import torch

from data_pipelines.seeding import stable_seed
from data_pipelines.shards import expand_shards, local_path
from data_pipelines.stream import (
    CORRUPT_TAR_ERRORS,
    BatchDecoder,
    ShardLoader,
    StreamConfig,
    check_device_decoding,
    check_stored_size,
    epoch_shards,
    resolve_rank,
    shard_facts,
    worker_normalize,
)
from data_pipelines.tar_members import mapped_archive, sample_members
from data_pipelines.transforms import build_transform

log = logging.getLogger(__name__)
OPEN_SHARDS = 64  # at least this many shards a worker keeps open (and indexed); at least two blocks' worth

Members = list[tuple[str, int, int]]  # (extension, data offset, size) of one sample's tar members


class EpochOrder:
    """Global position -> (shard, sample index in the shard) for one epoch."""

    def __init__(self, urls: Sequence[str], counts: dict[str, int], seed: int, epoch: int, block_shards: int) -> None:
        shards = epoch_shards(urls, seed, epoch)
        self.blocks = [shards[start : start + block_shards] for start in range(0, len(shards), block_shards)]
        self.counts = counts
        self.seed, self.epoch = seed, epoch
        self.block_starts = [0]
        for block in self.blocks:
            self.block_starts.append(self.block_starts[-1] + sum(counts[url] for url in block))
        self._permuted: tuple[int, torch.Tensor] | None = None

    @property
    def total(self) -> int:
        return self.block_starts[-1]

    def locate(self, position: int) -> tuple[str, int]:
        block = bisect.bisect_right(self.block_starts, position) - 1
        within = int(self._permutation(block)[position - self.block_starts[block]])
        for url in self.blocks[block]:
            if within < self.counts[url]:
                return url, within
            within -= self.counts[url]
        raise IndexError(f"position {position} is past the epoch's {self.total} samples")

    def _permutation(self, block: int) -> torch.Tensor:
        if self._permuted is None or self._permuted[0] != block:
            size = self.block_starts[block + 1] - self.block_starts[block]
            generator = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, "block", block))
            self._permuted = (block, torch.randperm(size, generator=generator))
        return self._permuted[1]


def index_shard(path: str) -> list[tuple[str, Members]]:
    """The samples of a tar shard in stored order: (key, members), from the headers alone; a damaged shard gives
    the samples before the damage."""
    samples: list[tuple[str, Members]] = []
    try:
        with mapped_archive(path) as archive:
            for key, members in sample_members(archive, path):
                samples.append(
                    (key, [(extension, member.offset, member.size) for extension, member in members.items()])
                )
    except CORRUPT_TAR_ERRORS as error:
        log.warning("shard %s is damaged after %d samples: %s", path, len(samples), error)
    return samples


class SampleReader:
    """Samples by (shard, index), keeping the most recently used shards open and indexed."""

    def __init__(self, capacity: int) -> None:
        self.open: OrderedDict[str, tuple[BinaryIO, list[tuple[str, Members]]]] = OrderedDict()
        self.capacity = capacity

    def read(self, url: str) -> tuple[BinaryIO, list[tuple[str, Members]]]:
        if url in self.open:
            self.open.move_to_end(url)
            return self.open[url]
        path = str(local_path(url))
        shard = (open(path, "rb"), index_shard(path))
        self.open[url] = shard
        if len(self.open) > self.capacity:
            self.open.popitem(last=False)[1][0].close()
        return shard

    def sample(self, url: str, index: int) -> dict[str, Any] | None:
        """The sample as webdataset would give it, or None when damage lost it."""
        handle, samples = self.read(url)
        if index >= len(samples):
            return None
        key, members = samples[index]
        sample: dict[str, Any] = {"__key__": key, "__url__": url}
        try:
            for extension, offset, size in members:
                handle.seek(offset)
                data = handle.read(size)
                if len(data) != size:
                    return None
                sample[extension] = data
        except OSError:
            return None
        return sample


class ElasticStream(torch.utils.data.IterableDataset):
    """One rank's micro-batches of the global order; worker ``w`` of ``W`` decodes micro-batches ``w, w+W, ...``
    after the skipped ones, which is the order a DataLoader hands them over in."""

    def __init__(
        self,
        cfg: StreamConfig,
        urls: list[str],
        counts: dict[str, int],
        accumulate: int,
        block_shards: int,
        arrays: bool,
    ) -> None:
        """``arrays``: the samples are arrays (the manifest's format), decoded with the array transforms."""
        super().__init__()
        self.cfg, self.urls, self.counts, self.arrays = cfg, urls, counts, arrays
        self.rank, self.world_size = resolve_rank(cfg)
        self.accumulate, self.block_shards = accumulate, block_shards
        self.global_batch = cfg.batch_size * self.world_size * accumulate
        # Micro-batches per rank in every whole global batch of the epoch (the remainder waits for no one).
        self.available_batches = sum(counts[url] for url in urls) // self.global_batch * accumulate
        self.set_epoch(cfg.epoch, cfg.skip_batches)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next iteration yields ``epoch`` after this rank's first ``skip_batches`` micro-batches."""
        if skip_batches % self.accumulate:
            raise ValueError(f"skip_batches={skip_batches} is not a whole number of steps of {self.accumulate}")
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        """Micro-batches per rank: the available ones, or ``cfg.batches_per_epoch`` of them."""
        cap = self.cfg.batches_per_epoch
        return min(self.available_batches, cap) if cap is not None else self.available_batches

    def epoch_batches(self) -> int:
        return self.batches_per_epoch() - self.skip_batches

    def positions(self, micro_batch: int) -> range:
        """The global positions of this rank's ``micro_batch``-th micro-batch of the epoch."""
        step, within = divmod(micro_batch, self.accumulate)
        start = step * self.global_batch + (within * self.world_size + self.rank) * self.cfg.batch_size
        return range(start, start + self.cfg.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        cfg = self.cfg
        transform = build_transform(cfg.transform, cfg.augment, cfg.mean, self.arrays)
        seed = stable_seed(cfg.seed, self.epoch, "elastic")
        decoder = BatchDecoder(transform, worker_normalize(cfg), seed, self.arrays, cfg.decode_on_device)
        return decoder.decode_batches(self.groups(range(self.skip_batches + worker, self.batches_per_epoch(), workers)))

    def groups(self, micro_batches: range) -> Iterator[tuple[list[dict[str, Any]], int]]:
        order = EpochOrder(self.urls, self.counts, self.cfg.seed, self.epoch, self.block_shards)
        reader = SampleReader(max(OPEN_SHARDS, 2 * self.block_shards))  # a block reads its shards at random
        for micro_batch in micro_batches:
            group, lost = [], 0
            for position in self.positions(micro_batch):
                sample = reader.sample(*order.locate(position))
                if sample is None:
                    lost += 1
                    continue
                sample["__position__"], sample["__lost__"] = position, 0
                group.append(sample)
            if not group:
                raise ValueError(self._nothing_readable(micro_batch))
            yield group, lost

    def _nothing_readable(self, micro_batch: int) -> str:
        # Every rank must yield every micro-batch, or the others wait for it in the step's all-reduce.
        positions = self.positions(micro_batch)
        return (
            f"epoch {self.epoch}: no sample of micro-batch {micro_batch} (positions {positions.start}-"
            f"{positions.stop - 1}) could be read: rewrite the damaged shards from the source "
            "(python -m data_pipelines.write_shards), or use data.order=resampled"
        )


def build_elastic_loader(cfg: StreamConfig, accumulate: int, block_shards: int) -> ShardLoader:
    """The elastic loader of ``cfg``'s rank (``accumulate`` micro-batches a step), checked up front: local tar shards
    with a manifest, at least one global batch per epoch."""
    urls = expand_shards(cfg.shards)
    remote = [url for url in urls if local_path(url) is None or not url.endswith(".tar")]
    if remote:
        raise ValueError(
            f"data.order=elastic reads samples by position and needs local uncompressed .tar shards; {remote[0]} "
            "is not one (copy the shards to local disk, or use data.order=resampled)"
        )
    facts = shard_facts(urls, cfg.manifest)
    check_device_decoding(cfg, facts.arrays)
    check_stored_size(cfg, facts)
    if facts.counts is None:
        raise ValueError("data.order=elastic needs the shards' manifest.json (per-shard sample counts)")
    stream = ElasticStream(cfg, urls, facts.counts, accumulate, block_shards, facts.arrays)
    total, available = sum(facts.counts.values()), stream.available_batches
    if available == 0:
        raise ValueError(f"the shards' {total} samples are fewer than one global batch of {stream.global_batch}")
    if cfg.batches_per_epoch is not None and cfg.batches_per_epoch > available:
        raise ValueError(
            f"data.batches_per_epoch={cfg.batches_per_epoch}, but an elastic epoch of {total} samples has "
            f"{available} micro-batches per rank: lower it, or leave it null"
        )
    if cfg.holdout is not None:
        raise ValueError("data.order=elastic reads whole epochs; a hold-out split needs data.order=resampled")
    return ShardLoader(stream, cfg.num_workers, cfg.pin_memory)

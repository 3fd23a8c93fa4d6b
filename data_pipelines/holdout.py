"""A seeded hold-out split by sample key: the same images are held out whatever reads them, and in any order.

A sample is held out when a stable hash of ``(seed, key)`` falls below ``fraction``: listings of official files,
shard streams and tables of precomputed features all agree on it, and no sample count or order is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_pipelines.seeding import stable_seed

RESOLUTION = 1_000_000  # hash buckets: the held-out share is a multiple of 1e-6


@dataclass(frozen=True)
class HoldOut:
    """``fraction`` of the samples (by key) held out for validation; ``side`` says which part this reader keeps."""

    fraction: float
    seed: int
    side: str  # "val": the held-out samples | "train": all the others

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"the hold-out fraction must be in (0, 1), got {self.fraction}")
        if self.side not in ("val", "train"):
            raise ValueError(f"hold-out side must be 'val' or 'train', got {self.side!r}")

    def is_held_out(self, key: str) -> bool:
        return stable_seed(self.seed, "holdout", key) % RESOLUTION < self.fraction * RESOLUTION

    def keeps(self, key: str) -> bool:
        return self.is_held_out(key) == (self.side == "val")

    def keeps_sample(self, sample: dict[str, Any]) -> bool:
        """webdataset ``select`` predicate on a raw sample."""
        return self.keeps(sample["__key__"])

    def describe(self) -> str:
        return f"a seeded hold-out of {self.fraction:.0%} of the training images (seed {self.seed})"

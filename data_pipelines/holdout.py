"""A seeded hold-out split by sample key: the same images are held out whatever reads the split, in any order.

The held-out share of a split is the ``round(fraction * N)`` keys (at least one, never all) with the smallest
stable hash of ``(seed, key)``: listings of official files, shard streams and tables of precomputed features of
the same split hold out the same images, exactly as many as asked, with no dependence on their order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from data_pipelines.seeding import stable_seed


@dataclass(frozen=True)
class KeySelection:
    """One side of a hold-out of a given split: ``keeps(key)`` says whether a sample belongs to it."""

    held_out: frozenset[str]
    side: str  # "val": the held-out samples | "train": all the others

    def keeps(self, key: str) -> bool:
        """Whether the sample ``key`` is on this side."""
        return (key in self.held_out) == (self.side == "val")

    def keeps_sample(self, sample: dict[str, Any]) -> bool:
        """webdataset ``select`` predicate on a raw sample."""
        return self.keeps(sample["__key__"])


@dataclass(frozen=True)
class HoldOut:
    """``fraction`` of a split's samples held out for validation; ``side`` says which part a reader keeps."""

    fraction: float
    seed: int
    side: str  # "val" | "train"

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"the hold-out fraction must be in (0, 1), got {self.fraction}")
        if self.side not in ("val", "train"):
            raise ValueError(f"hold-out side must be 'val' or 'train', got {self.side!r}")

    def select(self, keys: Iterable[str]) -> KeySelection:
        """The selection of this side among ``keys``, the keys of the whole split."""
        keys = sorted(set(keys))
        if len(keys) < 2:
            raise ValueError(f"a hold-out needs at least 2 samples, the split has {len(keys)}")
        count = min(len(keys) - 1, max(1, round(self.fraction * len(keys))))
        ranked = sorted(keys, key=lambda key: stable_seed(self.seed, "holdout", key))
        return KeySelection(frozenset(ranked[:count]), self.side)

    def describe(self) -> str:
        """How the validation split was made, for the log and results.json."""
        return f"a seeded hold-out of {self.fraction:.0%} of the training images (seed {self.seed})"

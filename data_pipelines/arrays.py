"""Arrays in shards: N-channel images ``[C, H, W]`` and volumes ``[C, D, H, W]``, channels first, dtype kept.

Two tar encodings: ``npy`` (``numpy.save`` bytes: no decode cost, for 2-D multispectral tiles) and ``npz``
(``numpy.savez_compressed``, one array named ``array``: volumes, which compress several-fold). Both are read
with ``allow_pickle=False``, so a shard can never run code. Per-channel moments are accumulated while writing,
so the manifest can carry the statistics the stream normalizes with.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ARRAY_FORMATS = ("npy", "npz")
NPZ_ARRAY_NAME = "array"


def encode_array(array: np.ndarray, array_format: str) -> bytes:
    """The tar member bytes of ``array`` in ``array_format`` (one of :data:`ARRAY_FORMATS`)."""
    buffer = io.BytesIO()
    if array_format == "npy":
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    elif array_format == "npz":
        np.savez_compressed(buffer, **{NPZ_ARRAY_NAME: array})
    else:
        raise ValueError(f"unknown array format {array_format!r}; choose one of: {', '.join(ARRAY_FORMATS)}")
    return buffer.getvalue()


def array_member(sample: dict[str, Any]) -> str | None:
    """The sample's array member (``npy`` or ``npz``), or None when it holds an encoded image."""
    return next((name for name in ARRAY_FORMATS if name in sample), None)


def decode_array(data: bytes, array_format: str) -> np.ndarray:
    """The array of one tar member; a damaged member raises ValueError or OSError (a corrupt sample)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if array_format != "npz":
            return loaded
        with loaded:
            return loaded[NPZ_ARRAY_NAME]
    except zipfile.BadZipFile as error:  # not an OSError: say it is damaged data like the others
        raise ValueError(f"damaged npz member: {error}") from error


@dataclass
class ChannelMoments:
    """Running per-channel count, sum and sum of squares (float64), merged over items and shards."""

    count: float = 0.0
    sums: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, array: np.ndarray) -> ChannelMoments:
        """The moments of one channels-first array."""
        values = array.reshape(array.shape[0], -1).astype(np.float64)
        return cls(float(values.shape[1]), values.sum(axis=1).tolist(), np.square(values).sum(axis=1).tolist())

    def add(self, other: ChannelMoments) -> None:
        if self.sums and len(self.sums) != len(other.sums):
            raise ValueError(f"an array with {len(other.sums)} channels among arrays with {len(self.sums)}")
        self.sums = [a + b for a, b in zip(self.sums or [0.0] * len(other.sums), other.sums, strict=True)]
        self.squares = [a + b for a, b in zip(self.squares or [0.0] * len(other.squares), other.squares, strict=True)]
        self.count += other.count

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and (population) standard deviation."""
        mean = [total / self.count for total in self.sums]
        variance = [max(square / self.count - m * m, 0.0) for square, m in zip(self.squares, mean, strict=True)]
        return mean, [float(np.sqrt(v)) for v in variance]


def select_channels(values: Sequence[float], bands: Sequence[int] | None) -> tuple[float, ...]:
    """``values`` (one per stored channel) of the chosen ``bands`` only; all of them for ``bands=None``."""
    if bands is None:
        return tuple(values)
    outside = [band for band in bands if not 0 <= band < len(values)]
    if outside:
        raise ValueError(f"bands {outside} do not exist: the data has {len(values)} channels (0-{len(values) - 1})")
    return tuple(values[band] for band in bands)

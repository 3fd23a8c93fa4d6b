"""Small real image files, shard constants and stream settings shared by the data tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from yaml_defaults import transform_options

DEMO_TRAIN = 190  # 10 shards of 20 and one of 10: uneven shares across 2 ranks x 2 workers
DEMO_SHARD_SIZE = 20


def small_stream_settings(shards: Path | str, batch_size: int) -> dict:
    """``StreamConfig`` fields for 16 px MAE crops of ``shards`` read in the training process, in stored order."""
    return dict(
        shards=str(shards),
        batch_size=batch_size,
        num_workers=0,
        transform="mae",
        augment=transform_options(16),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        seed=0,
        shuffle_buffer=0,
        manifest=None,
        pin_memory=False,
    )


def random_pixels(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_bytes(pixels: np.ndarray, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def write_image(path: Path, pixels: np.ndarray, image_format: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(pixels, image_format))
    return path

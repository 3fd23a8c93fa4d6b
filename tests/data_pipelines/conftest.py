"""Fixtures of the data tests: real shards and real image files, written small."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.demo import write_demo_shards

DEMO_TRAIN = 190  # 10 shards of 20 and one of 10: uneven shares across 2 ranks x 2 workers
DEMO_SHARD_SIZE = 20


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_shards(out, num_train=DEMO_TRAIN, num_test=40, image_size=16, max_count=DEMO_SHARD_SIZE, workers=1)
    return out


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


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """ROOT/train/<cat|dog>/*: three JPEGs and one PNG per class, of different sizes."""
    root = tmp_path / "photos"
    for label, name in enumerate(("cat", "dog")):
        for index in range(4):
            image_format, suffix = ("PNG", "png") if index == 3 else ("JPEG", "jpg")
            pixels = random_pixels(20 + index, 24, 10 * label + index)
            write_image(root / "train" / name / f"{name}.{index}.{suffix}", pixels, image_format)
    return root

"""Fixtures of the data tests: real shards and real image files, written small."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import DEMO_SHARD_SIZE, DEMO_TRAIN, random_pixels, write_image

from data_pipelines.demo import write_demo_shards


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_shards(out, num_train=DEMO_TRAIN, num_test=40, image_size=16, max_count=DEMO_SHARD_SIZE, workers=1)
    return out


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

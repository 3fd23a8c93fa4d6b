"""The embedded demo set: layout, determinism, balance, and that its labels are learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from data_pipelines.demo import CLASSES, demo_listing, draw_image, write_demo_shards


def test_demo_writes_train_and_test_shards_with_manifests(demo_dir: Path) -> None:
    train = json.loads((demo_dir / "train" / "manifest.json").read_text())
    test = json.loads((demo_dir / "test" / "manifest.json").read_text())
    assert (train["total"], test["total"], train["classes"]) == (190, 40, CLASSES)
    assert (demo_dir / "train" / "demo-000000.tar").is_file() and (demo_dir / "test" / "demo-000000.tar").is_file()


def test_demo_shards_are_identical_for_the_same_seed(demo_dir: Path, tmp_path: Path) -> None:
    write_demo_shards(tmp_path, num_train=190, num_test=40, image_size=16, max_count=20, workers=1)
    shards = sorted((demo_dir / "train").glob("*.tar"))
    assert shards and all(path.read_bytes() == (tmp_path / "train" / path.name).read_bytes() for path in shards)


def test_demo_classes_are_balanced() -> None:
    labels = [item.label for item in demo_listing("train", 100, 16, seed=0).items]
    assert np.bincount(labels).tolist() == [10] * 10


def test_demo_test_split_differs_from_train(demo_dir: Path) -> None:
    def first_image(split: str) -> bytes:
        return next(iter(wds.WebDataset(str(demo_dir / split / "demo-000000.tar"), shardshuffle=False)))["png"]

    assert first_image("train") != first_image("test")


def test_demo_labels_are_learnable_by_nearest_class_mean() -> None:
    def pixels(split: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        images = [draw_image(label, 16, np.random.default_rng([0, split, index])) for index, label in enumerate(labels)]
        return np.stack(images).reshape(count, -1).astype(np.float32), labels

    (train_x, train_y), (test_x, test_y) = pixels(0, 400), pixels(1, 200)
    means = np.stack([train_x[train_y == label].mean(0) for label in range(10)])
    predictions = np.argmin(((test_x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predictions == test_y).mean() > 0.3  # chance is 0.1

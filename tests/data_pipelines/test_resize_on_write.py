"""Resize on write: images stored within the limits, in their own format, masks with them, the savings recorded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from image_files import random_pixels, write_image
from PIL import Image
from yaml_defaults import transform_options

from data_pipelines import write_shards as cli
from data_pipelines.resize import ResizePolicy
from data_pipelines.segmentation_demo import write_segmentation_demo
from data_pipelines.sources import get_source
from data_pipelines.sources.base import SourceRequest
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.write_shards import write_shards


def smooth_pixels(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return (np.stack([np.sin(x / 6 + c) * np.cos(y / 9) for c in range(3)], -1) * 100 + 128).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """ROOT/train/a/*: a 120x90 and a 64x96 JPEG, a 100x60 PNG, and a 20x24 JPEG already small."""
    root = tmp_path / "photos"
    for name, (height, width), image_format in [
        ("wide.jpg", (90, 120), "JPEG"),
        ("tall.jpg", (96, 64), "JPEG"),
        ("drawing.png", (60, 100), "PNG"),
        ("small.jpg", (20, 24), "JPEG"),
    ]:
        write_image(root / "train" / "a" / name, smooth_pixels(height, width), image_format)
    return root


def stored_images(out: Path) -> dict[str, tuple[str, bytes]]:
    """Sample key suffix (the file name) -> (extension, bytes)."""
    samples = wds.WebDataset(sorted(str(path) for path in out.glob("*.tar")), shardshuffle=False)
    images = {}
    for sample in samples:
        extension = next(ext for ext in ("jpg", "png") if ext in sample)
        images[sample["__key__"].rsplit("_", 1)[-1]] = (extension, sample[extension])
    return images


def test_policy_limits_the_short_side_and_the_area_and_never_enlarges() -> None:
    assert ResizePolicy(256, None).target(500, 375) == (341, 256)
    assert ResizePolicy(256, None).target(200, 300) is None
    assert ResizePolicy(None, 100 * 100).target(400, 100) == (200, 50)
    assert ResizePolicy(64, 100 * 100).target(400, 100) == (200, 50)  # the tighter of the two
    assert ResizePolicy(None, None).target(4000, 3000) is None and not ResizePolicy(None, None).active


def test_images_are_stored_within_the_limit_in_their_own_format(photo_folder: Path, tmp_path: Path) -> None:
    manifest = write_shards("imagefolder", photo_folder, tmp_path / "out", split="train", resize_short_side=32)
    stored = stored_images(tmp_path / "out")
    sizes = {name: Image.open(io.BytesIO(data)).size for name, (_, data) in stored.items()}
    assert sizes == {"wide": (43, 32), "tall": (32, 48), "drawing": (53, 32), "small": (24, 20)}
    assert {name: extension for name, (extension, _) in stored.items()} == {
        "wide": "jpg",
        "tall": "jpg",
        "drawing": "png",
        "small": "jpg",
    }
    assert stored["small"][1] == (photo_folder / "train" / "a" / "small.jpg").read_bytes()  # kept as it was
    source_bytes = sum(path.stat().st_size for path in (photo_folder / "train").rglob("*.*"))
    assert manifest["resize"] == {
        "short_side": 32,
        "max_pixels": None,
        "resized": 3,
        "source_bytes": source_bytes,
        "bytes": sum(len(data) for _, data in stored.values()),
    }
    assert manifest["resize"]["bytes"] < source_bytes
    assert manifest["image_size"]["height"] == {"min": 20, "max": 48, "mean": 33.0}


def test_resized_pixels_are_a_lanczos_downscale_of_the_original(photo_folder: Path, tmp_path: Path) -> None:
    # 100x60 within 1,200 pixels: 0.447 of each side, rounded down so the area stays within the limit
    write_shards("imagefolder", photo_folder, tmp_path / "out", split="train", resize_max_pixels=40 * 30)
    stored = np.asarray(Image.open(io.BytesIO(stored_images(tmp_path / "out")["drawing"][1])), dtype=float)
    original = Image.open(photo_folder / "train" / "a" / "drawing.png")
    expected = np.asarray(original.resize((44, 26), Image.Resampling.LANCZOS), dtype=float)
    assert stored.shape == expected.shape and np.abs(stored - expected).max() == 0  # PNG: lossless


def test_masks_are_resized_with_their_images_by_nearest_neighbour(tmp_path: Path) -> None:
    write_segmentation_demo(tmp_path / "data", {"train": 2}, width=40, height=32)
    write_shards("segfolder", tmp_path / "data", tmp_path / "out", split="train", resize_short_side=16)
    stored_labels = set()
    for sample in wds.WebDataset(str(next((tmp_path / "out").glob("*.tar"))), shardshuffle=False):
        image_format = next(ext for ext in ("jpg", "png") if ext in sample)
        image, mask = Image.open(io.BytesIO(sample[image_format])), Image.open(io.BytesIO(sample["seg.png"]))
        assert image.size == mask.size == (20, 16)
        stored_labels |= set(np.unique(np.asarray(mask)).tolist())
    listing = get_source("segfolder").load(SourceRequest(tmp_path / "data", "train"))
    source_labels = set().union(*(np.unique(item.load_mask()).tolist() for item in listing.items))
    assert len(stored_labels) > 1 and stored_labels <= source_labels  # nearest neighbour: no blended values


def test_arrays_are_refused_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "arrays" / "train" / "a"
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="resizing applies to images"):
        write_shards("npy_folder", tmp_path / "arrays", tmp_path / "out", split="train", resize_short_side=4)


def test_other_resize_settings_are_another_conversion(photo_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", photo_folder, tmp_path / "out", split="train", resize_short_side=32)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards("imagefolder", photo_folder, tmp_path / "out", split="train", resize_short_side=48)


def test_command_line_reports_the_bytes_saved(photo_folder: Path, tmp_path: Path, capsys) -> None:
    cli.main(
        ["imagefolder", "--root", str(photo_folder), "--split", "train", "--out", str(tmp_path / "out")]
        + ["--resize-short-side", "32", "--workers", "1"]
    )
    printed = capsys.readouterr().out
    assert "resized 3 of 4 images" in printed and "% saved" in printed
    with pytest.raises(SystemExit):
        cli.main(["imagefolder", "--root", str(photo_folder), "--out", str(tmp_path / "x"), "--resize-short-side", "0"])
    assert "resize_short_side must be a positive number" in capsys.readouterr().err


def test_random_photos_resize_without_error(tmp_path: Path) -> None:
    write_image(tmp_path / "noise" / "train" / "a" / "n.jpg", random_pixels(50, 70, 0))
    manifest = write_shards("imagefolder", tmp_path / "noise", tmp_path / "out", split="train", resize_short_side=10)
    assert manifest["image_size"]["height"] == {"min": 10, "max": 10, "mean": 10.0}


def test_streaming_shards_resized_below_the_output_size_warns(photo_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", photo_folder, tmp_path / "out", split="train", resize_short_side=32)
    options = transform_options(48, eval_crop_fraction=1.0)
    settings = dict(shards=str(tmp_path / "out"), batch_size=2, num_workers=0, transform="eval", augment=options)
    settings |= dict(mean=(0.5,) * 3, std=(0.2,) * 3, seed=0, shuffle_buffer=0, manifest=None, pin_memory=False)
    with pytest.warns(UserWarning, match="resized on write to a 32 px shorter side, below the 48 px"):
        batches = list(build_loader(StreamConfig(**settings)))
    assert sum(len(batch["key"]) for batch in batches) == 4

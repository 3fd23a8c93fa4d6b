"""Embedded demo data: 10 classes of procedurally drawn shapes, written to shards in seconds.

`python -m data_pipelines.demo --out data/demo` writes `data/demo/train/demo-%06d.tar` and
`data/demo/test/demo-%06d.tar`, each with a manifest. Class k is one shape (disk, square, ..., diagonal
stripes) drawn in a hue near k/10 at a random position and scale on a random low-saturation gradient, with
pixel noise. Both the shape and the colour carry the label, so a small ViT learns it above chance within a few
hundred steps, while the jitter keeps it from being trivial. Image i of a split is drawn from its own seed, so
the set is the same on every machine and for any number of writer processes.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.sources.base import EncodedImage, Listing, encode_pil
from data_pipelines.writer import WriteOptions, write_listing

DEFAULT_NUM_TRAIN = 4096
DEFAULT_NUM_TEST = 1024
SPLIT_CODES = {"train": 0, "test": 1}
DEMO_WAIT_SECONDS = 300  # how long other ranks wait for rank 0 to write the demo shards

log = logging.getLogger(__name__)

Mask = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _band(coordinate: np.ndarray, radius: float) -> np.ndarray:
    return np.floor(coordinate / (radius / 2)) % 2 == 0


# Masks over offsets (dx, dy) from the shape's centre, for a shape of half-size `r`.
SHAPES: dict[str, Mask] = {
    "disk": lambda dx, dy, r: dx**2 + dy**2 < r**2,
    "square": lambda dx, dy, r: np.maximum(abs(dx), abs(dy)) < r,
    "triangle": lambda dx, dy, r: (abs(dy) < r) & (abs(dx) < (dy + r) / 2),
    "cross": lambda dx, dy, r: ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r)),
    "ring": lambda dx, dy, r: (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2),
    "diamond": lambda dx, dy, r: abs(dx) + abs(dy) < r,
    "horizontal_stripes": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) < r) & _band(dy + r, r),
    "vertical_stripes": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) < r) & _band(dx + r, r),
    "checkerboard": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) < r) & (_band(dx + r, r) == _band(dy + r, r)),
    "diagonal_stripes": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) < r) & _band(dx + dy + 2 * r, r),
}
CLASSES = list(SHAPES)


def hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour as floats in [0, 255]; hue in [0, 1) wraps around."""
    channel = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return value * (1 - saturation * np.clip(np.minimum(channel, 4 - channel), 0, 1)) * 255


@functools.cache
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return y, x


def draw_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    y, x = pixel_centres(size)
    start, end = (hsv_to_rgb(rng.random(), 0.25, rng.uniform(0.3, 0.9)) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x * np.cos(angle) + y * np.sin(angle)) / (size * 1.5) + 0.5)[..., None]
    image = start + (end - start) * ramp
    radius = rng.uniform(0.2, 0.38) * size
    centre_x, centre_y = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
    mask = SHAPES[CLASSES[label]](x - centre_x, y - centre_y, radius)
    image[mask] = hsv_to_rgb(label / len(CLASSES) + rng.normal(0, 0.03), rng.uniform(0.6, 1), rng.uniform(0.65, 1))
    image += 8 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DemoItem:
    """Image `index` of a demo split, drawn when the writer encodes it."""

    key: str
    label: int
    seed: int
    split_code: int
    index: int
    size: int

    def encode(self, image_format: str) -> EncodedImage:
        rng = np.random.default_rng([self.seed, self.split_code, self.index])
        return encode_pil(Image.fromarray(draw_image(self.label, self.size, rng)), image_format)


def demo_listing(split: str, count: int, image_size: int, seed: int) -> Listing:
    """`count` balanced items (label = index mod 10) of one split."""
    code = SPLIT_CODES[split]
    items = [DemoItem(f"{index:08d}", index % len(CLASSES), seed, code, index, image_size) for index in range(count)]
    return Listing(items, CLASSES)


def write_demo_shards(
    out_dir: str | Path,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_test: int = DEFAULT_NUM_TEST,
    image_size: int = 32,
    seed: int = 0,
    max_count: int = 512,
    overwrite: bool = False,
    workers: int = os.cpu_count() or 1,
) -> dict[str, dict[str, Any]]:
    """Write `out_dir/train/demo-%06d.tar` and `out_dir/test/demo-%06d.tar` with manifests; returns both manifests.

    Shards hold 512 samples by default so the default train split (8 shards) feeds 2 ranks x 4 workers.
    Calling it again with the same arguments returns the existing manifests without writing.
    """
    manifests = {}
    for split, count in (("train", num_train), ("test", num_test)):
        options = WriteOptions("demo", max_count, image_format="png", workers=workers, seed=seed, overwrite=overwrite)
        provenance = {"source": "demo", "root": None, "split": split, "task": None, "drawn_size": image_size}
        listing = demo_listing(split, count, image_size, seed)
        manifests[split] = write_listing(listing, Path(out_dir) / split, options, provenance)
    return manifests


def launch_rank() -> int:
    """0 only for the first process of the first node, as the launcher (SLURM, torchrun, Lightning) announced it."""
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK"):
        if os.environ.get(name, "0") != "0":
            return int(os.environ[name])
    return 0


def ensure_demo_shards(train_dir: str | Path, image_size: int) -> None:
    """Write the demo set beside ``train_dir`` on first use: rank 0 writes, other ranks wait for its manifest."""
    train_dir = Path(train_dir)
    if (train_dir / "manifest.json").is_file():
        return
    if launch_rank() == 0:
        log.info("writing the demo shards to %s (first use)", train_dir.parent)
        write_demo_shards(train_dir.parent, image_size=image_size)
        return
    deadline = time.monotonic() + DEMO_WAIT_SECONDS
    while not (train_dir / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not write the demo shards to {train_dir} within {DEMO_WAIT_SECONDS} s")
        time.sleep(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder that receives train/ and test/ shard folders")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help=f"default {DEFAULT_NUM_TRAIN}")
    parser.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST, help=f"default {DEFAULT_NUM_TEST}")
    parser.add_argument("--image-size", type=int, default=32, help="side of the square images (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--max-count", type=int, default=512, help="samples per shard at most (default 512)")
    parser.add_argument("--overwrite", action="store_true", help="replace demo shards already in --out")
    args = parser.parse_args(argv)
    manifests = write_demo_shards(
        args.out, args.num_train, args.num_test, args.image_size, args.seed, args.max_count, args.overwrite
    )
    for split, manifest in manifests.items():
        print(f"{split}: {manifest['total']} images in {len(manifest['shards'])} shards in {Path(args.out) / split}")


if __name__ == "__main__":
    main()

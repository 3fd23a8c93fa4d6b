"""A small segmentation set in the generic image + mask layout, drawn procedurally: for the README's command and
the tests.

    python -m data_pipelines.segmentation_demo --out data/segdemo

writes ``{train,test}/images/<n>.jpg`` with ``{train,test}/masks/<n>.png`` and ``classes.txt`` (red, green,
blue): each image is split into two or three regions at random places, region k filled with colour k plus noise,
and its mask holds k there. Image i of a split is drawn from its own seed, so the set is the same everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.seeding import stable_seed

CLASSES = ("red", "green", "blue")
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels [H, W, 3] uint8, labels [H, W] uint8)``: a vertical cut, and a third region in the lower left."""
    labels = np.zeros((height, width), dtype=np.uint8)
    cut = int(rng.integers(width // 4, 3 * width // 4))
    labels[:, cut:] = 1
    labels[int(rng.integers(height // 2, height)) :, : cut // 2] = 2
    pixels = COLOURS[labels] + rng.integers(0, 20, (height, width, 3)).astype(np.uint8)
    return pixels, labels


def write_segmentation_demo(out: str | Path, counts: dict[str, int], width: int, height: int) -> Path:
    out = Path(out)
    for split, count in counts.items():
        for folder in ("images", "masks"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels, labels = draw_scene(np.random.default_rng(stable_seed("segdemo", split, index)), width, height)
            Image.fromarray(pixels).save(out / split / "images" / f"{index}.jpg", quality=95)
            Image.fromarray(labels).save(out / split / "masks" / f"{index}.png")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.segmentation_demo",
        description="Write a small image + mask segmentation set (task=segfolder's layout), drawn procedurally.",
    )
    parser.add_argument("--out", required=True, help="folder to write train/, test/ and classes.txt into")
    parser.add_argument("--train", type=int, default=64, help="training images (default %(default)s)")
    parser.add_argument("--test", type=int, default=16, help="test images (default %(default)s)")
    parser.add_argument("--width", type=int, default=48, help="image width (default %(default)s)")
    parser.add_argument("--height", type=int, default=40, help="image height (default %(default)s)")
    args = parser.parse_args(argv)
    print(write_segmentation_demo(args.out, {"train": args.train, "test": args.test}, args.width, args.height))


if __name__ == "__main__":
    main()

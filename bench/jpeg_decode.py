"""CPU time per photo of the JPEG decoders a loader could use, into an RGB array, at full and reduced DCT scale.

Why data_pipelines.decode uses simplejpeg: on the photo-like JPEGs of bench/loader.py (400-500 px short side,
quality 90) it is the fastest way to an array at every scale, and it bundles libjpeg-turbo in its wheel
(PyTurboJPEG, the other candidate, needs a system libturbojpeg, absent here). Rounds are interleaved; the best
round per decoder is reported (one thread, this process's CPU time).

    python bench/jpeg_decode.py [--images 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable

import numpy as np
import simplejpeg
import torch
from loader import photo_like, pink_noise_fields
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg


def pillow(data: bytes, reduction: int = 1) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if reduction > 1:
        image.draft("RGB", (image.width // reduction, image.height // reduction))
    return np.asarray(image.convert("RGB"))


def simple(data: bytes, reduction: float = 1) -> np.ndarray:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return simplejpeg.decode_jpeg(
        data, "RGB", min_height=math.ceil(height / reduction), min_width=math.ceil(width / reduction)
    )


def torchvision_cpu(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "Pillow, full size": pillow,
    "Pillow draft, 1/2": lambda data: pillow(data, 2),
    "simplejpeg, full size": simple,
    "simplejpeg, 1/2": lambda data: simple(data, 2),
    "simplejpeg, 1/4": lambda data: simple(data, 4),
    "simplejpeg, 1/8": lambda data: simple(data, 8),
    "simplejpeg, 5/8 (a non-power-of-two scale)": lambda data: simple(data, 8 / 5),
    "torchvision.io.decode_jpeg (CPU), full size": torchvision_cpu,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    fields = pink_noise_fields(4, 1024, rng).astype(np.float32)
    photos = []
    for _ in range(args.images):
        buffer = io.BytesIO()
        Image.fromarray(photo_like(fields, rng)).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    best = dict.fromkeys(DECODERS, float("inf"))
    for _ in range(args.rounds):
        for name, decode in DECODERS.items():
            started = time.process_time()
            for data in photos:
                decode(data)
            best[name] = min(best[name], (time.process_time() - started) / len(photos))
    size = np.mean([len(photo) for photo in photos]) / 1e3
    print(f"{args.images} photos, {size:.0f} kB each, best of {args.rounds} rounds\n")
    print("| decoder | ms per photo |\n|---|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.2f} |")


if __name__ == "__main__":
    main()

"""Stored images: the size from the header alone, then the pixels of only the region a transform needs.

JPEGs decode with simplejpeg (libjpeg-turbo straight into a NumPy array), at the smallest power-of-two DCT scale
(1/2, 1/4, 1/8) that still covers the crop at output resolution: no output pixel is upsampled that would not have
been. Measured on 400-500 px photos (bench/jpeg_decode.py) this is about 30 % faster than Pillow's decode and copy
into an array, the floor of a photo's augmentation. PNG, WebP and four-channel (CMYK) JPEGs decode with Pillow (its
draft mode scales JPEGs the same way), and so do JPEGs libjpeg-turbo warns about (stray bytes before a marker),
which Pillow reads as it always has: only damage Pillow refuses too makes a sample corrupt.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image

from data_pipelines.bit_depth import to_eight_bit

JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # the signature, then the IHDR chunk PNG requires first
DCT_REDUCTIONS = (8, 4, 2)
# Four-channel JPEGs (often Adobe's inverted CMYK): Pillow reads the Adobe marker that says how to convert them.
PILLOW_COLORSPACES = ("CMYK", "YCCK")
Box = tuple[float, float, float, float]  # left, top, width, height in pixels of the stored image


@dataclass(frozen=True)
class StoredImage:
    """An encoded image and its size; nothing is decoded until :meth:`region` (or :meth:`pil`) is called."""

    data: bytes
    width: int
    height: int
    jpeg: bool  # decoded by simplejpeg: a JPEG of one or three channels

    @classmethod
    def read(cls, data: bytes) -> StoredImage:
        """The image's size from its header; unreadable headers raise ValueError or OSError (a corrupt sample), and
        images over twice Pillow's ``MAX_IMAGE_PIXELS`` its DecompressionBombError, as ``Image.open`` does."""
        stored = cls._from_header(data)
        if stored.width < 1 or stored.height < 1:
            raise ValueError(f"image header gives a size of {stored.width}x{stored.height}")
        if Image.MAX_IMAGE_PIXELS and stored.width * stored.height > 2 * Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(
                f"{stored.width}x{stored.height} pixels, over twice Image.MAX_IMAGE_PIXELS"
            )
        return stored

    @classmethod
    def _from_header(cls, data: bytes) -> StoredImage:
        if data[:3] == JPEG_SIGNATURE:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace not in PILLOW_COLORSPACES:
                return cls(data, width, height, jpeg=True)
        if data[:16] == PNG_HEADER and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"):
            return cls(data, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), jpeg=False)
        with Image.open(io.BytesIO(data)) as image:
            return cls(data, image.width, image.height, jpeg=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL gives it."""
        return self.width, self.height

    def pil(self) -> Image.Image:
        """The image opened with Pillow (for transforms that work on PIL images)."""
        return Image.open(io.BytesIO(self.data))

    def region(self, box: Box, output_size: int) -> torch.Tensor:
        """The pixels of `box` as uint8 [3, h, w], decoded as small as `output_size` allows.

        A region decoded at scale 1/r has its edges on that scale's pixel grid, within r/2 stored pixels of `box`.
        """
        width, height = box[2:]
        reduction = next((factor for factor in DCT_REDUCTIONS if min(width, height) // output_size >= factor), 1)
        pixels = self.decode(reduction)
        rows, columns = box_slices(box, self.size, (pixels.shape[1], pixels.shape[0]))
        # Height-width-channel memory seen as [3, h, w] is channels-last, the layout of torch's fast uint8 resize.
        return pixels[rows, columns].permute(2, 0, 1)

    def decode(self, reduction: int = 1) -> torch.Tensor:
        """All pixels as uint8 [H', W', 3], at DCT scale 1/reduction for JPEGs (at least 1/reduction of each side)."""
        if self.jpeg:
            min_height, min_width = math.ceil(self.height / reduction), math.ceil(self.width / reduction)
            try:
                array = simplejpeg.decode_jpeg(self.data, "RGB", min_height=min_height, min_width=min_width)
                return torch.from_numpy(array)
            except ValueError:  # any libjpeg-turbo warning (strict mode): Pillow decides, as it did before
                pass
        image = self.pil()
        if reduction > 1 and image.format == "JPEG":
            image.draft("RGB", (self.width // reduction, self.height // reduction))
        if image.mode != "RGB":  # 16-bit images (shards written elsewhere) scaled, not clipped
            image = to_eight_bit(image).convert("RGB")
        with warnings.catch_warnings():
            # A read-only view of the decoded bytes, one copy fewer; nothing writes into it (resizing makes new).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.asarray(image))


def box_slices(box: Box, stored_size: tuple[int, int], decoded_size: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, columns) of a box in stored pixels on the grid of the decoded image, (width, height) sizes; at
    least one pixel each."""
    left, top, width, height = box
    scale_x, scale_y = decoded_size[0] / stored_size[0], decoded_size[1] / stored_size[1]
    x0, x1 = _pixel_span(left * scale_x, (left + width) * scale_x, decoded_size[0])
    y0, y1 = _pixel_span(top * scale_y, (top + height) * scale_y, decoded_size[1])
    return slice(y0, y1), slice(x0, x1)


def _pixel_span(start: float, end: float, limit: int) -> tuple[int, int]:
    first = min(max(round(start), 0), limit - 1)
    return first, min(max(round(end), first + 1), limit)

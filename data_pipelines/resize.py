"""Resize on write: store images no larger than training needs (img2dataset's and FFCV's ``max_resolution`` idea).

A 224 px crop of a 500 px photo decodes every stored pixel first; a photo stored with a 256 px short side has
3-4x fewer pixels to decode (and bytes to read) for the same crops at 224 px. Images are only ever made smaller,
keeping their aspect ratio, with Lanczos filtering (after a DCT-scaled JPEG decode of at least twice the target
size, Pillow's thumbnail recipe), and re-encoded in their own format (``ENCODINGS``: JPEG and WebP at quality 95).
A segmentation mask is resized with its image by nearest neighbour, so labels stay labels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

from PIL import Image

from data_pipelines.sources.base import ENCODINGS, EncodedImage

DRAFT_MARGIN = 2  # decode JPEGs at no less than twice the target size, so Lanczos still has pixels to filter


@dataclass(frozen=True)
class ResizePolicy:
    """The largest stored size: shorter side at most ``short_side``, area at most ``max_pixels`` (None: no limit)."""

    short_side: int | None
    max_pixels: int | None

    @property
    def active(self) -> bool:
        return self.short_side is not None or self.max_pixels is not None

    def target(self, width: int, height: int) -> tuple[int, int] | None:
        """The (width, height) to store, or None when the image is already within the limits."""
        side_scale = 1.0 if self.short_side is None else self.short_side / min(width, height)
        area_scale = 1.0 if self.max_pixels is None else math.sqrt(self.max_pixels / (width * height))
        scale = min(1.0, side_scale, area_scale)
        # Rounded to the nearest pixel, except down where the area bound binds (so the area stays within it).
        rounding = math.floor if area_scale < side_scale else lambda value: math.floor(value + 0.5)
        size = max(1, rounding(width * scale)), max(1, rounding(height * scale))
        return None if scale >= 1 or size == (width, height) else size


def resize_encoded(image: EncodedImage, policy: ResizePolicy) -> EncodedImage:
    """``image`` within the policy's limits, re-encoded in its own format; unchanged (same bytes) when it fits."""
    size = policy.target(image.width, image.height)
    if size is None:
        return image
    with Image.open(io.BytesIO(image.data)) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (size[0] * DRAFT_MARGIN, size[1] * DRAFT_MARGIN))
        pixels = opened if opened.mode in ("RGB", "L") else opened.convert("RGB")  # what the readers decode to
        resized = pixels.resize(size, Image.Resampling.LANCZOS)
    mask = None if image.mask is None else _resize_mask(image.mask, size)
    return replace(image, data=_encode(resized, image.extension), width=size[0], height=size[1], mask=mask)


def _resize_mask(mask: bytes, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(mask)) as labels:
        return _encode(labels.resize(size, Image.Resampling.NEAREST), "png")


def _encode(image: Image.Image, extension: str) -> bytes:
    pil_format, options = ENCODINGS[extension]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()

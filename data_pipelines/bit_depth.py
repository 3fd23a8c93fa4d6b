"""16-bit images brought to the 8 bits every reader decodes to, scaled by their bit depth.

Pillow opens 16-bit grayscale PNGs and TIFFs as mode ``I;16`` (and 16-bit PGMs as ``I``, their values scaled to
16 bits), and its conversion to ``RGB`` or ``L`` clips every value above 255: a full-range image comes out
nearly white. Here a value ``v`` of 16 bits becomes ``round(v * 255 / 65535)``, so black stays black, white
stays white and the steps between keep their order. 16-bit colour PNGs need none of this: Pillow reads them as
``RGB`` from the high byte of each value (``v >> 8``, within one level of the same scaling).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

EIGHT_BIT_MAX = 255
SIXTEEN_BIT_MAX = 65535
INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's single-channel integer modes


def is_high_bit_depth(image: Image.Image) -> bool:
    """Whether ``image`` holds integer values of more than 8 bits (they must be scaled, not clipped)."""
    return image.mode in INTEGER_MODES


def to_eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: a 16-bit one (:func:`is_high_bit_depth`) scaled to mode ``L``, others as they
    are. Values outside 16 bits (a 32-bit TIFF) have no bit depth to scale by and raise ValueError: store such
    images as arrays."""
    if not is_high_bit_depth(image):
        return image
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > SIXTEEN_BIT_MAX:
        raise ValueError(
            f"a mode {image.mode} image with values {values.min()}..{values.max()}, beyond 16 bits: "
            "convert it to a .npy array and write it with the npy_folder source (docs/science.md)"
        )
    return Image.fromarray(np.rint(values * (EIGHT_BIT_MAX / SIXTEEN_BIT_MAX)).astype(np.uint8))

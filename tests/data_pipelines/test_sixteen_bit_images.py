"""16-bit images keep their range: scaled to 8 bits by their bit depth (v * 255 / 65535, rounded), where Pillow's
own conversion clipped every value above 255 and a full-range gradient came out with a mean of 254.5."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.decode import StoredImage
from data_pipelines.write_shards import write_shards

SIXTEEN_BIT_MAX = 65535


def gradient() -> np.ndarray:
    """Every 16-bit level from 0 to 65535 once, 256 x 256, plus a row of the levels around rounding edges."""
    ramp = np.arange(SIXTEEN_BIT_MAX + 1, dtype=np.uint16).reshape(256, 256)
    ramp[0, :6] = (128, 129, 32767, 32768, 65406, 65407)  # round(v / 257) steps between each pair
    return ramp


def scaled(values: np.ndarray) -> np.ndarray:
    return np.array([[round(int(v) * 255 / SIXTEEN_BIT_MAX) for v in row] for row in values], dtype=np.uint8)


def sixteen_bit_png(values: np.ndarray) -> bytes:
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_a_16_bit_png_is_written_scaled_to_8_bits(tmp_path: Path, image_format: str) -> None:
    values = gradient()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ramp.png").write_bytes(sixteen_bit_png(values))
    write_shards("unlabeled-folder", tmp_path / "images", tmp_path / "out", image_format=image_format)
    (sample,) = wds.WebDataset(str(tmp_path / "out" / "unlabeled-folder-000000.tar"), shardshuffle=False)
    stored = np.asarray(Image.open(io.BytesIO(sample[image_format])).convert("RGB"))
    if image_format == "png":  # lossless: every value exactly
        assert (stored == scaled(values)[..., None]).all()
    assert abs(stored.mean() - 127.5) < 1


def test_a_16_bit_png_in_a_shard_written_elsewhere_decodes_scaled() -> None:
    values = gradient()
    decoded = StoredImage.read(sixteen_bit_png(values)).decode().numpy()
    assert (decoded == scaled(values)[..., None]).all()

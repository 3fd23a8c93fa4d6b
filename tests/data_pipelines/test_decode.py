"""Stored images decode to Pillow's pixels, at reduced DCT scales too, for every JPEG kind and the other formats."""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_files import image_bytes
from PIL import Image

from data_pipelines.decode import StoredImage


@pytest.fixture(scope="module")
def photo_pixels() -> np.ndarray:
    y, x = np.mgrid[0:240, 0:320]
    pixels = np.stack([np.sin(x / (7 + 3 * c)) * np.cos(y / (11 - 2 * c)) for c in range(3)], -1) * 100 + 128
    return pixels.astype(np.uint8)


def pil_pixels(data: bytes, reduction: int = 1) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if reduction > 1:
        image.draft("RGB", (image.width // reduction, image.height // reduction))
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_jpeg_decodes_to_pillows_pixels_at_every_dct_scale(photo_pixels: np.ndarray, reduction: int) -> None:
    data = image_bytes(photo_pixels)
    stored = StoredImage.read(data)
    decoded = stored.decode(reduction).numpy()
    assert stored.jpeg and stored.size == (320, 240)
    assert decoded.shape == (240 // reduction, 320 // reduction, 3)
    assert np.abs(decoded.astype(int) - pil_pixels(data, reduction)).max() <= 1  # the same libjpeg-turbo


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_decode_to_rgb(photo_pixels: np.ndarray, mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo_pixels).convert(mode).save(buffer, format="JPEG")
    data = buffer.getvalue()
    stored = StoredImage.read(data)
    assert stored.jpeg == (mode != "CMYK")  # four-channel JPEGs go to Pillow, which reads the Adobe marker
    decoded = stored.region((0.0, 0.0, 320.0, 240.0), output_size=100).numpy()  # 240 // 100 >= 2: half scale
    assert decoded.shape == (3, 120, 160)
    assert np.abs(decoded.transpose(1, 2, 0).astype(int) - pil_pixels(data, 2)).max() <= 1


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_other_formats_decode_with_pillow(photo_pixels: np.ndarray, image_format: str) -> None:
    data = image_bytes(photo_pixels, image_format)
    stored = StoredImage.read(data)
    assert not stored.jpeg
    np.testing.assert_array_equal(stored.decode().numpy(), pil_pixels(data))


def test_region_maps_the_box_onto_the_reduced_grid(photo_pixels: np.ndarray) -> None:
    stored = StoredImage.read(image_bytes(photo_pixels))
    region = stored.region((40.0, 20.0, 200.0, 160.0), output_size=40)  # 160 // 40 >= 4: quarter scale
    assert region.shape == (3, 40, 50)
    full = stored.decode(4)
    assert (region == full[5:45, 10:60].permute(2, 0, 1)).all()


def test_truncated_and_garbage_bytes_raise_corrupt_sample_errors(photo_pixels: np.ndarray) -> None:
    data = image_bytes(photo_pixels)
    with pytest.raises(OSError, match="truncated"):
        StoredImage.read(data[: len(data) // 2]).decode()
    with pytest.raises(OSError):
        StoredImage.read(b"not an image at all")
    png = bytearray(image_bytes(photo_pixels, "PNG"))
    png[20:24] = bytes(4)  # a zero height, and the header's checksum no longer matches
    with pytest.raises(OSError):
        StoredImage.read(bytes(png))


def test_jpegs_libjpeg_turbo_only_warns_about_decode_as_pillow_decodes_them(photo_pixels: np.ndarray) -> None:
    data = image_bytes(photo_pixels)
    stray = data[:-2] + b"\x00\x00\x00" + data[-2:]  # extraneous bytes before the end-of-image marker
    np.testing.assert_array_equal(StoredImage.read(stray).decode().numpy(), pil_pixels(stray))


def test_images_over_twice_pillows_pixel_limit_are_refused_before_decoding(
    photo_pixels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 320 * 240 // 3)
    with pytest.raises(Image.DecompressionBombError):
        StoredImage.read(image_bytes(photo_pixels))

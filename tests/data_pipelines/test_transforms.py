"""The per-objective transforms against torchvision's reference pipelines on real JPEG bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_files import image_bytes
from torchvision import transforms as T
from yaml_defaults import transform_options

from data_pipelines.decode import StoredImage
from data_pipelines.seeding import seeded_rng
from data_pipelines.transforms import CROP_ATTEMPTS, Normalize, build_transform, random_resized_crop_box

MEAN = (0.485, 0.456, 0.406)  # the normalization mean: RandAugment's fill colour
DRAWS = 2 * CROP_ATTEMPTS + 3  # uniform draws per crop box: two per try, two for the position, one for the flip


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A 300x400 JPEG with smooth structure, like a downscaled photo."""
    y, x = np.mgrid[0:300, 0:400]
    pixels = np.stack([np.sin(x / (9 + 4 * c)) * np.cos(y / (13 - 3 * c)) for c in range(3)], -1) * 100 + 128
    return image_bytes(pixels.astype(np.uint8))


def open_photo(data: bytes) -> StoredImage:
    return StoredImage.read(data)


def test_eval_transform_matches_torchvision_resize_and_center_crop(photo: bytes) -> None:
    # 160 px from a 300 px short side needs the full-size decode, so only the resize kernels differ (PIL's bicubic
    # uses a=-0.5, torch's a=-0.75) and the crop's rounding to whole stored pixels.
    ours = build_transform("eval", transform_options(160, eval_crop_fraction=0.875), MEAN)(open_photo(photo)).float()
    resize = T.Resize(int(160 / 0.875), interpolation=T.InterpolationMode.BICUBIC)
    reference = T.Compose([resize, T.CenterCrop(160), T.PILToTensor()])(open_photo(photo).pil().convert("RGB")).float()
    assert ours.shape == (3, 160, 160) and (ours - reference).abs().mean() < 1.5


def test_reduced_jpeg_decode_matches_full_decode_after_resize(photo: bytes) -> None:
    box = (0.0, 0.0, 400.0, 300.0)
    reduced = open_photo(photo).region(box, output_size=64)  # 300 // 64 >= 4: decoded at 1/4 scale
    full = open_photo(photo).region(box, output_size=300)
    assert reduced.shape == (3, 75, 100) and full.shape == (3, 300, 400)
    resize = T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    assert (resize(reduced).float() - resize(full).float()).abs().mean() < 2.0


def test_mae_transform_is_a_function_of_its_seed(photo: bytes) -> None:
    transform = build_transform("mae", transform_options(32), MEAN)
    outputs = []
    for seed in (1, 1, 2):
        with seeded_rng(seed):
            outputs.append(transform(open_photo(photo)))
    assert outputs[0].dtype == torch.uint8 and outputs[0].shape == (3, 32, 32)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_supervised_transform_adds_randaugment_to_the_mae_crop(photo: bytes) -> None:
    results = {}
    for name in ("mae", "supervised"):
        with seeded_rng(3):
            transform = build_transform(name, transform_options(32, randaugment="rand-m15-mstd0.5-inc1"), MEAN)
            results[name] = transform(open_photo(photo))
    assert not torch.equal(results["mae"], results["supervised"])


def test_normalize_matches_torchvision_normalize() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = T.Normalize(mean, std)(images.float() / 255)
    assert torch.allclose(Normalize(mean, std)(images), expected, atol=1e-5)


def test_unknown_transform_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="unknown transform 'simclr'; choose one of: eval, flip, mae, supervised"):
        build_transform("simclr", transform_options(32), MEAN)


def test_a_transform_without_the_options_it_needs_says_which() -> None:
    with pytest.raises(ValueError, match="the eval transform needs eval_crop_fraction"):
        build_transform("eval", transform_options(32, eval_crop_fraction=None), MEAN)


def test_randaugment_at_its_strongest_magnitude_runs_with_current_pillow(photo: bytes) -> None:
    transform = build_transform("supervised", transform_options(32, randaugment="rand-m10-mstd2-inc1"), MEAN)
    for seed in range(60):  # magnitudes at the clip bound reach timm's 0-bit posterize, which Pillow 11+ rejects
        with seeded_rng(seed):
            assert transform(open_photo(photo)).shape == (3, 32, 32)


def test_the_flip_transform_is_the_eval_image_or_its_mirror(photo: bytes) -> None:
    options = transform_options(64, eval_crop_fraction=1.0)
    whole = build_transform("eval", options, MEAN)(open_photo(photo))
    outputs = []
    for seed in range(8):
        with seeded_rng(seed):
            outputs.append(build_transform("flip", options, MEAN)(open_photo(photo)))
    assert all(torch.equal(out, whole) or torch.equal(out, whole.flip(-1)) for out in outputs)
    assert any(torch.equal(out, whole) for out in outputs) and any(torch.equal(out, whole.flip(-1)) for out in outputs)


def test_random_resized_crop_boxes_follow_torchvisions_distribution() -> None:
    scale, ratio, (width, height) = (0.2, 1.0), (3 / 4, 4 / 3), (400, 300)
    generator = torch.Generator().manual_seed(0)
    ours = torch.tensor(
        [
            random_resized_crop_box(width, height, scale, ratio, torch.rand(DRAWS, generator=generator).tolist())
            for _ in range(4000)
        ],
        dtype=torch.float64,
    )
    torch.manual_seed(0)
    theirs = torch.tensor(
        [T.RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(ratio)) for _ in range(4000)],
        dtype=torch.float64,
    )[:, [1, 0, 3, 2]]  # (top, left, height, width) -> (left, top, width, height)
    for boxes in (ours, theirs):
        assert ((boxes[:, 0] + boxes[:, 2] <= width) & (boxes[:, 1] + boxes[:, 3] <= height)).all()
    features = lambda boxes: torch.stack(  # noqa: E731
        [boxes[:, 2] * boxes[:, 3] / (width * height), (boxes[:, 2] / boxes[:, 3]).log(), boxes[:, 0], boxes[:, 1]], 1
    )
    mean_gap = (features(ours).mean(0) - features(theirs).mean(0)).abs() / features(theirs).std(0)
    std_ratio = features(ours).std(0) / features(theirs).std(0)
    assert (mean_gap < 0.08).all() and ((std_ratio - 1).abs() < 0.08).all(), (mean_gap, std_ratio)


def test_crop_positions_span_every_offset_from_zero_to_the_last() -> None:
    fits = [0.5, 0.5] + [0.0] * (DRAWS - 2)  # the first try fits: half the area, aspect ratio 1
    first = random_resized_crop_box(400, 300, (0.5, 0.5), (1.0, 1.0), fits)
    last = random_resized_crop_box(400, 300, (0.5, 0.5), (1.0, 1.0), fits[:20] + [1 - 2**-24] * 3)
    width, height = first[2:]
    assert (width, height) == (245, 245) and first[:2] == (0, 0) and last[:2] == (400 - width, 300 - height)


def test_a_crop_that_never_fits_falls_back_to_torchvisions_centre_crop() -> None:
    for width, height in ((1000, 10), (10, 1000)):
        ours = random_resized_crop_box(width, height, (0.9, 1.0), (3 / 4, 4 / 3), [0.5] * DRAWS)
        top, left, crop_height, crop_width = T.RandomResizedCrop.get_params(
            torch.empty(3, height, width), [0.9, 1.0], [3 / 4, 4 / 3]
        )
        assert ours == (left, top, crop_width, crop_height)

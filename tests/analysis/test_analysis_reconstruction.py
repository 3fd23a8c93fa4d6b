"""MAE reconstruction panels: a perfect prediction reproduces the image; visible patches are pasted back exactly."""

import torch

from pretrain.analysis.reconstruction import denormalize, reconstruction_grid, reconstruction_panels
from pretrain.models.mae import patchify, pixel_targets

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
PATCH = 4


def normalized_images(batch: int = 2, channels: int = 3, side: int = 12) -> torch.Tensor:
    """Inputs as the model sees them: pixels in [0, 1] normalized by MEAN and STD."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, channels, side, side, generator=generator)
    mean = torch.tensor(MEAN[:channels]).reshape(1, -1, 1, 1)
    std = torch.tensor(STD[:channels]).reshape(1, -1, 1, 1)
    return (pixels - mean) / std


def half_mask(batch: int = 2, patches: int = 9) -> torch.Tensor:
    """``[B, L]`` with every other patch removed (1), shifted by one patch per sample."""
    return torch.stack([(torch.arange(patches) + sample) % 2 for sample in range(batch)]).float()


def test_a_perfect_prediction_reconstructs_the_original() -> None:
    images = normalized_images()

    panels = reconstruction_panels(images, half_mask(), patchify(images, PATCH), PATCH, MEAN, STD, norm_pix_loss=False)

    assert panels.shape == (2, 4, 3, 12, 12)
    torch.testing.assert_close(panels[:, 2], panels[:, 0])
    torch.testing.assert_close(panels[:, 0], denormalize(images, MEAN, STD))


def test_a_per_patch_normalized_prediction_is_mapped_back_with_the_originals_patch_statistics() -> None:
    images = normalized_images()
    pred = pixel_targets(patchify(images, PATCH), norm_pix_loss=True)

    panels = reconstruction_panels(images, half_mask(), pred, PATCH, MEAN, STD, norm_pix_loss=True)

    torch.testing.assert_close(panels[:, 2], panels[:, 0], atol=1e-5, rtol=0)


def test_visible_patches_are_pasted_back_exactly_and_masked_ones_come_from_the_prediction() -> None:
    images = normalized_images()
    mask = half_mask()
    pred = torch.randn(2, 9, PATCH * PATCH * 3, generator=torch.Generator().manual_seed(1))

    panels = reconstruction_panels(images, mask, pred, PATCH, MEAN, STD, norm_pix_loss=False)

    removed = patchify(panels[:, 3], PATCH)[mask.bool()]
    visible = patchify(panels[:, 3], PATCH)[~mask.bool()]
    assert torch.equal(visible, patchify(panels[:, 0], PATCH)[~mask.bool()])
    assert torch.equal(removed, patchify(panels[:, 2], PATCH)[mask.bool()])


def test_the_masked_column_blanks_the_row_major_patch_to_the_mean_colour() -> None:
    images = normalized_images(batch=1)
    mask = torch.zeros(1, 9)
    mask[0, 1 * 3 + 2] = 1.0

    masked = reconstruction_panels(images, mask, patchify(images, PATCH), PATCH, MEAN, STD, norm_pix_loss=False)[0, 1]

    blank = masked[:, 4:8, 8:12]
    torch.testing.assert_close(blank, torch.tensor(MEAN).reshape(3, 1, 1).expand(3, 4, 4))
    kept = torch.ones(12, 12, dtype=torch.bool)
    kept[4:8, 8:12] = False
    assert torch.equal(masked[:, kept], denormalize(images, MEAN, STD)[0][:, kept])


def test_grid_tiles_rows_of_four_columns_as_rgb_uint8_with_white_gaps() -> None:
    images = normalized_images()
    args = (images, half_mask(), patchify(images, PATCH), PATCH, MEAN, STD, False)

    grid = reconstruction_grid(*args, gap=2)

    panels = reconstruction_panels(*args)
    assert grid.shape == (2 * 12 + 2, 4 * 12 + 3 * 2, 3) and grid.dtype.name == "uint8"
    assert (grid[12:14] == 255).all() and (grid[:, 12:14] == 255).all()
    expected_tile = (panels[1, 3].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (grid[14:26, 42:54] == expected_tile).all()


def test_grid_of_grayscale_images_is_rgb() -> None:
    images = normalized_images(channels=1)

    grid = reconstruction_grid(images, half_mask(), patchify(images, PATCH), PATCH, MEAN[:1], STD[:1], False)

    assert grid.shape[-1] == 3
    assert (grid[..., 0] == grid[..., 2]).all()

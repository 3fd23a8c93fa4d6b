"""MAE reconstructions as pictures: original | masked | reconstruction | reconstruction with visible patches pasted.

One implementation for the pretraining W&B logger (:func:`reconstruction_grid`, a uint8 image) and the analysis
figures (:func:`reconstruction_panels`, float tensors with column titles drawn by matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pretrain.models.mae import patchify, unpatchify

RECONSTRUCTION_COLUMNS = ("Original", "Masked", "Reconstruction", "Reconstruction + visible")
# Same epsilon and unbiased variance as the norm_pix_loss targets of pretrain.models.mae.pixel_targets.
NORM_PIX_EPS = 1e-6


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the input normalization, clamped to displayable pixels: ``[B, C, H, W] -> [B, C, H, W]`` in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def reconstruction_panels(
    images: Tensor,
    mask: Tensor,
    pred_patches: Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    norm_pix_loss: bool,
) -> Tensor:
    """The four columns for each image: ``[B, C, H, W], [B, L], [B, L, p*p*C] -> [B, 4, C, H, W]`` in [0, 1].

    ``images`` are the normalized model inputs, ``mask`` is 1 where a patch was removed, ``pred_patches`` the
    decoder output. With ``norm_pix_loss`` the prediction is in per-patch normalized units and is mapped back
    with the mean and variance of the original's own patches (the only statistics the model never predicts).
    Removed patches are shown as zeros in normalized space, i.e. the dataset's mean colour, as in the MAE demo.
    """
    images = images.detach().float()
    pred_patches = pred_patches.detach().float()
    channels = images.shape[1]
    if norm_pix_loss:
        target = patchify(images, patch_size)
        scale = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
        pred_patches = pred_patches * scale + target.mean(dim=-1, keepdim=True)
    reconstruction = unpatchify(pred_patches, patch_size, channels)
    removed = unpatchify(
        mask.detach().float().unsqueeze(-1).expand(-1, -1, pred_patches.shape[-1]), patch_size, channels
    )
    visible = 1.0 - removed
    columns = [images, images * visible, reconstruction, images * visible + reconstruction * removed]
    return torch.stack([denormalize(column, mean, std) for column in columns], dim=1)


def reconstruction_grid(
    images: Tensor,
    mask: Tensor,
    pred_patches: Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    norm_pix_loss: bool,
    gap: int = 2,
) -> np.ndarray:
    """:func:`reconstruction_panels` tiled into one RGB picture, one row per image, ``gap`` white pixels apart.

    Returns ``uint8 [B*H + (B-1)*gap, 4*W + 3*gap, 3]`` (grayscale repeated to RGB), ready for ``wandb.Image``.
    """
    panels = reconstruction_panels(images, mask, pred_patches, patch_size, mean, std, norm_pix_loss)
    return tile_panels(panels, gap)


def tile_panels(panels: Tensor, gap: int = 2) -> np.ndarray:
    """``[rows, cols, C, H, W]`` in [0, 1] -> ``uint8 [rows*H + (rows-1)*gap, cols*W + (cols-1)*gap, 3]``."""
    rows, cols, channels, height, width = panels.shape
    if channels not in (1, 3):
        raise ValueError(f"can only draw 1- or 3-channel images, got {channels} channels")
    if channels == 1:
        panels = panels.expand(-1, -1, 3, -1, -1)
    canvas = torch.ones(3, rows * (height + gap) - gap, cols * (width + gap) - gap)
    for row in range(rows):
        for col in range(cols):
            top, left = row * (height + gap), col * (width + gap)
            canvas[:, top : top + height, left : left + width] = panels[row, col]
    return (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()

"""Figures of what a ViT learned (Dosovitskiy et al., 2021, Fig. 7; He et al., 2022, reconstructions) as PNG files.

Each writer takes the output of a function in :mod:`pretrain.analysis.quantities` or
:mod:`pretrain.analysis.reconstruction`, draws on a standalone matplotlib ``Figure`` (Agg, no display, no pyplot
state shared between calls) and returns the path of the PNG it wrote. Images are given in display range [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from pretrain.analysis.reconstruction import RECONSTRUCTION_COLUMNS

TILE_INCHES = 1.6
DPI = 150


def plot_patch_embedding_filters(components: Tensor, path: str | Path, columns: int = 7) -> Path:
    """Principal components of the patch-embedding filters as image tiles: ``[k, C, p, p]``, C = 1 or 3.

    Each component is rescaled to [0, 1] on its own (only its pattern matters, not its sign or scale).
    """
    count = components.shape[0]
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(columns * 0.9, rows * 0.9 + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            _show_image(ax, _rescale(components[index]))
            ax.set_title(str(index + 1), fontsize=7, pad=2)
    figure.suptitle(f"Patch-embedding filters: first {count} principal components")
    return _save(figure, path)


def plot_position_embedding_similarity(similarity: Tensor, path: str | Path) -> Path:
    """The grid of small heatmaps of Fig. 7 (centre): tile (i, j) is ``similarity[i, j]``, ``[gh, gw, gh, gw]``."""
    grid_h, grid_w = similarity.shape[:2]
    mosaic = np.full((grid_h * (grid_h + 1) - 1, grid_w * (grid_w + 1) - 1), np.nan)
    for row in range(grid_h):
        for col in range(grid_w):
            top, left = row * (grid_h + 1), col * (grid_w + 1)
            mosaic[top : top + grid_h, left : left + grid_w] = similarity[row, col].double().cpu().numpy()
    figure = Figure(figsize=(6.4, 6.4 * grid_h / grid_w))
    ax = figure.subplots()
    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=colormap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    _label_tiles(ax.set_yticks, grid_h)
    _label_tiles(ax.set_xticks, grid_w)
    ax.tick_params(length=0, labelsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title("Position embedding similarity")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")
    return _save(figure, path)


def plot_position_similarity_by_axis(matrices: list[Tensor], path: str | Path) -> Path:
    """One heatmap per grid axis (depth, height, width of a volume): similarity of positions along it."""
    names = ["depth", "height", "width"][-len(matrices) :]
    figure = Figure(figsize=(3.2 * len(matrices) + 0.8, 3.4))
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for ax, matrix, name in zip(axes, matrices, names, strict=True):
        image = ax.imshow(matrix.double().cpu().numpy(), cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"along {name}")
        ax.set_xlabel(f"patch index ({name})")
        ax.set_ylabel(f"patch index ({name})")
    figure.suptitle("Position embedding similarity by axis")
    figure.colorbar(image, ax=list(axes), fraction=0.046, pad=0.04, label="Cosine similarity")
    return _save(figure, path)


def plot_mean_attention_distance(
    distances: Tensor, path: str | Path, image_size: int | None = None, spatial_dims: int = 2
) -> Path:
    """Mean attention distance of every head against depth (Fig. 7, right): ``distances [depth, heads]``.

    With ``image_size`` the y axis spans the largest possible distance, the image's (or cube's) diagonal.
    """
    depth, heads = distances.shape
    values = distances.double().cpu().numpy()
    layers = np.arange(1, depth + 1)
    figure = Figure(figsize=(5.0, 4.0))
    ax = figure.subplots()
    colormap = matplotlib.colormaps["tab20" if heads > 10 else "tab10"]
    for head in range(heads):
        ax.scatter(layers, values[:, head], s=18, color=colormap(head % colormap.N), label=f"Head {head + 1}")
    ax.set_xticks(layers)
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_ylim(0.0, image_size * math.sqrt(spatial_dims) if image_size else None)
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel(f"Mean attention distance ({'voxels' if spatial_dims == 3 else 'pixels'})")
    ax.set_title("Mean attention distance by head")
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize=7, ncol=2 if heads > 8 else 1, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(figure, path)


def plot_attention_maps(images: Tensor, cls_maps: Tensor, rollout_maps: Tensor, path: str | Path) -> Path:
    """Per image: input, attention rollout, and the last block's CLS attention per head, overlaid on the input.

    ``images [B, C, H, W]`` in [0, 1], ``cls_maps [B, heads, gh, gw]``, ``rollout_maps [B, gh, gw]``. Each map
    is upsampled to the image and rescaled to [0, 1] on its own.
    """
    batch, heads = cls_maps.shape[:2]
    maps = torch.cat([rollout_maps.unsqueeze(1), cls_maps], dim=1).float().cpu()
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    titles = ["Input", "Rollout", *(f"CLS, head {head + 1}" for head in range(heads))]
    figure = Figure(figsize=(len(titles) * TILE_INCHES + 0.8, batch * TILE_INCHES + 0.4))
    axes = figure.subplots(batch, len(titles), squeeze=False)
    overlay = None
    for row in range(batch):
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            _show_image(ax, images[row])
            if col > 0:
                overlay = ax.imshow(_rescale(maps[row, col - 1]).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    figure.suptitle("Attention maps (last block CLS attention per head; rollout over all blocks)")
    figure.colorbar(overlay, ax=axes, fraction=0.02, pad=0.02, label="Attention (rescaled per map)")
    return _save(figure, path)


def plot_reconstructions(
    panels: Tensor, path: str | Path, column_titles: Sequence[str] = RECONSTRUCTION_COLUMNS
) -> Path:
    """MAE reconstructions, one row per image: ``panels [B, 4, C, H, W]`` in [0, 1] from ``reconstruction_panels``."""
    rows, columns = panels.shape[:2]
    figure = Figure(figsize=(columns * (TILE_INCHES + 0.3), rows * TILE_INCHES + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            _show_image(ax, panels[row, col])
            if row == 0:
                ax.set_title(column_titles[col], fontsize=9)
    figure.suptitle("MAE reconstructions")
    return _save(figure, path)


def _rescale(values: Tensor) -> Tensor:
    """Min-max rescale to [0, 1]; a constant input becomes zeros."""
    values = values.detach().double().cpu()
    low, high = values.min(), values.max()
    return ((values - low) / (high - low)).float() if high > low else torch.zeros_like(values, dtype=torch.float32)


def _show_image(ax: Axes, image: Tensor) -> None:
    """Draw a ``[C, H, W]`` image in [0, 1]; one channel is drawn in grey."""
    pixels = image.detach().float().clamp(0.0, 1.0).cpu().permute(1, 2, 0).numpy()
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(pixels)


def _label_tiles(set_ticks: Callable[..., object], count: int) -> None:
    """Ticks at the centres of the mosaic tiles, numbered from 1, at most about 8 labels."""
    step = max(1, math.ceil(count / 8))
    tiles = range(0, count, step)
    set_ticks([tile * (count + 1) + (count - 1) / 2 for tile in tiles], [str(tile + 1) for tile in tiles])


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path

"""Every figure writer writes a real, non-empty PNG file at the path it returns."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pretrain.analysis import figures
from pretrain.analyze import write_figures
from pretrain.models.vit import VisionTransformer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rand(*shape: int) -> torch.Tensor:
    """Uniform [0, 1) values, the same on every call."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


WRITERS: dict[str, Callable[[Path], Path]] = {
    "patch_filters": lambda path: figures.plot_patch_embedding_filters(rand(10, 3, 4, 4) - 0.5, path, columns=5),
    "grayscale_patch_filters": lambda path: figures.plot_patch_embedding_filters(rand(4, 1, 4, 4) - 0.5, path),
    "position_similarity": lambda path: figures.plot_position_embedding_similarity(rand(4, 4, 4, 4) * 2 - 1, path),
    "attention_distance": lambda path: figures.plot_mean_attention_distance(rand(4, 3) * 20, path, image_size=16),
    "attention_maps": lambda path: figures.plot_attention_maps(
        rand(2, 3, 16, 16), rand(2, 3, 4, 4), rand(2, 4, 4), path
    ),
    "reconstructions": lambda path: figures.plot_reconstructions(rand(2, 4, 3, 16, 16), path),
}


@pytest.mark.parametrize("name", WRITERS)
def test_figure_writer_writes_a_non_empty_png(name: str, tmp_path: Path) -> None:
    path = WRITERS[name](tmp_path / "figures" / f"{name}.png")

    assert path == tmp_path / "figures" / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000


def test_a_volume_backbone_gets_the_position_and_distance_figures(tmp_path):
    backbone = VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, embed_dim=24, depth=2, num_heads=2, spatial_dims=3, pos_embed="sincos"
    ).eval()
    figures = write_figures(backbone, None, [torch.randn(2, 1, 8, 8, 8)], {}, [0.0], [1.0], tmp_path)
    assert set(figures) == {"mean_attention_distance", "position_embedding_similarity"}
    assert all(path.stat().st_size > 0 for path in figures.values())

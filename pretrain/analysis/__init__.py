"""Analysis of pretrained ViTs: attention distance, position-embedding similarity, patch filters, attention maps
and MAE reconstructions (Dosovitskiy et al., 2021, Fig. 7; He et al., 2022). Pure torch/numpy and matplotlib.
"""

from pretrain.analysis.figures import (
    plot_attention_maps,
    plot_mean_attention_distance,
    plot_patch_embedding_filters,
    plot_position_embedding_similarity,
    plot_position_similarity_by_axis,
    plot_reconstructions,
)
from pretrain.analysis.quantities import (
    attention_rollout,
    cls_attention_maps,
    mean_attention_distance,
    mean_attention_distance_by_layer,
    patch_embedding_components,
    position_embedding_similarity,
    position_similarity_by_axis,
)
from pretrain.analysis.reconstruction import denormalize, reconstruction_grid, reconstruction_panels

__all__ = [
    "attention_rollout",
    "cls_attention_maps",
    "denormalize",
    "mean_attention_distance",
    "mean_attention_distance_by_layer",
    "patch_embedding_components",
    "plot_attention_maps",
    "plot_mean_attention_distance",
    "plot_patch_embedding_filters",
    "plot_position_embedding_similarity",
    "plot_position_similarity_by_axis",
    "plot_reconstructions",
    "position_embedding_similarity",
    "position_similarity_by_axis",
    "reconstruction_grid",
    "reconstruction_panels",
]

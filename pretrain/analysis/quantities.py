"""What a trained ViT learned, as numbers: the quantities behind Figure 7 of Dosovitskiy et al. (2021).

Pure tensor functions. Attention inputs are the softmax probabilities of
``VisionTransformer.forward_attention_maps``: one ``[B, heads, N, N]`` tensor per block, with the
``num_prefix_tokens`` prefix (CLS) tokens first and the ``gh * gw`` patch tokens after them in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from data_pipelines.registry import lookup


def patch_pixel_distances(grid_size: Sequence[int], patch_size: int | Sequence[int]) -> Tensor:
    """Euclidean distance in pixels (voxels, for a 3-D grid) between the centres of every two patches:
    ``[prod(grid), prod(grid)]``; ``patch_size`` is one side, or one per axis (anisotropic patches)."""
    steps = [patch_size] * len(grid_size) if isinstance(patch_size, int) else list(patch_size)
    coordinates = torch.meshgrid(*(torch.arange(size) for size in grid_size), indexing="ij")
    centres = torch.stack([axis.flatten() * step for axis, step in zip(coordinates, steps, strict=True)], dim=1)
    centres = centres.double()
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attn: Tensor,
    grid_size: Sequence[int],
    patch_size: int | Sequence[int],
    num_prefix_tokens: int = 1,
    tokens_per_patch: int = 1,
) -> Tensor:
    """Attention-weighted mean pixel distance between query and key patches, per head: ``[B, H, N, N] -> [H]``.

    Prefix tokens are dropped as queries and as keys; each query's attention is renormalized over the patch
    keys, so the result is the distance a head looks across the image (or volume, in voxels), averaged over the
    batch and queries. With ``tokens_per_patch`` channel tokens (ChannelViT: one per channel per patch,
    channel-major) each token is at its patch's place: two channels of one patch are 0 apart.
    """
    patch_attn = attn[:, :, num_prefix_tokens:, num_prefix_tokens:].double()
    expected_tokens = math.prod(grid_size) * tokens_per_patch
    if patch_attn.shape[-1] != expected_tokens:
        raise ValueError(
            f"attention over {patch_attn.shape[-1]} patch tokens does not match grid {tuple(grid_size)} x "
            f"{tokens_per_patch} token(s) per patch after dropping {num_prefix_tokens} prefix tokens"
        )
    patch_attn = patch_attn / patch_attn.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    distances = patch_pixel_distances(grid_size, patch_size).repeat(tokens_per_patch, tokens_per_patch)
    distances = distances.to(patch_attn.device)
    per_query = torch.einsum("bhqk,qk->bhq", patch_attn, distances)
    return per_query.mean(dim=(0, 2)).float()


def mean_attention_distance_by_layer(
    attentions: Sequence[Tensor],
    grid_size: Sequence[int],
    patch_size: int | Sequence[int],
    num_prefix_tokens: int = 1,
    tokens_per_patch: int = 1,
) -> Tensor:
    """:func:`mean_attention_distance` of every block stacked: ``depth x [B, H, N, N] -> [depth, H]``."""
    return torch.stack(
        [
            mean_attention_distance(attn, grid_size, patch_size, num_prefix_tokens, tokens_per_patch)
            for attn in attentions
        ]
    )


def position_embedding_similarity(pos_embed: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """Cosine similarity of every patch's position embedding to every other: ``[gh*gw, D] -> [gh, gw, gh, gw]``.

    ``pos_embed`` holds the patch tokens only (drop the prefix rows first). ``similarity[i, j]`` is the
    ``[gh, gw]`` map of the patch at row ``i``, column ``j`` against all patches.
    """
    grid_h, grid_w = grid_size
    if pos_embed.shape[0] != grid_h * grid_w:
        raise ValueError(f"{pos_embed.shape[0]} position embeddings do not match grid {grid_size}; drop prefix rows")
    unit = torch.nn.functional.normalize(pos_embed.double(), dim=-1)
    return (unit @ unit.T).reshape(grid_h, grid_w, grid_h, grid_w).float()


def position_similarity_by_axis(pos_embed: Tensor, grid_size: Sequence[int]) -> list[Tensor]:
    """Per axis of a 2-D or 3-D grid, ``[g, g]``: the cosine similarity of positions ``i`` and ``j`` along that
    axis, averaged over the patches that share all their other coordinates (the volume's view of Fig. 7)."""
    if pos_embed.shape[0] != math.prod(grid_size):
        raise ValueError(f"{pos_embed.shape[0]} position embeddings do not match grid {tuple(grid_size)}")
    unit = torch.nn.functional.normalize(pos_embed.double(), dim=-1).reshape(*grid_size, -1)
    matrices = []
    for axis in range(len(grid_size)):
        lines = unit.movedim(axis, -2).reshape(-1, grid_size[axis], unit.shape[-1])  # [other positions, g, D]
        matrices.append((lines @ lines.transpose(1, 2)).mean(dim=0).float())
    return matrices


HEAD_FUSIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda attn: attn.mean(dim=1),
    "max": lambda attn: attn.amax(dim=1),
    "min": lambda attn: attn.amin(dim=1),
}


def attention_rollout(attentions: Sequence[Tensor], head_fusion: str = "mean", add_residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): ``depth x [B, H, N, N] -> [B, N, N]``.

    Heads are fused per block; with ``add_residual`` each block's matrix becomes ``0.5 * A + 0.5 * I`` (the
    skip connection) with rows renormalized; the blocks are multiplied from the first to the last, so row
    ``q`` of the result says how much each input token flows into output token ``q``.
    """
    fuse = lookup(HEAD_FUSIONS, head_fusion, "head_fusion")
    rollout = None
    for attn in attentions:
        fused = fuse(attn.double())
        if add_residual:
            fused = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = fused / fused.sum(dim=-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    if rollout is None:
        raise ValueError("attention_rollout needs at least one attention map")
    return rollout.float()


def cls_attention_maps(attn: Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """How much the CLS token (the first token) attends to each patch: ``[B, H, N, N] -> [B, H, gh, gw]``.

    Raw probabilities (mass on prefix tokens is left out, not renormalized). For a rollout ``[B, N, N]``,
    pass ``rollout[:, None]`` to get ``[B, 1, gh, gw]``.
    """
    batch, heads = attn.shape[:2]
    return attn[:, :, 0, num_prefix_tokens:].reshape(batch, heads, *grid_size)


def patch_embedding_components(weight: Tensor, num_components: int = 28) -> Tensor:
    """Top principal components of the patch-embedding filters: ``[D, C, p, p] -> [k, C, p, p]``.

    Each of the ``D`` filters is one sample of dimension ``C*p*p``; components are unit vectors, mutually
    orthogonal, ordered by explained variance, ``k = min(num_components, D, C*p*p)``. Each component's sign is
    fixed so that its largest-magnitude entry is positive, which makes the result deterministic.
    """
    filters = weight.detach().double().flatten(1)
    centred = filters - filters.mean(dim=0, keepdim=True)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    components = directions[: min(num_components, *filters.shape)]
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    components = components * largest.sign()
    return components.reshape(-1, *weight.shape[1:]).float()

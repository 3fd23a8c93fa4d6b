"""Analysis quantities on hand-made attention matrices, embeddings and filters whose answers are known."""

import math

import pytest
import torch

from pretrain.analysis.quantities import (
    attention_rollout,
    cls_attention_maps,
    mean_attention_distance,
    mean_attention_distance_by_layer,
    patch_embedding_components,
    position_embedding_similarity,
    position_similarity_by_axis,
)
from pretrain.models.vit import create_vit, sincos_pos_embed


def one_hot_attention(key_of_query: list[list[int]], grid_size: tuple[int, int]) -> torch.Tensor:
    """``[1, heads, 1 + L, 1 + L]`` where patch query q of head h attends only to patch key_of_query[h][q]."""
    patches = grid_size[0] * grid_size[1]
    attn = torch.zeros(1, len(key_of_query), 1 + patches, 1 + patches)
    attn[0, :, 0, 0] = 1.0
    for head, keys in enumerate(key_of_query):
        for query, key in enumerate(keys):
            attn[0, head, 1 + query, 1 + key] = 1.0
    return attn


def patch_index(row: int, col: int, grid_size: tuple[int, int]) -> int:
    return row * grid_size[1] + col


def test_attention_only_to_self_has_zero_distance() -> None:
    grid = (3, 4)
    attn = one_hot_attention([list(range(12))], grid)
    assert mean_attention_distance(attn, grid, patch_size=16).tolist() == [0.0]


def test_each_head_reports_its_own_known_offset_in_pixels() -> None:
    grid, patch_size = (4, 5), 16
    cells = [(row, col) for row in range(grid[0]) for col in range(grid[1])]
    one_right_or_left = [patch_index(r, c + 1 if c + 1 < grid[1] else c - 1, grid) for r, c in cells]
    two_down_or_up = [patch_index(r + 2 if r + 2 < grid[0] else r - 2, c, grid) for r, c in cells]
    one_diagonal = [
        patch_index(r + 1 if r + 1 < grid[0] else r - 1, c + 1 if c + 1 < grid[1] else c - 1, grid) for r, c in cells
    ]
    attn = one_hot_attention([list(range(20)), one_right_or_left, two_down_or_up, one_diagonal], grid)

    distance = mean_attention_distance(attn, grid, patch_size)

    torch.testing.assert_close(distance, torch.tensor([0.0, 16.0, 32.0, 16.0 * math.sqrt(2)]))


def test_attention_on_the_cls_token_is_dropped_and_the_rest_renormalized() -> None:
    grid = (2, 2)
    attn = one_hot_attention([[1, 0, 3, 2]], grid)
    attn[0, 0, 1:, 0] = 0.75
    attn[0, 0, 1:, 1:] *= 0.25

    assert mean_attention_distance(attn, grid, patch_size=8).tolist() == [8.0]


def test_uniform_attention_gives_the_mean_distance_over_all_patch_pairs() -> None:
    grid, patch_size = (3, 3), 10
    attn = torch.full((2, 1, 10, 10), 0.1)
    centres = [(10.0 * r, 10.0 * c) for r in range(3) for c in range(3)]
    expected = sum(math.dist(a, b) for a in centres for b in centres) / 81

    torch.testing.assert_close(mean_attention_distance(attn, grid, patch_size), torch.tensor([expected]))


def test_distance_by_layer_stacks_depth_by_heads_for_a_real_backbone() -> None:
    torch.manual_seed(0)
    model = create_vit("vit_test_patch4").eval()
    attentions = model.forward_attention_maps(torch.randn(2, 3, 32, 32))

    distances = mean_attention_distance_by_layer(attentions, model.patch_embed.grid_size, model.patch_size)

    assert distances.shape == (len(model.blocks), attentions[0].shape[1])
    assert ((distances > 0) & (distances < 32 * math.sqrt(2))).all()


def test_distance_rejects_attention_that_does_not_match_the_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        mean_attention_distance(torch.full((1, 1, 10, 10), 0.1), (3, 4), patch_size=16)


def test_sincos_position_similarity_is_symmetric_with_ones_on_the_diagonal() -> None:
    grid = (5, 6)
    similarity = position_embedding_similarity(sincos_pos_embed(64, grid, num_prefix_tokens=0), grid)

    assert similarity.shape == (5, 6, 5, 6)
    pairs = similarity.reshape(30, 30)
    torch.testing.assert_close(pairs, pairs.T)
    torch.testing.assert_close(pairs.diagonal(), torch.ones(30))


def test_sincos_positions_are_more_similar_to_neighbours_than_to_far_patches() -> None:
    grid = (6, 6)
    similarity = position_embedding_similarity(sincos_pos_embed(64, grid, num_prefix_tokens=0), grid)

    assert similarity[0, 0, 0, 1] > similarity[0, 0, 0, 5]
    assert similarity[0, 0, 1, 0] > similarity[0, 0, 5, 0]


def test_position_similarity_rejects_embeddings_that_still_hold_the_cls_row() -> None:
    with pytest.raises(ValueError, match="prefix"):
        position_embedding_similarity(sincos_pos_embed(16, (2, 2), num_prefix_tokens=1), (2, 2))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("add_residual", [True, False])
def test_rollout_of_identity_attention_is_identity(head_fusion: str, add_residual: bool) -> None:
    identity = torch.eye(5).expand(2, 3, 5, 5)

    rollout = attention_rollout([identity, identity, identity], head_fusion, add_residual)

    torch.testing.assert_close(rollout, torch.eye(5).expand(2, 5, 5))


def test_rollout_multiplies_the_blocks_from_first_to_last() -> None:
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.rand(1, 1, 4, 4, generator=generator).softmax(dim=-1) for _ in range(2))

    rollout = attention_rollout([first, second], add_residual=False)

    torch.testing.assert_close(rollout, second[:, 0] @ first[:, 0])


def test_rollout_with_residual_keeps_rows_stochastic() -> None:
    generator = torch.Generator().manual_seed(0)
    attentions = [torch.rand(2, 3, 5, 5, generator=generator).softmax(dim=-1) for _ in range(4)]

    rollout = attention_rollout(attentions)

    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(2, 5))


def test_rollout_rejects_an_unknown_head_fusion_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown head_fusion .*; choose one of: max, mean, min"):
        attention_rollout([torch.eye(3).expand(1, 1, 3, 3)], head_fusion="median")


def test_cls_attention_maps_lay_patches_out_row_major() -> None:
    attn = torch.zeros(1, 2, 7, 7)
    attn[0, :, 0, 1:] = torch.arange(6.0)

    maps = cls_attention_maps(attn, (2, 3))

    assert maps.shape == (1, 2, 2, 3)
    assert maps[0, 1].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_patch_components_are_orthonormal_and_ordered_by_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 3, 4, 4, generator=generator) * torch.linspace(0.1, 3.0, 48).reshape(1, 3, 4, 4)

    components = patch_embedding_components(weight, num_components=10)

    flat = components.flatten(1)
    assert components.shape == (10, 3, 4, 4)
    torch.testing.assert_close(flat @ flat.T, torch.eye(10), atol=1e-5, rtol=0)
    variance = ((weight.flatten(1) - weight.flatten(1).mean(dim=0)) @ flat.T).var(dim=0)
    assert (variance[:-1] >= variance[1:]).all()


def test_patch_components_recover_a_planted_direction_with_a_fixed_sign() -> None:
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(12, generator=generator), dim=0)
    direction = direction * direction[direction.abs().argmax()].sign()
    weight = 5.0 * torch.randn(32, 1, generator=generator) * direction + 0.01 * torch.randn(32, 12, generator=generator)

    components = patch_embedding_components(weight.reshape(32, 3, 2, 2), num_components=28)

    assert components.shape == (12, 3, 2, 2)
    torch.testing.assert_close(components[0].flatten(), direction, atol=1e-3, rtol=0)


def test_attention_distance_of_a_volume_is_in_voxels_along_anisotropic_patches():
    grid, patch = (2, 1, 2), (4, 8, 8)  # patches at (0,0,0), (0,0,1), (1,0,0), (1,0,1)
    # every query attends to the patch one step deeper (or back): 4 voxels away; the last head across the diagonal
    attn = one_hot_attention([[2, 3, 0, 1], [3, 2, 1, 0]], (1, 4))
    distances = mean_attention_distance(attn, grid, patch)
    torch.testing.assert_close(distances, torch.tensor([4.0, math.hypot(4, 8)]))


def test_channel_tokens_of_one_patch_are_zero_apart():
    grid, channels = (1, 2), 3
    tokens = channels * 2
    attn = torch.zeros(1, 1, 1 + tokens, 1 + tokens)
    attn[0, 0, 0, 0] = 1
    for query in range(tokens):  # each token attends to the other channels' token of its own patch
        attn[0, 0, 1 + query, 1 + (query + 2) % tokens] = 1
    assert mean_attention_distance(attn, grid, 16, tokens_per_patch=channels).item() == 0.0


def test_position_similarity_by_axis_is_one_on_the_diagonal_and_falls_with_distance():
    grid = (3, 4, 5)
    matrices = position_similarity_by_axis(sincos_pos_embed(96, grid, num_prefix_tokens=0), grid)
    assert [matrix.shape for matrix in matrices] == [(3, 3), (4, 4), (5, 5)]
    for matrix in matrices:
        torch.testing.assert_close(matrix.diagonal(), torch.ones(len(matrix)))
        assert torch.all(matrix[0, :-1] > matrix[0, 1:])  # nearer positions along the axis are more alike

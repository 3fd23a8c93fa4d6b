"""Volumes (3-D patches), ChannelViT tokens and weights across channel counts: the pure-torch side of science data."""

import pytest
import torch

from pretrain.models.mae import MaskedAutoencoder, patchify, pixel_targets, unpatchify
from pretrain.models.vit import VisionTransformer, sincos_pos_embed
from pretrain.models.weights import adapt_input_channels, resample_pos_embed, select_input_channels

TEST_ARCH = dict(embed_dim=48, depth=2, num_heads=4)


def vit(**options) -> VisionTransformer:
    return VisionTransformer(**{**TEST_ARCH, "img_size": 16, "patch_size": 4, **options})


def test_a_3d_model_with_depth_one_patches_equals_the_2d_model_on_one_slice():
    torch.manual_seed(0)
    flat = vit(in_chans=2, pos_embed="learn").eval()
    volume = vit(in_chans=2, pos_embed="learn", spatial_dims=3, img_size=(1, 16, 16), patch_size=(1, 4, 4)).eval()
    state = flat.state_dict()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].unsqueeze(2)  # [D, C, 1, p, p]
    volume.load_state_dict(state)
    images = torch.randn(3, 2, 16, 16)
    torch.testing.assert_close(volume.forward_features(images.unsqueeze(2)), flat.forward_features(images))
    torch.testing.assert_close(patchify(images.unsqueeze(2), (1, 4, 4)), patchify(images, 4))


def test_anisotropic_3d_patches_round_trip_and_count_tokens():
    volumes = torch.randn(2, 3, 8, 16, 12)
    patches = patchify(volumes, (2, 4, 4))
    assert patches.shape == (2, 4 * 4 * 3, 2 * 4 * 4 * 3)
    assert torch.equal(unpatchify(patches, (2, 4, 4), 3, grid=(4, 4, 3)), volumes)
    model = vit(spatial_dims=3, img_size=(8, 16, 12), patch_size=(2, 4, 4), in_chans=3)
    assert model.patch_embed.grid_size == (4, 4, 3)
    assert model(volumes).shape == (2, 48)


def test_3d_sincos_table_gives_each_axis_unit_pairs_and_zero_pads_the_rest():
    table = sincos_pos_embed(64, (2, 3, 4), num_prefix_tokens=1)
    assert table.shape == (1 + 24, 64)
    assert torch.all(table[0] == 0) and torch.all(table[1:, 60:] == 0)  # 64 = 3 axes x 20 + 4 unused channels
    # 3 axes x 10 (sin, cos) pairs, each of unit norm
    torch.testing.assert_close(table[1:].pow(2).sum(dim=1), torch.full((24,), 30.0))
    assert len({tuple(row.tolist()) for row in table[1:]}) == 24  # every position has its own code
    # the 2-D table is MAE's: columns in the first half, rows in the second
    flat = sincos_pos_embed(8, (2, 2), num_prefix_tokens=0)
    torch.testing.assert_close(flat[1, :4], flat[3, :4])  # (0, 1) and (1, 1): same column


def test_3d_mae_loss_equals_a_direct_computation_over_masked_cubes():
    torch.manual_seed(0)
    encoder = vit(in_chans=2, spatial_dims=3, img_size=8, patch_size=4, pos_embed="sincos")
    mae = MaskedAutoencoder(encoder, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=True)
    volumes = torch.randn(2, 2, 8, 8, 8)
    noise = torch.rand(2, 8)
    output = mae(volumes, noise=noise)
    assert output.pred.shape == (2, 8, 4 * 4 * 4 * 2) and output.mask.sum().item() == 2 * 6
    expected, count = 0.0, 0
    for sample in range(2):
        for index in range(8):
            d, h, w = index // 4, (index // 2) % 2, index % 2  # row-major cube order
            cube = volumes[sample, :, 4 * d : 4 * d + 4, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4]
            values = cube.permute(1, 2, 3, 0).reshape(-1)  # position-major, then channel
            target = (values - values.mean()) / (values.var() + 1e-6).sqrt()
            if output.mask[sample, index]:
                expected += (output.pred[sample, index] - target).pow(2).mean().item()
                count += 1
    assert output.loss.item() == pytest.approx(expected / count, rel=1e-5)


def test_3d_position_table_resamples_to_a_new_cubic_grid_axis_by_axis():
    grid = torch.stack(torch.meshgrid(*(torch.arange(2.0),) * 3, indexing="ij"), dim=-1)  # row (d, h, w) = its place
    table = torch.cat([torch.full((1, 1, 3), 7.0), grid.reshape(1, 8, 3)], dim=1)
    resized = resample_pos_embed(table, (4, 4, 4))
    expected = torch.nn.functional.interpolate(grid.permute(3, 0, 1, 2)[None], size=(4, 4, 4), mode="trilinear")
    torch.testing.assert_close(resized[:, 1:], expected[0].permute(1, 2, 3, 0).reshape(1, 64, 3))
    assert torch.equal(resized[:, :1], table[:, :1])
    torch.testing.assert_close(resample_pos_embed(table, (2, 2, 2)), table)


def test_an_input_of_another_size_is_refused_not_given_repeated_positions():
    model = vit(spatial_dims=3, img_size=8, patch_size=4)
    with pytest.raises(ValueError, match="gives 16 tokens; the model was built for"):
        model(torch.randn(1, 3, 16, 8, 8))  # twice the tokens: a multiple of the position rows


def test_channel_tokens_evaluate_any_subset_of_the_channels_they_were_trained_on():
    torch.manual_seed(0)
    model = vit(in_chans=5, channel_tokens=True).eval()
    images = torch.randn(2, 5, 16, 16)
    tokens = model.embed_patches(images)
    assert tokens.shape == (2, 5 * 16, 48)  # channel-major: one token per channel per patch
    model.patch_embed.select_channels([4, 1])
    subset = model.embed_patches(images[:, [4, 1]])
    torch.testing.assert_close(subset, torch.cat([tokens[:, 4 * 16 : 5 * 16], tokens[:, 16:32]], dim=1))
    assert model(images[:, [4, 1]]).shape == (2, 48)
    with pytest.raises(ValueError, match="expects 2"):
        model(images)


def test_channel_token_mae_predicts_one_channel_per_token_and_knows_which():
    torch.manual_seed(0)
    encoder = vit(in_chans=3, channel_tokens=True, pos_embed="sincos")
    mae = MaskedAutoencoder(encoder, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=True)
    images = torch.randn(2, 3, 16, 16)
    output = mae(images)
    assert output.pred.shape == (2, 3 * 16, 4 * 4) and torch.isfinite(output.loss)
    positions = mae.decoder_positions()
    assert positions.shape == (1, 1 + 3 * 16, 24)
    table, channels = mae.decoder_pos_embed[0], mae.decoder_channel_embed
    for token in (0, 5, 16 + 5, 2 * 16 + 15):  # token c * 16 + l: patch l's position plus channel c's row
        channel, patch = divmod(token, 16)
        torch.testing.assert_close(positions[0, 1 + token], table[1 + patch] + channels[channel])
    targets = pixel_targets(encoder.patchify(images), norm_pix_loss=False)
    torch.testing.assert_close(targets[:, 16:32], patchify(images[:, 1:2], 4))  # channel 1's patches
    assert "decoder_channel_embed" in mae.no_weight_decay()


@pytest.mark.parametrize("in_chans", [1, 6, 12])
def test_adapted_rgb_weights_keep_the_response_to_a_grey_input(in_chans):
    torch.manual_seed(0)
    rgb = vit(in_chans=3).eval()
    adapted = vit(in_chans=in_chans).eval()
    state = rgb.state_dict()
    state["patch_embed.proj.weight"] = adapt_input_channels(state["patch_embed.proj.weight"], in_chans)
    adapted.load_state_dict(state)
    grey = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(adapted(grey.expand(-1, in_chans, -1, -1)), rgb(grey.expand(-1, 3, -1, -1)))


def test_band_selection_equals_the_full_model_with_the_other_bands_zero():
    torch.manual_seed(0)
    full = vit(in_chans=13).eval()
    bands = [3, 2, 1]
    subset = vit(in_chans=3).eval()
    state = full.state_dict()
    state["patch_embed.proj.weight"] = select_input_channels(state["patch_embed.proj.weight"], bands)
    subset.load_state_dict(state)
    tiles = torch.randn(2, 13, 16, 16)
    zeroed = torch.zeros_like(tiles)
    zeroed[:, bands] = tiles[:, bands]
    torch.testing.assert_close(subset(tiles[:, bands]), full(zeroed))
    with pytest.raises(ValueError, match="13 input channels"):
        select_input_channels(full.patch_embed.proj.weight, [13])

import pytest
import torch

from pretrain.models.vit import PRESETS, VisionTransformer, create_vit, sincos_pos_embed


def tiny(**overrides) -> VisionTransformer:
    return create_vit("vit_test_patch4", **overrides)


def test_output_shapes_for_tokens_and_logits():
    model = tiny(num_classes=7)
    images = torch.randn(3, 3, 32, 32)
    assert model.forward_features(images).shape == (3, 1 + 64, 64)
    assert model(images).shape == (3, 7)


@pytest.mark.parametrize("img_size,patch_size,in_chans", [(48, 8, 1), (40, 4, 4)])
def test_any_image_size_patch_and_channels(img_size, patch_size, in_chans):
    model = tiny(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
    tokens = model.forward_features(torch.randn(2, in_chans, img_size, img_size))
    assert tokens.shape == (2, 1 + (img_size // patch_size) ** 2, 64)


def test_avg_pool_uses_fc_norm_and_no_final_norm():
    model = tiny(global_pool="avg")
    assert isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm)
    tokens = torch.randn(2, 65, 64)
    expected = model.fc_norm(tokens[:, 1:].mean(dim=1))
    torch.testing.assert_close(model.pool(tokens), expected)


def test_sincos_pos_embed_is_fixed_and_learned_is_trainable():
    assert not tiny(pos_embed="sincos").pos_embed.requires_grad
    assert tiny(pos_embed="learn").pos_embed.requires_grad


def test_sincos_table_has_zero_cls_row_and_unit_norm_halves():
    table = sincos_pos_embed(64, (4, 4))
    assert table.shape == (17, 64)
    assert torch.all(table[0] == 0)
    # each (sin, cos) pair has unit norm, so each of the 32 pairs contributes exactly 1
    torch.testing.assert_close(table[1:].pow(2).sum(dim=1), torch.full((16,), 32.0))


def test_drop_path_is_identity_in_eval_and_random_in_train():
    model = tiny(drop_path_rate=0.5).eval()
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(images), model(images))
    model.train()
    assert not torch.allclose(model(images), model(images))


def test_layer_scale_adds_gamma_parameters():
    names = dict(tiny(layer_scale_init=1e-5).named_parameters())
    assert torch.all(names["blocks.0.ls1.gamma"] == 1e-5)
    assert "blocks.0.ls1.gamma" not in dict(tiny().named_parameters())


def test_attention_maps_are_row_stochastic_and_leave_forward_unchanged():
    model = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    before = model(images)
    maps = model.forward_attention_maps(images)
    assert len(maps) == 4 and maps[0].shape == (2, 4, 65, 65)
    torch.testing.assert_close(maps[-1].sum(dim=-1), torch.ones(2, 4, 65))
    torch.testing.assert_close(model(images), before)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="vit_base_patch16"):
        create_vit("vit_gigantic_patch3")


def test_presets_cover_paper_sizes_and_patches():
    for size in ("tiny", "small", "base", "large", "huge"):
        for patch in (14, 16, 32):
            assert f"vit_{size}_patch{patch}" in PRESETS


def test_reset_classifier_switches_pooling_and_head():
    model = tiny(num_classes=0)
    model.reset_classifier(5, global_pool="avg")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert isinstance(model.norm, torch.nn.Identity)


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    model = tiny(num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    clone = tiny(num_classes=3).eval()
    clone.load_state_dict(torch.load(tmp_path / "vit.pt", weights_only=True))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images), clone(images))

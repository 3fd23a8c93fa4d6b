"""Numerical parity with the peers we claim compatibility with: timm's ViT and HF's ViT / ViTMAE."""

import pytest
import torch

from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit
from pretrain.models.weights import backbone_from_hf, backbone_from_timm, mae_from_hf, resample_pos_embed

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def timm_vit(**options):
    defaults = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    return timm.models.vision_transformer.VisionTransformer(**{**defaults, **options}).eval()


@pytest.mark.parametrize(
    "options",
    [dict(), dict(global_pool="avg"), dict(init_values=0.1)],
    ids=["cls", "avg_pool", "layer_scale"],
)
def test_timm_state_dict_loads_strict_and_outputs_match(options):
    reference = timm_vit(**options)
    ours = create_vit(
        "vit_test_patch4",
        num_classes=10,
        global_pool=options.get("global_pool", "token"),
        layer_scale_init=options.get("init_values"),
    ).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(images), reference(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.forward_features(images), reference.forward_features(images), atol=1e-5, rtol=0)


def test_our_state_dict_loads_into_timm():
    ours = create_vit("vit_test_patch4", num_classes=10).eval()
    reference = timm_vit()
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(images), reference(images), atol=1e-5, rtol=0)


def test_backbone_from_timm_drops_only_the_head():
    timm_state = timm_vit().state_dict()
    state = backbone_from_timm(timm_state)
    assert set(timm_state) - set(state) == {"head.weight", "head.bias"}
    assert all(torch.equal(state[key], timm_state[key]) for key in state)
    create_vit("vit_test_patch4").load_state_dict(state, strict=True)


def test_pos_embed_resampling_matches_timm():
    from timm.layers import resample_abs_pos_embed

    pos_embed = torch.randn(1, 1 + 8 * 8, 64)
    expected = resample_abs_pos_embed(pos_embed, [12, 12], num_prefix_tokens=1)
    torch.testing.assert_close(resample_pos_embed(pos_embed, (12, 12)), expected)


def hf_vit_config(**extra):
    return dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=4,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        **extra,
    )


def test_hf_vit_backbone_matches_hf_last_hidden_state():
    reference = transformers.ViTModel(transformers.ViTConfig(**hf_vit_config()), add_pooling_layer=False).eval()
    ours = create_vit("vit_test_patch4").eval()
    ours.load_state_dict(backbone_from_hf(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 32, 32)
    expected = reference(pixel_values=images).last_hidden_state
    torch.testing.assert_close(ours.forward_features(images), expected, atol=1e-5, rtol=0)


def test_hf_legacy_layout_is_converted_like_the_new_one():
    reference = transformers.ViTModel(transformers.ViTConfig(**hf_vit_config()), add_pooling_layer=False)
    new = reference.state_dict()
    legacy_names = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    legacy = {}
    for key, value in new.items():
        key = key.replace("layers.", "encoder.layer.")
        for new_name, old_name in legacy_names.items():
            key = key.replace(new_name, old_name)
        legacy[key] = value
    converted_new, converted_legacy = backbone_from_hf(new), backbone_from_hf(legacy)
    assert converted_new.keys() == converted_legacy.keys()
    assert all(torch.equal(converted_new[k], converted_legacy[k]) for k in converted_new)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_matches_hf_vitmae_loss_and_reconstruction(norm_pix_loss):
    config = transformers.ViTMAEConfig(
        **hf_vit_config(),
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )
    reference = transformers.ViTMAEForPreTraining(config).eval()
    ours = MaskedAutoencoder(
        create_vit("vit_test_patch4", pos_embed="sincos"),
        decoder_embed_dim=32,
        decoder_depth=2,
        decoder_num_heads=4,
        norm_pix_loss=norm_pix_loss,
    ).eval()
    ours.load_state_dict(mae_from_hf(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    expected = reference(pixel_values=images, noise=noise)
    output = ours(images, noise=noise)
    torch.testing.assert_close(output.mask, expected.mask)
    torch.testing.assert_close(output.pred, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(output.loss, expected.loss, atol=1e-4, rtol=0)

import json

import pytest
import torch
from safetensors.torch import save_file

from pretrain.engine.backbone_io import UnreadableWeightsError, load_backbone, read_backbone_state, save_backbone
from pretrain.engine.metadata import BackboneMeta
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit, preset_options

OPTIONS = {**preset_options("vit_test_patch4"), "pos_embed": "sincos"}
IMAGES = torch.randn(2, 3, 32, 32)


def test_export_round_trip_rebuilds_the_same_backbone(tmp_path):
    model = create_vit("vit_test_patch4", pos_embed="sincos").eval()
    meta = BackboneMeta.for_architecture(OPTIONS).updated(mean=(0.5,) * 3, std=(0.2,) * 3, step=3)
    save_backbone(tmp_path, model, meta)
    written = json.loads((tmp_path / "backbone.json").read_text())
    assert written["format"] == "vitfm-backbone/2" and written["step"] == 3
    loaded, loaded_meta = load_backbone(tmp_path / "backbone.safetensors")
    assert torch.equal(loaded.eval().forward_features(IMAGES), model.forward_features(IMAGES))
    assert loaded_meta == meta


def test_lightning_style_mae_checkpoint_gives_the_encoder(tmp_path):
    mae = MaskedAutoencoder(create_vit("vit_test_patch4", pos_embed="sincos"), 32, 1, 4)
    state = {f"model.{k}": v for k, v in mae.state_dict().items()}
    torch.save({"state_dict": state, "vitfm": {"options": OPTIONS, "step": 1}}, tmp_path / "run.ckpt")
    backbone, _ = read_backbone_state(tmp_path / "run.ckpt")
    assert backbone.keys() == mae.encoder.state_dict().keys()
    loaded, _ = load_backbone(tmp_path / "run.ckpt")
    assert torch.equal(loaded.eval()(IMAGES), mae.encoder.eval()(IMAGES))


def test_timm_style_file_needs_options_and_resamples_to_new_size(tmp_path):
    model = create_vit("vit_test_patch4", num_classes=5)
    save_file(model.state_dict(), str(tmp_path / "timm.safetensors"))
    with pytest.raises(ValueError, match="no architecture description"):
        load_backbone(tmp_path / "timm.safetensors")
    bigger, _ = load_backbone(tmp_path / "timm.safetensors", {**preset_options("vit_test_patch4"), "img_size": 48})
    assert bigger.pos_embed.shape == (1, 1 + 12 * 12, 64)
    assert torch.isfinite(bigger(torch.randn(1, 3, 48, 48))).all()


def test_mae_reference_checkpoint_nesting_under_model_key(tmp_path):
    model = create_vit("vit_test_patch4")
    torch.save({"model": model.state_dict(), "epoch": 799}, tmp_path / "mae_pretrain.pth")
    backbone, _ = read_backbone_state(tmp_path / "mae_pretrain.pth")
    assert torch.equal(backbone["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])


def test_weights_that_do_not_fit_raise_with_the_missing_keys(tmp_path):
    model = create_vit("vit_test_patch4")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.3")}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="blocks.3"):
        load_backbone(tmp_path / "partial.safetensors", preset_options("vit_test_patch4"))


@pytest.mark.parametrize("name", ["backbone.safetensors", "weights.pth"])
def test_an_unreadable_weights_file_is_named_with_what_would_work(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not weights at all")
    with pytest.raises(UnreadableWeightsError, match=rf"(?s){name} is not a readable .*pass .*backbone\.safetensors"):
        read_backbone_state(path)

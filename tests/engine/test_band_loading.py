"""Loading a backbone for some stored channels (``bands``) or another channel count (``in_chans``)."""

from pathlib import Path

import pytest
import torch

from pretrain.engine.backbone_io import load_backbone, save_backbone
from pretrain.engine.metadata import BackboneMeta
from pretrain.models.vit import VisionTransformer

ARCH = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=0)


def export(tmp_path: Path, in_chans: int, inputs: str, bands=None, **options) -> Path:
    model = VisionTransformer(**ARCH, in_chans=in_chans, **options)
    meta = BackboneMeta.for_architecture({**ARCH, "in_chans": in_chans, **options}).updated(
        mean=tuple(float(c) for c in range(in_chans)), std=(1.0,) * in_chans, inputs=inputs, bands=bands
    )
    save_backbone(tmp_path, model, meta)
    return tmp_path / "backbone.safetensors"


def test_bands_pick_the_checkpoint_inputs_that_held_them(tmp_path):
    path = export(tmp_path, 4, "arrays", bands=(1, 2, 3, 7))  # pretrained on stored channels 1, 2, 3 and 7
    full, _ = load_backbone(path)
    model, meta = load_backbone(path, bands=[7, 2])
    weight = full.patch_embed.proj.weight
    torch.testing.assert_close(model.patch_embed.proj.weight, weight[:, [3, 1]])
    assert (meta.mean, meta.bands, meta.options["in_chans"]) == ((3.0, 1.0), (7, 2), 2)
    with pytest.raises(ValueError, match=r"bands \[0\] are not among the stored channels \[1, 2, 3, 7\]"):
        load_backbone(path, bands=[0, 2])


def test_an_rgb_checkpoint_reads_three_chosen_bands_as_its_inputs(tmp_path):
    path = export(tmp_path, 3, "images")
    full, _ = load_backbone(path)
    model, meta = load_backbone(path, bands=[3, 2, 1])
    torch.testing.assert_close(model.patch_embed.proj.weight, full.patch_embed.proj.weight)
    assert meta.bands == (3, 2, 1) and meta.inputs == "images"


def test_channel_tokens_activate_the_embeddings_of_the_chosen_bands(tmp_path):
    path = export(tmp_path, 5, "arrays", channel_tokens=True)
    model, meta = load_backbone(path, bands=[4, 0])
    assert model.patch_embed.active_channels.tolist() == [4, 0] and meta.mean == (4.0, 0.0)
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 32)
    with pytest.raises(ValueError, match="choose the channels it reads with bands"):
        load_backbone(path, {"in_chans": 3})


def test_another_channel_count_adapts_the_projection_and_drops_the_recorded_statistics(tmp_path, caplog):
    caplog.set_level("INFO")
    model, meta = load_backbone(export(tmp_path, 3, "images"), {"in_chans": 13})
    assert model.patch_embed.proj.weight.shape[1] == 13 and meta.mean is None
    assert "adapting the patch projection from 3 to 13 input channels" in caplog.text

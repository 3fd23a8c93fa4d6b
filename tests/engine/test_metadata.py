"""The metadata contract: one versioned dataclass, written by checkpoints and exports, read back from both formats."""

import json

import pytest
import torch

from pretrain.engine.backbone_io import load_backbone, save_backbone
from pretrain.engine.metadata import BackboneMeta, MetadataFormatError, counters_from_checkpoint
from pretrain.models.vit import create_vit, preset_options

OPTIONS = {**preset_options("vit_test_patch4"), "pos_embed": "sincos", "num_classes": 0}
META = BackboneMeta(
    options=OPTIONS,
    mean=(0.5, 0.4, 0.3),
    std=(0.2, 0.2, 0.2),
    objective="mae",
    objective_config={"name": "mae", "decoder_depth": 1},
    step=7,
    config_hash="abc123",
    source_checkpoint=None,
)


def test_metadata_round_trips_through_a_dict_and_json():
    assert BackboneMeta.from_dict(json.loads(json.dumps(META.to_dict()))) == META


def test_format_one_backbone_json_still_loads(tmp_path):
    model = create_vit("vit_test_patch4", pos_embed="sincos")
    save_backbone(tmp_path, model, META)
    legacy = {  # a backbone.json as version 1 wrote it: optim and counters inside, no objective_config
        "format": "vitfm-backbone/1",
        "objective": "mae",
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.2, 0.2],
        "config_hash": "abc123",
        "options": OPTIONS,
        "step": 7,
        "optim": {"base_lr": 1.5e-4},
        "counters": {"bad_steps": 0, "corrupt_samples": 2},
        "source_checkpoint": "run/step_000007.ckpt",
    }
    (tmp_path / "backbone.json").write_text(json.dumps(legacy))
    loaded, meta = load_backbone(tmp_path / "backbone.safetensors")
    assert meta.step == 7 and meta.mean == (0.5, 0.4, 0.3) and meta.objective_config is None
    assert meta.source_checkpoint == "run/step_000007.ckpt"
    torch.testing.assert_close(loaded.pos_embed, model.pos_embed)


def test_a_newer_format_is_refused_with_the_readable_ones():
    with pytest.raises(MetadataFormatError, match="vitfm-backbone/3.*vitfm-backbone/2"):
        BackboneMeta.from_dict({**META.to_dict(), "format": "vitfm-backbone/3"})


def test_training_counters_are_read_from_both_checkpoint_layouts():
    assert counters_from_checkpoint({"vitfm_counters": {"bad_steps": 1, "corrupt_samples": 4}})["corrupt_samples"] == 4
    legacy = {"vitfm": {"options": OPTIONS, "counters": {"bad_steps": 2, "corrupt_samples": 5}}}
    assert counters_from_checkpoint(legacy) == {"bad_steps": 2, "corrupt_samples": 5}

"""Hydra composition: every option of every config group composes, and bad names say what is valid."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from pretrain.engine.architecture import backbone_options

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ["model", "objective", "data", "optim", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"{group}={option}", "data.shards=/tmp/x"], return_hydra_config=True)
    assert OmegaConf.select(cfg, group) is not None
    if group == "model":
        assert backbone_options(OmegaConf.to_container(cfg.model))["img_size"] == cfg.model.img_size


def test_unknown_group_option_lists_the_valid_ones():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="vit_base"):
            compose("pretrain", overrides=["model=vit_gigantic"])


def test_help_lists_groups():
    result = subprocess.run(
        [sys.executable, "pretrain/run.py", "--help"], cwd=CONF.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for group in GROUPS:
        assert f"{group}:" in result.stdout


def test_a_model_key_that_contradicts_its_preset_names_the_preset_to_pick():
    model = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "vit_base.yaml"))
    with pytest.raises(ValueError, match="model.patch_size=14 disagrees .* vit_base_patch14"):
        backbone_options({**model, "patch_size": 14})


def test_the_model_group_owns_the_image_size_even_where_a_preset_sets_one():
    model = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "vit_test.yaml"))
    assert backbone_options({**model, "img_size": 64})["img_size"] == 64
    assert backbone_options(model)["patch_size"] == 4


def test_no_model_file_restates_what_its_preset_owns():
    for path in (CONF / "model").glob("*.yaml"):
        assert not {"embed_dim", "depth", "num_heads", "patch_size"} & set(OmegaConf.load(path)), path.name

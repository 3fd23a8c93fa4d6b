"""Paper recipes (conf/experiment/): each composes, names its source and number, and turns epochs into steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from yaml_defaults import composed

from finetune.modes.common import downstream_plan
from pretrain.engine.config import settings
from pretrain.run import pretraining_plan

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))
IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's training split


class Images:
    """A split that is only a size, as the downstream plan reads it."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples


def app_of(path: Path) -> str:
    return "pretrain" if path.stem.startswith("mae_pretrain") else "finetune"


def compose(path: Path, *overrides: str) -> dict:
    extra = () if app_of(path) == "pretrain" else ("ckpt=PATH",)
    return settings(composed(app_of(path), f"experiment={path.stem}", *extra, *overrides))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda path: path.stem)
def test_every_recipe_composes_and_names_its_paper_and_number(path: Path):
    config = compose(path)
    assert config["seed"] == 0
    header = path.read_text().split("defaults:")[0]
    assert re.search(r"et al\. \(20\d\d\)", header), "the recipe names no paper"
    assert re.search(r"Table \d|appendix [A-Z]", header), "the recipe names no table or section of its paper"
    assert re.search(r"\d+\.\d+ %", header), "the recipe names no number it reproduces"


def test_the_mae_pretraining_recipe_runs_1600_epochs_of_imagenet_in_exact_steps():
    config = compose(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("mae_pretrain_vit_base")])
    plan = pretraining_plan(config, {"total": IMAGENET_TRAIN})
    assert plan.world_size == 64 and plan.global_batch == 4096
    steps_per_epoch = IMAGENET_TRAIN // 4096
    assert (plan.steps_per_epoch, plan.total_steps) == (steps_per_epoch, 1600 * steps_per_epoch)
    assert plan.steps_for_epochs(config["warmup_epochs"]) == 40 * steps_per_epoch


def test_the_mae_fine_tuning_recipe_converts_its_epochs_at_batch_1024():
    config = compose(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("mae_finetune_vit_base")])
    plan = downstream_plan(config, config["mode"], Images(IMAGENET_TRAIN), trains=True)
    steps_per_epoch = IMAGENET_TRAIN // 1024
    assert (plan.global_batch, plan.total_steps) == (1024, 100 * steps_per_epoch)
    assert plan.steps_for_epochs(config["mode"]["warmup_epochs"]) == 5 * steps_per_epoch


def test_the_vit_transfer_recipes_run_the_papers_step_counts_at_batch_512():
    steps = {"vit_transfer_cifar10": 10_000, "vit_transfer_pets": 500, "vit_transfer_vtab": 2500}
    for name, expected in steps.items():
        config = compose(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index(name)])
        plan = downstream_plan(config, config["mode"], Images(50_000), trains=True)
        assert (plan.global_batch, plan.total_steps) == (512, expected), name


def test_only_the_demo_data_gets_the_demo_schedule():
    demo, real = composed("pretrain"), composed("pretrain", "data=shards", "data.shards=/data/train")
    assert (demo["epochs"], real["epochs"]) == (5, 800)
    assert real["warmup_epochs"] == 40

"""Choosing on validation: the selecting linear probe, k-NN on cached features, hold-outs, the eval crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_files import pixels, save, write_elpv, write_image_folder
from PIL import Image
from yaml_defaults import composed

from data_pipelines.holdout import HoldOut
from data_pipelines.write_shards import write_shards
from finetune.data import loader_specs
from finetune.modes.features import FeatureTable
from finetune.modes.knn import knn_accuracy
from finetune.modes.linear import probe_grid, select_head, selecting_linear_probe
from finetune.tasks import task_of
from pretrain.engine.config import settings

CPU = torch.device("cpu")
PROBE = {**composed("finetune", "ckpt=null")["probe"], "features": ["signal", "noise"], "epochs": 20}


def constructed_table(count: int, seed: int, informative: str = "signal") -> FeatureTable:
    """Two feature sets of 4 classes: one separates the classes (a shifted mean per class), one is noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4
    centres = 3 * torch.eye(4, 8)
    signal = centres[labels] + torch.randn(count, 8, generator=generator)
    noise = torch.randn(count, 8, generator=generator)
    features = {"signal": signal, "noise": noise} if informative == "signal" else {"signal": noise, "noise": signal}
    return FeatureTable(features, labels, [f"{seed}-{index}" for index in range(count)])


def test_the_grid_has_a_head_per_feature_set_lr_and_weight_decay():
    grid = probe_grid(PROBE)
    assert len(grid) == 2 * len(PROBE["lrs"]) * len(PROBE["weight_decays"])
    assert {setting.features for setting in grid} == {"signal", "noise"}


def test_the_probe_chooses_the_informative_features_on_validation():
    chosen, candidates = select_head(constructed_table(400, 0), constructed_table(200, 1), 4, PROBE, 0, CPU)
    assert chosen.features == "signal"
    best = max(candidate["val_top1"] for candidate in candidates)
    assert next(c for c in candidates if c["features"] == "signal" and c["lr"] == chosen.lr)["val_top1"] == best
    assert max(c["val_top1"] for c in candidates if c["features"] == "noise") < best


def test_test_labels_never_choose():
    tables = {"fit": constructed_table(400, 0), "val": constructed_table(200, 1), "train": constructed_table(600, 2)}
    # A test split where the other feature set carries the labels: choosing on it would pick "noise".
    misleading = constructed_table(200, 3, informative="noise")
    honest = constructed_table(200, 3)
    metrics_a, selection_a = selecting_linear_probe({**tables, "test": misleading}, 4, PROBE, 0, "val", CPU)
    metrics_b, selection_b = selecting_linear_probe({**tables, "test": honest}, 4, PROBE, 0, "val", CPU)
    assert selection_a["chosen"] == selection_b["chosen"] and selection_a["chosen"]["features"] == "signal"
    assert metrics_b["top1"] > 90 > metrics_a["top1"]
    assert len(selection_a["candidates"]) == len(probe_grid(PROBE)) and selection_a["refit_on"] == "train"


def test_knn_on_cached_features_equals_the_direct_computation():
    bank, queries = constructed_table(300, 0), constructed_table(100, 1)
    expected_votes = torch.zeros(100, 4)
    normalized_bank = F.normalize(bank.features["signal"], dim=1)
    similarity, index = (F.normalize(queries.features["signal"], dim=1) @ normalized_bank.T).topk(20, dim=1)
    expected_votes.scatter_add_(1, bank.labels[index], (similarity / 0.07).exp())
    expected = 100 * (expected_votes.argmax(1) == queries.labels).float().mean().item()
    assert knn_accuracy(bank, queries, "signal", 20, 0.07, 4, CPU)["top1"] == pytest.approx(expected, abs=1e-3)


def test_a_hold_out_is_the_same_images_for_listings_shards_and_feature_tables(tmp_path: Path):
    root = write_image_folder(tmp_path / "images")
    write_shards("imagefolder", root, tmp_path / "shards", split="train", max_count=5)
    config = settings(
        composed(
            "finetune",
            "ckpt=null",
            "task=shards",
            f"data_root={tmp_path}",
            "task.train=[shards]",
            "task.test=[shards]",
            "holdout_fraction=0.3",
        )
    )
    task = task_of(config)
    eval_spec, _ = loader_specs(config, 1.0, 32, (0.5,) * 3, (0.25,) * 3)
    keys = {
        name: [key for batch in split.loader(eval_spec, 0, 1, 0) for key in batch["key"]]
        for name, split in (("fit", task.selection_train), ("val", task.val), ("train", task.train))
    }
    assert keys["val"] and keys["fit"] and sorted(keys["fit"] + keys["val"]) == sorted(keys["train"])
    table = FeatureTable({"x": torch.zeros(len(keys["train"]), 1)}, torch.zeros(len(keys["train"])), keys["train"])
    assert sorted(table.held_out(HoldOut(0.3, config["seed"], "val")).keys) == sorted(keys["val"])
    assert task.val.num_samples == len(keys["val"]) and "hold-out of 30%" in task.validation


def test_a_hold_out_of_a_listing_is_disjoint_from_its_rest_and_seeded(tmp_path: Path):
    root = write_elpv(tmp_path / "elpv", per_class=(30, 30, 30, 30))
    config = settings(composed("finetune", "ckpt=null", "task=elpv", f"data_root={root}"))
    task, again = task_of(config), task_of(config)
    val_keys = {item.key for item in task.val.items}
    assert val_keys == {item.key for item in again.val.items}
    assert not val_keys & {item.key for item in task.selection_train.items}
    assert len(val_keys) + task.selection_train.num_samples == task.train.num_samples
    other = task_of(settings({**config, "seed": 1}))
    assert {item.key for item in other.val.items} != val_keys


def test_a_low_resolution_folder_is_evaluated_whole_and_a_large_one_centre_cropped(tmp_path: Path):
    small, large = write_image_folder(tmp_path / "small"), tmp_path / "large"
    for split in ("train", "test"):
        for label, name in enumerate(("a", "b")):
            for number in range(10):
                save(large / split / name / f"{number}.jpg", pixels(label, 160, number))
    crops = {
        root.name: task_of(
            settings(composed("finetune", "ckpt=null", "task=imagefolder", f"data_root={root}"))
        ).eval_crop_fraction
        for root in (small, large)
    }
    assert crops == {"small": 1.0, "large": 0.875}
    cifar = composed("finetune", "ckpt=null", "task=cifar10")["task"]
    assert cifar["eval_crop_fraction"] == 1.0


def test_the_eval_transform_of_a_32px_task_keeps_the_whole_image(tmp_path: Path):
    root = write_image_folder(tmp_path / "images")
    config = settings(composed("finetune", "ckpt=null", "task=imagefolder", f"data_root={root}"))
    task = task_of(config)
    eval_spec, _ = loader_specs(config, task.eval_crop_fraction, 28, (0.0,) * 3, (1 / 255,) * 3)
    batch = next(iter(task.test.loader(eval_spec, 0, 1, 0)))
    stored = torch.from_numpy(np.asarray(Image.open(task.test.items[0].path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(batch["image"][0].round().to(torch.uint8), stored.to(torch.uint8))


def test_elpv_splits_are_stratified_disjoint_and_a_1k_style_subset(tmp_path: Path):
    root = write_elpv(tmp_path / "elpv", per_class=(40, 40, 40, 40))
    task = task_of(settings(composed("finetune", "ckpt=null", "task=elpv", f"data_root={root}")))
    paths = {name: {item.path for item in split.items} for name, split in (("train", task.train), ("test", task.test))}
    assert len(paths["test"]) == 40 and len(paths["train"]) == 120 and not paths["train"] & paths["test"]
    assert sorted(item.label for item in task.test.items) == sorted([0, 1, 2, 3] * 10)
    one_k = task_of(settings(composed("finetune", "ckpt=null", "task=elpv_1k", f"data_root={root}")))
    fit, val = {item.path for item in one_k.selection_train.items}, {item.path for item in one_k.val.items}
    assert not fit & val and (fit | val) == {item.path for item in one_k.train.items} <= paths["train"]

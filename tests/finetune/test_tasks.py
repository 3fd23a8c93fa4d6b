"""Each task reads its dataset from tiny files in the real on-disk format, and fails clearly when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from official_files import (
    write_cifar10,
    write_cifar100,
    write_flowers102,
    write_image_folder,
    write_pets,
    write_vtab_task,
)
from omegaconf import OmegaConf
from yaml_defaults import transform_options

from data_pipelines.sources.vtab import TASKS as VTAB_TASKS
from data_pipelines.write_shards import write_shards
from finetune.data import LoaderSpec
from finetune.tasks import Task, task_of
from pretrain.engine.config import settings

CONF = Path(__file__).resolve().parents[2] / "conf"
COMMON = dict(num_workers=0, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0, shuffle_buffer=100, pin_memory=False)
EVAL = LoaderSpec("eval", transform_options(32), batch_size=4, training=False, **COMMON)
TRAIN = LoaderSpec("mae", transform_options(32), batch_size=2, training=True, **COMMON)


@pytest.fixture
def read_task(finetune_config):
    def read(*overrides: str) -> Task:
        return task_of(settings(finetune_config("ckpt=null", *overrides)))

    return read


def labels_of(loader) -> list[int]:
    return [label for batch in loader for label in batch["label"].tolist()]


def test_cifar10_reads_the_python_batches(tmp_path: Path, read_task) -> None:
    task = read_task("task=cifar10", f"data_root={write_cifar10(tmp_path)}")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (10, 20, 10)
    batch = next(iter(task.test.loader(EVAL, 0, 1, 0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 1, 2, 3]


def test_cifar100_reads_fine_labels(tmp_path: Path, read_task) -> None:
    task = read_task("task=cifar100", f"data_root={write_cifar100(tmp_path)}")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (100, 200, 100)
    assert sorted(labels_of(task.test.loader(EVAL, 0, 1, 0))) == list(range(100))


def test_pets_reads_trainval_and_test_lists(tmp_path: Path, read_task) -> None:
    task = read_task("task=pets", f"data_root={write_pets(tmp_path)}")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (37, 12, 6)
    assert task.train.classes == ["Abyssinian", "American Bulldog", "Bengal"]


def test_flowers102_trains_on_train_and_val_from_the_mat_files(tmp_path: Path, read_task) -> None:
    pytest.importorskip("scipy")
    task = read_task("task=flowers102", f"data_root={write_flowers102(tmp_path)}")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (102, 6, 6)
    assert sorted(labels_of(task.test.loader(EVAL, 0, 1, 0))) == [0, 0, 1, 1, 101, 101]


def test_vtab_task_reads_list_files_from_an_alias_folder(tmp_path: Path, read_task) -> None:
    root = write_vtab_task(tmp_path, "oxford_iiit_pet", num_classes=37)
    task = read_task("task=vtab_pets", f"data_root={root}")
    assert (task.name, task.group, task.num_classes) == ("vtab_pets", "natural", 37)
    assert (task.train.num_samples, task.test.num_samples) == (10, 4)  # train800val200, test


def test_vtab_protocol_chooses_on_train800_val200_and_refits_on_train800val200(tmp_path: Path, read_task) -> None:
    root = write_vtab_task(tmp_path, "dtd", num_classes=47)
    task = read_task("task=vtab_dtd", f"data_root={root}")
    listed = {split: (root / "dtd" / f"{split}.txt").read_text().split() for split in ("train800", "val200", "test")}
    phases = {"train800": task.selection_train, "val200": task.val, "test": task.test}
    for split, read in phases.items():
        assert [Path(item.path).name for item in read.items] == [Path(p).name for p in listed[split][::2]], split
    assert task.train.num_samples == task.selection_train.num_samples + task.val.num_samples == 10
    assert "train800" in task.validation and "val200" in task.validation


def test_every_vtab_task_has_a_config_with_its_class_count_and_group() -> None:
    for name, spec in VTAB_TASKS.items():
        config = OmegaConf.load(CONF / "task" / f"vtab_{name}.yaml")
        assert (config.name, config.dataset, config.num_classes, config.group) == (
            f"vtab_{name}",
            name,
            spec.num_classes,
            spec.group,
        )


def test_imagefolder_counts_classes_from_the_folders(tmp_path: Path, read_task) -> None:
    root = write_image_folder(tmp_path)
    task = read_task("task=imagefolder", f"data_root={root}")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (3, 12, 6)
    assert read_task("task=imagefolder", f"data_root={root}", "task.test=[val]").test.num_samples == 3


def test_imagefolder_with_different_class_folders_in_test_fails(tmp_path: Path, read_task) -> None:
    root = write_image_folder(tmp_path)
    write_image_folder(tmp_path / "other", classes=("cat", "dog"))
    (root / "test").rename(tmp_path / "unused")
    (tmp_path / "other" / "test").rename(root / "test")
    with pytest.raises(ValueError, match="different classes"):
        read_task("task=imagefolder", f"data_root={root}")


def test_shards_task_reads_classes_from_the_manifest(tmp_path: Path, read_task) -> None:
    images = write_image_folder(tmp_path / "images")
    for split in ("train", "test"):
        write_shards("imagefolder", images, tmp_path / "shards" / split, split=split, max_count=4)
    task = read_task("task=shards", f"data_root={tmp_path}", "task.train=[shards/train]", "task.test=[shards/test]")
    assert (task.num_classes, task.train.num_samples, task.test.num_samples) == (3, 12, 6)
    assert sorted(labels_of(task.test.loader(EVAL, 0, 1, 0))) == [0, 0, 1, 1, 2, 2]


def test_demo_task_reads_the_demo_shards(demo_root: Path, read_task) -> None:
    task = read_task(f"data_root={demo_root}")
    assert (task.name, task.num_classes, task.train.num_samples, task.test.num_samples) == ("demo", 10, 640, 320)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("cifar100", "cifar-100-python/train"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("pets", "oxford-iiit-pet/annotations/trainval.txt"),
        ("flowers102", "flowers-102/setid.mat"),
        ("vtab_dtd", "dtd"),
        ("imagefolder", "train"),
    ],
)
def test_missing_files_are_listed_with_the_expected_layout(tmp_path: Path, read_task, task: str, expected: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"(?s)task {task}: .*{expected}.*expected layout"):
        read_task(f"task={task}", f"data_root={tmp_path}")


def test_labels_beyond_the_class_count_are_rejected(tmp_path: Path, read_task) -> None:
    root = write_vtab_task(tmp_path, "dtd", num_classes=47)
    with pytest.raises(ValueError, match="labels go up to 9 but the task has 2 classes"):
        read_task("task=vtab_dtd", f"data_root={root}", "task.num_classes=2")


def test_unknown_source_lists_the_known_ones(tmp_path: Path, read_task) -> None:
    with pytest.raises(ValueError, match="unknown task source 'nope'; choose one of: .*cifar10.*demo.*shards"):
        read_task("task.source=nope", f"data_root={tmp_path}")


def test_test_images_are_each_read_once_over_ranks(tmp_path: Path, read_task) -> None:
    task = read_task("task=cifar100", f"data_root={write_cifar100(tmp_path)}")
    per_rank = [labels_of(task.test.loader(EVAL, rank, 3, 0)) for rank in range(3)]
    assert sorted(sum(per_rank, [])) == list(range(100))


def test_training_batches_are_equal_per_rank_and_reshuffled_per_epoch(tmp_path: Path, read_task) -> None:
    task = read_task("task=cifar10", f"data_root={write_cifar10(tmp_path)}")
    counts = [len(list(task.train.loader(TRAIN, rank, 3, 0))) for rank in range(3)]
    assert counts == [3, 3, 3]  # 20 images // 3 ranks = 6 each, 3 batches of 2
    assert labels_of(task.train.loader(TRAIN, 0, 1, 0)) != labels_of(task.train.loader(TRAIN, 0, 1, 1))

"""The task registry: a task config (``conf/task/*.yaml``) -> the images it trains and tests on.

A task config names its ``source`` (a reader below: every official-format reader of ``data_pipelines.sources``,
plus ``shards`` and ``demo``), the ``root`` its files are under, what to read for training (``train``) and
testing (``test``), and its number of classes (null: from the data). For official formats ``train``/``test``
list the source's splits (Flowers-102 trains on ``[train, val]``, VTAB-1k on ``[train800val200]``); for shards
they list shard patterns or folders (relative ones below ``root``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data_pipelines.demo import ensure_demo_shards
from data_pipelines.holdout import HoldOut
from data_pipelines.registry import lookup
from data_pipelines.sources import SOURCES, get_source, resolve_split
from data_pipelines.sources.base import SourceRequest
from finetune.data import ListingSplit, ShardSplit, TaskSplit

log = logging.getLogger(__name__)

WHOLE_IMAGE = 1.0  # the eval crop that keeps the whole image


@dataclass
class Task:
    """What a downstream run reads: hyper-parameters are chosen by fitting ``selection_train`` and scoring ``val``;
    the chosen setting is then fit on ``train`` and scored once on ``test``, which never chooses."""

    name: str
    num_classes: int
    train: TaskSplit
    test: TaskSplit
    selection_train: TaskSplit
    val: TaskSplit
    validation: str  # how the validation split was made, for the log and results.json
    holdout: HoldOut | None  # the hold-out that made it; None: the task's own validation split
    eval_crop_fraction: float  # the eval transform's centre crop (1.0: the whole image)
    group: str | None  # VTAB-1k group (natural, specialized, structured), averaged by finetune/report.py

    @property
    def ignore_index(self) -> int | None:
        """Segmentation tasks: the mask value that counts nowhere; None for classification."""
        return self.train.ignore_index


def read_files(task: Mapping[str, Any], entries: list[str]) -> ListingSplit:
    """Official-format files through a ``data_pipelines`` source; several splits are concatenated."""
    source = get_source(task["source"])
    root = Path(task["root"]).expanduser()
    listings = []
    for entry in entries:
        request = SourceRequest(root, resolve_split(source, entry), task["dataset"] if source.needs_task else None)
        try:
            listings.append(source.load(request))
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"task {task['name']}: {error}\n  expected layout: {source.layout}  (ROOT = data_root = {root}); "
                "point data_root= at the folder holding it"
            ) from error
    classes = [listing.classes for listing in listings]
    if any(other != classes[0] for other in classes):
        raise ValueError(f"task {task['name']}: the splits {entries} name different classes: {classes}")
    return ListingSplit([item for listing in listings for item in listing.items], classes[0], listings[0].ignore_index)


def _shard_path(root: Path, entry: str) -> str:
    """Relative local patterns are taken from ``root``; absolute paths and URLs are kept."""
    if "://" in entry or entry.startswith("pipe:"):
        return entry
    return str(root / Path(entry).expanduser())


def read_shards(task: Mapping[str, Any], entries: list[str]) -> ShardSplit:
    """Labeled shards written by ``data_pipelines`` (a manifest.json beside them)."""
    root = Path(task["root"]).expanduser()
    shards = [_shard_path(root, entry) for entry in entries]
    try:
        return ShardSplit(shards)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"task {task['name']}: {error}\n  expected: shards written by python -m data_pipelines.write_shards, "
            f"with their manifest.json, at {shards}"
        ) from error


def read_demo(task: Mapping[str, Any], entries: list[str]) -> ShardSplit:
    """The demo shards, written below ``root`` on first use."""
    root = Path(task["root"]).expanduser()
    for entry in entries:
        ensure_demo_shards(_shard_path(root, entry), task["image_size"])
    return read_shards(task, entries)


Reader = Callable[[Mapping[str, Any], list[str]], TaskSplit]
READERS: dict[str, Reader] = {"shards": read_shards, "demo": read_demo, **{name: read_files for name in SOURCES}}


def validation_splits(
    task: Mapping[str, Any], reader: Reader, train: TaskSplit, holdout: HoldOut
) -> tuple[TaskSplit, TaskSplit, str, HoldOut | None]:
    """(fit, score, description, hold-out used): the task's own validation split (VTAB's train800 -> val200),
    else ``holdout`` of the training split."""
    validation = task["validation"]
    if validation is not None:
        fit, score = reader(task, list(validation["train"])), reader(task, list(validation["val"]))
        return fit, score, f"the task's own split: fit on {validation['train']}, score on {validation['val']}", None
    fit, score = train.held_out(replace(holdout, side="train")), train.held_out(replace(holdout, side="val"))
    return fit, score, holdout.describe(), holdout


def eval_crop_fraction(
    task: Mapping[str, Any], train: TaskSplit, low_resolution_side: int, centre_crop: float
) -> float:
    """The task's eval crop; ``auto``: the whole image for low-resolution data (shorter side up to
    ``low_resolution_side`` px: CIFAR-like images lose their border to a crop), else ``centre_crop``."""
    fraction = task["eval_crop_fraction"]
    if fraction != "auto":
        return float(fraction)
    side = train.image_side()
    chosen = WHOLE_IMAGE if side <= low_resolution_side else centre_crop
    log.info("task %s: %.0f px images, evaluated with eval_crop_fraction=%s", task["name"], side, chosen)
    return chosen


def build_task(task: Mapping[str, Any], holdout: HoldOut, low_resolution_side: int, centre_crop: float) -> Task:
    """Read the task's splits (train, test, and the validation pair) and settle its number of classes.

    ``holdout`` (its fraction and seed) makes the validation pair when the task names no validation split.
    """
    reader = lookup(READERS, task["source"], "task source")
    train, test = reader(task, list(task["train"])), reader(task, list(task["test"]))
    if train.classes and test.classes and train.classes != test.classes:
        raise ValueError(
            f"task {task['name']}: train and test name different classes ({len(train.classes)} vs "
            f"{len(test.classes)}): labels would not match; give both the same class folders"
        )
    num_classes = task["num_classes"] or (len(train.classes) if train.classes else None)
    if num_classes is None:
        raise ValueError(f"task {task['name']}: the data names no classes; set task.num_classes")
    selection_train, val, validation, used_holdout = validation_splits(task, reader, train, holdout)
    splits = {"train": train, "test": test, "validation train": selection_train, "validation": val}
    for split_name, split in splits.items():
        if split.num_samples == 0:
            hint = " (raise holdout_fraction, or give task.validation)" if "validation" in split_name else ""
            raise ValueError(f"task {task['name']}: its {split_name} split holds no images{hint}")
        if split.max_label() >= num_classes:
            raise ValueError(
                f"task {task['name']}: {split_name} labels go up to {split.max_label()} but the task has "
                f"{num_classes} classes (task.num_classes)"
            )
    log.info(
        "task %s: %d classes, %d train / %d test images; hyper-parameters are chosen on %d validation images (%s)",
        task["name"],
        num_classes,
        train.num_samples,
        test.num_samples,
        val.num_samples,
        validation,
    )
    crop = eval_crop_fraction(task, train, low_resolution_side, centre_crop)
    return Task(
        task["name"], num_classes, train, test, selection_train, val, validation, used_holdout, crop, task["group"]
    )


def task_of(config: Mapping[str, Any]) -> Task:
    """The task of a resolved finetune config: its ``task`` group, hold-out share and low-resolution threshold."""
    holdout = HoldOut(config["holdout_fraction"], config["seed"], side="val")
    return build_task(config["task"], holdout, config["low_resolution_side"], config["centre_crop_fraction"])

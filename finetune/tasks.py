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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipelines.demo import ensure_demo_shards
from data_pipelines.registry import lookup
from data_pipelines.sources import SOURCES, get_source, resolve_split
from data_pipelines.sources.base import SourceRequest
from finetune.data import ListingSplit, ShardSplit, TaskSplit

log = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 32


@dataclass
class Task:
    name: str
    num_classes: int
    train: TaskSplit
    test: TaskSplit
    group: str | None  # VTAB-1k group (natural, specialized, structured), averaged by finetune/report.py


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
    return ListingSplit([item for listing in listings for item in listing.items], classes[0])


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
        ensure_demo_shards(_shard_path(root, entry), DEMO_IMAGE_SIZE)
    return read_shards(task, entries)


Reader = Callable[[Mapping[str, Any], list[str]], TaskSplit]
READERS: dict[str, Reader] = {"shards": read_shards, "demo": read_demo, **{name: read_files for name in SOURCES}}


def build_task(task: Mapping[str, Any]) -> Task:
    """Read the task's train and test splits and settle its number of classes."""
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
    for split_name, split in (("train", train), ("test", test)):
        if split.num_samples == 0:
            raise ValueError(f"task {task['name']}: the {split_name} split {task[split_name]} holds no images")
        if split.max_label() >= num_classes:
            raise ValueError(
                f"task {task['name']}: {split_name} labels go up to {split.max_label()} but the task has "
                f"{num_classes} classes (task.num_classes)"
            )
    log.info(
        "task %s: %d classes, %d train / %d test images", task["name"], num_classes, train.num_samples, test.num_samples
    )
    return Task(task["name"], num_classes, train, test, task["group"])

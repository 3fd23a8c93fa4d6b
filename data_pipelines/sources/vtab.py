"""VTAB-1k tasks in the layout the parameter-efficient fine-tuning literature distributes.

`<data_root>/<task>/` holds the images and the list files `train800.txt`, `val200.txt`, `train800val200.txt`,
`test.txt`, one `relative/image/path label` per line. Folder names in common use (`cifar`, `oxford_iiit_pet`,
`diabetic_retinopathy`, `kitti`, ...) are accepted as aliases of ours. `read_split` is what the finetune app
uses too; the `vtab` source writes any split to shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_pipelines.registry import UnknownNameError, check_name
from data_pipelines.sources.base import Listing, Source, SourceRequest, file_items, require_files

SPLITS = ("train800", "val200", "train800val200", "test")


@dataclass(frozen=True)
class VtabTask:
    name: str
    group: str  # natural, specialized or structured, as VTAB averages them
    num_classes: int
    aliases: tuple[str, ...] = ()


TASKS: dict[str, VtabTask] = {
    task.name: task
    for task in (
        VtabTask("caltech101", "natural", 102),
        VtabTask("cifar100", "natural", 100, ("cifar",)),
        VtabTask("dtd", "natural", 47),
        VtabTask("flowers102", "natural", 102, ("oxford_flowers102",)),
        VtabTask("pets", "natural", 37, ("oxford_iiit_pet",)),
        VtabTask("sun397", "natural", 397),
        VtabTask("svhn", "natural", 10),
        VtabTask("patch_camelyon", "specialized", 2, ("pcam",)),
        VtabTask("eurosat", "specialized", 10),
        VtabTask("resisc45", "specialized", 45),
        VtabTask("retinopathy", "specialized", 5, ("diabetic_retinopathy",)),
        VtabTask("clevr_count", "structured", 8),
        VtabTask("clevr_dist", "structured", 6),
        VtabTask("dmlab", "structured", 6),
        VtabTask("kitti_dist", "structured", 4, ("kitti",)),
        VtabTask("dsprites_loc", "structured", 16),
        VtabTask("dsprites_ori", "structured", 16),
        VtabTask("smallnorb_azi", "structured", 18),
        VtabTask("smallnorb_ele", "structured", 9),
    )
}
_BY_ANY_NAME = {name: task for task in TASKS.values() for name in (task.name, *task.aliases)}


def resolve_task(name: str) -> VtabTask:
    """Our task for `name`, which may be an alias; `-` and `_` are interchangeable, case is ignored."""
    normalized = name.strip().lower().replace("-", "_")
    if normalized not in _BY_ANY_NAME:
        raise UnknownNameError("VTAB task", name, _BY_ANY_NAME)
    return _BY_ANY_NAME[normalized]


def task_folder(root: str | Path, task: str) -> Path:
    """The folder of `task` under `root`, under our name or any of its aliases."""
    resolved = resolve_task(task)
    candidates = [Path(root) / name for name in (resolved.name, *resolved.aliases)]
    for folder in candidates:
        if folder.is_dir():
            return folder
    shown = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"VTAB task {resolved.name}: none of these folders exists: {shown}")


def read_split(root: str | Path, task: str, split: str) -> list[tuple[Path, int]]:
    """(image path, label) pairs of one split, in list-file order, with paths resolved against the task folder."""
    check_name(split, SPLITS, "VTAB split")
    folder = task_folder(root, task)
    list_file = folder / f"{split}.txt"
    require_files([list_file], f"VTAB task {resolve_task(task).name}")
    lines = enumerate(list_file.read_text().splitlines(), start=1)
    return [_parse_line(line, folder, list_file, number) for number, line in lines if line.strip()]


def _parse_line(line: str, folder: Path, list_file: Path, number: int) -> tuple[Path, int]:
    try:
        path, label = line.rsplit(maxsplit=1)
        return folder / path, int(label)
    except ValueError as error:
        raise ValueError(f"{list_file}:{number}: expected 'relative/image/path label', got {line!r}") from error


def load_vtab(request: SourceRequest) -> Listing:
    task = resolve_task(request.task)
    folder = task_folder(request.root, task.name)
    samples = read_split(request.root, task.name, request.split)
    return Listing(file_items(samples, folder), [str(label) for label in range(task.num_classes)])


VTAB = Source(
    name="vtab",
    summary="a VTAB-1k task (--task NAME; aliases such as cifar, oxford_iiit_pet, kitti accepted)",
    layout="ROOT/<task>/{train800,val200,train800val200,test}.txt + images; lines 'relative/path label'",
    splits=SPLITS,
    load=load_vtab,
    needs_task=True,
)

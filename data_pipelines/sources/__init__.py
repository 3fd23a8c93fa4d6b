"""Readers of datasets in their official on-disk layouts, registered by name in :data:`SOURCES`.

The shard writer (``python -m data_pipelines.write_shards``) and the downstream tasks (``finetune/tasks.py``)
both look sources up here.
"""

from __future__ import annotations

from data_pipelines.registry import check_name, lookup
from data_pipelines.sources.base import Source
from data_pipelines.sources.cifar import CIFAR10_SOURCE, CIFAR100_SOURCE
from data_pipelines.sources.elpv import ELPV
from data_pipelines.sources.folder import IMAGE_FOLDER, UNLABELED_FOLDER
from data_pipelines.sources.oxford import FLOWERS102, PETS
from data_pipelines.sources.science import GEOTIFF_FOLDER, MEDMNIST, NIFTI_FOLDER, NPY_FOLDER
from data_pipelines.sources.segmentation import ADE20K, NIFTI_SEGMENTATION, SEGMENTATION_FOLDER, VOC2012
from data_pipelines.sources.vtab import VTAB

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        *(IMAGE_FOLDER, UNLABELED_FOLDER, CIFAR10_SOURCE, CIFAR100_SOURCE, PETS, FLOWERS102, VTAB, ELPV),
        *(GEOTIFF_FOLDER, NPY_FOLDER, NIFTI_FOLDER, MEDMNIST),
        *(ADE20K, VOC2012, SEGMENTATION_FOLDER, NIFTI_SEGMENTATION),
    )
}


def get_source(name: str) -> Source:
    return lookup(SOURCES, name, "source")


def resolve_split(source: Source, split: str | None) -> str | None:
    """The split to read: the given one if the source has it, else the source's first (folders: none)."""
    if source.splits is None or split in source.splits:
        return split
    if split is None:
        return source.splits[0]
    check_name(split, source.splits, f"split of source {source.name}")
    return split

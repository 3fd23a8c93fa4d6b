"""Users' own images: a class-per-subfolder tree, or a folder of unlabeled images (for MAE pretraining)."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from data_pipelines.sources.base import Listing, Source, SourceRequest, file_items, folder_of


def load_image_folder(request: SourceRequest) -> Listing:
    folder = folder_of(request, "image folder")
    dataset = ImageFolder(str(folder))
    return Listing(file_items(((Path(path), label) for path, label in dataset.samples), folder), dataset.classes)


def load_unlabeled_folder(request: SourceRequest) -> Listing:
    folder = folder_of(request, "image folder")
    paths = sorted(
        path for path in folder.rglob("*") if path.is_file() and has_file_allowed_extension(path.name, IMG_EXTENSIONS)
    )
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) found below {folder}")
    return Listing(file_items(((path, None) for path in paths), folder), None)


IMAGE_FOLDER = Source(
    name="imagefolder",
    summary="a class-per-subfolder tree, read with torchvision's ImageFolder (class index = sorted folder name)",
    layout="ROOT[/SPLIT]/<class>/<image>",
    splits=None,
    load=load_image_folder,
)
UNLABELED_FOLDER = Source(
    name="unlabeled-folder",
    summary="every image below a folder, recursively, without labels (no .cls written)",
    layout="ROOT[/SPLIT]/**/<image>",
    splits=None,
    load=load_unlabeled_folder,
)

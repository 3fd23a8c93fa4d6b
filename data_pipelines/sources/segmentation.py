"""Semantic-segmentation datasets in their official layouts: ADE20K (SceneParsing), Pascal VOC 2012, a generic
folder of image + mask pairs, and NIfTI volumes with label volumes. Each item is an image with its mask, written
into one shard sample (``key.jpg`` + ``key.seg.png``; volumes ``key.npz`` + ``key.seg.npz``).

Masks are stored in training label space: class indices ``0..K-1`` and :data:`IGNORE_INDEX` for pixels that count
nowhere. ADE20K's label 0 ("other objects") becomes the ignore index and labels ``1..150`` become ``0..149`` (the
benchmark's ``reduce_zero_label``); VOC's palette PNGs already hold ``0..20`` with 255 on object borders.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.arrays import encode_array
from data_pipelines.sources.base import (
    EncodedImage,
    Listing,
    Source,
    SourceRequest,
    encode_array_sample,
    encode_image_file,
    folder_of,
    make_key,
    read_class_names,
    require_files,
)
from data_pipelines.sources.science import NIFTI_SUFFIXES, read_nifti

IGNORE_INDEX = 255
ADE20K_CLASSES = 150
ADE20K_SPLITS = ("training", "validation")
VOC_CLASSES = (
    "background",
    *("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow"),
    *("diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_mask(path: Path) -> np.ndarray:
    """A label map: a single-channel PNG (mode L, or P whose palette indices are the labels)."""
    with Image.open(path) as mask:
        if mask.mode not in ("L", "P"):  # a colour-coded mask is a dataset convention to convert, not damage
            raise TypeError(f"{path}: a mask must be a single-channel (L or P) PNG of labels, got mode {mask.mode}")
        return np.asarray(mask)


def keep_labels(mask: np.ndarray) -> np.ndarray:
    return mask


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K: 0 ("other") -> ignore, k -> k - 1."""
    return np.where(mask == 0, IGNORE_INDEX, mask.astype(np.int64) - 1).astype(np.uint8)


@dataclass(frozen=True)
class SegmentationItem:
    """An image file and its mask file; the mask is mapped to training labels by ``labels`` (module-level, as
    items are pickled to writer processes) and must have the image's size."""

    key: str
    label: None
    path: str
    mask_path: str
    labels: Callable[[np.ndarray], np.ndarray]

    def size(self) -> tuple[int, int]:
        with Image.open(self.path) as image:
            return image.size

    def load_mask(self) -> np.ndarray:
        return self.labels(read_mask(Path(self.mask_path)))

    def encode(self, image_format: str) -> EncodedImage:
        encoded = encode_image_file(Path(self.path).read_bytes(), image_format)
        mask = self.load_mask()
        if (mask.shape[1], mask.shape[0]) != (encoded.width, encoded.height):
            raise ValueError(f"{self.mask_path}: mask {mask.shape[::-1]} and image {encoded.width}x{encoded.height}")
        buffer = io.BytesIO()
        Image.fromarray(mask, mode="L").save(buffer, format="PNG")
        return EncodedImage(encoded.extension, encoded.data, encoded.width, encoded.height, mask=buffer.getvalue())


def segmentation_items(
    pairs: list[tuple[Path, Path]], root: Path, labels: Callable[[np.ndarray], np.ndarray]
) -> list[SegmentationItem]:
    return [
        SegmentationItem(make_key(index, image, root), None, str(image), str(mask), labels)
        for index, (image, mask) in enumerate(pairs)
    ]


def ade20k_class_names(folder: Path) -> list[str]:
    """The 150 names of ``objectInfo150.txt`` (tab-separated, name last) when the release has it."""
    info = folder / "objectInfo150.txt"
    if not info.is_file():
        return [f"class_{index}" for index in range(ADE20K_CLASSES)]
    rows = [line.split("\t") for line in info.read_text().splitlines()[1:] if line.strip()]
    return [row[-1].split(";")[0].strip() for row in rows][:ADE20K_CLASSES]


def load_ade20k(request: SourceRequest) -> Listing:
    folder = request.root / "ADEChallengeData2016"
    images, masks = folder / "images" / request.split, folder / "annotations" / request.split
    require_files([images, masks], "ade20k")
    pairs = [(image, masks / f"{image.stem}.png") for image in sorted(images.glob("*.jpg"))]
    require_files([mask for _, mask in pairs], "ade20k")
    return Listing(segmentation_items(pairs, folder, reduce_zero_label), ade20k_class_names(folder), IGNORE_INDEX)


def load_voc2012(request: SourceRequest) -> Listing:
    from torchvision.datasets import VOCSegmentation

    folder = request.root / "VOCdevkit" / "VOC2012"
    split_file = folder / "ImageSets" / "Segmentation" / f"{request.split}.txt"
    require_files([folder / "JPEGImages", folder / "SegmentationClass", split_file], "voc2012")
    dataset = VOCSegmentation(str(request.root), year="2012", image_set=request.split, download=False)
    pairs = [(Path(image), Path(mask)) for image, mask in zip(dataset.images, dataset.masks, strict=True)]
    return Listing(segmentation_items(pairs, folder, keep_labels), list(VOC_CLASSES), IGNORE_INDEX)


def load_segmentation_folder(request: SourceRequest) -> Listing:
    """ROOT[/SPLIT]/images/<name>.<ext> with ROOT[/SPLIT]/masks/<name>.png; class names from ROOT/classes.txt
    (one per line, line k is label k), else ``class_k`` up to the largest label in the masks."""
    folder = folder_of(request, "segmentation folder")
    require_files([folder / "images", folder / "masks"], "segmentation folder")
    images = sorted(path for path in (folder / "images").iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(image, folder / "masks" / f"{image.stem}.png") for image in images]
    require_files([mask for _, mask in pairs], "segmentation folder")
    names_file = next((path for path in (folder / "classes.txt", request.root / "classes.txt") if path.is_file()), None)
    if names_file is not None:
        classes = read_class_names(names_file)
    else:  # the largest label in any split's masks, so that every split names the same classes
        masks = sorted({*request.root.glob("masks/*.png"), *request.root.glob("*/masks/*.png")})
        largest = max(int(np.max(np.where(mask == IGNORE_INDEX, 0, mask))) for mask in map(read_mask, masks))
        classes = [f"class_{index}" for index in range(largest + 1)]
    return Listing(segmentation_items(pairs, folder, keep_labels), classes, IGNORE_INDEX)


ADE20K = Source(
    name="ade20k",
    summary="ADE20K SceneParsing (ADEChallengeData2016), 150 classes; label 0 ('other') is ignored",
    layout="ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}",
    splits=ADE20K_SPLITS,
    load=load_ade20k,
)
VOC2012 = Source(
    name="voc2012",
    summary="Pascal VOC 2012 segmentation, 21 classes (border pixels 255 ignored), read with torchvision",
    layout="ROOT/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val}.txt}",
    splits=("train", "val"),
    load=load_voc2012,
)


@dataclass(frozen=True)
class VolumeSegmentationItem:
    """A NIfTI volume and its NIfTI label map (the same voxel grid), stored as ``key.npz`` + ``key.seg.npz``."""

    key: str
    label: None
    path: str
    mask_path: str

    def load(self) -> tuple[np.ndarray, dict[str, Any]]:
        return read_nifti(self.path)

    def load_mask(self) -> np.ndarray:
        labels = read_nifti(self.mask_path)[0][0]
        if labels.min() < 0 or labels.max() > IGNORE_INDEX or not np.array_equal(labels, np.round(labels)):
            raise TypeError(f"{self.mask_path}: a label volume holds integers 0-{IGNORE_INDEX}")
        return labels.astype(np.uint8)

    def size(self) -> tuple[int, int]:
        shape = self.load()[0].shape
        return shape[-1], shape[-2]

    def encode(self, image_format: str) -> EncodedImage:
        array, metadata = self.load()
        mask = self.load_mask()
        if mask.shape != array.shape[1:]:
            raise ValueError(f"{self.mask_path}: labels {mask.shape} and volume {array.shape[1:]} differ")
        encoded = encode_array_sample(array, metadata, image_format)
        return replace(encoded, mask=encode_array(mask, "npz"))


def load_nifti_segmentation(request: SourceRequest) -> Listing:
    """ROOT[/SPLIT]/{images,labels}/<name>.nii[.gz]: volumes and label volumes of the same names; class names
    from ROOT/classes.txt (line k names label k)."""
    folder = folder_of(request, "NIfTI segmentation folder")
    names_file = request.root / "classes.txt"
    require_files([folder / "images", folder / "labels", names_file], "NIfTI segmentation folder")
    images = sorted(path for path in (folder / "images").iterdir() if path.name.endswith(NIFTI_SUFFIXES))
    pairs = [(image, folder / "labels" / image.name) for image in images]
    require_files([label for _, label in pairs], "NIfTI segmentation folder")
    items = [
        VolumeSegmentationItem(make_key(index, image, folder), None, str(image), str(label))
        for index, (image, label) in enumerate(pairs)
    ]
    return Listing(items, read_class_names(names_file), IGNORE_INDEX)


SEGMENTATION_FOLDER = Source(
    name="segfolder",
    summary="image + mask pairs: images/<name>.jpg with masks/<name>.png (label per pixel, 255 ignored)",
    layout="ROOT[/SPLIT]/{images/<name>.<ext>,masks/<name>.png}[, classes.txt]",
    splits=None,
    load=load_segmentation_folder,
)
NIFTI_SEGMENTATION = Source(
    name="nifti_segfolder",
    summary="NIfTI volumes with NIfTI label maps of the same names (UNETR's data), class names in classes.txt",
    layout="ROOT[/SPLIT]/{images,labels}/<name>.nii[.gz], ROOT/classes.txt",
    splits=None,
    load=load_nifti_segmentation,
    array_format="npz",
)

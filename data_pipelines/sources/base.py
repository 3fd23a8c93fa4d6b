"""What every source hands the shard writer: a list of items (one per image) and the class names."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from data_pipelines.arrays import ARRAY_FORMATS, ChannelMoments, encode_array
from data_pipelines.bit_depth import is_high_bit_depth, to_eight_bit

# Formats stored as they are (their bytes are kept, unless 16-bit); anything else is re-encoded in the requested format.
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
ENCODINGS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {}), "webp": ("WEBP", {"quality": 95})}


@dataclass(frozen=True)
class EncodedImage:
    """Bytes of one image (or array) as they go into the tar, with the extension that names its format.

    Arrays also carry their shape facts and channel moments (for the manifest's statistics) and may carry
    per-sample metadata, written beside them as ``key.json`` (a volume's voxel spacing); segmentation samples
    carry their mask.
    """

    extension: str
    data: bytes
    width: int
    height: int
    channels: int = 3
    depth: int | None = None  # volumes: the first spatial axis
    moments: ChannelMoments | None = None
    metadata: dict[str, Any] | None = None
    mask: bytes | None = None  # segmentation: the label map, a single-channel PNG (key.seg.png) or npz (key.seg.npz)


class Item(Protocol):
    """One image of a source; `encode` runs in a worker process, so items must be cheap to pickle."""

    key: str
    label: int | None

    def encode(self, image_format: str) -> EncodedImage: ...

    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, without decoding the image."""
        ...


@dataclass(frozen=True)
class FileItem:
    """An image file on disk: its bytes are kept when it is already an 8-bit JPEG, PNG or WebP."""

    key: str
    label: int | None
    path: str

    def size(self) -> tuple[int, int]:
        with Image.open(self.path) as image:
            return image.size

    def encode(self, image_format: str) -> EncodedImage:
        return encode_image_file(Path(self.path).read_bytes(), image_format)


def encode_image_file(data: bytes, image_format: str) -> EncodedImage:
    """An image file's bytes as they are when its format is kept, else re-encoded in ``image_format``; 16-bit
    images are re-encoded too, scaled to 8 bits (:mod:`data_pipelines.bit_depth`), where a reader would clip them."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format in KEPT_FORMATS and not is_high_bit_depth(image):
            return EncodedImage(KEPT_FORMATS[image.format], data, *image.size)
        return encode_pil(image, image_format)


@dataclass(frozen=True)
class ArrayItem:
    """Decoded pixels (H, W, 3) uint8, as the CIFAR pickles hold them."""

    key: str
    label: int | None
    pixels: np.ndarray

    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def encode(self, image_format: str) -> EncodedImage:
        return encode_pil(Image.fromarray(self.pixels), image_format)


def is_array_item(item: Item) -> bool:
    """Items that are arrays (N channels, volumes) rather than RGB images: they are stored in array formats
    (any item with a ``load()`` of its array)."""
    return isinstance(item, (ArrayFileItem, InMemoryArrayItem)) or hasattr(item, "load")


@dataclass(frozen=True)
class ArrayFileItem:
    """A file read into a channels-first array (``[C, H, W]`` or ``[C, D, H, W]``) by ``read``, a module-level
    function (items are pickled to writer processes) returning the array and its per-sample metadata."""

    key: str
    label: int | None
    path: str
    read: Callable[[str], tuple[np.ndarray, dict[str, Any]]]

    def load(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self.read(self.path)

    def size(self) -> tuple[int, int]:
        shape = self.load()[0].shape
        return shape[-1], shape[-2]

    def encode(self, image_format: str) -> EncodedImage:
        return encode_array_sample(*self.load(), image_format)


@dataclass(frozen=True)
class InMemoryArrayItem:
    """A channels-first array already in memory (a MedMNIST ``.npz`` holds a whole split in one file)."""

    key: str
    label: int | None
    array: np.ndarray

    def load(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self.array, {}

    def size(self) -> tuple[int, int]:
        return self.array.shape[-1], self.array.shape[-2]

    def encode(self, image_format: str) -> EncodedImage:
        return encode_array_sample(self.array, {}, image_format)


def encode_array_sample(array: np.ndarray, metadata: dict[str, Any], array_format: str) -> EncodedImage:
    """A channels-first array in an array format, with what the manifest records of it."""
    if array_format not in ARRAY_FORMATS:
        raise TypeError(f"arrays are stored as {' or '.join(ARRAY_FORMATS)}, not {array_format!r}")
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a [C, H, W] or [C, D, H, W] array, got shape {array.shape}")
    return EncodedImage(
        array_format,
        encode_array(array, array_format),
        width=array.shape[-1],
        height=array.shape[-2],
        channels=array.shape[0],
        depth=array.shape[1] if array.ndim == 4 else None,
        moments=ChannelMoments.of(array),
        metadata=metadata or None,
    )


def encode_pil(image: Image.Image, image_format: str) -> EncodedImage:
    pil_format, options = ENCODINGS[image_format]
    buffer = io.BytesIO()
    to_eight_bit(image).convert("RGB").save(buffer, format=pil_format, **options)
    return EncodedImage(image_format, buffer.getvalue(), *image.size)


def make_key(index: int, path: Path | None = None, root: Path | None = None) -> str:
    """Unique, stable sample key: the item's index in the source's sorted listing, plus a readable path slug.

    Dots are replaced because webdataset splits a tar member name at the first dot of its basename.
    """
    if path is None:
        return f"{index:08d}"
    relative = path.relative_to(root) if root is not None else Path(path.name)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", str(relative.with_suffix("")))[-64:]
    return f"{index:08d}_{slug}"


@dataclass
class Listing:
    """The items of one split of a source, in a stable order, and its class names (None when unlabeled)."""

    items: list[Item]
    classes: list[str] | None
    ignore_index: int | None = None  # segmentation sources: the mask value that counts nowhere

    @property
    def arrays(self) -> bool:
        """Whether the items are arrays (then stored as npy/npz and decoded as tensors)."""
        return bool(self.items) and is_array_item(self.items[0])


@dataclass(frozen=True)
class SourceRequest:
    """What the user asked for on the command line."""

    root: Path
    split: str | None
    task: str | None = None


@dataclass(frozen=True)
class Source:
    """A registered source: how to list one split of it, and how to explain its layout in --help."""

    name: str
    summary: str
    layout: str
    splits: tuple[str, ...] | None  # None: any sub-folder name, or the root itself when no split is given
    load: Callable[[SourceRequest], Listing]
    needs_task: bool = False
    array_format: str | None = None  # sources of arrays: their default storage (npy | npz); None: images


def require_files(paths: Iterable[Path], source: str) -> None:
    """Raise one error that names every expected file or folder that is missing."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{source}: expected files are missing: {', '.join(missing)}")


def folder_of(request: SourceRequest, what: str) -> Path:
    """The folder to read: ROOT, or ROOT/SPLIT when a split is given; it must exist (``what`` names it)."""
    folder = request.root / request.split if request.split else request.root
    require_files([folder], what)
    return folder


def read_class_names(path: Path) -> list[str]:
    """A class list file: line k names label k; blank lines are skipped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def file_items(samples: Iterable[tuple[Path, int | None]], root: Path | None = None) -> list[Item]:
    """FileItems for (path, label) pairs, keyed by their position in this listing."""
    return [
        FileItem(make_key(index, Path(path), root), label, str(path)) for index, (path, label) in enumerate(samples)
    ]

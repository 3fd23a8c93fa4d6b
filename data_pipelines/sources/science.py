"""Science data in its usual layouts: multi-band GeoTIFF tiles, ``.npy`` arrays, NIfTI volumes, MedMNIST-3D.

Every item is read into a channels-first array with its dtype kept (``uint16`` bands, ``int16`` CT), stored in
shards as ``npy`` (2-D) or ``npz`` (compressed volumes); the writer records per-channel statistics.

- GeoTIFF (EuroSAT multispectral: ``EuroSAT_MS/<class>/<class>_<n>.tif``, 13 Sentinel-2 bands of 64 x 64) is read
  with tifffile, whose series axes say where the bands are (``YXS`` interleaved or ``SYX``/``CYX`` planar).
- NIfTI (``.nii``/``.nii.gz``) is read with nibabel, reoriented to RAS+ and stored ``[C, Z, Y, X]``; the voxel
  spacing (same axis order) goes into ``key.json``.
- MedMNIST-3D (``organmnist3d.npz`` etc.: ``{train,val,test}_images`` ``[N, 28, 28, 28]`` uint8 and
  ``{split}_labels`` ``[N, 1]``) is read with numpy; the split is the array name's prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.sources.base import (
    ArrayFileItem,
    InMemoryArrayItem,
    Listing,
    Source,
    SourceRequest,
    folder_of,
    make_key,
    require_files,
)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MEDMNIST_SPLITS = ("train", "val", "test")
# tifffile's axis letters for a band axis: samples (interleaved), channels, or a generic "other" axis.
BAND_AXES = "SCQI"

ArrayReader = Callable[[str], tuple[np.ndarray, dict[str, Any]]]


def read_geotiff(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A multi-band GeoTIFF as ``[bands, H, W]``, whatever its planar configuration."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        array, axes = series.asarray(), series.axes
    if array.ndim == 2:
        return array[None], {}
    band_axis = next((index for index, axis in enumerate(axes) if axis in BAND_AXES), None)
    if array.ndim != 3 or band_axis is None or "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: expected one 2-D image with bands (axes like YXS or SYX), got axes {axes!r}")
    return np.moveaxis(array, band_axis, 0), {}


def read_npy(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A channels-first ``.npy`` array (``[C, H, W]`` or ``[C, D, H, W]``; a 2-D ``[H, W]`` gets one channel)."""
    array = np.load(path, allow_pickle=False)
    return (array[None] if array.ndim == 2 else array), {}


def read_nifti(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A NIfTI volume as ``[C, Z, Y, X]`` in the closest canonical (RAS+) orientation: slices first, so the
    manifest's depth is the slice axis; its spacing (mm per voxel, same order) goes into ``key.json``. Values are
    the stored integers, or float32 when the header scales them (``scl_slope``: CT in HU)."""
    import nibabel

    image = nibabel.as_closest_canonical(nibabel.load(path))
    array = np.asanyarray(image.dataobj)
    if array.dtype == np.float64:  # nibabel's result of applying a header scale
        array = array.astype(np.float32)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"{path}: expected a 3-D volume (or 4-D with channels last), got shape {array.shape}")
    spacing = [float(value) for value in image.header.get_zooms()[:3]]
    return np.ascontiguousarray(array.transpose(3, 2, 1, 0)), {"spacing": spacing[::-1]}


def class_folder_files(folder: Path, suffixes: tuple[str, ...]) -> tuple[list[tuple[Path, int]], list[str]]:
    """(file, class index) for every file with one of ``suffixes`` in ``folder/<class>/``, and the sorted classes."""
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((folder / name).iterdir())
        if path.name.lower().endswith(suffixes)
    ]
    if not samples:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files in class folders below {folder}")
    return samples, classes


def array_folder_loader(suffixes: tuple[str, ...], read: ArrayReader) -> Callable[[SourceRequest], Listing]:
    """A Source.load for class folders of array files read by ``read``."""

    def load(request: SourceRequest) -> Listing:
        folder = folder_of(request, "class folders")
        samples, classes = class_folder_files(folder, suffixes)
        items = [
            ArrayFileItem(make_key(index, path, folder), label, str(path), read)
            for index, (path, label) in enumerate(samples)
        ]
        return Listing(items, classes)

    return load


def load_medmnist(request: SourceRequest) -> Listing:
    """One split of a MedMNIST ``.npz`` (ROOT is the file itself, or a folder holding exactly one)."""
    path = request.root
    if path.is_dir():
        candidates = sorted(path.glob("*.npz"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"expected one MedMNIST .npz in {path}, found {[c.name for c in candidates]}")
        path = candidates[0]
    require_files([path], "medmnist")
    with np.load(path, allow_pickle=False) as archive:
        names = (f"{request.split}_images", f"{request.split}_labels")
        missing = [name for name in names if name not in archive]
        if missing:
            raise FileNotFoundError(f"{path} lacks {', '.join(missing)} (it holds {', '.join(archive.files)})")
        images, labels = archive[names[0]], archive[names[1]].reshape(len(archive[names[0]]), -1)
        # every split names the same classes, however many of them this split happens to hold
        num_classes = 1 + max(int(archive[name].max()) for name in archive.files if name.endswith("_labels"))
    if labels.shape[1] != 1:
        raise ValueError(f"{path}: {labels.shape[1]} labels per image (multi-label); one class per image is supported")
    rgb = images.ndim == 4 and images.shape[-1] == 3  # 2-D colour sets ([N, H, W, 3]); volumes are [N, D, H, W]
    arrays = np.moveaxis(images, -1, 1) if rgb else images[:, None]
    items = [
        InMemoryArrayItem(make_key(index), int(label), np.ascontiguousarray(array))
        for index, (array, label) in enumerate(zip(arrays, labels[:, 0], strict=True))
    ]
    return Listing(items, [str(index) for index in range(num_classes)])


GEOTIFF_FOLDER = Source(
    name="geotiff_folder",
    summary="class folders of multi-band GeoTIFF tiles (EuroSAT_MS: 13 Sentinel-2 bands), read with tifffile",
    layout="ROOT[/SPLIT]/<class>/<tile>.tif",
    splits=None,
    load=array_folder_loader(GEOTIFF_SUFFIXES, read_geotiff),
    array_format="npy",
)
NPY_FOLDER = Source(
    name="npy_folder",
    summary="class folders of channels-first .npy arrays ([C, H, W] images or [C, D, H, W] volumes)",
    layout="ROOT[/SPLIT]/<class>/<array>.npy",
    splits=None,
    load=array_folder_loader((".npy",), read_npy),
    array_format="npy",
)
NIFTI_FOLDER = Source(
    name="nifti_folder",
    summary="class folders of NIfTI volumes, read with nibabel (voxel spacing kept in key.json)",
    layout="ROOT[/SPLIT]/<class>/<volume>.nii[.gz]",
    splits=None,
    load=array_folder_loader(NIFTI_SUFFIXES, read_nifti),
    array_format="npz",
)
MEDMNIST = Source(
    name="medmnist",
    summary="a MedMNIST .npz (2-D or 3-D: organmnist3d, nodulemnist3d, ...), one split per array-name prefix",
    layout="ROOT = <dataset>.npz (or its folder) with {split}_images and {split}_labels",
    splits=MEDMNIST_SPLITS,
    load=load_medmnist,
    array_format="npz",
)

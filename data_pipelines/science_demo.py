"""Small science datasets in their real file formats, drawn procedurally: for the README's commands and the tests.

    python -m data_pipelines.science_demo --out data/science

writes, below ``--out``:

- ``eurosat_ms/{train,test}/<class>/<class>_<n>.tif``: 13-band uint16 GeoTIFF tiles (EuroSAT_MS layout, with the
  GeoTIFF pixel-scale, tie-point and geo-key tags), one spectral signature per class plus a textured field;
- ``organmnist3d.npz``: the MedMNIST-3D layout (``{train,val,test}_images`` uint8 ``[N, D, D, D]``,
  ``{split}_labels`` ``[N, 1]``), one 3-D shape (ball, cube, rod) per class at a random place and size;
- ``nifti/{train,test}/<class>/<n>.nii.gz``: the same kind of volumes as int16 NIfTI-1 files with an
  anisotropic voxel spacing (1 x 1 x 2 mm) in their header.

Sample ``i`` of a split is drawn from its own seed, so the files are the same on every machine. The classes are
separable by design (a small model learns them in a few hundred steps), the jitter keeps them from being trivial.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipelines.seeding import stable_seed

# Spectral signatures (13 Sentinel-2 bands, reflectance x 10^4) of the demo's land-cover classes.
BAND_COUNT = 13
SIGNATURES = {
    "water": [900, 800, 600, 400, 300, 250, 200, 180, 150, 100, 20, 60, 40],
    "forest": [300, 450, 350, 250, 700, 1800, 2600, 2900, 3100, 900, 20, 1500, 700],
    "crop": [500, 700, 900, 800, 1200, 1900, 2200, 2400, 2500, 700, 20, 2200, 1400],
    "urban": [1400, 1500, 1600, 1700, 1800, 1900, 2000, 2050, 2100, 800, 30, 2600, 2300],
}
VOLUME_CLASSES = ("ball", "cube", "rod")
NIFTI_SPACING = (1.0, 1.0, 2.0)  # every second slice of a drawn volume is kept
# GeoTIFF tags (tifffile extratags: code, type, count, value, write once): 10 m pixels of a made-up UTM tile.
GEOTIFF_TAGS = [
    (33550, "d", 3, (10.0, 10.0, 0.0), True),  # ModelPixelScaleTag
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 5000000.0, 0.0), True),  # ModelTiepointTag
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),  # GeoKeyDirectoryTag
]


def draw_tile(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``[13, size, size]`` uint16 tile: the class's signature on a smooth random field, with sensor noise."""
    signature = np.asarray(list(SIGNATURES.values())[label], dtype=np.float64)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    phase, frequency = rng.uniform(0, 2 * np.pi, 2), rng.uniform(1, 4, 2)
    field = 1 + 0.25 * np.sin(2 * np.pi * frequency[0] * x + phase[0]) * np.cos(2 * np.pi * frequency[1] * y + phase[1])
    gain = rng.uniform(0.8, 1.2)
    tile = signature[:, None, None] * field[None] * gain + rng.normal(0, 40, (BAND_COUNT, size, size))
    return np.clip(tile, 0, 10000).astype(np.uint16)


def draw_volume(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``[size] * 3`` uint8 volume: the class's shape, bright on a dim noisy background."""
    coordinates = np.stack(np.meshgrid(*(np.arange(size) + 0.5,) * 3, indexing="ij"))
    radius = rng.uniform(0.18, 0.3) * size
    centre = rng.uniform(radius, size - radius, 3)
    offsets = np.abs(coordinates - centre[:, None, None, None])
    if VOLUME_CLASSES[label] == "ball":
        inside = (offsets**2).sum(axis=0) < radius**2
    elif VOLUME_CLASSES[label] == "cube":
        inside = offsets.max(axis=0) < radius * 0.8
    else:  # a rod along a random axis
        axis = rng.integers(3)
        across = np.delete(offsets, axis, axis=0)
        inside = ((across**2).sum(axis=0) < (radius * 0.4) ** 2) & (offsets[axis] < radius * 1.4)
    volume = np.where(inside, rng.uniform(170, 230), rng.uniform(20, 50)) + rng.normal(0, 12, inside.shape)
    return np.clip(volume, 0, 255).astype(np.uint8)


def write_eurosat_ms(out: Path, counts: dict[str, int], size: int) -> Path:
    import tifffile

    root = out / "eurosat_ms"
    for split, count in counts.items():
        for index in range(count):
            rng = np.random.default_rng(stable_seed("eurosat_ms", split, index))
            label = index % len(SIGNATURES)
            name = list(SIGNATURES)[label]
            path = root / split / name / f"{name}_{index}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Band-interleaved pixels (planar configuration 1), as EuroSAT_MS stores them: axes YXS.
            pixels = np.moveaxis(draw_tile(label, size, rng), 0, -1)
            tifffile.imwrite(path, pixels, photometric="minisblack", planarconfig="contig", extratags=GEOTIFF_TAGS)
    return root


def write_medmnist3d(out: Path, counts: dict[str, int], size: int) -> Path:
    arrays = {}
    for split, count in counts.items():
        volumes, labels = [], []
        for index in range(count):
            rng = np.random.default_rng(stable_seed("medmnist3d", split, index))
            label = index % len(VOLUME_CLASSES)
            volumes.append(draw_volume(label, size, rng))
            labels.append([label])
        arrays[f"{split}_images"] = np.stack(volumes)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)
    path = out / "organmnist3d.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_nifti(out: Path, counts: dict[str, int], size: int) -> Path:
    import nibabel

    root = out / "nifti"
    step = round(NIFTI_SPACING[2] / NIFTI_SPACING[0])
    for split, count in counts.items():
        for index in range(count):
            rng = np.random.default_rng(stable_seed("nifti", split, index))
            label = index % len(VOLUME_CLASSES)
            volume = draw_volume(label, size, rng)[:, :, ::step].astype(np.int16) * 4 - 500  # CT-like units
            path = root / split / VOLUME_CLASSES[label] / f"{index:04d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(volume, np.diag([*NIFTI_SPACING, 1.0])), path)
    return root


def write_science_demo(out: str | Path, train: int, test: int, tile_size: int, volume_size: int) -> dict[str, Path]:
    """All three datasets below ``out`` (MedMNIST also gets a validation split of ``test`` volumes)."""
    out = Path(out)
    return {
        "eurosat_ms": write_eurosat_ms(out, {"train": train, "test": test}, tile_size),
        "medmnist3d": write_medmnist3d(out, {"train": train, "val": test, "test": test}, volume_size),
        "nifti": write_nifti(out, {"train": train, "test": test}, volume_size),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.science_demo",
        description="Write small multispectral (GeoTIFF), MedMNIST-3D (.npz) and NIfTI datasets in their real "
        "formats, drawn procedurally, to try the science-data commands of the README.",
    )
    parser.add_argument("--out", required=True, help="folder to write the three datasets into")
    parser.add_argument("--train", type=int, default=384, help="training samples per dataset (default %(default)s)")
    parser.add_argument("--test", type=int, default=96, help="test samples per dataset (default %(default)s)")
    parser.add_argument("--tile-size", type=int, default=32, help="GeoTIFF tile side (default %(default)s)")
    parser.add_argument("--volume-size", type=int, default=16, help="volume side (default %(default)s)")
    args = parser.parse_args(argv)
    paths = write_science_demo(args.out, args.train, args.test, args.tile_size, args.volume_size)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

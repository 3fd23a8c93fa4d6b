"""Science data from tiny files in their real formats (multi-band GeoTIFF, NIfTI, MedMNIST .npz) to batches."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
import torch
from yaml_defaults import transform_options

from data_pipelines.elastic import build_elastic_loader
from data_pipelines.science_demo import GEOTIFF_TAGS
from data_pipelines.sources import get_source
from data_pipelines.sources.base import SourceRequest
from data_pipelines.sources.science import read_geotiff
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.transforms import build_transform
from data_pipelines.write_shards import write_shards

BANDS = 13


def write_tiles(root: Path, per_class: int, size: int = 8) -> dict[str, np.ndarray]:
    """EuroSAT_MS-style class folders of 13-band uint16 GeoTIFFs; returns each file's [13, H, W] pixels by name."""
    rng = np.random.default_rng(0)
    written = {}
    for label, name in enumerate(("Forest", "River")):
        for index in range(per_class):
            pixels = rng.integers(0, 4000, (BANDS, size, size)).astype(np.uint16) + 1000 * label
            path = root / name / f"{name}_{index}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            if index % 2:  # both planar configurations occur in the wild: band-interleaved and band-sequential
                tifffile.imwrite(
                    path, pixels, photometric="minisblack", planarconfig="separate", extratags=GEOTIFF_TAGS
                )
            else:
                interleaved = np.moveaxis(pixels, 0, -1)
                tifffile.imwrite(
                    path, interleaved, photometric="minisblack", planarconfig="contig", extratags=GEOTIFF_TAGS
                )
            written[path.name] = pixels
    return written


def write_volumes(root: Path, spacing: tuple[float, float, float], count: int = 4) -> list[np.ndarray]:
    volumes = []
    for index in range(count):
        volume = np.random.default_rng(index).integers(-1000, 1000, (6, 8, 4)).astype(np.int16)
        path = root / ("ball" if index % 2 else "cube") / f"case{index}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(volume, np.diag([*spacing, 1.0])), path)
        volumes.append(volume)
    return volumes


def stream(shards: Path, transform: str, batch_size: int, image_size: int, **options) -> StreamConfig:
    mean, std = options.pop("mean", (0.0,)), options.pop("std", (1.0,))
    return StreamConfig(
        shards=str(shards),
        batch_size=batch_size,
        num_workers=0,
        transform=transform,
        augment=transform_options(image_size, eval_crop_fraction=1.0, randaugment=None, **options),
        mean=mean,
        std=std,
        seed=0,
        shuffle_buffer=0,
        manifest=None,
        pin_memory=False,
    )


def test_geotiff_tiles_of_either_planar_layout_read_as_bands_first(tmp_path: Path):
    written = write_tiles(tmp_path, per_class=2)
    assert tifffile.TiffFile(next(tmp_path.rglob("*.tif"))).is_geotiff
    for path in tmp_path.rglob("*.tif"):
        array, metadata = read_geotiff(str(path))
        assert array.dtype == np.uint16 and metadata == {}
        np.testing.assert_array_equal(array, written[path.name])


def test_multispectral_shards_record_channel_statistics_and_stream_normalized_13_band_batches(tmp_path: Path):
    written = write_tiles(tmp_path / "tiles", per_class=3)
    manifest = write_shards("geotiff_folder", tmp_path / "tiles", tmp_path / "shards", workers=1)
    assert (manifest["format"], manifest["channels"], manifest["spatial_dims"], manifest["total"]) == ("npy", 13, 2, 6)
    everything = np.stack(list(written.values())).astype(np.float64)
    np.testing.assert_allclose(manifest["channel_stats"]["mean"], everything.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(manifest["channel_stats"]["std"], everything.std(axis=(0, 2, 3)), rtol=1e-9)
    mean, std = manifest["channel_stats"]["mean"], manifest["channel_stats"]["std"]
    config = stream(tmp_path / "shards", "eval", 6, 8)
    config.mean, config.std = tuple(mean), tuple(std)
    batch = next(iter(build_loader(config)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (6, 13, 8, 8)
    expected = (everything - np.reshape(mean, (1, 13, 1, 1))) / np.reshape(std, (1, 13, 1, 1))
    got = batch["image"].double().numpy()
    names = list(written)
    order = [names.index(key.split("_", 2)[2] + ".tif") for key in batch["key"]]  # key: index_class_file
    np.testing.assert_allclose(got, expected[order], rtol=1e-5, atol=1e-5)
    # the whole set, normalized with its own statistics, has zero mean and unit variance per band
    np.testing.assert_allclose(got.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(got.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_nifti_volumes_keep_their_spacing_and_stream_as_cubes(tmp_path: Path):
    volumes = write_volumes(tmp_path / "volumes", spacing=(0.8, 0.8, 3.0))
    manifest = write_shards("nifti_folder", tmp_path / "volumes", tmp_path / "shards", workers=1)
    assert (manifest["format"], manifest["spatial_dims"], manifest["channels"]) == ("npz", 3, 1)
    # files of X=6 x Y=8 x Z=4 voxels are stored slices first, [C, Z, Y, X], with the spacing in that order
    sizes = manifest["image_size"]
    assert (sizes["depth"]["max"], sizes["height"]["max"], sizes["width"]["max"]) == (4, 8, 6)
    with tarfile.open(next((tmp_path / "shards").glob("*.tar"))) as archive:
        spacings = [json.loads(archive.extractfile(m).read()) for m in archive if m.name.endswith(".json")]
    assert spacings and all(entry["spacing"] == pytest.approx([3.0, 0.8, 0.8]) for entry in spacings)
    listing = get_source("nifti_folder").load(SourceRequest(tmp_path / "volumes", None))
    first = next(item for item in listing.items if item.path.endswith("case0.nii.gz"))
    np.testing.assert_array_equal(first.load()[0][0], volumes[0].transpose(2, 1, 0))
    config = stream(tmp_path / "shards", "mae", 2, 8, crop_scale=(0.5, 1.0), intensity_scale=0.1)
    batch = next(iter(build_loader(config)))
    assert batch["image"].shape == (2, 1, 8, 8, 8) and batch["label"].tolist() in ([0, 1], [1, 0], [0, 0], [1, 1])


def test_medmnist_npz_splits_are_read_by_their_array_names(tmp_path: Path):
    path = tmp_path / "organmnist3d.npz"
    rng = np.random.default_rng(0)
    sizes = {"train": 5, "val": 2, "test": 3}
    arrays = {f"{split}_images": rng.integers(0, 255, (n, 4, 4, 4)).astype(np.uint8) for split, n in sizes.items()}
    labels = {f"{split}_labels": np.arange(n, dtype=np.uint8).reshape(n, 1) % 2 for split, n in sizes.items()}
    np.savez(path, **arrays, **labels)
    source = get_source("medmnist")
    listing = source.load(SourceRequest(path, "val"))
    assert [item.label for item in listing.items] == [0, 1] and listing.arrays
    np.testing.assert_array_equal(listing.items[1].load()[0], arrays["val_images"][1][None])
    only_first_class = {**arrays, **labels, "test_labels": np.zeros((3, 1), dtype=np.uint8)}
    np.savez(tmp_path / "skewed.npz", **only_first_class)
    assert source.load(SourceRequest(tmp_path / "skewed.npz", "test")).classes == ["0", "1"]  # from every split
    np.savez(tmp_path / "partial.npz", train_images=arrays["train_images"])
    with pytest.raises(FileNotFoundError, match="lacks test_images, test_labels"):
        source.load(SourceRequest(tmp_path / "partial.npz", "test"))


def test_an_array_source_refuses_an_image_format(tmp_path: Path):
    write_tiles(tmp_path / "tiles", per_class=1)
    with pytest.raises(ValueError, match="holds arrays: store them as npy or npz, not png"):
        write_shards("geotiff_folder", tmp_path / "tiles", tmp_path / "shards", image_format="png", workers=1)


def test_a_damaged_array_member_is_skipped_and_counted(tmp_path: Path):
    write_tiles(tmp_path / "tiles", per_class=2)
    write_shards("geotiff_folder", tmp_path / "tiles", tmp_path / "shards", workers=1)
    shard = next((tmp_path / "shards").glob("*.tar"))
    with tarfile.open(shard) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive]
    damaged = next(member.name for member, _ in members if member.name.endswith(".npy"))
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            data = data[: len(data) // 3] if member.name == damaged else data
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    batches = list(build_loader(stream(tmp_path / "shards", "eval", 4, 8, mean=(0.0,) * 13, std=(1.0,) * 13)))
    assert sum(len(batch["key"]) for batch in batches) == 3
    assert sum(int(batch["corrupt_skipped"]) for batch in batches) == 1


def test_array_transforms_crop_flip_and_scale_volumes_and_refuse_colour_augmentation():
    volume = torch.arange(2 * 6 * 8 * 10, dtype=torch.float32).reshape(2, 6, 8, 10)
    train = build_transform("mae", transform_options(4, intensity_scale=0.2, randaugment=None), (0.0,), arrays=True)
    outputs = [train(volume) for _ in range(8)]
    assert all(output.shape == (2, 4, 4, 4) for output in outputs)
    assert len({tuple(output.flatten().tolist()) for output in outputs}) == 8
    options = transform_options(6, eval_crop_fraction=1.0, bands=(1,), randaugment=None)
    whole = build_transform("eval", options, (0.0,), arrays=True)(volume)
    # the whole (anisotropic) volume becomes the cube, nothing cropped away
    expected = torch.nn.functional.interpolate(volume[None, 1:2], size=(6, 6, 6), mode="trilinear")[0]
    torch.testing.assert_close(whole, expected)
    with pytest.raises(ValueError, match="RandAugment is a colour augmentation"):
        build_transform("supervised", transform_options(4, randaugment="rand-m9-mstd0.5-inc1"), (0.0,), arrays=True)
    with pytest.raises(ValueError, match="needs crop_scale"):  # at build time, not as every sample "corrupt"
        build_transform("mae", transform_options(4, crop_scale=None, randaugment=None), (0.0,), arrays=True)


def test_npy_folders_of_volumes_write_with_the_default_array_format_and_read_in_the_elastic_order(tmp_path: Path):
    rng = np.random.default_rng(0)
    for index in range(8):
        path = tmp_path / "arrays" / f"class{index % 2}" / f"{index}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.normal(size=(2, 4, 6, 6)).astype(np.float32))
    manifest = write_shards("npy_folder", tmp_path / "arrays", tmp_path / "shards", workers=1, max_count=4)
    assert (manifest["format"], manifest["channels"], manifest["spatial_dims"]) == ("npy", 2, 3)
    config = stream(tmp_path / "shards", "eval", 2, 4, mean=(0.0, 0.0), std=(1.0, 1.0))
    config.rank, config.world_size = 0, 1
    batches = list(build_elastic_loader(config, accumulate=1, block_shards=2))
    assert len(batches) == 4 and all(batch["image"].shape == (2, 2, 4, 4, 4) for batch in batches)
    assert len({key for batch in batches for key in batch["key"]}) == 8

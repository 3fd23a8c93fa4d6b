"""Each converter on tiny files written in that dataset's official on-disk format."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from image_files import random_pixels, write_image
from PIL import Image

from data_pipelines.sources import SOURCES, vtab
from data_pipelines.sources.base import SourceRequest
from data_pipelines.write_shards import main, write_shards


def cifar_rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3072) rows as the pickles store them (all red, then green, then blue) and the same as HWC images."""
    images = np.stack([random_pixels(32, 32, seed + index) for index in range(count)])
    return images.transpose(0, 3, 1, 2).reshape(count, 3072), images


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=2))


def write_cifar10(root: Path, per_batch: int = 2) -> np.ndarray:
    """cifar-10-batches-py with 5 train batches and a test batch; returns the train images in file order."""
    folder = root / "cifar-10-batches-py"
    train = []
    for number, name in enumerate([f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]):
        rows, images = cifar_rows(per_batch, seed=100 * number)
        labels = [(number + index) % 10 for index in range(per_batch)]
        batch = {"batch_label": name, "labels": labels, "data": rows, "filenames": ["x.png"] * per_batch}
        write_pickle(folder / name, batch)
        train += [] if name == "test_batch" else list(images)
    names = [f"class{index}" for index in range(10)]
    write_pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch})
    return np.stack(train)


def write_cifar100(root: Path) -> np.ndarray:
    folder = root / "cifar-100-python"
    for name, count in (("train", 4), ("test", 2)):
        rows, images = cifar_rows(count, seed=7 if name == "train" else 70)
        fine = [index * 25 for index in range(count)]
        batch = {"data": rows, "fine_labels": fine, "coarse_labels": [0] * count, "filenames": ["x"] * count}
        write_pickle(folder / name, batch)
    names = [f"fine{index}" for index in range(100)]
    write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["c"]})
    return images


def test_cifar10_yields_train_batches_in_order_with_meta_names(tmp_path: Path) -> None:
    train_images = write_cifar10(tmp_path)
    listing = SOURCES["cifar10"].load(SourceRequest(tmp_path, "train"))
    assert np.array_equal(np.stack([item.pixels for item in listing.items]), train_images)
    assert [item.label for item in listing.items][:4] == [0, 1, 1, 2]
    assert listing.classes == [f"class{index}" for index in range(10)]


def test_cifar100_uses_fine_labels_and_names(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    listing = SOURCES["cifar100"].load(SourceRequest(tmp_path, "test"))
    assert [item.label for item in listing.items] == [0, 25]
    assert listing.classes[25] == "fine25"


def test_cifar_pixels_survive_png_shards(tmp_path: Path) -> None:
    train_images = write_cifar10(tmp_path / "data")
    write_shards("cifar10", tmp_path / "data", tmp_path / "out", split="train")
    samples = list(wds.WebDataset(str(tmp_path / "out" / "cifar10-train-000000.tar"), shardshuffle=False))
    decoded = {int(sample["__key__"]): np.asarray(Image.open(io.BytesIO(sample["png"]))) for sample in samples}
    assert np.array_equal(np.stack([decoded[index] for index in range(10)]), train_images)


def test_format_option_encodes_arrays_as_jpeg(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "data")
    write_shards("cifar100", tmp_path / "data", tmp_path / "out", split="train", image_format="jpg")
    samples = list(wds.WebDataset(str(tmp_path / "out" / "cifar100-train-000000.tar"), shardshuffle=False))
    assert all(Image.open(io.BytesIO(sample["jpg"])).format == "JPEG" for sample in samples)


def write_pets(root: Path) -> None:
    folder = root / "oxford-iiit-pet"
    lines = {"trainval": ["Abyssinian_1 1 1 1", "american_bulldog_2 2 2 1"], "test": ["Abyssinian_3 1 1 1"]}
    for split, entries in lines.items():
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
        for number, entry in enumerate(entries):
            write_image(folder / "images" / f"{entry.split()[0]}.jpg", random_pixels(30, 40, number))


def test_pets_reads_split_list_and_breed_names(tmp_path: Path) -> None:
    write_pets(tmp_path)
    listing = SOURCES["pets"].load(SourceRequest(tmp_path, "trainval"))
    assert [(Path(item.path).name, item.label) for item in listing.items] == [
        ("Abyssinian_1.jpg", 0),
        ("american_bulldog_2.jpg", 1),
    ]
    assert listing.classes == ["Abyssinian", "American Bulldog"]


def write_flowers102(root: Path) -> None:
    savemat = pytest.importorskip("scipy.io").savemat
    folder = root / "flowers-102"
    for image_id in range(1, 7):
        write_image(folder / "jpg" / f"image_{image_id:05d}.jpg", random_pixels(20, 30, image_id))
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 102, 102]])})
    split_ids = {"trnid": np.array([[1, 3]]), "valid": np.array([[5]]), "tstid": np.array([[2, 4, 6]])}
    savemat(folder / "setid.mat", split_ids)


def test_flowers102_reads_labels_and_split_ids_from_mat_files(tmp_path: Path) -> None:
    write_flowers102(tmp_path)
    listing = SOURCES["flowers102"].load(SourceRequest(tmp_path, "test"))
    assert [(Path(item.path).name, item.label) for item in listing.items] == [
        ("image_00002.jpg", 0),
        ("image_00004.jpg", 1),
        ("image_00006.jpg", 101),
    ]
    assert len(listing.classes) == 102


@pytest.mark.parametrize(
    ("source", "split", "expected"),
    [
        ("cifar10", "train", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "test", "cifar-100-python/test"),
        ("pets", "trainval", "oxford-iiit-pet/annotations/trainval.txt"),
        ("flowers102", "train", "flowers-102/setid.mat"),
        ("imagefolder", "train", "train"),
    ],
)
def test_missing_files_are_named_in_the_error(tmp_path: Path, source: str, split: str, expected: str) -> None:
    with pytest.raises(FileNotFoundError, match=expected):
        SOURCES[source].load(SourceRequest(tmp_path, split))


def test_cli_exits_with_the_missing_file_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "data_batch_1" in capsys.readouterr().err


def test_cli_help_documents_every_source(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text and source.layout in help_text for name, source in SOURCES.items())


def write_vtab_task(root: Path, folder_name: str) -> Path:
    folder = root / folder_name
    for number in range(3):
        write_image(folder / "images" / f"{number}.jpg", random_pixels(16, 16, number))
    (folder / "train800.txt").write_text("images/0.jpg 5\nimages/1.jpg 7\n")
    (folder / "test.txt").write_text("images/2.jpg 0\n")
    return folder


def test_vtab_read_split_resolves_paths_and_labels(tmp_path: Path) -> None:
    folder = write_vtab_task(tmp_path, "cifar100")
    expected = [(folder / "images/0.jpg", 5), (folder / "images/1.jpg", 7)]
    assert vtab.read_split(tmp_path, "cifar100", "train800") == expected


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("cifar", "cifar100"),
        ("oxford_flowers102", "flowers102"),
        ("oxford_iiit_pet", "pets"),
        ("diabetic_retinopathy", "retinopathy"),
        ("kitti", "kitti_dist"),
        ("Clevr-Count", "clevr_count"),
    ],
)
def test_vtab_aliases_resolve_to_our_task_names(alias: str, name: str) -> None:
    assert vtab.resolve_task(alias).name == name


def test_vtab_has_the_19_tasks_in_three_groups() -> None:
    groups = [task.group for task in vtab.TASKS.values()]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)


def test_vtab_finds_a_task_stored_under_its_alias_folder(tmp_path: Path) -> None:
    folder = write_vtab_task(tmp_path, "cifar")
    assert vtab.read_split(tmp_path, "cifar100", "test") == [(folder / "images/2.jpg", 0)]


def test_vtab_unknown_task_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="caltech101.*smallnorb_ele"):
        vtab.resolve_task("imagenet")


def test_vtab_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_vtab_task(tmp_path, "dtd")
    (folder / "val200.txt").write_text("images/0.jpg 1\nimages/1.jpg\n")
    with pytest.raises(ValueError, match=r"val200.txt:2"):
        vtab.read_split(tmp_path, "dtd", "val200")


def test_vtab_source_writes_task_split_with_its_class_count(tmp_path: Path) -> None:
    write_vtab_task(tmp_path / "vtab", "oxford_iiit_pet")
    manifest = write_shards("vtab", tmp_path / "vtab", tmp_path / "out", task="oxford_iiit_pet", split="train800")
    assert (manifest["total"], manifest["num_classes"]) == (2, 37)
    assert manifest["shards"][0]["file"] == "pets-train800-000000.tar"

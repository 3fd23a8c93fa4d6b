"""Tiny copies of downstream datasets in their real on-disk formats, with images whose colour encodes the label.

Every writer returns the data_root to pass to the finetune app.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(label: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """A noisy image whose mean colour depends on the label, so a classifier can learn it."""
    rng = np.random.default_rng([label, seed])
    base = np.array([(37 * label) % 256, (91 * label) % 256, (53 * label + 128) % 256], dtype=np.float32)
    return np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def save(path: Path, image: np.ndarray, image_format: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=image_format)


def _pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=2))


def _cifar_batch(labels: list[int], label_key: str, seed: int) -> dict:
    """Rows of 3072 bytes, channel-major, as CIFAR's pickles hold them."""
    images = np.stack([pixels(label, seed=seed + index) for index, label in enumerate(labels)])
    return {"data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072), label_key: labels}


def write_cifar10(root: Path, per_class: int = 2) -> Path:
    """cifar-10-batches-py: data_batch_1..5 (train), test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    for number in range(1, 6):
        labels = [label for label in range(10) for _ in range(per_class)][number - 1 :: 5]
        _pickle(folder / f"data_batch_{number}", _cifar_batch(labels, "labels", 100 * number))
    _pickle(folder / "test_batch", _cifar_batch(list(range(10)), "labels", 999))
    _pickle(folder / "batches.meta", {"label_names": [f"class{index}" for index in range(10)]})
    return root


def write_cifar100(root: Path, num_classes: int = 100) -> Path:
    """cifar-100-python: train, test, meta (fine labels)."""
    folder = root / "cifar-100-python"
    _pickle(folder / "train", _cifar_batch([index % num_classes for index in range(200)], "fine_labels", 0))
    _pickle(folder / "test", _cifar_batch(list(range(num_classes)), "fine_labels", 500))
    _pickle(folder / "meta", {"fine_label_names": [f"fine{index}" for index in range(100)]})
    return root


def write_pets(root: Path) -> Path:
    """oxford-iiit-pet/images/<Breed_n>.jpg and annotations/{trainval,test}.txt (`id class species breed`)."""
    folder = root / "oxford-iiit-pet"
    breeds = ("Abyssinian", "american_bulldog", "Bengal")
    for split, numbers in (("trainval", range(1, 5)), ("test", range(5, 7))):
        lines = []
        for label, breed in enumerate(breeds):
            for number in numbers:
                save(folder / "images" / f"{breed}_{number}.jpg", pixels(label, 40, number))
                lines.append(f"{breed}_{number} {label + 1} {1 + label % 2} {label + 1}")
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_flowers102(root: Path) -> Path:
    """flowers-102/jpg/image_%05d.jpg, imagelabels.mat (labels 1..102), setid.mat (trnid, valid, tstid)."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    labels = [1, 2, 102] * 4
    for image_id, label in enumerate(labels, start=1):
        save(folder / "jpg" / f"image_{image_id:05d}.jpg", pixels(label, 36, image_id))
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels])})
    split_ids = {"trnid": [[1, 2, 3]], "valid": [[4, 5, 6]], "tstid": [list(range(7, 13))]}
    savemat(folder / "setid.mat", {key: np.array(ids) for key, ids in split_ids.items()})
    return root


def write_vtab_task(root: Path, folder_name: str, num_classes: int) -> Path:
    """<root>/<folder_name>/images/*.png and the four list files (`relative/path label`)."""
    folder = root / folder_name
    splits = {"train800": range(0, 8), "val200": range(8, 10), "test": range(10, 14)}
    for split, numbers in splits.items():
        lines = []
        for number in numbers:
            label = number % num_classes
            save(folder / "images" / f"{split}_{number}.png", pixels(label, 24, number), "PNG")
            lines.append(f"images/{split}_{number}.png {label}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    merged = (folder / "train800.txt").read_text() + (folder / "val200.txt").read_text()
    (folder / "train800val200.txt").write_text(merged)
    return root


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    """<root>/{train,val,test}/<class>/*.jpg."""
    for split, count in (("train", 4), ("val", 1), ("test", 2)):
        for label, name in enumerate(classes):
            for number in range(count):
                save(root / split / name / f"{number}.jpg", pixels(label, 28, number))
    return root


def write_elpv(root: Path, per_class: tuple[int, ...] = (12, 8, 4, 8)) -> Path:
    """<root>/labels.csv (``images/cellNNNN.png  probability  type``) and <root>/images/*.png, 40 px grayscale."""
    lines, number = [], 0
    for label, count in enumerate(per_class):
        for _ in range(count):
            number += 1
            name = f"images/cell{number:04d}.png"
            save(root / name, pixels(label, 40, number)[..., 0], "PNG")
            lines.append(f"{name}  {label / 3:.16f}  {'mono' if number % 2 else 'poly'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root

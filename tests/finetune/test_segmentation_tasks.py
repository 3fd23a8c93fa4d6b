"""Segmentation from tiny files in the official layouts (ADE20K, Pascal VOC 2012, an image + mask folder), into
shards and through ``mode=segment`` to mIoU in results.json."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from yaml_defaults import transform_options

from data_pipelines.decode import StoredImage
from data_pipelines.segmentation_demo import draw_scene, write_segmentation_demo
from data_pipelines.sources import get_source
from data_pipelines.sources.base import SourceRequest
from data_pipelines.transforms import build_transform
from data_pipelines.write_shards import write_shards
from finetune import report
from finetune.run import finetune


def scene(index: int, size: tuple[int, int] = (40, 32)) -> tuple[np.ndarray, np.ndarray]:
    """An image of coloured regions and its label map (region k has label k), the segmentation demo's drawing."""
    return draw_scene(np.random.default_rng(index), *size)


def write_pair(image_path: Path, mask_path: Path, pixels: np.ndarray, mask: Image.Image) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(image_path, quality=95)
    mask.save(mask_path)


def write_ade20k(root: Path, counts: dict[str, int]) -> None:
    folder = root / "ADEChallengeData2016"
    for split, count in counts.items():
        for index in range(count):
            pixels, labels = scene(index + 100 * (split == "validation"))
            name = f"ADE_{split}_{index:08d}"
            release = labels + 1  # the release's labels: 0 is "other", classes start at 1
            release[:2, :2] = 0
            mask = Image.fromarray(release)
            write_pair(
                folder / "images" / split / f"{name}.jpg", folder / "annotations" / split / f"{name}.png", pixels, mask
            )


def write_voc(root: Path, counts: dict[str, int]) -> None:
    folder = root / "VOCdevkit" / "VOC2012"
    for split, count in counts.items():
        names = [f"2007_{split}{index:04d}" for index in range(count)]
        for index, name in enumerate(names):
            pixels, labels = scene(index)
            labels[0] = 255  # a border, ignored
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (252 * 3) + [224, 224, 192])
            write_pair(
                folder / "JPEGImages" / f"{name}.jpg", folder / "SegmentationClass" / f"{name}.png", pixels, mask
            )
        (folder / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_folder(root: Path, counts: dict[str, int]) -> None:
    write_segmentation_demo(root, counts, width=40, height=32)


def test_ade20k_masks_drop_the_zero_label_and_voc_keeps_its_ignored_borders(tmp_path: Path):
    write_ade20k(tmp_path, {"training": 2, "validation": 1})
    ade = get_source("ade20k").load(SourceRequest(tmp_path, "training"))
    assert len(ade.classes) == 150 and ade.ignore_index == 255
    expected = scene(0)[1]  # 1..3 in the file -> 0..2, and "other" (0) -> ignored
    expected[:2, :2] = 255
    np.testing.assert_array_equal(ade.items[0].load_mask(), expected)
    write_voc(tmp_path, {"train": 2, "val": 1})
    voc = get_source("voc2012").load(SourceRequest(tmp_path, "train"))
    assert voc.classes[:2] == ["background", "aeroplane"] and len(voc.classes) == 21
    mask = voc.items[0].load_mask()
    assert (mask[0] == 255).all() and set(np.unique(mask[1:])) <= {0, 1, 2}


def test_crops_and_flips_keep_image_and_mask_aligned(tmp_path: Path):
    write_folder(tmp_path / "data", {"train": 4})
    listing = get_source("segfolder").load(SourceRequest(tmp_path / "data", "train"))
    crop = build_transform("segment", transform_options(24, crop_scale=(0.3, 1.0), randaugment=None), (0.5,) * 3)
    agreement = []
    for item in listing.items:
        for _ in range(5):
            pixels, mask = crop(StoredImage.read(Path(item.path).read_bytes()), Image.fromarray(item.load_mask()))
            colour = pixels.float().argmax(dim=0)  # region k is drawn in colour k: the image says the label
            agreement.append((colour == mask).float().mean().item())
    assert min(agreement) > 0.85 and np.mean(agreement) > 0.95  # misses only on region edges


def test_folder_classes_come_from_every_split_without_a_class_list(tmp_path: Path):
    write_folder(tmp_path / "data", {"train": 2, "test": 1})
    (tmp_path / "data" / "classes.txt").unlink()
    Image.fromarray(np.zeros((32, 40), dtype=np.uint8)).save(tmp_path / "data" / "test" / "masks" / "0.png")
    source = get_source("segfolder")
    train, test = (source.load(SourceRequest(tmp_path / "data", split)) for split in ("train", "test"))
    assert train.classes == test.classes == ["class_0", "class_1", "class_2"]


def test_image_and_mask_go_into_one_shard_sample(tmp_path: Path):
    write_folder(tmp_path / "data", {"train": 3})
    manifest = write_shards("segfolder", tmp_path / "data", tmp_path / "shards", split="train", workers=1)
    assert manifest["segmentation"] == {"ignore_index": 255} and manifest["classes"] == ["red", "green", "blue"]
    with tarfile.open(next((tmp_path / "shards").glob("*.tar"))) as archive:
        names = archive.getnames()
    assert sum(name.endswith(".seg.png") for name in names) == 3 and sum(name.endswith(".jpg") for name in names) == 3


@pytest.fixture
def segment(finetune_config, pretrained: Path, tmp_path: Path):
    def run(task: str, data_root: Path, *overrides: str) -> dict:
        config = finetune_config(
            f"task={task}",
            "mode=segment",
            f"data_root={data_root}",
            f"ckpt={pretrained / 'backbone.safetensors'}",
            "num_workers=0",
            "mode.batch_size=8",
            *overrides,
        )
        return finetune(config, tmp_path)

    return run


def test_a_linear_head_on_frozen_tokens_segments_the_folder_task_and_reports_miou(segment, tmp_path: Path):
    write_folder(tmp_path / "data", {"train": 16, "test": 4})
    results = segment("segfolder", tmp_path / "data", "mode.epochs=15", "mode.optim.lr=0.01")
    metrics = results["metrics"]
    assert set(metrics) == {"miou", "pixel_accuracy"} and results["num_test"] == 4
    assert metrics["pixel_accuracy"] > 60 and metrics["miou"] > 34  # three regions told by their colour
    assert set(results["per_class_iou"]) == {"red", "green", "blue"}
    assert json.loads((tmp_path / "results.json").read_text())["mode"] == "segment"
    report.main([str(tmp_path / "results.json"), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report.md").read_text()
    assert "mIoU (%)" in table and f"{metrics['miou']:.1f}" in table
    assert "| red | green | blue |" in table  # the per-class IoU table


@pytest.mark.parametrize(
    ("task", "write", "splits", "head"),
    [
        ("ade20k", write_ade20k, {"training": 8, "validation": 2}, "setr_pup"),
        ("voc2012", write_voc, {"train": 8, "val": 2}, "setr_mla"),
    ],
)
def test_setr_heads_fine_tune_the_backbone_on_the_official_layouts(segment, tmp_path: Path, task, write, splits, head):
    write(tmp_path / "data", splits)
    overrides = [f"mode.head={head}", "mode.freeze_backbone=false", "trainer.max_steps=3", "mode.head_channels=16"]
    results = segment(task, tmp_path / "data", *overrides)
    assert results["num_test"] == 2 and 0 <= results["metrics"]["miou"] <= 100
    assert len(results["per_class_iou"]) == {"ade20k": 150, "voc2012": 21}[task]


def test_segmentation_shards_train_and_test_as_a_shards_task(segment, tmp_path: Path):
    write_folder(tmp_path / "data", {"train": 8, "test": 2})
    for split in ("train", "test"):
        write_shards("segfolder", tmp_path / "data", tmp_path / "shards" / split, split=split, workers=1)
    shards = [f"task.train=[{tmp_path / 'shards' / 'train'}]", f"task.test=[{tmp_path / 'shards' / 'test'}]"]
    results = segment("shards", tmp_path, *shards, "trainer.max_steps=3", "mode.batch_size=4")
    assert results["num_test"] == 2 and set(results["per_class_iou"]) == {"red", "green", "blue"}


def test_a_classification_task_is_refused_by_the_segment_mode_and_the_reverse(
    segment, finetune_config, pretrained: Path, tmp_path: Path
):
    with pytest.raises(ValueError, match="needs a segmentation task"):
        segment("demo", tmp_path)
    write_folder(tmp_path / "data", {"train": 4, "test": 2})
    config = finetune_config(
        "task=segfolder", f"data_root={tmp_path / 'data'}", f"ckpt={pretrained / 'backbone.safetensors'}"
    )
    with pytest.raises(ValueError, match="is a segmentation task: run it with mode=segment"):
        finetune(config, tmp_path)


def write_nifti_segmentation(root: Path, counts: dict[str, int], side: int = 20) -> None:
    """Volumes with a bright ball (label 1) on a dim background (label 0), as NIfTI image + label pairs."""
    import nibabel

    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"))
    for split, count in counts.items():
        for index in range(count):
            rng = np.random.default_rng(index + 100 * (split == "test"))
            centre = rng.uniform(6, side - 6, 3)
            labels = (((grid - centre[:, None, None, None]) ** 2).sum(axis=0) < 25).astype(np.uint8)
            volume = (labels.astype(np.int16) * 800 + rng.normal(0, 50, labels.shape)).astype(np.int16)
            for folder, data in (("images", volume), ("labels", labels)):
                path = root / split / folder / f"case{index}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    (root / "classes.txt").write_text("background\nball\n")


def test_unetr_segments_nifti_volumes_from_files_and_from_shards(segment, tmp_path: Path):
    write_nifti_segmentation(tmp_path / "data", {"train": 4, "test": 2})
    listing = get_source("nifti_segfolder").load(SourceRequest(tmp_path / "data", "train"))
    volume, mask = listing.items[0].load()[0], listing.items[0].load_mask()
    assert volume.shape == (1, 20, 20, 20) and mask.shape == (20, 20, 20) and set(np.unique(mask)) == {0, 1}
    manifest = write_shards("nifti_segfolder", tmp_path / "data", tmp_path / "shards", split="train", workers=1)
    assert (manifest["format"], manifest["segmentation"]) == ("npz", {"ignore_index": 255})
    with tarfile.open(next((tmp_path / "shards").glob("*.tar"))) as archive:
        assert sum(name.endswith(".seg.npz") for name in archive.getnames()) == 4
    model = ["model=vit_test", "model.preset=vit_test_patch16", "model.spatial_dims=3", "model.in_chans=1"]
    results = segment(
        "nifti_segfolder",
        tmp_path / "data",
        "ckpt=null",
        *model,
        "mode.head=unetr",
        "mode.freeze_backbone=false",
        "mode.unetr_features=4",
        "mode.batch_size=2",
        "trainer.max_steps=3",
    )
    assert results["num_test"] == 2 and set(results["per_class_iou"]) == {"background", "ball"}
    with pytest.raises(ValueError, match="segments images, and this backbone reads volumes"):
        segment("nifti_segfolder", tmp_path / "data", "ckpt=null", *model, "mode.head=linear", "mode.batch_size=2")

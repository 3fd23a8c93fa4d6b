"""Science data through both apps: pretrain on shards written from GeoTIFF tiles and MedMNIST-3D volumes, then
evaluate on the official files (all bands, a subset of bands, volumes), and an RGB checkpoint on 13 bands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from yaml_defaults import composed

from data_pipelines.manifest import read_manifest
from data_pipelines.science_demo import SIGNATURES, VOLUME_CLASSES, write_science_demo
from data_pipelines.write_shards import write_shards
from finetune.run import finetune
from pretrain.engine.backbone_io import load_backbone
from pretrain.run import pretrain

TRAIN, TEST = 48, 24


@pytest.fixture(scope="module")
def science_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The science demo in its real formats, and training shards of its tiles and volumes."""
    root = tmp_path_factory.mktemp("science")
    write_science_demo(root, train=TRAIN, test=TEST, tile_size=16, volume_size=8)
    write_shards("geotiff_folder", root / "eurosat_ms", root / "shards" / "tiles", split="train", workers=1)
    write_shards("medmnist", root / "organmnist3d.npz", root / "shards" / "volumes", split="train", workers=1)
    return root


def pretrain_on(shards: Path, run_dir: Path, *overrides: str) -> Path:
    """A short MAE pretraining of the test ViT on array shards (the app's code, in this process: the pretraining
    app's own tests run it as a command); returns its exported backbone."""
    settings = ["data=arrays", f"data.shards={shards}", "data.batch_size=16", "data.num_workers=0"]
    settings += ["trainer.max_steps=6", "trainer.progress_bar=false", "logger=none", f"run_dir={run_dir}"]
    pretrain(composed("pretrain", *settings, *overrides), run_dir)
    return run_dir / "backbone.safetensors"


@pytest.fixture(scope="module")
def channel_vit(science_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("channel-vit")
    return pretrain_on(science_root / "shards" / "tiles", run_dir, "model.in_chans=13", "model.channel_tokens=true")


def evaluate(finetune_config, science_root: Path, tmp_path: Path, *overrides: str) -> dict:
    config = finetune_config(f"data_root={science_root}", "num_workers=0", "probe.epochs=20", *overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return finetune(config, tmp_path)


def test_multispectral_pretraining_normalizes_with_the_shards_statistics_and_evaluates_on_any_bands(
    channel_vit: Path, science_root: Path, finetune_config, tmp_path: Path
):
    backbone, meta = load_backbone(channel_vit)
    stats = read_manifest(science_root / "shards" / "tiles")["manifests"]
    manifest = next(iter(stats.values()))
    np.testing.assert_allclose(meta.mean, manifest["channel_stats"]["mean"])
    assert meta.options["in_chans"] == 13 and meta.options["channel_tokens"]
    chance = 100 / len(SIGNATURES)
    every_band = evaluate(finetune_config, science_root, tmp_path / "all", "task=eurosat_ms", f"ckpt={channel_vit}")
    rgb = evaluate(
        finetune_config, science_root, tmp_path / "rgb", "task=eurosat_ms", f"ckpt={channel_vit}", "bands=[3,2,1]"
    )
    assert every_band["num_test"] == TEST and every_band["metrics"]["top1"] > chance
    assert rgb["metrics"]["top1"] > chance
    assert rgb["bands"] == [3, 2, 1] and every_band["bands"] is None


def test_volume_mae_pretrains_on_medmnist_shards_and_fine_tunes_on_the_official_npz(
    science_root: Path, finetune_config, tmp_path: Path
):
    backbone_file = pretrain_on(
        science_root / "shards" / "volumes",
        tmp_path / "pretrain",
        "model.spatial_dims=3",
        "model.in_chans=1",
        "model.img_size=8",
        "model.preset=vit_test_patch4",
    )
    backbone, meta = load_backbone(backbone_file)
    assert backbone.patch_embed.grid_size == (2, 2, 2) and meta.options["spatial_dims"] == 3
    chance = 100 / len(VOLUME_CLASSES)
    knn = evaluate(
        finetune_config, science_root, tmp_path / "knn", "task=organmnist3d", f"ckpt={backbone_file}", "mode=knn"
    )
    assert knn["num_test"] == TEST and knn["metrics"]["top1"] > chance
    tuned = evaluate(
        finetune_config,
        science_root,
        tmp_path / "finetune",
        "task=organmnist3d",
        f"ckpt={backbone_file}",
        "mode=finetune",
        "mode.randaugment=null",
        "mode.batch_size=16",
        "trainer.max_steps=4",
        "mode.lr_grid=null",
    )
    # four steps fine-tune the 3-D backbone end to end: the fit, its checkpoint and the test pass all ran
    assert tuned["mode"] == "finetune" and tuned["num_test"] == TEST and tuned["image_size"] == 8
    assert tuned["pretraining"]["objective"] == "mae" and "top1" in tuned["linear_probe"]["metrics"]


def test_an_rgb_checkpoint_reads_13_band_tiles_with_adapted_weights_and_the_data_statistics(
    pretrained: Path, science_root: Path, finetune_config, tmp_path: Path, caplog
):
    caplog.set_level("INFO")
    results = evaluate(
        finetune_config,
        science_root,
        tmp_path,
        "task=eurosat_ms",
        f"ckpt={pretrained / 'backbone.safetensors'}",
        "in_chans=13",
        "mode=knn",
    )
    assert "adapting the patch projection from 3 to 13 input channels" in caplog.text
    assert "normalizing with the training split's channel statistics" in caplog.text
    assert results["metrics"]["top1"] > 100 / len(SIGNATURES)
    assert json.loads((tmp_path / "results.json").read_text())["num_test"] == TEST

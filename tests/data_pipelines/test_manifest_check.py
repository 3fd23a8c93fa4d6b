"""A manifest is checked against the local shards it describes before a stream starts: wrong counts and shards
that are no tar archives are errors naming the shard, where they used to give phantom losses and short batches."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from image_files import DEMO_SHARD_SIZE, DEMO_TRAIN, small_stream_settings

from data_pipelines.elastic import build_elastic_loader
from data_pipelines.manifest import ManifestMismatchError, read_manifest, verify_manifest_counts
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.tar_members import count_samples

FIRST_SHARD = "demo-000000.tar"
LAST_SHARD = "demo-000009.tar"  # the short one: DEMO_TRAIN % DEMO_SHARD_SIZE samples


def copied_shards(demo_dir: Path, tmp_path: Path) -> Path:
    shards = tmp_path / "train"
    shutil.copytree(demo_dir / "train", shards)
    return shards


def scale_counts(manifest: Path, factor: int) -> None:
    content = json.loads(manifest.read_text())
    for shard in content["shards"]:
        shard["count"] *= factor
    content["total"] *= factor
    manifest.write_text(json.dumps(content))


def config(shards: str, **overrides) -> StreamConfig:
    settings = small_stream_settings(shards, batch_size=5)
    return StreamConfig(**{**settings, "resampled": True, "batches_per_epoch": 4, **overrides})


def build(order: str, shards: Path) -> object:
    if order == "elastic":
        return build_elastic_loader(config(str(shards), resampled=False), accumulate=1, block_shards=4)
    return build_loader(config(str(shards)))


@pytest.mark.parametrize("order", ["resampled", "elastic"])
def test_doubled_counts_are_refused_naming_the_shard_and_both_counts(demo_dir: Path, tmp_path: Path, order: str):
    shards = copied_shards(demo_dir, tmp_path)
    scale_counts(shards / "manifest.json", 2)
    with pytest.raises(
        ManifestMismatchError,
        match=rf"{FIRST_SHARD} holds {DEMO_SHARD_SIZE} samples, .*json lists {2 * DEMO_SHARD_SIZE}.*--overwrite",
    ):
        build(order, shards)


@pytest.mark.parametrize("order", ["resampled", "elastic"])
def test_a_shard_of_random_bytes_is_named_as_no_tar_archive(demo_dir: Path, tmp_path: Path, order: str):
    shards = copied_shards(demo_dir, tmp_path)
    (shards / FIRST_SHARD).write_bytes(os.urandom(4096))
    with pytest.raises(ManifestMismatchError, match=rf"{FIRST_SHARD} is not a readable tar archive"):
        build(order, shards)


def test_matching_counts_pass(demo_dir: Path) -> None:
    found = read_manifest(demo_dir / "train")
    assert [count_samples(url)[0] for url in found["counts"]] == list(found["counts"].values())
    verify_manifest_counts(found)  # raises on any shard that disagrees


def test_a_shard_replaced_after_a_check_is_checked_again(demo_dir: Path, tmp_path: Path) -> None:
    shards = copied_shards(demo_dir, tmp_path)
    verify_manifest_counts(read_manifest(shards))
    shutil.copy(shards / LAST_SHARD, shards / FIRST_SHARD)
    with pytest.raises(ManifestMismatchError, match=f"{FIRST_SHARD} holds {DEMO_TRAIN % DEMO_SHARD_SIZE} samples"):
        verify_manifest_counts(read_manifest(shards))


def test_a_shard_damaged_midway_is_warned_about_and_streamed(demo_dir: Path, tmp_path: Path, caplog) -> None:
    shards = copied_shards(demo_dir, tmp_path)
    data = (shards / FIRST_SHARD).read_bytes()
    (shards / FIRST_SHARD).write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    with caplog.at_level(logging.WARNING, logger="data_pipelines.manifest"):
        verify_manifest_counts(read_manifest(shards))
    assert f"{FIRST_SHARD} is damaged after" in caplog.text and f"of the {DEMO_SHARD_SIZE} samples" in caplog.text


def test_remote_shards_are_not_checked(demo_dir: Path, tmp_path: Path) -> None:
    shards = copied_shards(demo_dir, tmp_path)
    scale_counts(shards / "manifest.json", 2)
    pipe = config(f"pipe:cat {shards}/demo-{{000000..000009}}.tar", manifest=str(shards / "manifest.json"))
    assert len(build_loader(pipe)) == pipe.batches_per_epoch


def test_a_pipe_stream_without_a_manifest_names_the_config_key(demo_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"set data\.manifest=PATH \(pretraining; fine-tuning reads"):
        read_manifest(f"pipe:cat {demo_dir}/train/{FIRST_SHARD}")


def test_a_missing_manifest_names_the_config_key(demo_dir: Path, tmp_path: Path) -> None:
    shards = copied_shards(demo_dir, tmp_path)
    (shards / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no manifest.json at .*set data\.manifest=PATH"):
        read_manifest(shards)

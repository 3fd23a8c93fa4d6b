"""The shard writer: round trip, manifest, shard limits, resume/refuse/overwrite, bad files, parallel determinism."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import webdataset as wds

from data_pipelines import writer
from data_pipelines.resize import ResizePolicy
from data_pipelines.sources.base import EncodedImage
from data_pipelines.write_shards import write_shards
from pretrain.engine.signals import handle_signals


def read_raw_samples(out: Path) -> dict[str, dict]:
    dataset = wds.WebDataset(sorted(str(path) for path in out.glob("*.tar")), shardshuffle=False)
    return {sample["__key__"]: sample for sample in dataset}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.tar"))}


def test_round_trip_keeps_original_bytes_labels_and_count(class_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_count=3)
    samples = read_raw_samples(tmp_path / "out")
    files = sorted((class_folder / "train").rglob("*.*"))
    assert len(samples) == len(files) == 8
    by_bytes = {sample.get("jpg", sample.get("png")): int(sample["cls"]) for sample in samples.values()}
    assert by_bytes == {path.read_bytes(): ["cat", "dog"].index(path.parent.name) for path in files}


def test_keys_are_unique_and_free_of_dots(class_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "out", split="train")
    keys = list(read_raw_samples(tmp_path / "out"))
    assert len(set(keys)) == len(keys) and not any("." in key for key in keys)


def test_manifest_lists_shard_counts_classes_and_image_sizes(class_folder: Path, tmp_path: Path) -> None:
    manifest = write_shards("imagefolder", class_folder, tmp_path / "out", split="train", name="pets", max_count=3)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert [shard["count"] for shard in manifest["shards"]] == [3, 3, 2]
    assert [shard["file"] for shard in manifest["shards"]] == [f"pets-00000{index}.tar" for index in range(3)]
    assert (manifest["total"], manifest["classes"], manifest["source"]) == (8, ["cat", "dog"], "imagefolder")
    assert manifest["image_size"]["height"] == {"min": 20, "max": 23, "mean": 21.5}


def test_shards_split_at_max_size(class_folder: Path, tmp_path: Path) -> None:
    manifest = write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_size=1)
    assert [shard["count"] for shard in manifest["shards"]] == [1] * 8


def test_refuses_to_write_beside_other_shards(class_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_count=3)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_count=4)


def test_overwrite_replaces_every_old_shard(class_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_count=1)
    write_shards("imagefolder", class_folder, tmp_path / "out", split="train", max_count=4, overwrite=True)
    assert sorted(shard_bytes(tmp_path / "out")) == ["imagefolder-train-000000.tar", "imagefolder-train-000001.tar"]


def test_rerunning_a_finished_conversion_writes_nothing(class_folder: Path, tmp_path: Path) -> None:
    first = write_shards("imagefolder", class_folder, tmp_path / "out", split="train")
    times = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").iterdir()}
    assert write_shards("imagefolder", class_folder, tmp_path / "out", split="train") == first
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "out").iterdir()} == times


def test_interrupted_conversion_resumes_to_identical_shards(
    class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "whole", split="train", max_count=3)
    encode = writer.encode_item
    calls = []

    def encode_then_die(item, image_format, resize):
        calls.append(item)
        if len(calls) == 5:  # mid-way through the second shard
            raise KeyboardInterrupt
        return encode(item, image_format, resize)

    monkeypatch.setattr(writer, "encode_item", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_shards("imagefolder", class_folder, tmp_path / "resumed", split="train", max_count=3)
    monkeypatch.setattr(writer, "encode_item", encode)
    write_shards("imagefolder", class_folder, tmp_path / "resumed", split="train", max_count=3)
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "whole")


def test_unreadable_image_is_skipped_and_recorded(class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    manifest = write_shards("imagefolder", class_folder, tmp_path / "out", split="train")
    assert manifest["total"] == 8
    assert manifest["skipped"]["count"] == 1 and "broken" in manifest["skipped"]["examples"][0]["key"]


def test_parallel_conversion_writes_the_same_shards(class_folder: Path, tmp_path: Path) -> None:
    write_shards("imagefolder", class_folder, tmp_path / "one", split="train", max_count=3, workers=1)
    write_shards("imagefolder", class_folder, tmp_path / "two", split="train", max_count=3, workers=2)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_unlabeled_folder_writes_no_cls(class_folder: Path, tmp_path: Path) -> None:
    manifest = write_shards("unlabeled-folder", class_folder, tmp_path / "out")
    samples = read_raw_samples(tmp_path / "out")
    assert len(samples) == 8 and not any("cls" in sample for sample in samples.values())
    assert manifest["classes"] is None


@dataclass(frozen=True)
class SignalProbe:
    """An item whose encoding reports how the encoding process answers SIGTERM."""

    key: str
    label: int | None = None

    def encode(self, image_format: str) -> EncodedImage:
        ends = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        return EncodedImage("png", b"", 1, 1, metadata={"sigterm_ends_it": ends})


def test_encoding_processes_forked_inside_a_run_that_handles_signals_end_on_sigterm() -> None:
    # A downstream task writes its shards on first use, inside the run's signal handling: the encoding processes
    # inherited handlers that ignore SIGTERM, and Pool.terminate (which stops them with it) could wait forever.
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with handle_signals({"slurm_auto_requeue": False}):
            probes = [SignalProbe(str(index)) for index in range(4)]
            with writer.encoded_stream(probes, "png", ResizePolicy(None, None), workers=2) as results:
                reports = [result.image.metadata["sigterm_ends_it"] for result in results]
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert reports == [True] * 4

"""The streaming reader: round trip, order, splits across ranks and workers, resume, resampling, bad data."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from image_files import DEMO_SHARD_SIZE, DEMO_TRAIN, image_bytes, random_pixels
from PIL import Image
from yaml_defaults import transform_options

from data_pipelines.manifest import read_manifest
from data_pipelines.shards import expand_shards
from data_pipelines.stream import ShardLoader, StreamConfig, build_loader
from data_pipelines.transforms import Normalize
from data_pipelines.write_shards import write_shards

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def loader(shards: str | Path, eval_crop_fraction: float = 0.875, **overrides) -> ShardLoader:
    settings = {
        "batch_size": 8,
        "num_workers": 2,
        "transform": "mae",
        "augment": transform_options(16, eval_crop_fraction=eval_crop_fraction),
        "shuffle_buffer": 50,
        "mean": MEAN,
        "std": STD,
        "seed": 0,
        "manifest": None,
        "pin_memory": False,
    }
    return build_loader(StreamConfig(shards=str(shards), **{**settings, **overrides}))


def collect(batches) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    return [(batch["key"], batch["image"], batch["label"]) for batch in batches]


def assert_same_batches(got: list, expected: list) -> None:
    assert [keys for keys, _, _ in got] == [keys for keys, _, _ in expected]
    assert all(torch.equal(a, b) and torch.equal(c, d) for (_, a, c), (_, b, d) in zip(got, expected, strict=True))


def stored_samples(shard_dir: Path) -> dict[str, tuple[np.ndarray, int]]:
    dataset = wds.WebDataset(sorted(str(path) for path in shard_dir.glob("*.tar")), shardshuffle=False)
    return {s["__key__"]: (np.asarray(Image.open(io.BytesIO(s["png"]))), int(s["cls"])) for s in dataset}


def test_eval_stream_returns_the_stored_pixels_and_labels(demo_dir: Path) -> None:
    batches = list(loader(demo_dir / "train", transform="eval", eval_crop_fraction=1.0, num_workers=0))
    stored = stored_samples(demo_dir / "train")
    keys = [key for batch in batches for key in batch["key"]]
    images = torch.cat([batch["image"] for batch in batches]) * torch.tensor(STD).view(1, 3, 1, 1)
    pixels = ((images + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert sorted(keys) == sorted(stored) and len(keys) == DEMO_TRAIN
    assert all(np.array_equal(pixels[index], stored[key][0]) for index, key in enumerate(keys))
    assert torch.cat([batch["label"] for batch in batches]).tolist() == [stored[key][1] for key in keys]


def test_same_config_yields_identical_batches(demo_dir: Path) -> None:
    assert_same_batches(collect(loader(demo_dir / "train")), collect(loader(demo_dir / "train")))


def test_each_epoch_has_its_own_order(demo_dir: Path) -> None:
    first, second = ([key for batch in loader(demo_dir / "train", epoch=e) for key in batch["key"]] for e in (0, 1))
    assert first != second and sorted(first) == sorted(second)


@pytest.mark.filterwarnings("ignore:ranks get")
def test_two_ranks_with_two_workers_read_every_sample_exactly_once(demo_dir: Path) -> None:
    ranks = [loader(demo_dir / "train", rank=rank, world_size=2) for rank in (0, 1)]
    keys = [key for rank_loader in ranks for batch in rank_loader for key in batch["key"]]
    assert len(keys) == DEMO_TRAIN and set(keys) == set(stored_samples(demo_dir / "train"))


def test_unequal_epochs_across_ranks_are_warned_about(demo_dir: Path) -> None:
    expected = "12 to 13 batches per epoch.*set batches_per_epoch=12 or resampled=True"
    with pytest.warns(UserWarning, match=expected) as seen:
        rank_loader = loader(demo_dir / "train", rank=0, world_size=2)
    assert sum("ranks get" in str(warning.message) for warning in seen) == 1  # one warning, not one per worker or shard
    assert len(rank_loader) in (12, 13)  # this rank's share is one of the two counts the warning names


@pytest.mark.filterwarnings("ignore:ranks get")
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_skip_batches_yields_exactly_the_tail_of_the_uninterrupted_order(demo_dir: Path, num_workers: int) -> None:
    # Rank 0 of 2 gets 5 shards; with 2 workers one worker runs dry before the other, which the skips cross.
    settings = {"rank": 0, "world_size": 2, "num_workers": num_workers}
    uninterrupted = collect(loader(demo_dir / "train", **settings))
    for skip in (1, 4, len(uninterrupted) - 2):
        assert_same_batches(collect(loader(demo_dir / "train", skip_batches=skip, **settings)), uninterrupted[skip:])


def test_set_epoch_starts_the_next_epoch_from_its_beginning(demo_dir: Path) -> None:
    resumed = loader(demo_dir / "train", skip_batches=3)
    list(resumed)
    resumed.set_epoch(1)
    assert_same_batches(collect(resumed), collect(loader(demo_dir / "train", epoch=1)))


@pytest.mark.filterwarnings("ignore:ranks get")
def test_len_is_the_number_of_batches_a_rank_yields(demo_dir: Path) -> None:
    rank_loader = loader(demo_dir / "train", rank=1, world_size=2, skip_batches=2)
    assert len(rank_loader) == len(list(rank_loader))


def test_resampled_ranks_yield_exactly_batches_per_epoch(demo_dir: Path) -> None:
    counts = [
        len(list(loader(demo_dir / "train", resampled=True, batches_per_epoch=7, rank=rank, world_size=2)))
        for rank in (0, 1)
    ]
    assert counts == [7, 7]


def test_resampled_skip_yields_the_tail_of_the_uninterrupted_order(demo_dir: Path) -> None:
    settings = {"resampled": True, "batches_per_epoch": 6}
    uninterrupted = collect(loader(demo_dir / "train", **settings))
    assert_same_batches(collect(loader(demo_dir / "train", skip_batches=3, **settings)), uninterrupted[3:])


def test_epoch_cap_longer_than_the_shortest_rank_is_rejected(demo_dir: Path) -> None:
    with pytest.raises(ValueError, match="shortest rank"):
        loader(demo_dir / "train", batches_per_epoch=100, rank=0, world_size=2)


def test_unnormalized_batches_are_uint8_that_normalize_turns_into_the_float_batches(demo_dir: Path) -> None:
    floats, uint8s = (list(loader(demo_dir / "train", num_workers=0, normalize=flag)) for flag in (True, False))
    assert uint8s[0]["image"].dtype == torch.uint8
    normalize = Normalize(MEAN, STD)
    assert all(torch.allclose(normalize(u["image"]), f["image"]) for u, f in zip(uint8s, floats, strict=True))


def test_loading_in_the_training_process_leaves_its_random_state_alone(demo_dir: Path) -> None:
    state = torch.get_rng_state()
    list(loader(demo_dir / "train", num_workers=0))
    assert torch.equal(torch.get_rng_state(), state)


def write_tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def good_sample(index: int) -> dict:
    return {"__key__": f"good{index:03d}", "png": image_bytes(random_pixels(16, 16, index), "PNG"), "cls": b"1"}


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    truncated_jpeg = image_bytes(random_pixels(64, 64, 0))[:300]
    bad = [
        {"__key__": "garbage", "png": b"not a png", "cls": b"0"},
        {"__key__": "cut", "jpg": truncated_jpeg, "cls": b"0"},
    ]
    shard = write_tar(tmp_path / "mixed-000000.tar", [good_sample(0), *bad, *map(good_sample, range(1, 9))])
    batches = list(loader(shard, num_workers=0, transform="eval", batch_size=4))
    assert sorted(key for batch in batches for key in batch["key"]) == [f"good{index:03d}" for index in range(9)]
    assert sum(int(batch["corrupt_skipped"]) for batch in batches) == 2


def test_skips_of_an_all_corrupt_batch_are_reported_with_the_next_batch(tmp_path: Path) -> None:
    bad = [{"__key__": f"bad{index}", "png": b"broken", "cls": b"0"} for index in range(4)]
    shard = write_tar(tmp_path / "bad-000000.tar", [*bad, *map(good_sample, range(4))])
    batches = list(loader(shard, num_workers=0, transform="eval", batch_size=4, shuffle_buffer=0))
    assert [int(batch["corrupt_skipped"]) for batch in batches] == [4]


def test_truncated_shard_is_skipped_and_counted_without_failing(tmp_path: Path) -> None:
    write_tar(tmp_path / "part-000000.tar", [good_sample(index) for index in range(6)])
    data = (tmp_path / "part-000000.tar").read_bytes()
    (tmp_path / "part-000000.tar").write_bytes(data[: len(data) // 2 + 100])
    write_tar(tmp_path / "part-000001.tar", [good_sample(index) for index in range(10, 16)])
    batches = list(loader(tmp_path / "part-{000000..000001}.tar", num_workers=0, transform="eval", batch_size=4))
    keys = {key for batch in batches for key in batch["key"]}
    assert {f"good{index:03d}" for index in range(10, 16)} <= keys and len(keys) < 12
    assert sum(int(batch["corrupt_skipped"]) for batch in batches) >= 1


@pytest.mark.parametrize("scheme", ["", "pipe:cat "])
def test_a_shard_of_random_bytes_is_skipped_with_a_warning_naming_it(tmp_path: Path, scheme: str, caplog) -> None:
    (tmp_path / "part-000000.tar").write_bytes(os.urandom(4096))
    write_tar(tmp_path / "part-000001.tar", [good_sample(index) for index in range(4)])
    shards = f"{scheme}{tmp_path}/part-{{000000..000001}}.tar"
    with caplog.at_level(logging.WARNING, logger="data_pipelines.stream"):
        batches = list(loader(shards, num_workers=0, transform="eval", batch_size=4))
    assert sum(len(batch["key"]) for batch in batches) == 4
    assert f"unreadable tar data in {scheme}{tmp_path}/part-000000.tar" in caplog.text


def damaged_copy(demo_dir: Path, tmp_path: Path) -> Path:
    """The demo training shards with their manifest, the first shard cut in half."""
    shards = tmp_path / "train"
    shutil.copytree(demo_dir / "train", shards)
    victim = sorted(shards.glob("*.tar"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 + 100])
    return shards


def test_samples_a_damaged_shard_lost_are_counted_one_by_one(demo_dir: Path, tmp_path: Path) -> None:
    shards = damaged_copy(demo_dir, tmp_path)
    batches = list(loader(shards, transform="eval", num_workers=2))
    read = sum(len(batch["key"]) for batch in batches)
    lost = DEMO_TRAIN - read
    assert lost > 1  # half a shard: one tar error, many samples
    assert sum(int(batch["corrupt_skipped"]) for batch in batches) == lost


def test_a_resumed_stream_counts_each_skip_once(demo_dir: Path, tmp_path: Path) -> None:
    shards = damaged_copy(demo_dir, tmp_path)
    settings = dict(transform="eval", num_workers=2, resampled=True, batches_per_epoch=30)
    straight = [int(batch["corrupt_skipped"]) for batch in loader(shards, **settings)]
    assert sum(straight) > 0
    for skip in (1, 7, 12):
        resumed = [int(batch["corrupt_skipped"]) for batch in loader(shards, skip_batches=skip, **settings)]
        assert resumed == straight[skip:], skip  # the skipped batches took their counts with them


def test_skips_after_a_workers_last_batch_are_counted_with_that_batch(tmp_path: Path) -> None:
    bad = [{"__key__": f"bad{index}", "png": b"broken", "cls": b"0"} for index in range(4)]
    shard = write_tar(tmp_path / "bad-000000.tar", [*map(good_sample, range(4)), *bad])
    batches = list(loader(shard, num_workers=0, transform="eval", batch_size=4, shuffle_buffer=0))
    assert [int(batch["corrupt_skipped"]) for batch in batches] == [4]


def test_unlabeled_samples_have_label_minus_one(class_folder: Path, tmp_path: Path) -> None:
    write_shards("unlabeled-folder", class_folder, tmp_path / "out")
    labels = torch.cat([batch["label"] for batch in loader(tmp_path / "out", num_workers=0, transform="eval")])
    assert labels.tolist() == [-1] * 8


def test_missing_shard_is_named(demo_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo-000010.tar"):
        loader(f"{demo_dir}/train/demo-{{000000..000010}}.tar")


def test_empty_shard_list_fails_with_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(tmp_path)):
        loader(tmp_path)


def test_too_few_shards_for_ranks_and_workers_says_what_to_change(demo_dir: Path) -> None:
    with pytest.raises(ValueError, match="10 shards cannot feed 4 ranks x 4 workers.*--max-count"):
        loader(demo_dir / "train", rank=0, world_size=4, num_workers=4)


def test_directory_list_file_and_brace_pattern_select_the_same_shards(demo_dir: Path, tmp_path: Path) -> None:
    list_file = demo_dir / "train" / "shards.txt"
    list_file.write_text("".join(f"demo-{index:06d}.tar\n" for index in range(10)))
    brace = f"{demo_dir}/train/demo-{{000000..000009}}.tar"
    try:
        assert expand_shards(list_file) == expand_shards(brace) == expand_shards(demo_dir / "train")
    finally:
        list_file.unlink()


def test_pipe_urls_stream_every_sample(demo_dir: Path) -> None:
    pipe_loader = loader(f"pipe:cat {demo_dir}/train/demo-{{000000..000009}}.tar", transform="eval")
    assert sum(len(batch["key"]) for batch in pipe_loader) == DEMO_TRAIN


def test_manifest_option_gives_pipe_streams_their_length(demo_dir: Path) -> None:
    shards = f"pipe:cat {demo_dir}/train/demo-{{000000..000009}}.tar"
    with pytest.raises(TypeError, match="manifest"):
        len(loader(shards))
    assert len(loader(shards, manifest=str(demo_dir / "train" / "manifest.json"))) == 25


def test_read_manifest_counts_only_the_selected_shards(demo_dir: Path) -> None:
    manifest = read_manifest(f"{demo_dir}/train/demo-{{000008..000009}}.tar")
    assert manifest["total"] == DEMO_SHARD_SIZE + DEMO_TRAIN % DEMO_SHARD_SIZE and manifest["num_classes"] == 10

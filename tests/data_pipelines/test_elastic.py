"""Elastic epochs: the global sample order does not depend on the number of ranks, so a stream resumed on another
number of ranks (same global batch) reads the rest of the epoch exactly once, with the same pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from image_files import DEMO_TRAIN, small_stream_settings

from data_pipelines.elastic import build_elastic_loader
from data_pipelines.stream import StreamConfig

PER_DEVICE = 5  # demo: 190 samples = 19 global batches of 10


def elastic(shards: Path, rank: int, world_size: int, accumulate: int, skip_batches: int = 0, **overrides):
    settings = {
        **small_stream_settings(shards, PER_DEVICE),
        "rank": rank,
        "world_size": world_size,
        "skip_batches": skip_batches,
    }
    return build_elastic_loader(StreamConfig(**{**settings, **overrides}), accumulate, block_shards=4)


def read(loaders) -> dict[str, torch.Tensor]:
    """key -> image over every batch of every loader; fails on a key read twice."""
    images: dict[str, torch.Tensor] = {}
    for loader in loaders:
        for batch in loader:
            for key, image in zip(batch["key"], batch["image"], strict=True):
                assert key not in images, f"{key} read twice"
                images[key] = image
    return images


def first_steps(loader, steps: int, accumulate: int) -> list[dict]:
    return [batch for _, batch in zip(range(steps * accumulate), loader, strict=False)]


@pytest.mark.parametrize(("before", "after"), [((2, 1), (1, 2)), ((1, 2), (2, 1))])
def test_a_resume_on_another_number_of_ranks_reads_the_rest_of_the_epoch_exactly_once(demo_dir, before, after):
    (world_before, accumulate_before), (world_after, accumulate_after) = before, after
    shards, steps = demo_dir / "train", 7  # of 19
    interrupted = [
        first_steps(elastic(shards, rank, world_before, accumulate_before), steps, accumulate_before)
        for rank in range(world_before)
    ]
    resumed = [
        elastic(shards, rank, world_after, accumulate_after, skip_batches=steps * accumulate_after)
        for rank in range(world_after)
    ]
    union = read([*interrupted, *resumed])
    assert len(union) == DEMO_TRAIN  # every sample once: none twice (read() checks), none missing

    uninterrupted = read(elastic(shards, rank, world_before, accumulate_before) for rank in range(world_before))
    for key, image in union.items():  # the same pixels, whichever layout decoded them
        assert torch.equal(image, uninterrupted[key]), key


def test_each_step_reads_the_same_samples_on_any_layout(demo_dir):
    shards = demo_dir / "train"
    two_ranks = [list(elastic(shards, rank, 2, 1)) for rank in range(2)]
    one_rank = list(elastic(shards, 0, 1, 2))
    for step in range(3):
        by_two = {key for rank in range(2) for key in two_ranks[rank][step]["key"]}
        by_one = {key for micro in range(2) for key in one_rank[2 * step + micro]["key"]}
        assert by_two == by_one


def test_workers_hand_over_the_batches_a_single_process_reads(demo_dir):
    shards = demo_dir / "train"
    alone = [batch["key"] for batch in elastic(shards, 1, 2, 1)]
    with_workers = [batch["key"] for batch in elastic(shards, 1, 2, 1, num_workers=2)]
    assert with_workers == alone and len(alone) == 19


def test_epochs_have_their_own_order(demo_dir):
    shards = demo_dir / "train"
    first = [batch["key"] for batch in elastic(shards, 0, 1, 1)]
    second = [batch["key"] for batch in elastic(shards, 0, 1, 1, epoch=1)]
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))


def test_shards_it_cannot_read_by_position_are_refused_with_the_way_out(demo_dir):
    with pytest.raises(ValueError, match="local uncompressed .tar shards.*data.order=resampled"):
        elastic(f"pipe:cat {demo_dir / 'train'}/demo-000000.tar", 0, 1, 1)


def test_a_micro_batch_with_nothing_readable_fails_with_the_way_out_instead_of_hanging_the_other_ranks(
    demo_dir, tmp_path
):
    shards = tmp_path / "train"
    shutil.copytree(demo_dir / "train", shards)
    loader = elastic(shards, 0, 1, 1, batch_size=1)  # the shards pass the manifest check, and then fail
    for shard in sorted(shards.glob("*.tar"))[:4]:  # the first block, gone
        shard.write_bytes(b"")
    with pytest.raises(ValueError, match="could be read: rewrite the damaged shards"):
        list(loader)


def test_an_epoch_cap_beyond_the_data_is_refused(demo_dir):
    shards = demo_dir / "train"
    with pytest.raises(ValueError, match="19 micro-batches per rank"):
        elastic(shards, 0, 2, 1, batches_per_epoch=20)

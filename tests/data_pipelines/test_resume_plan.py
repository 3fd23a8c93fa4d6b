"""Where dataloader workers resume after a rank skips its first batches."""

from __future__ import annotations

import pytest

from data_pipelines.resume import SkipPlan, plan_skip


def test_endless_workers_share_the_skip_round_robin() -> None:
    assert plan_skip(7, [None, None, None]) == SkipPlan(first_worker=1, skips=(3, 2, 2))


def test_exhausted_worker_drops_out_of_the_cycle() -> None:
    # Served 0,1,0,1,1: worker 0 is exhausted, so the resumed loader's worker 0 (playing it) yields nothing
    # and worker 1 goes on with its fourth batch.
    assert plan_skip(5, [2, 4]) == SkipPlan(first_worker=0, skips=(2, 3))


def test_skip_of_zero_changes_nothing() -> None:
    assert plan_skip(0, [3, 3]) == SkipPlan(first_worker=0, skips=(0, 0))


def test_skip_beyond_the_epoch_is_rejected() -> None:
    with pytest.raises(ValueError, match="cannot skip 7 batches: this rank yields 6"):
        plan_skip(7, [3, 3])

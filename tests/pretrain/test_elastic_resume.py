"""A DDP run resumed on another number of processes (2 -> 1, 1 -> 2): the global batch and the lr schedule are
kept (the accumulation follows from trainer.global_batch_size), and every step of the resumed run takes its whole
global batch. That the elastic order then reads the rest of the epoch exactly once:
tests/data_pipelines/test_elastic.py.
"""

from pathlib import Path

import pytest
import torch
from app_runner import app_overrides, run_app

pytestmark = pytest.mark.slow

ELASTIC = {
    "data.order": "elastic",
    "trainer.global_batch_size": 32,
    "data.batch_size": 16,
    "trainer.checkpoint_every_n_steps": 3,
    "logger": "none",
}


@pytest.fixture(scope="module")
def uninterrupted(demo_shards, tmp_path_factory) -> Path:
    """12 steps of global batch 32 on 2 processes: the lr schedule of that batch, whatever the layout."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_app(app_overrides(demo_shards, run_dir, trainer="ddp_cpu", **ELASTIC, **{"trainer.max_steps": 12}))
    return run_dir


def checkpoint(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{step:06d}.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.parametrize(
    ("before", "after"), [(("ddp_cpu", 2, 1), ("cpu", 1, 2)), (("cpu", 1, 2), ("ddp_cpu", 2, 1))], ids=["2to1", "1to2"]
)
def test_a_run_resumes_on_another_number_of_processes_with_its_global_batch_and_lr_schedule(
    demo_shards, tmp_path, uninterrupted, before, after
):
    trainer_before, processes_before, accumulate_before = before
    trainer_after, processes_after, accumulate_after = after
    elastic = tmp_path / "elastic"
    run_app(app_overrides(demo_shards, elastic, trainer=trainer_before, **ELASTIC, **{"trainer.max_steps": 6}))

    resumed = run_app(
        app_overrides(demo_shards, elastic, trainer=trainer_after, **ELASTIC, **{"trainer.max_steps": 12})
    )
    output = resumed.stdout + resumed.stderr
    assert f"{processes_after} processes; global batch 32 (16 per device x {accumulate_after} accumulation)" in output
    assert (
        f"resuming step 6 of a run of {processes_before} processes x {accumulate_before} accumulation on "
        f"{processes_after} x {accumulate_after} (global batch 32)"
    ) in output
    assert "another data layout" not in output  # the elastic order's layout is the global batch, kept

    expected, actual = checkpoint(uninterrupted, 12), checkpoint(elastic, 12)
    assert actual["lr_schedulers"] == expected["lr_schedulers"]
    adam_steps = {int(state["step"]) for state in actual["optimizer_states"][0]["state"].values()}
    assert adam_steps == {12}
    micro_batches = actual["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]
    assert micro_batches == 12 * accumulate_after  # in the resumed layout's micro-batches, for all 12 steps

"""A DDP run resumed on another number of processes: the global batch and the lr schedule are kept (the
accumulation follows from trainer.global_batch_size), and every step of the resumed run takes its whole global
batch. That the elastic order then reads the rest of the epoch exactly once is tests/data_pipelines/test_elastic.py.
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


def checkpoint(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{step:06d}.ckpt", map_location="cpu", weights_only=False)


def test_a_two_process_run_resumes_on_one_process_with_its_global_batch_and_lr_schedule(demo_shards, tmp_path):
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    run_app(app_overrides(demo_shards, straight, trainer="ddp_cpu", **ELASTIC, **{"trainer.max_steps": 12}))
    run_app(app_overrides(demo_shards, elastic, trainer="ddp_cpu", **ELASTIC, **{"trainer.max_steps": 6}))

    resumed = run_app(app_overrides(demo_shards, elastic, trainer="cpu", **ELASTIC, **{"trainer.max_steps": 12}))
    output = resumed.stdout + resumed.stderr
    assert "1 processes; global batch 32 (16 per device x 2 accumulation)" in output
    assert "resuming step 6 of a run of 2 processes x 1 accumulation on 1 x 2 (global batch 32)" in output
    assert "another data layout" not in output  # the elastic order's layout is the global batch, kept

    expected, actual = checkpoint(straight, 12), checkpoint(elastic, 12)
    assert actual["lr_schedulers"] == expected["lr_schedulers"]
    adam_steps = {int(state["step"]) for state in actual["optimizer_states"][0]["state"].values()}
    assert adam_steps == {12}
    micro_batches = actual["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]
    assert micro_batches == 12 * 2  # in the resumed layout's micro-batches: 2 for every one of the 12 steps

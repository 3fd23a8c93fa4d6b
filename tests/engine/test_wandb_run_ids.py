"""The W&B run a run directory logs into: kept across resumes and requeues, new on ``resume=none``, one id for all
processes of a run; and the group and name of a sweep's runs."""

from __future__ import annotations

import multiprocessing

from pretrain.engine.trainer import WANDB_RUN_ID_FILE, in_sweep, kept_wandb_run_id

WANDB = {"kind": "wandb", "group": None, "name": None}


def test_a_run_directory_keeps_its_wandb_run_id_until_a_fresh_start(tmp_path):
    first = kept_wandb_run_id(tmp_path, fresh=False)
    assert len(first) == 8 and first.isalnum()
    assert kept_wandb_run_id(tmp_path, fresh=False) == first  # resumed or requeued: the same W&B run
    fresh = kept_wandb_run_id(tmp_path, fresh=True)
    assert fresh != first and (tmp_path / WANDB_RUN_ID_FILE).read_text().strip() == fresh
    assert kept_wandb_run_id(tmp_path / "new", fresh=False) not in (first, fresh)


def _id_of(run_dir, queue) -> None:
    queue.put(kept_wandb_run_id(run_dir, fresh=False))


def test_processes_starting_together_agree_on_one_id(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_id_of, args=(tmp_path, queue)) for _ in range(4)]
    for process in processes:
        process.start()
    ids = {queue.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(timeout=30)
    assert ids == {(tmp_path / WANDB_RUN_ID_FILE).read_text().strip()}
    assert [path.name for path in tmp_path.iterdir()] == [WANDB_RUN_ID_FILE]  # no candidate files left behind


def test_a_sweeps_wandb_runs_share_its_group_and_are_named_by_their_overrides():
    logger = in_sweep(WANDB, "multirun/pretrain/2026-12-01_10-00-00", "optim.base_lr=0.0003")
    assert logger["group"] == "multirun/pretrain/2026-12-01_10-00-00" and logger["name"] == "optim.base_lr=0.0003"
    named = in_sweep({**WANDB, "group": "mine", "name": "run"}, "multirun/x", "a=1")
    assert (named["group"], named["name"]) == ("mine", "run")
    assert in_sweep({"kind": "csv"}, "multirun/x", "a=1") == {"kind": "csv"}

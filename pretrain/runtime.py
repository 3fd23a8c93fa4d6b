"""What every app does around ``trainer.fit``: CPU threads, demo data on first use, the checkpoint to resume
from, the final checkpoint, SLURM requeue, and closing loggers. Shared by pretrain, finetune and analyze."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from data_pipelines.demo import write_demo_shards
from pretrain.checkpointing import find_resume_checkpoint, read_checkpoint
from pretrain.trainer import CHECKPOINT_SUBDIR

log = logging.getLogger(__name__)

DEMO_WAIT_SECONDS = 300


def launch_rank() -> int:
    """0 only for the first process of the first node, as the launcher (SLURM, torchrun, Lightning) announced it."""
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK"):
        if os.environ.get(name, "0") != "0":
            return int(os.environ[name])
    return 0


def ensure_demo_shards(data: dict[str, Any]) -> None:
    """Write the demo shards on first use (rank 0 only; other ranks wait for its manifest)."""
    train_dir = Path(data["shards"])
    if (train_dir / "manifest.json").is_file():
        return
    if launch_rank() == 0:
        log.info("writing the demo shards to %s (first use)", train_dir.parent)
        write_demo_shards(train_dir.parent, image_size=data["image_size"])
        return
    deadline = time.monotonic() + DEMO_WAIT_SECONDS
    while not (train_dir / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not write the demo shards to {train_dir} within {DEMO_WAIT_SECONDS} s")
        time.sleep(1)


def set_cpu_threads(trainer: dict[str, Any], data: dict[str, Any]) -> None:
    """On CPU, split the cores over the processes and leave one per loader worker: oversubscribed OpenMP threads
    spin and ran our tiny model 10x slower (22 vs 202 img/s)."""
    if trainer["accelerator"] != "cpu":
        return
    cores_per_process = (os.cpu_count() or 1) // max(1, int(trainer["devices"]))
    threads = trainer.get("cpu_threads") or max(1, cores_per_process - data["num_workers"])
    torch.set_num_threads(threads)
    log.info("using %d CPU thread(s) for compute next to %d loader worker(s)", threads, data["num_workers"])


def resolve_resume(resume: str, run_dir: Path) -> str | None:
    """``auto``: the newest complete checkpoint in ``run_dir/checkpoints`` (none: start fresh); ``none``; or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        newest = find_resume_checkpoint(run_dir / CHECKPOINT_SUBDIR)
        if newest is not None:
            log.info("resuming from %s", newest)
        return str(newest) if newest is not None else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint (use resume=auto or resume=none)")
    if Path(resume).is_file():
        read_checkpoint(resume)  # fails early with a clear message when unreadable
    return resume


def was_requeued(trainer: L.Trainer) -> bool:
    """True when the SLURM warning signal stopped the fit: the requeued job finishes the work, not this one."""
    requeued = any(getattr(callback, "requeued", False) for callback in trainer.callbacks)
    if requeued:
        log.info("stopped at step %d: the requeued job resumes from its checkpoint", trainer.global_step)
    return requeued


def save_final_checkpoint(trainer: L.Trainer, run_dir: Path, every_n_steps: int) -> Path:
    """``run_dir/checkpoints/step=N.ckpt`` for the last step, written unless the periodic checkpoint already was."""
    final = run_dir / CHECKPOINT_SUBDIR / f"step={trainer.global_step:06d}.ckpt"
    if trainer.global_step % every_n_steps:  # the same answer on every rank, so no rank waits alone in a barrier
        trainer.save_checkpoint(final)
    return final


def close_loggers(trainer: L.Trainer) -> None:
    """Finish W&B runs: in a Hydra multirun the next job would otherwise log into this job's run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()

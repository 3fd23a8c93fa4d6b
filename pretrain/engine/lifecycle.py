"""What every app does around ``trainer.fit``: the checkpoint to resume from, the final checkpoint and closing
loggers (stopping on signals: :mod:`pretrain.engine.signals`). Shared by the pretraining and the downstream app."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from pretrain.engine.checkpoints import (
    CHECKPOINT_SUBDIR,
    UnreadableCheckpointError,
    checkpoint_path,
    find_resume_checkpoint,
    is_complete,
)
from pretrain.engine.universal_checkpoint import prepare_universal_resume

log = logging.getLogger(__name__)


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
    if not is_complete(Path(resume)):  # fails early with a clear message, without loading it an extra time
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {resume}: it is not a complete Lightning checkpoint (a zip archive written by "
            "torch.save) or DeepSpeed checkpoint directory; use resume=auto to take the newest complete one"
        )
    return resume


def resume_checkpoint(trainer: L.Trainer, resume: str, run_dir: Path, conversion_wait_s: float) -> str | None:
    """:func:`resolve_resume`, made loadable by ``trainer``: a DeepSpeed checkpoint of another number of processes
    is resumed from its universal form (:mod:`pretrain.engine.universal_checkpoint`; ranks wait up to
    ``conversion_wait_s`` for rank 0 to convert it)."""
    path = resolve_resume(resume, run_dir)
    if path is not None:
        prepare_universal_resume(trainer, Path(path), conversion_wait_s)
    return path


def save_final_checkpoint(trainer: L.Trainer, run_dir: Path, every_n_steps: int) -> Path:
    """``run_dir/checkpoints/step_N.ckpt`` for the last step, written unless the periodic checkpoint already was."""
    final = checkpoint_path(run_dir / CHECKPOINT_SUBDIR, trainer.global_step)
    if trainer.global_step % every_n_steps:  # the same answer on every rank, so no rank waits alone in a barrier
        trainer.save_checkpoint(final, weights_only=False)  # the whole training state; saying so is quiet
    return final


def close_loggers(trainer: L.Trainer) -> None:
    """Finish W&B runs: in a Hydra multirun the next job would otherwise log into this job's run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()

"""The fit sequence every app runs, written once: the checkpoint to resume from (resolved before the Trainer is built,
so that its logs know the step they continue from), ``trainer.fit`` from it, stopped by a signal or not, the final
checkpoint; then closing the loggers (stopping on signals: :mod:`pretrain.engine.signals`). Used by pretraining,
fine-tuning and segmentation.

    resume = resolve_resume(config["resume"], run_dir)           # before the Trainer
    trainer = build_trainer(..., start_step=resume_step(resume))
    final = fit(trainer, module, datamodule, resume, wait_s)     # None: a signal stopped it
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from pretrain.engine.checkpoints import (
    CHECKPOINT_SUBDIR,
    UnreadableCheckpointError,
    checkpoint_step,
    damage,
    find_resume_checkpoint,
    read_checkpoint_lazily,
    set_aside_newer,
)
from pretrain.engine.console import frozen_parts_expected
from pretrain.engine.metadata import meta_from_checkpoint
from pretrain.engine.run_checkpoints import run_checkpoints
from pretrain.engine.signals import stopped_by_signal
from pretrain.engine.universal_checkpoint import prepare_universal_resume

log = logging.getLogger(__name__)

CHANGEABLE_ON_RESUME = ("drop_path_rate",)  # backbone options that shape no tensor: a resumed run may change them


class BackboneMismatchError(ValueError):
    """A checkpoint of another architecture than the one the config asks for."""


def continued_on_requeue(resume: str) -> str:
    """``resume``, or ``auto`` for ``resume=none`` in a SLURM job that runs again (requeued on preemption or its
    time-limit warning): the job's command line is the same, but the run it started must go on, not start over."""
    if resume == "none" and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        log.info("resume=none in a requeued SLURM job: continuing the run it started (resume=auto)")
        return "auto"
    return resume


def resolve_resume(resume: str, run_dir: Path) -> str | None:
    """``auto``: the newest checkpoint in ``run_dir/checkpoints`` that verifies (none: start fresh; damaged ones are
    moved aside by rank 0); ``none`` (``auto`` in a requeued SLURM job); or a path, which must verify (rank 0 moves
    the newer checkpoints of ``run_dir`` to ``checkpoints/superseded/``)."""
    resume = continued_on_requeue(resume)
    if resume == "none":
        return None
    checkpoint_dir = run_dir / CHECKPOINT_SUBDIR
    if resume == "auto":
        newest = find_resume_checkpoint(checkpoint_dir, set_aside=rank_zero_only.rank == 0)
        if newest is not None:
            log.info("resuming from %s", newest)
        return str(newest) if newest is not None else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint (use resume=auto or resume=none)")
    reason = damage(Path(resume))
    if reason is not None:  # fails early with a clear message
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {resume}: {reason}. Expected a complete Lightning checkpoint (a zip archive "
            "written by torch.save) or DeepSpeed checkpoint directory; use resume=auto to take the newest good one"
        )
    if rank_zero_only.rank == 0:
        for moved in set_aside_newer(checkpoint_dir, checkpoint_step(Path(resume))):
            log.info("resume=%s is older than %s: moved it to %s", resume, moved.name, moved.parent)
    return resume


def prepare_resume(trainer: L.Trainer, path: str | None, conversion_wait_s: float) -> str | None:
    """``path`` (from :func:`resolve_resume`) made loadable by ``trainer``: a DeepSpeed checkpoint of another number
    of processes is resumed from its universal form (:mod:`pretrain.engine.universal_checkpoint`; ranks wait up to
    ``conversion_wait_s`` for rank 0 to convert it)."""
    if path is not None:
        prepare_universal_resume(trainer, Path(path), conversion_wait_s)
    return path


def resume_step(path: str | None) -> int:
    """The step ``path`` (from :func:`resolve_resume`) was saved at, 0 for a fresh start: the Trainer's logs keep
    what they hold up to it (``build_trainer(start_step=...)``)."""
    return checkpoint_step(Path(path)) if path is not None else 0


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    resume: str | None,
    conversion_wait_s: float,
    frozen_parts: bool = False,
) -> Path | None:
    """Train ``module`` from the checkpoint ``resume`` (from :func:`resolve_resume`; None: from the start) and save
    the final checkpoint; returns it, or None when a signal stopped the fit (it saved its own checkpoint to resume
    from). ``frozen_parts``: parts of the module train on purpose not at all (no warning about them)."""
    path = prepare_resume(trainer, resume, conversion_wait_s)
    if resume is not None:
        run_checkpoints(trainer).resumed_from(Path(resume), resume_step(resume))
    with frozen_parts_expected() if frozen_parts else contextlib.nullcontext():
        # Our own checkpoints (they hold metadata dicts besides tensors): saying so keeps Lightning's warning out.
        trainer.fit(module, datamodule=datamodule, ckpt_path=path, weights_only=False)
    if stopped_by_signal(trainer) is not None:
        return None
    return save_final_checkpoint(trainer)


def check_same_backbone(checkpoint: Path, options: Mapping[str, Any]) -> None:
    """Fail in one line, before anything is trained or written, when ``checkpoint`` holds another architecture than
    the backbone ``options`` the config asks for (a resumed run must keep its model)."""
    meta = meta_from_checkpoint(read_checkpoint_lazily(checkpoint))
    if meta is None:
        return
    differ = sorted(
        key
        for key in set(meta.options) | set(options)
        if key not in CHANGEABLE_ON_RESUME and meta.options.get(key) != options.get(key)
    )
    if differ:
        held = ", ".join(f"{key}={meta.options.get(key)}" for key in differ)
        asked = ", ".join(f"{key}={options.get(key)}" for key in differ)
        raise BackboneMismatchError(
            f"checkpoint {checkpoint} holds a backbone with {held}, the config asks for {asked}: "
            "use a new run_dir, or the model the run was started with"
        )


def save_final_checkpoint(trainer: L.Trainer) -> Path:
    """``run_dir/checkpoints/step_N.ckpt`` for the last step, as this process wrote it (unless its periodic save just
    did): the file an export reads, never one found again by name."""
    return run_checkpoints(trainer).save(trainer)


def close_loggers(trainer: L.Trainer) -> None:
    """Finish W&B runs: in a Hydra multirun the next job would otherwise log into this job's run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()

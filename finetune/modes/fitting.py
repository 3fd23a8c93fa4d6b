"""How the fitting modes run (``finetune``, ``finetune_mae``, ``linear_mae``): Lightning fits of the mode's module.

With an ``lr_grid`` each learning rate is fit on the validation-fit split and scored on the validation split
(VTAB-1k: train800 -> val200); a best lr on the edge of the grid extends it one step beyond that edge (the ratio
of the edge's neighbours), up to ``mode.lr_grid_extensions`` times, so the choice lies inside what was searched.
The best is refit on the training split (train800val200) and tested once. Fine-tuning also runs the selecting
linear probe on the same labels and says when it scores below it. Finished candidates keep their score in
``run_dir/selection``: a requeued job does not refit them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from data_pipelines.manifest import write_json_atomic
from data_pipelines.seeding import seed_all, stable_seed
from finetune.data import TaskDataModule, TaskSplit, loader_specs
from finetune.modes.common import (
    DownstreamContext,
    DownstreamRun,
    ModeOutcome,
    downstream_plan,
    fit_trainer,
    grid_edges,
    normalization,
)
from finetune.modes.linear import run_linear
from pretrain.engine.checkpoints import CHECKPOINT_SUBDIR
from pretrain.engine.config import Settings, config_hash, settings
from pretrain.engine.lifecycle import fit, resolve_resume, resume_step
from pretrain.engine.metadata import BackboneMeta
from pretrain.models.vit import VisionTransformer

log = logging.getLogger(__name__)

SELECTION_SUBDIR = "selection"  # below the run directory: one folder per candidate fit
PROBE_SUBDIR = "linear_probe"  # below the run directory: the comparison probe of a fine-tune
CANDIDATE_FILE = "candidate.json"  # a finished candidate's validation score: a requeued job does not refit it
NO_LOGGER = {"kind": "none", "log_images_every_n_steps": 0, "num_images": 0}  # candidate fits log nothing
SIGNIFICANT_DIGITS = 6  # an extension's lr, rounded: 0.03 * 3 is 0.09, not 0.09000000000000001

ModuleBuilder = Callable[[VisionTransformer, Mapping[str, Any], DownstreamRun], L.LightningModule]


def no_callbacks(mode: Mapping[str, Any]) -> list[Callback]:
    """A mode that adds no callbacks of its own."""
    return []


@dataclass(frozen=True)
class FitMode:
    """A fitting mode: how its module and callbacks are built, and whether its backbone stays frozen."""

    build: ModuleBuilder
    callbacks: Callable[[Mapping[str, Any]], list[Callback]]
    frozen_backbone: bool  # only the head trains: it may train on features computed once (mode.cache_features)


@dataclass
class FitResult:
    """What one fit leaves: its test metrics, its Trainer, the backbone's metadata, resolution and test speed."""

    metrics: dict[str, float]
    trainer: L.Trainer
    meta: BackboneMeta
    image_size: int
    images_per_s: float


def fit_and_test(
    context: DownstreamContext,
    mode: Mapping[str, Any],
    fit_mode: FitMode,
    fit_split: TaskSplit,
    test_split: TaskSplit,
    run_dir: Path,
    logger: Mapping[str, Any],
    resume: str,
) -> FitResult | None:
    """Fit the mode's module on ``fit_split`` (resuming per ``resume`` in ``run_dir``), then score ``test_split``.

    None when a signal stopped the fit: a requeued or restarted job resumes it.
    """
    config, task = context.config, context.task
    # The new head and the loaders' first shuffle depend on this fit alone, not on the fits run before it in the
    # process (a requeued job skips finished candidates).
    seed_all(stable_seed(config["seed"], "fit", str(run_dir.relative_to(context.run_dir))))
    backbone, meta = context.load_backbone()
    image_size = backbone.patch_embed.img_size
    eval_spec, train_spec = loader_specs(
        config, task.eval_crop_fraction, image_size, *normalization(config, meta, task.train)
    )
    plan = downstream_plan(config, mode, fit_split, trains=True)
    run = DownstreamRun(task.num_classes, plan, config["seed"], meta, config["trainer"]["max_bad_steps"])
    module = fit_mode.build(backbone, mode, run)
    data = TaskDataModule(fit_split, test_split, train_spec, eval_spec, plan)
    checkpoint = resolve_resume(resume, run_dir)
    trainer = fit_trainer(
        config,
        mode,
        logger,
        run_dir,
        plan,
        batch_size_fn=lambda batch: batch["label"].shape[0],
        start_step=resume_step(checkpoint),
        callbacks=fit_mode.callbacks(mode),
    )
    log.info("%s on %s (%d images): %s", mode["name"], task.name, fit_split.num_samples, plan.describe())
    if fit_mode.frozen_backbone and mode["cache_features"]:
        cache_training_features(trainer, module, data)
    wait_s = config["trainer"]["universal_checkpoint_wait_s"]
    if fit(trainer, module, data, checkpoint, wait_s, frozen_parts=fit_mode.frozen_backbone) is None:
        return None
    started = time.perf_counter()
    trainer.test(module, datamodule=data)
    metrics = {
        name.removeprefix("test/"): round(float(value), 4)
        for name, value in trainer.callback_metrics.items()
        if name.startswith("test/")
    }
    speed = round(test_split.num_samples / (time.perf_counter() - started), 2)
    return FitResult(metrics, trainer, meta, image_size, speed)


def cache_training_features(trainer: L.Trainer, module: L.LightningModule, data: TaskDataModule) -> None:
    """One pass of the frozen backbone over the training images; the head then trains on these features."""
    batches = trainer.predict(module, datamodule=data)
    features = torch.cat([batch["features"] for batch in batches])
    per_rank = int(trainer.strategy.all_gather(torch.tensor(len(features), device=module.device)).min())
    data.cache_training_features(features, torch.cat([batch["label"] for batch in batches]), per_rank)
    log.info("cached %d training features of dimension %d", *features.shape)


def with_lr(mode: Mapping[str, Any], lr: float) -> Settings:
    """The mode config with its optimizer's absolute learning rate set to ``lr``."""
    return settings({**mode, "optim": {**mode["optim"], "lr": lr}}, "mode")


def step_past_edge(grid: list[float], side: str) -> float:
    """The lr one step beyond the ``side`` (``largest``/``smallest``) edge of ``grid``, at the ratio of that
    edge and its neighbour (0.01, 0.03 -> 0.09 past the largest, 0.00333333 past the smallest)."""
    values = sorted(set(grid))
    lr = values[-1] ** 2 / values[-2] if side == "largest" else values[0] ** 2 / values[1]
    return float(f"{lr:.{SIGNIFICANT_DIGITS}g}")


def select_lr(context: DownstreamContext, fit_mode: FitMode) -> tuple[float | None, dict[str, Any] | None] | None:
    """The learning rate of ``mode.lr_grid`` with the best validation top-1 ((None, None) without a grid; None
    when a signal stopped a candidate's fit), the grid extended past an edge the best lies on (at most
    ``mode.lr_grid_extensions`` times). Finished candidates are kept in ``run_dir/selection`` and not refit."""
    mode, task = context.config["mode"], context.task
    grid = [float(lr) for lr in mode["lr_grid"] or []]
    if not grid:
        return None, None
    if mode["lr_grid_extensions"] < 0:
        raise ValueError(f"mode.lr_grid_extensions={mode['lr_grid_extensions']} must be 0 (no extension) or more")
    # A candidate's own resume: an explicit checkpoint path belongs to the final fit, not to every candidate.
    resume = "none" if context.config["resume"] == "none" else "auto"
    candidates: list[dict[str, Any]] = []
    extended: list[float] = []
    while True:
        for lr in grid[len(candidates) :]:
            candidate = score_candidate(context, fit_mode, lr, resume)
            if candidate is None:
                return None
            candidates.append(candidate)
            log.info("lr %g: validation top-1 %.2f", lr, candidate["val_top1"])
        best = max(range(len(grid)), key=lambda index: (candidates[index]["val_top1"], -index))
        edges = grid_edges({"lr": grid[best]}, {"lr": grid})
        if not edges or len(extended) >= mode["lr_grid_extensions"]:
            break
        lr = step_past_edge(grid, edges["lr"])
        log.info("lr %g (best on validation) lies on the grid's edge (its %s): trying %g", grid[best], edges["lr"], lr)
        grid.append(lr)
        extended.append(lr)
    if edges:
        log.warning(
            "lr %g, the best on validation, lies on the edge of the grid searched %s (its %s; "
            "mode.lr_grid_extensions=%d): a value beyond it may score better",
            grid[best],
            grid,
            edges["lr"],
            mode["lr_grid_extensions"],
        )
    selection = {
        "validation": task.validation,
        "grid": {"lr": grid},  # the configured grid, then the extensions past its edge
        "extended": {"lr": extended},
        "candidates": candidates,
        "chosen": {"lr": grid[best]},
        "on_edge": edges,
        "refit_on": "train",
    }
    return grid[best], selection


def score_candidate(context: DownstreamContext, fit_mode: FitMode, lr: float, resume: str) -> dict[str, Any] | None:
    """``{lr, val_top1}`` of the mode at ``lr``, fit on the validation-fit split: from its record when it was
    scored before with exactly this config, else fit now (None when a signal stopped the fit)."""
    mode, task = with_lr(context.config["mode"], lr), context.task
    candidate_dir = context.run_dir / SELECTION_SUBDIR / f"lr={lr:g}"
    record = candidate_dir / CANDIDATE_FILE
    fingerprint = config_hash({**context.config, "mode": mode})
    candidate = scored(record, fingerprint) if resume == "auto" else None
    if candidate is not None:
        return candidate
    result = fit_and_test(context, mode, fit_mode, task.selection_train, task.val, candidate_dir, NO_LOGGER, resume)
    if result is None:
        return None
    if result.trainer.is_global_zero:
        write_json_atomic(record, {"lr": lr, "val_top1": result.metrics["top1"], "config_hash": fingerprint})
        shutil.rmtree(candidate_dir / CHECKPOINT_SUBDIR, ignore_errors=True)  # its score is all we keep
    result.trainer.strategy.barrier()
    return scored(record, fingerprint)  # rank 0 wrote it


def scored(record: Path, fingerprint: str) -> dict[str, Any] | None:
    """The candidate's ``{lr, val_top1}`` when it was scored with exactly this config, else None (a stale record
    of other settings is refit)."""
    if not record.is_file():
        return None
    candidate = json.loads(record.read_text())
    if candidate.pop("config_hash", None) != fingerprint:
        return None
    return candidate


def run_fit(context: DownstreamContext, fit_mode: FitMode) -> ModeOutcome | None:
    """Choose the lr on validation (with ``mode.lr_grid``), fit on the training split, test; optionally the
    selecting linear probe on the same labels for comparison. None when a signal stopped a fit."""
    mode, task = context.config["mode"], context.task
    selected = select_lr(context, fit_mode)
    if selected is None:
        return None
    lr, selection = selected
    final_mode = with_lr(mode, lr) if lr is not None else mode
    result = fit_and_test(
        context,
        final_mode,
        fit_mode,
        task.train,
        task.test,
        context.run_dir,
        context.config["logger"],
        str(context.config["resume"]),
    )
    if result is None:
        return None
    notes = compare_with_linear_probe(context, result.metrics) if mode["compare_with_linear_probe"] else {}
    return ModeOutcome(
        result.metrics,
        result.trainer,
        result.image_size,
        result.meta,
        result.images_per_s,
        selection=selection,
        notes=notes,
    )


def compare_with_linear_probe(context: DownstreamContext, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The selecting linear probe of the pretrained backbone on the same splits; a fine-tune below it is logged."""
    config = settings({**context.config, "logger": NO_LOGGER})
    probe = run_linear(DownstreamContext(config, context.task, context.run_dir / PROBE_SUBDIR, context.load_backbone))
    below = metrics["top1"] < probe.metrics["top1"]
    if below:
        log.warning(
            "fine-tuning scored top-1 %.2f, below the selecting linear probe's %.2f on the same labels: the "
            "fine-tuning recipe does not suit this task (try mode.lr_grid, mode.epochs or mode=linear)",
            metrics["top1"],
            probe.metrics["top1"],
        )
    return {
        "linear_probe": {"metrics": probe.metrics, "chosen": probe.selection["chosen"]},
        "below_linear_probe": below,
    }

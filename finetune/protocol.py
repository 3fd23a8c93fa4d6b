"""How each downstream mode runs: choose on validation, refit on the training split, test once.

Two kinds of modes:

- **feature modes** (``linear``, ``knn``): one pass of the frozen backbone over every split (eval transform),
  then the selecting linear probe or k-NN on the cached features;
- **fitting modes** (``finetune``, ``finetune_mae``, ``linear_mae``): Lightning fits of the mode's module. With
  an ``lr_grid`` each learning rate is fit on the validation-fit split and scored on the validation split
  (VTAB-1k: train800 -> val200), the best is refit on the training split (train800val200) and tested. Fine-tuning
  also runs the selecting linear probe on the same labels and says when it scores below it.

The test split is scored once, for the chosen setting; it never chooses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from data_pipelines.manifest import write_json_atomic
from data_pipelines.registry import lookup
from data_pipelines.seeding import seed_all, stable_seed
from data_pipelines.transforms import TransformOptions
from finetune.data import LoaderSpec, TaskDataModule, TaskSplit, loader_specs
from finetune.modes.common import DownstreamRun
from finetune.modes.features import FeatureExtractor, FeatureTable, extract_features
from finetune.modes.full import build_finetune, ema_callbacks
from finetune.modes.knn import knn_accuracy
from finetune.modes.linear import selecting_linear_probe
from finetune.modes.linear_mae import build_linear
from finetune.modes.segment import build_segmentation
from finetune.tasks import Task
from pretrain.engine.checkpoints import CHECKPOINT_SUBDIR
from pretrain.engine.config import Settings, config_hash, settings
from pretrain.engine.console import frozen_parts_expected
from pretrain.engine.lifecycle import resume_checkpoint, save_final_checkpoint
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan, plan_run
from pretrain.engine.signals import stopped_by_signal
from pretrain.engine.trainer import build_trainer
from pretrain.models.vit import VisionTransformer

log = logging.getLogger(__name__)

SELECTION_SUBDIR = "selection"  # below the run directory: one folder per candidate fit
PROBE_SUBDIR = "linear_probe"  # below the run directory: the comparison probe of a fine-tune
CANDIDATE_FILE = "candidate.json"  # a finished candidate's validation score: a requeued job does not refit it
NO_LOGGER = {"kind": "none", "log_images_every_n_steps": 0, "num_images": 0}  # candidate fits log nothing

BackboneLoader = Callable[[], tuple[VisionTransformer, BackboneMeta]]


@dataclass
class DownstreamContext:
    """What every mode runs on: the resolved config, the task, the run directory and a fresh backbone on demand."""

    config: Settings
    task: Task
    run_dir: Path
    load_backbone: BackboneLoader  # a new copy per call: fine-tuning changes the weights it is given


@dataclass
class ModeOutcome:
    """What a mode reports: test metrics, the selection it made, and the Trainer whose loggers get the summary."""

    metrics: dict[str, float]
    trainer: L.Trainer
    image_size: int
    meta: BackboneMeta
    images_per_s: float
    selection: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def downstream_plan(config: Mapping[str, Any], mode: Mapping[str, Any], split: TaskSplit, trains: bool) -> RunPlan:
    """``mode.steps``, else ``mode.epochs`` over ``split``'s images (``trainer.max_steps`` caps them); evaluation
    alone trains no steps."""
    plan = plan_run(
        config["trainer"],
        mode["batch_size"],
        samples_per_epoch=split.num_samples,
        epochs=mode["epochs"] if trains else 0,
        steps=mode["steps"] if trains else None,
    )
    if trains and plan.steps_per_epoch == 0:
        raise ValueError(
            f"{split.num_samples} training images are fewer than one global batch ({plan.global_batch}): "
            "lower mode.batch_size"
        )
    return plan


def normalization(
    config: Mapping[str, Any], meta: BackboneMeta, train: TaskSplit
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's own pretraining mean/std; without them (timm/HF weights, random init, weights adapted to
    another channel count, or pretrained on the other kind of input: images are normalized in [0, 1] pixel units,
    arrays in their stored units) the training split's channel statistics for arrays, else the configured ones."""
    kind = "arrays" if train.arrays else "images"
    if meta.inputs is not None and meta.inputs != kind:
        log.info("the backbone was pretrained on %s, the task holds %s: its mean/std do not apply", meta.inputs, kind)
    elif meta.mean is not None and meta.std is not None:
        return tuple(meta.mean), tuple(meta.std)
    if train.arrays:
        mean, std = train.channel_normalization(config["bands"])
        log.info("normalizing with the training split's channel statistics: mean %s, std %s", mean, std)
        return tuple(mean), tuple(std)
    return tuple(config["mean"]), tuple(config["std"])


# ---- feature modes ------------------------------------------------------------------------------------------


def feature_tables(
    context: DownstreamContext, names: list[str], splits: Mapping[str, TaskSplit]
) -> tuple[dict[str, FeatureTable], L.Trainer, BackboneMeta, int, float]:
    """Frozen features of each split, and the Trainer, metadata, image size and images per second of the pass."""
    config, task = context.config, context.task
    backbone, meta = context.load_backbone()
    image_size = backbone.patch_embed.img_size
    eval_spec, _ = loader_specs(config, task.eval_crop_fraction, image_size, *normalization(config, meta, task.train))
    plan = downstream_plan(config, config["mode"], task.train, trains=False)
    trainer = build_trainer(
        config["trainer"],
        config["logger"],
        context.run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["label"].shape[0],
    )
    extractor = FeatureExtractor(backbone, names)
    started, tables = time.perf_counter(), {}
    for name, split in splits.items():
        tables[name] = extract_features(trainer, extractor, TaskDataModule(split, split, None, eval_spec))
    images_per_s = round(sum(len(table) for table in tables.values()) / (time.perf_counter() - started), 2)
    return tables, trainer, meta, image_size, images_per_s


def run_linear(context: DownstreamContext) -> ModeOutcome:
    """The selecting linear probe on frozen features. A hold-out's two sides are rows of the training split's
    table (one pass); a task's own validation split is a pass of its own."""
    probe, task = context.config["probe"], context.task
    splits = {"train": task.train, "test": task.test}
    if task.holdout is None:
        splits.update(fit=task.selection_train, val=task.val)
    tables, trainer, meta, image_size, speed = feature_tables(context, list(probe["features"]), splits)
    if task.holdout is not None:
        tables["fit"] = tables["train"].held_out(replace(task.holdout, side="train"))
        tables["val"] = tables["train"].held_out(replace(task.holdout, side="val"))
    device = trainer.strategy.root_device
    metrics, selection = selecting_linear_probe(
        tables, task.num_classes, probe, context.config["seed"], task.validation, device
    )
    return ModeOutcome(metrics, trainer, image_size, meta, speed, selection=selection)


def run_knn(context: DownstreamContext) -> ModeOutcome:
    """k-NN of the test images among the training images' frozen features."""
    mode, task = context.config["mode"], context.task
    tables, trainer, meta, image_size, speed = feature_tables(
        context, [mode["feature"]], {"train": task.train, "test": task.test}
    )
    metrics = knn_accuracy(
        tables["train"],
        tables["test"],
        mode["feature"],
        mode["k"],
        mode["temperature"],
        task.num_classes,
        trainer.strategy.root_device,
    )
    return ModeOutcome(metrics, trainer, image_size, meta, speed)


# ---- fitting modes ------------------------------------------------------------------------------------------

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
    trainer_config = dict(config["trainer"])
    if mode["gradient_clip_val"] is not None:  # a recipe's clipping (the ViT paper clips at global norm 1)
        trainer_config["gradient_clip_val"] = mode["gradient_clip_val"]
    trainer = build_trainer(
        trainer_config,
        logger,
        run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["label"].shape[0],
        callbacks=fit_mode.callbacks(mode),
    )
    log.info("%s on %s (%d images): %s", mode["name"], task.name, fit_split.num_samples, plan.describe())
    if fit_mode.frozen_backbone and mode["cache_features"]:
        cache_training_features(trainer, module, data)
    checkpoint = resume_checkpoint(trainer, resume, run_dir, config["trainer"]["universal_checkpoint_wait_s"])
    with frozen_parts_expected() if fit_mode.frozen_backbone else contextlib.nullcontext():
        # Our own checkpoints (they hold metadata dicts besides tensors): saying so keeps Lightning's warning out.
        trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=False)
    if stopped_by_signal(trainer) is not None:
        return None
    save_final_checkpoint(trainer)
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


def select_lr(context: DownstreamContext, fit_mode: FitMode) -> tuple[float | None, dict[str, Any] | None] | None:
    """The learning rate of ``mode.lr_grid`` with the best validation top-1 ((None, None) without a grid; None
    when a signal stopped a candidate's fit). Finished candidates are kept in ``run_dir/selection`` and not refit."""
    mode, task = context.config["mode"], context.task
    grid = mode["lr_grid"]
    if not grid:
        return None, None
    # A candidate's own resume: an explicit checkpoint path belongs to the final fit, not to every candidate.
    resume = "none" if context.config["resume"] == "none" else "auto"
    candidates = []
    for lr in grid:
        candidate_dir = context.run_dir / SELECTION_SUBDIR / f"lr={lr:g}"
        record = candidate_dir / CANDIDATE_FILE
        fingerprint = config_hash({**context.config, "mode": with_lr(mode, lr)})
        candidate = scored(record, fingerprint) if resume == "auto" else None
        if candidate is None:
            result = fit_and_test(
                context,
                with_lr(mode, lr),
                fit_mode,
                task.selection_train,
                task.val,
                candidate_dir,
                NO_LOGGER,
                resume,
            )
            if result is None:
                return None
            if result.trainer.is_global_zero:
                write_json_atomic(record, {"lr": lr, "val_top1": result.metrics["top1"], "config_hash": fingerprint})
                shutil.rmtree(candidate_dir / CHECKPOINT_SUBDIR, ignore_errors=True)  # its score is all we keep
            result.trainer.strategy.barrier()
            candidate = scored(record, fingerprint)  # rank 0 wrote it
        candidates.append(candidate)
        log.info("lr %g: validation top-1 %.2f", lr, candidates[-1]["val_top1"])
    best = max(range(len(grid)), key=lambda index: (candidates[index]["val_top1"], -index))
    selection = {
        "validation": task.validation,
        "grid": {"lr": list(grid)},
        "candidates": candidates,
        "chosen": {"lr": grid[best]},
        "refit_on": "train",
    }
    return grid[best], selection


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


# ---- dense mode ---------------------------------------------------------------------------------------------


def segmentation_specs(
    config: Mapping[str, Any], image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[LoaderSpec, LoaderSpec]:
    """(training crops of ``image_size``, whole test images one at a time: their sizes differ) for ``segment``."""
    mode = config["mode"]
    common = dict(
        num_workers=config["num_workers"],
        mean=mean,
        std=std,
        seed=config["seed"],
        shuffle_buffer=config["shuffle_buffer"],
        pin_memory=config["pin_memory"],
    )
    geometry = dict(image_size=image_size, eval_crop_fraction=None, randaugment=None, intensity_scale=None, bands=None)
    crops = TransformOptions(**geometry, crop_scale=mode["crop_scale"], crop_ratio=mode["crop_ratio"])
    whole = TransformOptions(**geometry, crop_scale=None, crop_ratio=None)
    train = LoaderSpec(mode["train_transform"], crops, batch_size=mode["batch_size"], training=True, **common)
    return train, LoaderSpec("segment_eval", whole, batch_size=1, training=False, **common)


def run_segment(context: DownstreamContext) -> ModeOutcome | None:
    """Train the mode's segmentation head (and the backbone unless frozen) on the training split, test once on
    whole test images by sliding windows. A fixed recipe: no selection on validation. None when a signal stopped
    the fit."""
    config, task = context.config, context.task
    mode = config["mode"]
    if task.ignore_index is None:
        raise ValueError(f"mode=segment needs a segmentation task (ade20k, voc2012, segfolder); {task.name} classifies")
    seed_all(stable_seed(config["seed"], "fit", "segment"))
    backbone, meta = context.load_backbone()
    image_size = backbone.patch_embed.img_size
    train_spec, test_spec = segmentation_specs(config, image_size, *normalization(config, meta, task.train))
    plan = downstream_plan(config, mode, task.train, trains=True)
    run = DownstreamRun(task.num_classes, plan, config["seed"], meta, config["trainer"]["max_bad_steps"])
    module = build_segmentation(backbone, mode, run, task.ignore_index)
    data = TaskDataModule(task.train, task.test, train_spec, test_spec, plan)
    trainer_config = dict(config["trainer"])
    if mode["gradient_clip_val"] is not None:
        trainer_config["gradient_clip_val"] = mode["gradient_clip_val"]
    trainer = build_trainer(
        trainer_config,
        config["logger"],
        context.run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["image"].shape[0],
    )
    log.info(
        "segment (%s head) on %s (%d images): %s", mode["head"], task.name, task.train.num_samples, plan.describe()
    )
    resume = str(config["resume"])
    checkpoint = resume_checkpoint(trainer, resume, context.run_dir, config["trainer"]["universal_checkpoint_wait_s"])
    with frozen_parts_expected() if mode["freeze_backbone"] else contextlib.nullcontext():
        trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=False)
    if stopped_by_signal(trainer) is not None:
        return None
    save_final_checkpoint(trainer)
    started = time.perf_counter()
    trainer.test(module, datamodule=data)
    speed = round(task.test.num_samples / (time.perf_counter() - started), 2)
    metrics = {name: module.scores[name] for name in ("miou", "pixel_accuracy")}
    names = [*task.train.classes, *(f"class_{k}" for k in range(len(task.train.classes), task.num_classes))]
    per_class = dict(zip(names, module.scores["per_class_iou"], strict=True))
    return ModeOutcome(metrics, trainer, image_size, meta, speed, notes={"per_class_iou": per_class})


@dataclass(frozen=True)
class Mode:
    """How a mode runs (``run(context)`` -> its outcome, None when a signal stopped it)."""

    run: Callable[[DownstreamContext], ModeOutcome | None]


FINE_TUNING = FitMode(build_finetune, ema_callbacks, frozen_backbone=False)
MODES: dict[str, Mode] = {
    "linear": Mode(run_linear),
    "knn": Mode(run_knn),
    "linear_mae": Mode(partial(run_fit, fit_mode=FitMode(build_linear, no_callbacks, frozen_backbone=True))),
    "finetune": Mode(partial(run_fit, fit_mode=FINE_TUNING)),
    "finetune_mae": Mode(partial(run_fit, fit_mode=FINE_TUNING)),
    "segment": Mode(run_segment),
}


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; an unknown name lists the known ones."""
    return lookup(MODES, name, "mode")

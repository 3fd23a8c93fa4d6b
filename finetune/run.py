"""Evaluate a pretrained backbone on a downstream task: linear probe, full fine-tune or k-NN.

    python finetune/run.py ckpt=outputs/pretrain/<run>/backbone.safetensors      # demo shards, linear probe, CPU
    python finetune/run.py task=cifar100 data_root=~/data ckpt=PATH mode=finetune  # from CIFAR's python pickles
    python finetune/run.py -m task=vtab_dtd,vtab_eurosat mode=linear,knn data_root=~/vtab-1k ckpt=PATH
    python finetune/report.py multirun/finetune/<date>                             # one table of a sweep
    python finetune/run.py --help                                                  # tasks, modes, every option

Writes ``run_dir/results.json`` (task, mode, checkpoint, config hash, top-1/top-5 in percent on the test split,
images/s, ...), the same to the W&B run summary (``logger=wandb``), and training checkpoints under
``run_dir/checkpoints`` (``resume=auto`` continues from them, e.g. after a SLURM requeue).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from data_pipelines.manifest import write_json_atomic
from data_pipelines.transforms import TransformOptions
from finetune.data import LoaderSpec, TaskDataModule
from finetune.modes import Mode, get_mode
from finetune.modes.common import DownstreamRun
from finetune.results import RESULTS_FILE, git_commit
from finetune.tasks import Task, build_task
from pretrain.engine.architecture import backbone_options
from pretrain.engine.backbone_io import load_backbone
from pretrain.engine.config import config_hash, optional_group, settings
from pretrain.engine.lifecycle import (
    close_loggers,
    resolve_resume,
    save_final_checkpoint,
    set_cpu_threads,
    was_requeued,
)
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan, plan_run
from pretrain.engine.trainer import build_trainer
from pretrain.models.vit import VisionTransformer

log = logging.getLogger("finetune")


def load_pretrained(config: Mapping[str, Any]) -> tuple[VisionTransformer, BackboneMeta]:
    """The backbone of ``ckpt`` (random for ``ckpt=null``) at ``image_size``, and the checkpoint's metadata."""
    options = {"drop_path_rate": config["mode"]["drop_path_rate"]} if "drop_path_rate" in config["mode"] else {}
    model = optional_group(config, "model")
    if model:
        options = {**backbone_options(model), **options}
    if config["image_size"]:
        options["img_size"] = config["image_size"]
    if config["ckpt"] is None:
        if not model:
            raise ValueError("ckpt=null (the randomly initialized baseline) needs an architecture: add model=vit_base")
        return VisionTransformer(**options), BackboneMeta.for_architecture(options)
    return load_backbone(Path(config["ckpt"]).expanduser(), options)


def downstream_plan(config: Mapping[str, Any], task: Task, mode: Mode) -> RunPlan:
    """``mode.epochs`` over the task's training images (``trainer.max_steps`` caps it); k-NN trains no steps."""
    mode_config = config["mode"]
    plan = plan_run(
        config["trainer"],
        mode_config["batch_size"],
        samples_per_epoch=task.train.num_samples,
        epochs=mode_config["epochs"] if mode.trains else 0,
    )
    if mode.trains and plan.steps_per_epoch == 0:
        raise ValueError(
            f"task {task.name} has {task.train.num_samples} training images, fewer than one global batch "
            f"({plan.global_batch}): lower mode.batch_size"
        )
    return plan


def task_data(config: Mapping[str, Any], task: Task, mode: Mode, image_size: int, meta: BackboneMeta) -> TaskDataModule:
    """Loaders at the backbone's resolution, normalized as in pretraining (else with the configured mean/std)."""
    mode_config = config["mode"]
    common = dict(
        batch_size=mode_config["batch_size"],
        num_workers=config["num_workers"],
        mean=tuple(meta.mean or config["mean"]),
        std=tuple(meta.std or config["std"]),
        seed=config["seed"],
        shuffle_buffer=config["shuffle_buffer"],
        pin_memory=config["pin_memory"],
    )
    eval_options = TransformOptions(
        image_size=image_size,
        crop_scale=None,
        crop_ratio=None,
        eval_crop_fraction=config["task"]["eval_crop_fraction"],
        randaugment=None,
    )
    test_spec = LoaderSpec("eval", eval_options, training=False, **common)
    train_spec = None
    if mode.trains:
        options = TransformOptions(
            image_size=image_size,
            crop_scale=mode_config["crop_scale"],
            crop_ratio=mode_config["crop_ratio"],
            eval_crop_fraction=None,
            randaugment=mode_config["randaugment"],
        )
        train_spec = LoaderSpec(mode_config["train_transform"], options, training=True, **common)
    tests = [task.train, task.test] if mode.tests_on_training_images else [task.test]
    return TaskDataModule(task.train, tests, train_spec, test_spec)


def cache_training_features(trainer: L.Trainer, module: L.LightningModule, data: TaskDataModule) -> None:
    """One pass of the frozen backbone over the training images; the head then trains on these features."""
    batches = trainer.predict(module, datamodule=data)
    features = torch.cat([batch["features"] for batch in batches])
    per_rank = int(trainer.strategy.all_gather(torch.tensor(len(features))).min())
    data.cache_training_features(features, torch.cat([batch["label"] for batch in batches]), per_rank)
    log.info("cached %d training features of dimension %d", *features.shape)


def train(
    trainer: L.Trainer, module: L.LightningModule, data: TaskDataModule, config: Mapping[str, Any], run_dir: Path
) -> bool:
    """Fit for the run's schedule (resuming per ``resume``) and keep the final weights as a checkpoint.

    False when the SLURM warning signal stopped the fit: the requeued job resumes and evaluates.
    """
    if config["mode"]["name"] == "linear" and config["mode"]["cache_features"]:
        cache_training_features(trainer, module, data)
    trainer.fit(module, datamodule=data, ckpt_path=resolve_resume(str(config["resume"]), run_dir))
    if was_requeued(trainer):
        return False
    save_final_checkpoint(trainer, run_dir, config["trainer"]["checkpoint_every_n_steps"])
    return True


def evaluate(trainer: L.Trainer, module: L.LightningModule, data: TaskDataModule) -> tuple[dict[str, float], float]:
    """Accuracies in percent (``top1``, ``top5``) and the images per second of the test pass (all devices)."""
    started = time.perf_counter()
    trainer.test(module, datamodule=data)
    images = sum(split.num_samples for split in data.tests)
    metrics = {
        name.removeprefix("test/"): round(float(value), 4)
        for name, value in trainer.callback_metrics.items()
        if name.startswith("test/")
    }
    return metrics, round(images / (time.perf_counter() - started), 2)


def record(results: dict[str, Any], trainer: L.Trainer, run_dir: Path) -> None:
    """``run_dir/results.json`` and, with ``logger=wandb``, the W&B run summary (rank 0 only)."""
    if not trainer.is_global_zero:
        return
    write_json_atomic(run_dir / RESULTS_FILE, results)
    log.info("%s %s: %s -> %s", results["task"], results["mode"], results["metrics"], run_dir / RESULTS_FILE)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(results)


def finetune(config: Mapping[str, Any], run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train (unless k-NN) and test per the resolved ``config``; returns what it writes to ``run_dir/results.json``.

    ``overrides`` (the command line's) are recorded so that ``finetune/report.py`` can tell settings apart.
    """
    config = settings(config)
    L.seed_everything(config["seed"], workers=True)
    mode_name = config["mode"]["name"]
    mode = get_mode(mode_name)
    task = build_task(config["task"])
    plan = downstream_plan(config, task, mode)
    set_cpu_threads(config["trainer"], plan.devices, config["num_workers"])
    backbone, meta = load_pretrained(config)
    run = DownstreamRun(task.num_classes, plan, config["seed"], meta, config["trainer"]["max_bad_steps"])
    module = mode.build(backbone, config["mode"], run)
    data = task_data(config, task, mode, backbone.patch_embed.img_size, meta)
    trainer = build_trainer(
        config["trainer"],
        config["logger"],
        run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["label"].shape[0],
        callbacks=mode.callbacks(config["mode"]),
    )
    if mode.trains:
        log.info("%s on %s: %s", mode_name, task.name, plan.describe())
        if not train(trainer, module, data, config, run_dir):
            return {}
    metrics, images_per_s = evaluate(trainer, module, data)
    results = {
        "task": task.name,
        "mode": mode_name,
        "checkpoint": config["ckpt"],
        "config_hash": config_hash(config),
        "metrics": metrics,
        "num_train": task.train.num_samples,
        "num_test": task.test.num_samples,
        "images_per_s": images_per_s,
        "seed": config["seed"],
        "git_commit": git_commit(),
        "group": task.group,
        "num_classes": task.num_classes,
        "train_splits": config["task"]["train"],
        "test_splits": config["task"]["test"],
        "image_size": backbone.patch_embed.img_size,
        "pretraining": {"objective": meta.objective, "step": meta.step, "config_hash": meta.config_hash},
        "overrides": list(overrides),
    }
    record(results, trainer, run_dir)
    close_loggers(trainer)
    return results


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run = HydraConfig.get()
    finetune(OmegaConf.to_container(cfg, resolve=True), Path(run.runtime.output_dir), list(run.overrides.task))


if __name__ == "__main__":
    main()

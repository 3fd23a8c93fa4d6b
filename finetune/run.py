"""Evaluate a pretrained backbone on a downstream task: selecting linear probe, k-NN or fine-tuning.

    python finetune/run.py ckpt=outputs/pretrain/<run>/backbone.safetensors      # demo shards, linear probe, CPU
    python finetune/run.py task=cifar100 data_root=~/data ckpt=PATH mode=finetune  # from CIFAR's python pickles
    python finetune/run.py task=vtab_dtd data_root=~/vtab-1k ckpt=PATH            # the VTAB-1k protocol, one command
    python finetune/run.py -m task=vtab_dtd,vtab_eurosat mode=linear,knn data_root=~/vtab-1k ckpt=PATH
    python finetune/report.py multirun/finetune/<date>                             # one table of a sweep
    python finetune/run.py --help                                                  # tasks, modes, every option

Hyper-parameters are chosen on the task's validation split (or a seeded hold-out of its training split), the
choice is refit on the training split and tested once (``finetune/modes/``). Writes ``run_dir/results.json``
(task, mode, checkpoint, config hash, top-1/top-5 in percent on the test split, the grid searched, every
candidate's validation score and the choice, images/s, ...), the same to the W&B run summary (``logger=wandb``),
and training checkpoints under ``run_dir/checkpoints`` (``resume=auto`` continues from them, e.g. after a SLURM
requeue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from data_pipelines.manifest import write_json_atomic
from finetune.modes import get_mode
from finetune.modes.common import DownstreamContext
from finetune.results import RESULTS_FILE, git_commit
from finetune.tasks import task_of
from pretrain.engine.architecture import backbone_options
from pretrain.engine.backbone_io import load_backbone
from pretrain.engine.config import Settings, config_hash, optional_group, settings
from pretrain.engine.cpu_threads import set_cpu_threads
from pretrain.engine.lifecycle import close_loggers
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import devices_per_node
from pretrain.engine.signals import handle_signals, stop_requested
from pretrain.hydra_job import job_config, job_dir
from pretrain.models.vit import VisionTransformer

log = logging.getLogger("finetune")


# What ckpt= accepts (conf/finetune.yaml), for the errors that say what to pass.
CKPT_FORMS = (
    "an exported backbone (ckpt=outputs/demo/backbone.safetensors or its folder), a Lightning checkpoint "
    "(ckpt=RUN/checkpoints/step_000300.ckpt), a DeepSpeed checkpoint directory, timm/HF state dicts with their "
    "architecture (ckpt=vit_base.pth model=vit_base), or ckpt=null model=vit_base for the randomly initialized baseline"
)
MISSING_CKPT = f"finetune/run.py needs ckpt=: {CKPT_FORMS}"
EMPTY_CKPT = f"ckpt is empty (ckpt= with no value): pass {CKPT_FORMS}"


def checkpoint_path(ckpt: str | None) -> Path | None:
    """The weights ``ckpt`` names (None: ``ckpt=null``, the random baseline); an empty value says what to pass
    (as a path it would be the current folder)."""
    if ckpt is None:
        return None
    if not str(ckpt).strip():
        raise ValueError(EMPTY_CKPT)
    return Path(ckpt).expanduser()


def load_pretrained(config: Mapping[str, Any]) -> tuple[VisionTransformer, BackboneMeta]:
    """The backbone of ``ckpt`` (random for ``ckpt=null``) at ``image_size``, and the checkpoint's metadata."""
    drop_path_rate = config["mode"]["drop_path_rate"]
    options = {"drop_path_rate": drop_path_rate} if drop_path_rate is not None else {}
    model = optional_group(config, "model")
    if model:
        options = {**backbone_options(model), **options}
    if config["image_size"]:
        options["img_size"] = config["image_size"]
    if config["in_chans"]:
        options["in_chans"] = config["in_chans"]
    checkpoint = checkpoint_path(config["ckpt"])
    if checkpoint is None:
        if not model:
            raise ValueError("ckpt=null (the randomly initialized baseline) needs an architecture: add model=vit_base")
        bands = config["bands"]
        if bands is not None and not options.get("channel_tokens"):
            options["in_chans"] = len(bands)
        backbone = VisionTransformer(**options)
        if bands is not None and options.get("channel_tokens"):
            backbone.patch_embed.select_channels(bands)
        return backbone, BackboneMeta.for_architecture(options)
    return load_backbone(checkpoint, options, bands=config["bands"])


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
    """Run the mode on the task per the resolved ``config``; returns what it writes to ``run_dir/results.json``
    (empty when a signal stopped it: SLURM's warning requeues the job, which finishes the work).

    ``overrides`` (the command line's) are recorded so that ``finetune/report.py`` can tell settings apart.
    SIGTERM/SIGINT stop it after a checkpoint, without results, with exit code 128 + the signal's number.
    """
    config = settings(config)
    with handle_signals(config["trainer"]):
        return _finetune(config, run_dir, overrides)


def _finetune(config: Settings, run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    L.seed_everything(config["seed"], workers=True)
    mode = get_mode(config["mode"]["name"])
    set_cpu_threads(config["trainer"], devices_per_node(config["trainer"]))
    task = task_of(config)
    if task.ignore_index is not None and config["mode"]["name"] != "segment":
        raise ValueError(f"task {task.name} is a segmentation task: run it with mode=segment")
    outcome = mode.run(DownstreamContext(config, task, run_dir, lambda: load_pretrained(config)))
    if outcome is None or stop_requested():
        return {}
    meta = outcome.meta
    results = {
        "task": task.name,
        "mode": config["mode"]["name"],
        "checkpoint": config["ckpt"],
        "config_hash": config_hash(config),
        "metrics": outcome.metrics,
        "num_train": task.train.num_samples,
        "num_test": task.test.num_samples,
        "images_per_s": outcome.images_per_s,
        "seed": config["seed"],
        "git_commit": git_commit(),
        "group": task.group,
        "num_classes": task.num_classes,
        "train_splits": config["task"]["train"],
        "test_splits": config["task"]["test"],
        "eval_crop_fraction": task.eval_crop_fraction,
        "bands": config["bands"],
        "image_size": outcome.image_size,
        "selection": outcome.selection,
        **outcome.notes,
        "pretraining": {"objective": meta.objective, "step": meta.step, "config_hash": meta.config_hash},
        "overrides": list(overrides),
    }
    record(results, outcome.trainer, run_dir)
    close_loggers(outcome.trainer)
    return results


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise SystemExit(MISSING_CKPT)
    finetune(job_config(cfg), job_dir(), list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()

"""Pretrain a ViT (MAE or supervised) on WebDataset shards.

    python pretrain/run.py                                  # MAE on the demo shards, CPU, ~2 minutes
    python pretrain/run.py objective=supervised logger=csv  # supervised instead, metrics to CSV
    python pretrain/run.py --help                           # config groups and every option
    python pretrain/run.py -m optim.base_lr=1e-4,3e-4       # a Hydra sweep

Writes ``run_dir/checkpoints/step_N.ckpt`` while training (atomically), resumes from the newest one when
started again on the same ``run_dir`` (``resume=auto``), and exports ``run_dir/backbone.safetensors`` +
``backbone.json`` at the end. SIGTERM/SIGINT save a checkpoint and exit 128 + the signal number (143, 130).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from data_pipelines.demo import ensure_demo_shards
from data_pipelines.manifest import channel_normalization, read_manifest, verify_manifest_counts
from pretrain.checks import check_pretraining_config, check_pretraining_plan
from pretrain.engine.architecture import backbone_options
from pretrain.engine.backbone_io import export_checkpoint
from pretrain.engine.config import Settings, settings
from pretrain.engine.cpu_threads import set_cpu_threads
from pretrain.engine.lifecycle import (
    check_same_backbone,
    close_loggers,
    continued_on_requeue,
    fit,
    resolve_resume,
    resume_step,
)
from pretrain.engine.plan import RunPlan, accumulation, devices_per_node, plan_run
from pretrain.engine.run_dir import claim_run_dir, own_run_dir
from pretrain.engine.shard_data import ShardDataModule
from pretrain.engine.signals import handle_signals, stop_requested
from pretrain.engine.trainer import build_trainer
from pretrain.hydra_job import job_config, job_dir, save_job_files
from pretrain.objectives.build import build_module, stream_config
from pretrain.objectives.objective import objective_named

log = logging.getLogger("pretrain")
FAR_FROM_STATISTICS = 3  # standard deviations between a configured and the shards' own mean that warn


def pretrain(config: Mapping[str, Any], run_dir: Path, record_config: Callable[[], None] | None = None) -> Path:
    """Train per the resolved ``config`` in ``run_dir`` and return it.

    The run owns ``run_dir`` throughout (:mod:`pretrain.engine.run_dir`); ``record_config`` (Hydra's ``.hydra/``)
    is called once the config is known to fit the run there. SIGTERM or SIGINT: checkpoint after the current step,
    export nothing, exit 128 + the signal's number; SLURM's warning signal: checkpoint and requeue
    (:mod:`pretrain.engine.signals`).
    """
    config = settings(config)
    with handle_signals(config["trainer"]), own_run_dir(run_dir):
        _pretrain(config, run_dir, record_config)
    return run_dir


def _pretrain(config: Mapping[str, Any], run_dir: Path, record_config: Callable[[], None] | None) -> None:
    L.seed_everything(config["seed"], workers=True)
    data = config["data"]
    objective = objective_named(config["objective"]["name"])
    backbone = backbone_options(config["model"])  # once per run: every part below builds from these
    if data["make_demo"]:
        ensure_demo_shards(data["shards"], data["image_size"])
    manifest = shard_manifest(data)
    check_pretraining_config(config, manifest)  # every bad value fails here, before run_dir is touched
    config = with_normalization(config, manifest, backbone["in_chans"])
    data = config["data"]
    plan = pretraining_plan(config, manifest)
    check_pretraining_plan(config, plan)
    resume_option = continued_on_requeue(str(config["resume"]))
    if rank_zero_only.rank == 0:
        claim_run_dir(run_dir, resume_option, config["overwrite"])
    resume = resolve_resume(resume_option, run_dir)
    if resume is not None:
        check_same_backbone(Path(resume), backbone)
    if record_config is not None and rank_zero_only.rank == 0:
        record_config()
    log.info("%s", plan.describe())
    set_cpu_threads(config["trainer"], plan.devices)
    num_classes = objective.num_classes(config["objective"], manifest)
    module = build_module(config, plan, objective, backbone, num_classes, arrays=bool(manifest.get("arrays")))
    datamodule = ShardDataModule(stream_config(config, plan, objective), plan, data["order"], data["shuffle_shards"])
    tokens = objective.tokens_per_image(config["objective"], backbone)
    trainer = build_trainer(
        config["trainer"],
        config["logger"],
        run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["image"].shape[0],
        tokens_fn=lambda batch: batch["image"].shape[0] * tokens,
        callbacks=objective.panels(config, backbone),
        start_step=resume_step(resume),
    )
    final = fit(trainer, module, datamodule, resume, config["trainer"]["universal_checkpoint_wait_s"])
    if final is not None and config["export_backbone"] and trainer.is_global_zero and not stop_requested():
        export_checkpoint(final, run_dir)  # the file this run just wrote, never one found again by name
        log.info("exported the backbone to %s", run_dir / "backbone.safetensors")
    close_loggers(trainer)


def pretraining_plan(config: Mapping[str, Any], manifest: Mapping[str, Any]) -> RunPlan:
    """``epochs`` (``trainer.max_steps`` caps them) of ``data.batches_per_epoch`` per rank (null: the shards'
    images divided by the global batch, in whole steps)."""
    data, trainer = config["data"], config["trainer"]
    batches = data["batches_per_epoch"]
    if batches is None:  # whole optimizer steps, at least one per epoch however few the images
        per_step = data["batch_size"] * trainer["num_nodes"] * devices_per_node(trainer)
        accumulate = accumulation(trainer, data["batch_size"])
        batches = max(1, manifest["total"] // (per_step * accumulate)) * accumulate
    return plan_run(trainer, data["batch_size"], batches_per_epoch=batches, epochs=config["epochs"])


def with_normalization(config: Settings, manifest: Mapping[str, Any], in_chans: int) -> Settings:
    """``config`` with ``data.mean``/``data.std`` filled in from the shards' channel statistics when they are null
    (array shards: one value per channel, of ``data.bands``), after checking them against the ``in_chans`` the
    model reads."""
    data = dict(config["data"])
    if data["mean"] is None or data["std"] is None:
        if not manifest.get("manifests"):
            raise ValueError("data.mean/data.std null takes them from the shards' manifest, and these shards have none")
        data["mean"], data["std"] = channel_normalization(manifest, data["bands"])
        log.info("normalizing with the shards' channel statistics: mean %s, std %s", data["mean"], data["std"])
    elif manifest.get("arrays"):
        warn_if_far_from_statistics(data, manifest)
    if len(data["mean"]) != in_chans or len(data["std"]) != in_chans:
        raise ValueError(
            f"model.in_chans={in_chans} but data.mean/data.std have {len(data['mean'])}/{len(data['std'])} values: "
            "give one per channel the model reads (data.bands selects channels; null takes the shards' statistics)"
        )
    return settings({**config, "data": data})


def warn_if_far_from_statistics(data: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Arrays are normalized in their stored units: a given mean far from the shards' own (ImageNet's 0-1 mean on
    12-bit bands) is almost always a units mistake, so say so (data.mean=null takes the shards' statistics)."""
    mean, std = channel_normalization(manifest, data["bands"])
    far = [
        index
        for index, (given, own, spread) in enumerate(zip(data["mean"], mean, std, strict=False))
        if abs(given - own) > FAR_FROM_STATISTICS * max(spread, 1e-12)
    ]
    if far:
        log.warning(
            "data.mean is more than %d standard deviations from the shards' own mean on channels %s (shards: %s): "
            "arrays are normalized in their stored units; data.mean=null data.std=null takes the shards' statistics",
            FAR_FROM_STATISTICS,
            far,
            [round(value, 3) for value in mean],
        )


def shard_manifest(data: Mapping[str, Any]) -> dict[str, Any]:
    """The shards' manifest, checked against the local shards it describes; shards without one (``pipe:``/``http``
    streams) need ``data.batches_per_epoch``."""
    try:
        manifest = read_manifest(data["shards"], data["manifest"])
    except FileNotFoundError:
        if not data["batches_per_epoch"]:
            raise
        log.warning(
            "no manifest for %s: epochs of data.batches_per_epoch=%d batches", data["shards"], data["batches_per_epoch"]
        )
        return {"total": None, "num_classes": None}
    verify_manifest_counts(manifest)  # before run_dir is touched; the streams' own check then costs a stat a shard
    return manifest


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = job_dir()
    pretrain(job_config(cfg), run_dir, record_config=lambda: save_job_files(cfg, run_dir))


if __name__ == "__main__":
    main()

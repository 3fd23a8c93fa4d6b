"""Pretrain a ViT (MAE or supervised) on WebDataset shards.

    python pretrain/run.py                                  # MAE on the demo shards, CPU, ~2 minutes
    python pretrain/run.py objective=supervised logger=csv  # supervised instead, metrics to CSV
    python pretrain/run.py --help                           # config groups and every option
    python pretrain/run.py -m optim.base_lr=1e-4,3e-4       # a Hydra sweep

Writes ``run_dir/checkpoints/step=N.ckpt`` while training (atomically), resumes from the newest one when
started again on the same ``run_dir`` (``resume=auto``), and exports ``run_dir/backbone.safetensors`` +
``backbone.json`` at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data_pipelines.manifest import read_manifest
from pretrain.build import build_module, config_hash, stream_config, tokens_per_image
from pretrain.callbacks import ReconstructionLogger
from pretrain.data import ShardDataModule
from pretrain.export import export_checkpoint
from pretrain.runtime import (
    close_loggers,
    ensure_demo_shards,
    resolve_resume,
    save_final_checkpoint,
    set_cpu_threads,
    was_requeued,
)
from pretrain.trainer import build_trainer

log = logging.getLogger("pretrain")

def pretrain(cfg: DictConfig) -> Path:
    """Train per ``cfg`` and return the run directory."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(config["seed"], workers=True)
    set_cpu_threads(config["trainer"], config["data"])
    data, objective = config["data"], config["objective"]
    if data["make_demo"]:
        ensure_demo_shards(data)
    manifest = shard_manifest(data)
    tokens = tokens_per_image(objective, config["model"])
    trainer = build_trainer(
        config["trainer"],
        config["logger"],
        run_dir,
        run_config=config,
        batch_size_fn=lambda batch: batch["image"].shape[0],
        tokens_fn=lambda batch: batch["image"].shape[0] * tokens,
        callbacks=_image_callbacks(config),
    )
    accumulate = config["trainer"]["accumulate_grad_batches"]
    global_batch = data["batch_size"] * trainer.world_size * accumulate
    batches_per_epoch = data["batches_per_epoch"] or max(1, manifest["total"] // (global_batch // accumulate))
    log.info(
        "%d node(s) x %d device(s) = %d processes; global batch %d (%d per device x %d accumulation); "
        "%d batches per rank per epoch",
        trainer.num_nodes, trainer.num_devices, trainer.world_size, global_batch, data["batch_size"], accumulate,
        batches_per_epoch,
    )
    num_classes = objective.get("num_classes") or manifest["num_classes"] or 0
    if objective["name"] == "supervised" and not num_classes:
        raise ValueError("supervised pretraining needs labeled shards (a manifest with classes) or objective.num_classes")
    meta = {"objective": objective["name"], "objective_config": objective, "mean": data["mean"], "std": data["std"], "config_hash": config_hash(config)}
    module = build_module(config, num_classes, global_batch, meta)
    stream = stream_config(data, batches_per_epoch, config["seed"], transform=objective["name"])
    datamodule = ShardDataModule(stream, accumulate)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_resume(str(config["resume"]), run_dir))
    if was_requeued(trainer):
        return run_dir
    final = save_final_checkpoint(trainer, run_dir, config["trainer"]["checkpoint_every_n_steps"])
    if config["export_backbone"] and trainer.is_global_zero:
        export_checkpoint(final, run_dir)
        log.info("exported the backbone to %s", run_dir / "backbone.safetensors")
    close_loggers(trainer)
    return run_dir


def shard_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """The shards' manifest; shards without one (``pipe:``/``http`` streams) need ``data.batches_per_epoch``."""
    try:
        return read_manifest(data["shards"], data["manifest"])
    except FileNotFoundError:
        if not data["batches_per_epoch"]:
            raise
        log.warning("no manifest for %s: epochs of data.batches_per_epoch=%d batches", data["shards"], data["batches_per_epoch"])
        return {"total": None, "num_classes": None}


def _image_callbacks(config: dict[str, Any]) -> list[L.Callback]:
    every = config["logger"].get("log_images_every_n_steps", 0)
    if config["objective"]["name"] != "mae" or not every:
        return []
    logger = config["logger"]
    return [ReconstructionLogger(every, config["data"]["mean"], config["data"]["std"], logger["num_images"])]


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()

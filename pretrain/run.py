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
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data_pipelines.demo import write_demo_shards
from data_pipelines.manifest import read_manifest
from pretrain.build import build_module, config_hash, stream_config, tokens_per_image
from pretrain.callbacks import ReconstructionLogger
from pretrain.checkpointing import find_resume_checkpoint, read_checkpoint
from pretrain.data import ShardDataModule
from pretrain.export import export_checkpoint
from pretrain.trainer import CHECKPOINT_SUBDIR, build_trainer

log = logging.getLogger("pretrain")

DEMO_WAIT_SECONDS = 300


def launch_rank() -> int:
    """This process's global rank as its launcher (SLURM, torchrun, Lightning) announced it, before any init."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
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
    """On CPU, leave one core per loader worker: oversubscribed OpenMP threads spin and can run 10x slower."""
    if trainer["accelerator"] != "cpu":
        return
    threads = trainer.get("cpu_threads") or max(1, (os.cpu_count() or 1) - data["num_workers"])
    torch.set_num_threads(threads)
    log.info("using %d CPU thread(s) for compute next to %d loader worker(s)", threads, data["num_workers"])


def resolve_resume(resume: str, run_dir: Path) -> str | None:
    """``auto``: the newest complete checkpoint of this run (incl. SLURM ``hpc_ckpt_*``); ``none``; or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        newest = max(
            (p for p in (find_resume_checkpoint(run_dir / CHECKPOINT_SUBDIR), find_resume_checkpoint(run_dir)) if p),
            key=lambda path: read_checkpoint(path)["global_step"] if path.is_file() else -1,
            default=None,
        )
        if newest is not None:
            log.info("resuming from %s", newest)
        return str(newest) if newest is not None else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint (use resume=auto or resume=none)")
    if Path(resume).is_file():
        read_checkpoint(resume)  # fails early with a clear message when unreadable
    return resume


def pretrain(cfg: DictConfig) -> Path:
    """Train per ``cfg`` and return the run directory."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(config["seed"], workers=True)
    set_cpu_threads(config["trainer"], config["data"])
    data, objective = config["data"], config["objective"]
    if data["make_demo"]:
        ensure_demo_shards(data)
    manifest = read_manifest(data["shards"])
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
    meta = {"objective": objective["name"], "objective_config": objective, "mean": data["mean"], "std": data["std"], "config_hash": config_hash(config)}
    module = build_module(config, num_classes, global_batch, meta)
    stream = stream_config(data, batches_per_epoch, config["seed"], transform=objective["name"])
    datamodule = ShardDataModule(stream, accumulate)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_resume(str(config["resume"]), run_dir))
    if any(getattr(callback, "requeued", False) for callback in trainer.callbacks):
        log.info("stopped at step %d: the requeued job resumes from its checkpoint", trainer.global_step)
        return run_dir
    final = run_dir / CHECKPOINT_SUBDIR / f"step={trainer.global_step:06d}.ckpt"
    if trainer.global_step % config["trainer"]["checkpoint_every_n_steps"]:  # same answer on every rank
        trainer.save_checkpoint(final)
    if config["export_backbone"] and trainer.is_global_zero:
        export_checkpoint(final, run_dir)
        log.info("exported the backbone to %s", run_dir / "backbone.safetensors")
    return run_dir


def _image_callbacks(config: dict[str, Any]) -> list[L.Callback]:
    every = config["logger"].get("log_images_every_n_steps", 0)
    if config["objective"]["name"] != "mae" or not every:
        return []
    return [ReconstructionLogger(every, config["data"]["mean"], config["data"]["std"])]


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()

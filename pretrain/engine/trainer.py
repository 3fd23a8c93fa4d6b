"""The one trainer factory: every app (pretrain, finetune) gets its Lightning ``Trainer`` from here.

It turns the ``trainer`` and ``logger`` config groups into a strategy (ddp / deepspeed), precision, logger,
checkpointing, throughput and learning-rate monitoring, and stopping on signals (SLURM requeue included). The run's
length and layout come in as a :class:`~pretrain.engine.plan.RunPlan`, settled before the Trainer exists.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only

from data_pipelines.registry import check_name, lookup
from pretrain.engine.checkpoints import CHECKPOINT_SUBDIR, AtomicCheckpointIO
from pretrain.engine.config import plain
from pretrain.engine.console import RunProgressBar, quiet_lightning
from pretrain.engine.cpu_threads import LoaderAwareThreads, cores_per_process
from pretrain.engine.csv_log import ResumedCSVLogger
from pretrain.engine.loop_progress import LayoutChange
from pretrain.engine.plan import RunPlan
from pretrain.engine.run_checkpoints import RunCheckpoints
from pretrain.engine.signals import StopOnSignal, active_signals
from pretrain.engine.step_metrics import StepThroughput

log = logging.getLogger(__name__)

WANDB_RUN_ID_FILE = "wandb_run_id"
CPU_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true")  # Lightning's CPU plugins (no fp16 autocast on CPU)


def _ddp(config: Mapping[str, Any], plan: RunPlan) -> Strategy:
    backend = "gloo" if config["accelerator"] == "cpu" else None
    return DDPStrategy(process_group_backend=backend)


def deepspeed_strategy(
    config: Mapping[str, Any], plan: RunPlan, strategy_class: type[DeepSpeedStrategy] = DeepSpeedStrategy
) -> DeepSpeedStrategy:
    """Lightning's DeepSpeed strategy for the ``trainer`` group (``strategy_class``: a subclass, e.g. for tests)."""
    # The micro-batch is the plan's: Lightning would read it off the loader's batch sampler, which streams lack.
    return strategy_class(
        stage=config["zero_stage"],
        offload_optimizer=config["offload_optimizer"],
        reduce_bucket_size=config["reduce_bucket_size"],
        logging_batch_size_per_gpu=plan.batch_size,
    )


STRATEGIES: dict[str, Callable[[Mapping[str, Any], RunPlan], Strategy | str]] = {
    "auto": lambda config, plan: "auto",
    "ddp": _ddp,
    "deepspeed": deepspeed_strategy,
}


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc; without one W&B runs offline."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def kept_wandb_run_id(run_dir: Path, fresh: bool) -> str:
    """The W&B run id of ``run_dir``, kept in ``run_dir/wandb_run_id``: a run resumed or requeued on the same run
    directory continues its W&B run; ``fresh`` (``resume=none``) starts a new one. The first process to write the
    file sets the id for all (a hard link cannot replace an existing file); only the one that logs (rank 0) ever
    removes it, and the others never log, so an old id read by them does no harm."""
    path = run_dir / WANDB_RUN_ID_FILE
    if fresh and rank_zero_only.rank == 0:
        path.unlink(missing_ok=True)
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        candidate.write_text(uuid.uuid4().hex[:8] + "\n")  # W&B's own ids: 8 lowercase letters and digits
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
        candidate.unlink()
    return path.read_text().strip()


def _wandb_logger(config: Mapping[str, Any], run_dir: Path, run_config: Mapping[str, Any], start_step: int) -> Logger:
    mode = config["mode"]
    offline = mode == "offline" or (mode == "auto" and not has_wandb_credentials())
    if offline:
        log.info("W&B runs offline in %s; upload later with: wandb sync %s/wandb/offline-run-*", run_dir, run_dir)
    return WandbLogger(
        project=config["project"],
        entity=config["entity"],
        group=config["group"],
        name=config["name"],
        id=config["run_id"] or kept_wandb_run_id(run_dir, fresh=run_config.get("resume") == "none"),
        tags=list(config["tags"]),
        save_dir=str(run_dir),
        offline=offline,
        resume="allow",
        config=plain(run_config),
    )


def _csv_logger(config: Mapping[str, Any], run_dir: Path, run_config: Mapping[str, Any], start_step: int) -> Logger:
    logger = ResumedCSVLogger(str(run_dir), start_step, name="csv", version="")
    logger.log_hyperparams(plain(run_config))
    return logger


# Each takes the logger group, the run directory, the run's config and the step the run starts at (its resume).
LOGGERS: dict[str, Callable[[Mapping[str, Any], Path, Mapping[str, Any], int], Logger | None]] = {
    "wandb": _wandb_logger,
    "csv": _csv_logger,
    "none": lambda config, run_dir, run_config, start_step: None,
}


def in_sweep(logger: Mapping[str, Any], sweep_dir: str, job_overrides: str) -> dict[str, Any]:
    """The ``logger`` config of one job of a sweep in ``sweep_dir``: unless the config names them, its W&B runs share
    the sweep directory as their group and each is named by its job's overrides (Hydra's ``override_dirname``)."""
    if logger["kind"] != "wandb":
        return dict(logger)
    return {**logger, "group": logger["group"] or sweep_dir, "name": logger["name"] or job_overrides or None}


def build_logger(
    config: Mapping[str, Any], run_dir: Path, run_config: Mapping[str, Any], start_step: int = 0
) -> Logger | None:
    """The logger of the ``logger`` group; ``start_step``: the step of the checkpoint the run resumes from."""
    return lookup(LOGGERS, config["kind"], "logger")(config, run_dir, run_config, start_step)


def build_trainer(
    config: Mapping[str, Any],
    logger_config: Mapping[str, Any],
    run_dir: str | os.PathLike,
    run_config: Mapping[str, Any],
    plan: RunPlan,
    batch_size_fn: Callable[[Any], int],
    tokens_fn: Callable[[Any], int] | None = None,
    callbacks: Iterable[Callback] = (),
    start_step: int = 0,
) -> L.Trainer:
    """A Trainer for ``config`` (the ``trainer`` group) and ``plan``, writing checkpoints under ``run_dir/checkpoints``.

    ``start_step``: the step of the checkpoint the run resumes from (the CSV log keeps its rows up to it).
    Raises when Lightning would lay the run out differently from ``plan`` (the schedule was computed from it).
    """
    run_dir = Path(run_dir)
    quiet_lightning()
    strategy = lookup(STRATEGIES, config["strategy"], "strategy")(config, plan)
    checkpointing = RunCheckpoints(
        run_dir / CHECKPOINT_SUBDIR, config["checkpoint_every_n_steps"], config["keep_checkpoints"]
    )
    logger = build_logger(logger_config, run_dir, run_config, start_step)
    monitors = [
        LearningRateMonitor(logging_interval="step"),
        StepThroughput(config["throughput_window"], batch_size_fn, tokens_fn),
    ]
    all_callbacks = [checkpointing, LayoutChange(plan), *(monitors if logger is not None else []), *callbacks]
    if config["progress_bar"]:
        all_callbacks.append(RunProgressBar(plan))
    plugins: list[Any] = [] if isinstance(strategy, DeepSpeedStrategy) else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Lightning's own auto-requeue checkpoints inside its signal handler; StopOnSignal does it between steps.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    signals = active_signals()
    if signals is not None:
        all_callbacks.append(StopOnSignal(signals, checkpointing))
    if config["accelerator"] == "cpu":
        check_name(str(config["precision"]), CPU_PRECISIONS, "precision on CPU")
        if config["cpu_threads"] is None:
            all_callbacks.append(LoaderAwareThreads(cores_per_process(plan.devices), config["cpu_thread_probe_steps"]))
    if config["accelerator"] == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("trainer.accelerator=gpu but no CUDA device is visible; use trainer=cpu on this machine")
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        accelerator=config["accelerator"],
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=strategy,
        precision=config["precision"],
        max_steps=plan.total_steps,
        max_epochs=-1,
        gradient_clip_val=config["gradient_clip_val"],
        accumulate_grad_batches=plan.accumulate,
        log_every_n_steps=config["log_every_n_steps"],
        callbacks=all_callbacks,
        enable_checkpointing=False,  # RunCheckpoints writes every checkpoint, not Lightning's ModelCheckpoint
        logger=logger if logger is not None else False,
        plugins=plugins,
        enable_progress_bar=config["progress_bar"],
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if trainer.world_size != plan.world_size:
        raise RuntimeError(
            f"Lightning runs {trainer.world_size} processes but the schedule was planned for {plan.world_size} "
            "(trainer.num_nodes x trainer.devices): make them match the launch (srun/torchrun tasks)"
        )
    return trainer

"""Resuming a DeepSpeed ZeRO checkpoint on another number of processes, through DeepSpeed's universal checkpoint.

A ZeRO checkpoint holds one optimizer partition per process, and DeepSpeed refuses to load it on another number of
processes ("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported"). Its universal form (``deepspeed.checkpoint.ds_to_universal``) stores every parameter's full fp32
weights and optimizer moments, which any number of processes can partition again. Rank 0 converts once, beside the
original (``<tag>_universal/`` and ``latest_universal``, written last), the other ranks wait for it, and the engine
is told to load the universal form.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy

log = logging.getLogger(__name__)
UNIVERSAL_TAG_FILE = "latest_universal"  # DeepSpeed's name, written once the conversion is complete
FAILURE_FILE = "universal_conversion_failed"  # rank 0's error, for the ranks waiting on it


def saved_world_size(checkpoint: Path) -> int | None:
    """The number of processes a DeepSpeed ZeRO checkpoint directory was written by (None: not one)."""
    tag_file = checkpoint / "latest"
    if not checkpoint.is_dir() or not tag_file.is_file():
        return None
    partitions = list((checkpoint / tag_file.read_text().strip()).glob("*zero_pp_rank_*_optim_states.pt"))
    return len(partitions) or None


def convert_to_universal(checkpoint: Path) -> None:
    """Write the universal form of ``checkpoint`` beside it (DeepSpeed's converter; minutes for large models)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    tag = (checkpoint / "latest").read_text().strip()
    arguments = argparse.Namespace(
        input_folder=str(checkpoint / tag),
        output_folder=str(checkpoint / f"{tag}_universal"),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # a plain (not Megatron) model lacks the layout hints; DeepSpeed derives them
    )
    ds_to_universal(arguments)


def prepare_universal_resume(trainer: L.Trainer, checkpoint: Path, wait_s: float) -> None:
    """When ``checkpoint`` is a ZeRO checkpoint of another number of processes than ``trainer`` runs, make its
    universal form (rank 0; the others wait up to ``wait_s``) and have the DeepSpeed engine load that."""
    if not isinstance(trainer.strategy, DeepSpeedStrategy):
        return
    saved = saved_world_size(checkpoint)
    if saved is None or saved == trainer.world_size:
        return
    done, failed = checkpoint / UNIVERSAL_TAG_FILE, checkpoint / FAILURE_FILE
    if not done.is_file():
        if trainer.global_rank == 0:
            log.info("converting %s (%d processes) to DeepSpeed's universal checkpoint", checkpoint, saved)
            failed.unlink(missing_ok=True)
            try:
                convert_to_universal(checkpoint)
            except Exception as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
        else:
            _wait_for(done, failed, wait_s)
    log.info("resuming a run of %d processes on %d from %s's universal form", saved, trainer.world_size, checkpoint)
    trainer.strategy.config.setdefault("checkpoint", {})["load_universal"] = True
    trainer.callbacks.append(SeparateStepCounters())


class SeparateStepCounters(Callback):
    """DeepSpeed's ZeRO-3 universal load gives every parameter group's Adam state one shared ``step`` tensor,
    which torch's Adam then advances once per group per step (bias correction for too many steps: 3 + 2 x 3 = 9
    after 3 steps with 2 groups). Each group gets its own copy back before training."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for state in trainer.strategy.deepspeed_engine.basic_optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def _wait_for(done: Path, failed: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not done.is_file():
        if failed.is_file():
            raise RuntimeError(f"rank 0 could not convert the checkpoint to its universal form: {failed.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank 0 did not convert the checkpoint within {wait_s} s ({done} is missing): raise "
                "trainer.universal_checkpoint_wait_s for large models"
            )
        time.sleep(1)

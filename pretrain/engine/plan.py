"""The run's layout and length, resolved from the config and the launch environment before anything is built.

Every app that trains or evaluates computes its :class:`RunPlan` first (world size, global batch, batches per
epoch, total steps) and builds the Trainer, the data and the module from it; nothing reads the Trainer back to
finish building.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class RunPlan:
    """How many processes train, on how large batches, for how many optimizer steps."""

    num_nodes: int
    devices: int  # processes per node
    batch_size: int  # per device and micro-batch
    accumulate: int  # micro-batches per optimizer step
    batches_per_epoch: int  # micro-batches per rank and epoch
    total_steps: int  # optimizer steps of the whole run

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all processes (what ``base_lr`` scales with)."""
        return self.batch_size * self.world_size * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps an epoch: Lightning also steps on an epoch's last batch when accumulation is not
        finished, so ``ceil(batches_per_epoch / accumulate)``."""
        return -(-self.batches_per_epoch // self.accumulate)

    def resume_position(self, global_step: int) -> tuple[int, int]:
        """``(epoch, batches of it this rank already consumed)`` after ``global_step`` optimizer steps."""
        return global_step // self.steps_per_epoch, global_step % self.steps_per_epoch * self.accumulate

    def data_layout(self, seed: int, elastic: bool = False) -> dict[str, int]:
        """What decides which batches each rank reads at a given step (what a resume must keep to be exact): with
        an elastic order the global batch and the epoch length, whatever the number of processes."""
        if elastic:
            return {"global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch, "seed": seed}
        return {
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "accumulate": self.accumulate,
            "batches_per_epoch": self.batches_per_epoch,
            "seed": seed,
        }

    def steps_for_epochs(self, epochs: float) -> int:
        return round(epochs * self.steps_per_epoch)

    def describe(self) -> str:
        return (
            f"{self.num_nodes} node(s) x {self.devices} device(s) = {self.world_size} processes; global batch "
            f"{self.global_batch} ({self.batch_size} per device x {self.accumulate} accumulation); "
            f"{self.batches_per_epoch} batches per rank per epoch; {self.total_steps} steps"
        )


def devices_per_node(trainer: Mapping[str, Any]) -> int:
    """``trainer.devices`` as a count, as Lightning reads it: a number, a list or ``"0,1"`` of device indices, or
    ``auto``/-1 (every visible GPU with ``accelerator`` gpu or auto on a GPU machine; one process on CPU)."""
    devices = trainer["devices"]
    if devices in ("auto", -1, "-1"):
        on_gpu = trainer["accelerator"] == "gpu" or (trainer["accelerator"] == "auto" and torch.cuda.is_available())
        return max(1, torch.cuda.device_count()) if on_gpu else 1
    if isinstance(devices, list | tuple) and devices:
        return len(devices)
    if isinstance(devices, str) and devices.strip():
        indices = [part for part in devices.split(",") if part.strip()]
        return len(indices) if len(indices) > 1 or devices.strip().endswith(",") else int(indices[0])
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ValueError(f"trainer.devices={devices!r}: give a positive number of devices per node, a list, or auto")


def accumulation(trainer: Mapping[str, Any], batch_size: int) -> int:
    """Micro-batches per optimizer step: ``trainer.accumulate_grad_batches``, or what ``trainer.global_batch_size``
    takes on this many processes."""
    configured, global_batch = int(trainer["accumulate_grad_batches"]), trainer["global_batch_size"]
    if global_batch is None:
        return configured
    processes = int(trainer["num_nodes"]) * devices_per_node(trainer)
    per_step = batch_size * processes
    if global_batch % per_step:
        fix = (
            f"choose a data.batch_size that divides {global_batch // processes}"
            if global_batch % processes == 0
            else f"it cannot be split over {processes} processes"
        )
        raise ValueError(
            f"trainer.global_batch_size={global_batch} is not a whole number of {batch_size} per device x "
            f"{processes} processes: {fix}"
        )
    accumulate = global_batch // per_step
    if configured not in (1, accumulate):
        raise ValueError(
            f"trainer.accumulate_grad_batches={configured} disagrees with trainer.global_batch_size={global_batch} "
            f"({accumulate} on {processes} processes of {batch_size}): leave the accumulation at 1"
        )
    return accumulate


def plan_run(
    trainer: Mapping[str, Any],
    batch_size: int,
    *,
    samples_per_epoch: int | None = None,
    batches_per_epoch: int | None = None,
    epochs: float = 0,
    steps: int | None = None,
) -> RunPlan:
    """The plan of a run reading ``samples_per_epoch`` images an epoch (or a fixed ``batches_per_epoch`` per rank).

    Its length is ``steps`` when a recipe counts in steps (the ViT paper's transfer runs), else ``epochs`` epochs;
    ``trainer.max_steps`` caps either (smoke tests).
    """
    num_nodes, devices = int(trainer["num_nodes"]), devices_per_node(trainer)
    if batches_per_epoch is None:
        if samples_per_epoch is None:
            raise ValueError("the epoch length is unknown: give the number of samples or of batches per epoch")
        batches_per_epoch = samples_per_epoch // (batch_size * num_nodes * devices)
    plan = RunPlan(num_nodes, devices, batch_size, accumulation(trainer, batch_size), batches_per_epoch, 0)
    total_steps = steps if steps is not None else plan.steps_for_epochs(epochs)
    if trainer["max_steps"] is not None:
        total_steps = min(total_steps, trainer["max_steps"])
    return replace(plan, total_steps=int(total_steps))

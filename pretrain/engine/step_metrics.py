"""Per-step numbers without stalling the device: when to log, how to write host-side scalars, the local gradient
norm, and a throughput monitor that never synchronizes.

On a GPU every read of a device value on the host (``.item()``, ``float(t)``, ``.tolist()``, a device-to-host copy)
and every copy of a Python number to the device waits for the queue to drain. The training module reads its step
statistics once per optimizer step; everything here works on the host numbers that one read returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}


def log_due(trainer: L.Trainer, steps_done: int) -> bool:
    """Whether the step that brings the run to ``steps_done`` optimizer steps is a logging step (Lightning's rule
    for ``log_every_n_steps``, so these numbers land on the same steps as the learning-rate monitor's)."""
    every = trainer.log_every_n_steps
    return every > 0 and steps_done % every == 0


class StepEnds:
    """Tells, at ``on_train_batch_end``, whether the batch ended an optimizer step: the global step moved.

    (Lightning decides when to step; with gradient accumulation, and for a short last step of an epoch, this
    follows its decision without reading its loop's internals.)
    """

    def __init__(self) -> None:
        self.last_step: int | None = None

    def __call__(self, trainer: L.Trainer) -> bool:
        moved = self.last_step is not None and trainer.global_step != self.last_step
        self.last_step = trainer.global_step
        return moved

    def start(self, trainer: L.Trainer) -> None:
        self.last_step = trainer.global_step


def log_scalars(trainer: L.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Host numbers straight to the loggers: ``self.log`` would copy each onto the device first."""
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def all_reduce_sum(values: Tensor) -> Tensor:
    """The sum over ranks, in place, without the barrier Lightning's ``strategy.reduce`` adds before it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def local_grad_norm(model: nn.Module) -> Tensor | None:
    """The global L2 norm of the gradients this process holds, as one fused reduction on the device; ``None`` when
    it holds none (DeepSpeed ZeRO-2/3 keeps gradients partitioned in its own buffers)."""
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))


class StepThroughput(Callback):
    """Images/s, tokens/s, FLOP/s and MFU per optimizer step (Lightning's ``Throughput`` over a window of steps),
    with the share of wall time spent waiting for the loader and the peak device memory, written at logging steps.

    Unlike Lightning's ``ThroughputMonitor`` it never calls ``torch.cuda.synchronize``: the training module's one
    host read per step already keeps the host clock within a step of the device.
    """

    def __init__(
        self,
        window: int,
        batch_size_fn: Callable[[Any], int],
        tokens_fn: Callable[[Any], int] | None,
    ) -> None:
        self.window = window
        self.batch_size_fn = batch_size_fn
        self.tokens_fn = tokens_fn

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dtype = COMPUTE_DTYPES.get(str(trainer.precision), torch.float32)
        available = get_available_flops(trainer.strategy.root_device, dtype)
        self.throughput = Throughput(available_flops=available, world_size=trainer.world_size, window_size=self.window)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step_ends = StepEnds()
        self.step_ends.start(trainer)
        self.started = self.batch_ended = self.logged_at = time.perf_counter()
        self.samples = self.tokens = self.steps = self.micro_batches = 0
        self.data_wait = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.data_wait += time.perf_counter() - self.batch_ended

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = self.batch_ended = time.perf_counter()
        self.samples += self.batch_size_fn(batch)
        self.tokens += self.tokens_fn(batch) if self.tokens_fn is not None else 0
        self.micro_batches += 1
        if not self.step_ends(trainer):
            return
        self.steps += 1
        flops_per_batch = getattr(pl_module, "flops_per_batch", None)
        self.throughput.update(
            time=now - self.started,
            batches=self.steps,
            samples=self.samples,
            lengths=self.tokens if self.tokens_fn is not None else None,
            flops=flops_per_batch * self.micro_batches if flops_per_batch else None,
        )
        self.micro_batches = 0
        steps_done = trainer.global_step
        if not log_due(trainer, steps_done):
            return
        metrics = {f"train/{name}": value for name, value in self.throughput.compute().items()}
        metrics["perf/data_wait_share"] = self.data_wait / (now - self.logged_at)
        if trainer.strategy.root_device.type == "cuda":
            metrics["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.data_wait, self.logged_at = 0.0, now
        log_scalars(trainer, metrics, steps_done - 1)  # the index of the step just taken, as the loss's

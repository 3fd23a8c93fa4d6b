"""The Lightning module base every trained model shares: pretraining objectives and downstream fine-tuning.

It owns what any of them needs: the optimizer recipe, per-step seeding (so a resumed run draws the same masks and
augmentations as an uninterrupted one), non-finite-loss guarding agreed over ranks, corrupt-sample accounting,
and the metadata that makes a checkpoint self-describing for export.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn

from data_pipelines.seeding import seed_all, stable_seed
from pretrain.engine.metadata import CHECKPOINT_META_KEY, BackboneMeta, counters_from_checkpoint, counters_to_checkpoint
from pretrain.engine.optim import OptimConfig, build_optimizer
from pretrain.engine.plan import RunPlan
from pretrain.engine.signals import active_signals
from pretrain.engine.step_metrics import all_reduce_sum, local_grad_norm, log_due, log_scalars
from pretrain.models.vit import VisionTransformer


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps whose loss or gradient was NaN or infinite."""


class TrainingModule(L.LightningModule):
    """Shared training plumbing; subclasses implement :meth:`compute_loss` and expose :attr:`backbone`.

    ``flops_per_batch`` (forward + backward of one per-device batch) feeds the MFU that
    :class:`~pretrain.engine.step_metrics.StepThroughput` logs.
    """

    votes_on_signals = True  # the ranks agree on stop signals in this module's step reduction (engine.signals)

    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig,
        plan: RunPlan,
        meta: BackboneMeta,
        seed: int,
        max_bad_steps: int,
        flops_per_batch: int | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_config = optim
        self.plan = plan
        self.meta = meta
        self.seed = seed
        self.max_bad_steps = max_bad_steps
        self.flops_per_batch = flops_per_batch
        self.bad_steps_total = 0
        self.bad_steps_in_a_row = 0
        self.corrupt_samples = 0
        self._tally: Tensor | None = None  # [non-finite micro-batches, loss sum, corrupt samples] of this step
        self._micro_batches = 0
        self._deepspeed_norm_due = False  # a logging step under ZeRO-2/3: read DeepSpeed's norm after the step

    @property
    def backbone(self) -> VisionTransformer:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        # Layer-wise lr decay follows the depths the model declares for its parameters.
        depths = self.model.parameter_depths() if self.optim_config.layer_decay is not None else None
        optimizer, scheduler = build_optimizer(
            self.model, self.optim_config, self.plan.global_batch, self.plan.total_steps, depths, self._offloaded()
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _offloaded(self) -> bool:
        """Whether DeepSpeed holds and steps the optimizer state on the CPU."""
        if not self._under_deepspeed:
            return False
        offload = self.trainer.strategy.config.get("zero_optimization", {}).get("offload_optimizer") or {}
        return offload.get("device") == "cpu"

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # The randomness of a micro-batch depends only on (seed, step, rank, micro-batch): resuming reproduces
        # masks, drop paths, erasing and mixing, and the micro-batches of one accumulated step all differ.
        micro_batch = batch_idx % self.plan.accumulate
        seed_all(stable_seed(self.seed, self.global_step, self.global_rank, micro_batch))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # Nothing here reads a device value on the host: the flags and counts wait on the device for the step.
        loss = self.compute_loss(batch)
        skipped = batch.get("corrupt_skipped")  # only shard streams count skips; map-style loaders have none
        corrupt = skipped.sum() if skipped is not None else loss.new_zeros(())
        tally = torch.stack([(~torch.isfinite(loss)).float(), loss.detach().float(), corrupt.float()])
        self._tally = tally if self._tally is None else self._tally + tally
        self._micro_batches += 1
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The step's one host synchronisation: non-finite micro-batches, loss, corrupt samples and stop-signal
        votes summed over ranks in one all-reduce, read together with the gradient norm.

        All ranks see the same sums, so they agree to skip a step whose loss or gradient is not finite (its NaN
        gradients already went through DDP's all-reduce, so every rank holds them) and hold the same counters.
        """
        if self._tally is None or self._between_micro_batches():
            return
        signals = active_signals()
        votes = signals.vote(self._tally) if signals is not None else self._tally.new_zeros(0)
        tally, micro_batches = all_reduce_sum(torch.cat([self._tally, votes])), self._micro_batches
        self._tally, self._micro_batches = None, 0
        norm = local_grad_norm(self.model)
        values = torch.cat([tally, (norm if norm is not None else tally.new_zeros(())).reshape(1)]).tolist()
        (non_finite, loss_sum, corrupt), signal_counts, grad_norm = values[:3], values[3:-1], values[-1]
        if signals is not None:
            signals.agree(signal_counts)
        self.corrupt_samples += round(corrupt)
        # fp16's grad scaler unscaled the gradients already: an overflow there is its routine, not a bad step.
        if non_finite or (not self._grad_scaler and not math.isfinite(grad_norm)):
            self._skip_step(optimizer)
            return
        self.bad_steps_in_a_row = 0
        loss = loss_sum / (micro_batches * self.trainer.world_size)
        if self.trainer.progress_bar_callback is not None:
            self.log("train/loss", torch.tensor(loss), prog_bar=True, logger=False)  # a host tensor: no device copy
        if log_due(self.trainer, self.global_step + 1):
            metrics = {"train/loss": loss, **self._counters()}
            if norm is not None:
                metrics["train/grad_norm"] = grad_norm
            log_scalars(self.trainer, metrics, self.global_step)
            # Under ZeRO-2/3 the gradients live in DeepSpeed's partitions: its engine reports the norm after the step.
            self._deepspeed_norm_due = norm is None and self._under_deepspeed

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        if not self._deepspeed_norm_due:
            return
        self._deepspeed_norm_due = False
        reported = self.trainer.model.get_global_grad_norm()
        grad_norm = float(reported) if reported is not None else math.nan  # one read, on a logging step
        if math.isfinite(grad_norm):  # DeepSpeed reports inf for a step it skipped
            log_scalars(self.trainer, {"train/grad_norm": grad_norm}, self.global_step - 1)

    @property
    def _under_deepspeed(self) -> bool:
        return self._trainer is not None and isinstance(self._trainer.strategy, DeepSpeedStrategy)

    @property
    def _grad_scaler(self) -> bool:
        """fp16 mixed precision: the grad scaler finds non-finite gradients and skips the step itself."""
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def _between_micro_batches(self) -> bool:
        """DeepSpeed accumulates gradients itself, so Lightning calls the step hooks after every micro-batch; the
        engine knows which one closes the step."""
        return self._under_deepspeed and not self.trainer.model.is_gradient_accumulation_boundary()

    def _counters(self) -> dict[str, float]:
        return {"data/corrupt_samples_skipped": self.corrupt_samples, "train/bad_steps": self.bad_steps_total}

    def _skip_step(self, optimizer: torch.optim.Optimizer) -> None:
        """No update from this step's gradients; stop after ``max_bad_steps`` in a row."""
        self.bad_steps_total += 1
        self.bad_steps_in_a_row += 1
        # DeepSpeed's ZeRO optimizers and fp16's grad scaler find the non-finite gradients themselves and skip the
        # step; torch optimizers leave parameters without gradients alone.
        if not self._under_deepspeed and not self._grad_scaler:
            optimizer.zero_grad(set_to_none=True)
        log_scalars(self.trainer, self._counters(), self.global_step)
        if self.bad_steps_in_a_row >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.bad_steps_in_a_row} consecutive steps had a non-finite loss or gradient up to step "
                f"{self.global_step}; lower optim.base_lr, set trainer.gradient_clip_val, or check the input data"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_META_KEY] = self.meta.updated(step=self.global_step).to_dict()
        counters_to_checkpoint(checkpoint, self.bad_steps_total, self.corrupt_samples)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = counters_from_checkpoint(checkpoint)
        self.bad_steps_total = counters.get("bad_steps", 0)
        self.corrupt_samples = counters.get("corrupt_samples", 0)

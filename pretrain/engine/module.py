"""The Lightning module base every trained model shares: pretraining objectives and downstream fine-tuning.

It owns what any of them needs: the optimizer recipe, per-step seeding (so a resumed run draws the same masks and
augmentations as an uninterrupted one), non-finite-loss guarding agreed over ranks, corrupt-sample accounting,
and the metadata that makes a checkpoint self-describing for export.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm
from torch import Tensor, nn

from data_pipelines.seeding import seed_all, stable_seed
from pretrain.engine.metadata import CHECKPOINT_META_KEY, BackboneMeta, counters_from_checkpoint, counters_to_checkpoint
from pretrain.engine.optim import OptimConfig, build_optimizer
from pretrain.engine.plan import RunPlan
from pretrain.models.vit import VisionTransformer


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps whose loss was NaN or infinite."""


class TrainingModule(L.LightningModule):
    """Shared training plumbing; subclasses implement :meth:`compute_loss` and expose :attr:`backbone`.

    ``flops_per_batch`` (forward + backward of one per-device batch) feeds Lightning's ThroughputMonitor (MFU).
    """

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

    @property
    def backbone(self) -> VisionTransformer:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        # Layer-wise lr decay follows the depths the model declares for its parameters.
        depths = self.model.parameter_depths() if self.optim_config.layer_decay is not None else None
        optimizer, scheduler = build_optimizer(
            self.model, self.optim_config, self.plan.global_batch, self.plan.total_steps, depths
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # The randomness of a micro-batch depends only on (seed, step, rank, micro-batch): resuming reproduces
        # masks, drop paths, erasing and mixing, and the micro-batches of one accumulated step all differ.
        micro_batch = batch_idx % self.plan.accumulate
        seed_all(stable_seed(self.seed, self.global_step, self.global_rank, micro_batch))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        loss = self.compute_loss(batch)
        bad_ranks, corrupt = self._sum_over_ranks(float(not torch.isfinite(loss)), batch, loss.device)
        self.corrupt_samples += corrupt
        self.log("data/corrupt_samples_skipped", float(self.corrupt_samples))
        if bad_ranks:
            return self._skip_bad_step(loss)
        self.bad_steps_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _sum_over_ranks(self, bad: float, batch: dict[str, Tensor], device: torch.device) -> tuple[int, int]:
        """(ranks whose loss is not finite, corrupt samples skipped for this step), summed in one all-reduce.

        All ranks must agree to skip a step, or DDP's gradient all-reduce would wait forever on the skipping one;
        the corrupt count is then the same global total on every rank, so any rank's checkpoint holds it.
        """
        skipped = batch.get("corrupt_skipped")  # only shard streams count skips; map-style loaders have none
        counts = torch.tensor([bad, float(skipped.sum()) if skipped is not None else 0.0], device=device)
        bad_ranks, corrupt = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        return int(bad_ranks), int(corrupt)

    def _skip_bad_step(self, loss: Tensor) -> None:
        self.bad_steps_total += 1
        self.bad_steps_in_a_row += 1
        self.log("train/bad_steps", float(self.bad_steps_total))
        if self.bad_steps_in_a_row >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.bad_steps_in_a_row} consecutive steps had a non-finite loss ({loss.item()}) up to step "
                f"{self.global_step}; lower optim.base_lr, set trainer.gradient_clip_val, or check the input data"
            )
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self.model, norm_type=2)
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_META_KEY] = self.meta.updated(step=self.global_step).to_dict()
        counters_to_checkpoint(checkpoint, self.bad_steps_total, self.corrupt_samples)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = counters_from_checkpoint(checkpoint)
        self.bad_steps_total = counters.get("bad_steps", 0)
        self.corrupt_samples = counters.get("corrupt_samples", 0)

"""Lightning modules for pretraining: one base with the shared plumbing, one subclass per objective.

The base owns what every objective needs: the optimizer recipe, per-step seeding (so a resumed run draws the
same masks and augmentations as an uninterrupted one), non-finite-loss guarding, corrupt-sample accounting and
the metadata that makes a checkpoint self-describing for export.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from torch import Tensor, nn
from torchvision.transforms import v2

from data_pipelines.seeding import stable_seed
from pretrain.checkpointing import CHECKPOINT_META_KEY
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer
from pretrain.optim import OptimConfig, build_optimizer

class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps whose loss was NaN or infinite."""


class PretrainModule(L.LightningModule):
    """Shared training plumbing; subclasses implement :meth:`compute_loss` and expose :attr:`backbone`."""

    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig,
        total_steps: int,
        global_batch: int,
        meta: dict[str, Any],
        seed: int = 0,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_config = optim
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.meta = meta
        self.seed = seed
        self.max_bad_steps = max_bad_steps
        self.bad_steps_total = 0
        self.bad_steps_in_a_row = 0
        self.corrupt_samples = 0

    @property
    def backbone(self) -> VisionTransformer:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(self.model, self.optim_config, self.global_batch, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Randomness of a step depends only on (seed, step, rank): resuming reproduces masks and drop paths.
        torch.manual_seed(stable_seed(self.seed, self.global_step, self.global_rank))

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
        skipped = batch.get("corrupt_skipped")
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
        checkpoint[CHECKPOINT_META_KEY] = {
            **self.meta,
            "step": self.global_step,
            "optim": asdict(self.optim_config),
            "counters": {"bad_steps": self.bad_steps_total, "corrupt_samples": self.corrupt_samples},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get(CHECKPOINT_META_KEY, {}).get("counters", {})
        self.bad_steps_total = counters.get("bad_steps", 0)
        self.corrupt_samples = counters.get("corrupt_samples", 0)


class MAEModule(PretrainModule):
    """Masked-autoencoder pretraining: the loss is the pixel MSE on masked patches."""

    model: MaskedAutoencoder

    @property
    def backbone(self) -> VisionTransformer:
        return self.model.encoder

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch["image"]).loss


class SupervisedModule(PretrainModule):
    """Supervised pretraining: cross-entropy with label smoothing on mixup/cutmix-mixed batches."""

    model: VisionTransformer

    def __init__(self, *args: Any, label_smoothing: float = 0.1, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=self.model.num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=self.model.num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    @property
    def backbone(self) -> VisionTransformer:
        return self.model

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        images, labels = batch["image"], batch["label"]
        if (labels < 0).any():
            raise ValueError("supervised pretraining got unlabeled samples (label -1): write the shards with labels")
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        return F.cross_entropy(self.model(images), targets, label_smoothing=self.label_smoothing)


OBJECTIVES: dict[str, type[PretrainModule]] = {"mae": MAEModule, "supervised": SupervisedModule}

"""Masked-autoencoder pretraining (He et al., 2022) as a Lightning module, and its reconstruction panels in W&B."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from pretrain.analysis.reconstruction import reconstruction_grid
from pretrain.engine.module import TrainingModule
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer


class MAEModule(TrainingModule):
    """The loss is the pixel MSE on masked patches (normalized per patch with ``norm_pix_loss``)."""

    model: MaskedAutoencoder

    @property
    def backbone(self) -> VisionTransformer:
        return self.model.encoder

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch["image"]).loss


class ReconstructionLogger(Callback):
    """Every ``every_n_steps`` logs original | masked | reconstruction | pasted for a few training images."""

    def __init__(self, every_n_steps: int, mean: Sequence[float], std: Sequence[float], num_images: int) -> None:
        self.every_n_steps = every_n_steps
        self.mean, self.std = list(mean), list(std)
        self.num_images = num_images

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: dict[str, Tensor], batch_idx: int
    ) -> None:
        model = pl_module.model
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        at_step_end = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not loggers or not at_step_end or trainer.global_step % self.every_n_steps:
            return
        # Every rank runs the forward (ZeRO-3 gathers parameters collectively); only rank 0's logger writes.
        images = batch["image"][: self.num_images]
        was_training = model.training
        model.eval()
        output = model(images)
        model.train(was_training)
        grid = reconstruction_grid(
            images, output.mask, output.pred, model.patch_size, self.mean, self.std, model.norm_pix_loss
        )
        for logger in loggers:
            logger.log_image(
                key="train/reconstructions",
                images=[grid],
                caption=["original | masked | reconstruction | reconstruction + visible"],
                step=trainer.global_step,
            )

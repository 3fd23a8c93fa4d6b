"""Masked-autoencoder pretraining (He et al., 2022): the objective, its Lightning module and its reconstruction
panels in W&B."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from pretrain.analysis.reconstruction import reconstruction_grid
from pretrain.checks import check_mask_ratio
from pretrain.engine.architecture import input_shape, patch_tokens
from pretrain.engine.module import TrainingModule
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer
from pretrain.objectives.objective import Objective, register_objective

log = logging.getLogger("pretrain")
DECODER_OPTIONS = ("mask_ratio", "norm_pix_loss", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


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


@register_objective
class MaskedAutoencoding(Objective):
    """``objective=mae``: reconstruct the masked patches of one crop from the visible ones."""

    name = "mae"
    transform = "mae"  # one random-resized crop, flipped half the time
    module_class = MAEModule

    def check(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
        check_mask_ratio(config["mask_ratio"])

    def build_network(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> MaskedAutoencoder:
        encoder = VisionTransformer(**{**backbone, "num_classes": 0})
        return MaskedAutoencoder(encoder, **{key: config[key] for key in DECODER_OPTIONS})

    def flops_per_batch(self, config: Mapping[str, Any], backbone: Mapping[str, Any], batch_size: int) -> int:
        """Encoder on the visible patches plus decoder on all of them, counted on the meta device."""
        with torch.device("meta"):
            model = self.build_network(config, backbone)
            images = torch.empty(batch_size, *input_shape(model.encoder))
        return measure_flops(model, lambda: model(images).loss, lambda loss: loss)

    def tokens_per_image(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> int:
        """The visible patches plus CLS."""
        return int(patch_tokens(backbone) * (1 - config["mask_ratio"])) + 1

    def panels(self, run_config: Mapping[str, Any], backbone: Mapping[str, Any]) -> list[Callback]:
        """Reconstructions every ``logger.log_images_every_n_steps`` (0: none), of RGB images only."""
        logger, data = run_config["logger"], run_config["data"]
        if not logger["log_images_every_n_steps"]:
            return []
        if backbone["in_chans"] != 3 or backbone["spatial_dims"] != 2 or backbone["channel_tokens"]:
            log.info("no reconstruction panels: they show RGB images, and this model reads other inputs")
            return []
        every = logger["log_images_every_n_steps"]
        return [ReconstructionLogger(every, data["mean"], data["std"], logger["num_images"])]

"""Masked autoencoder (He et al., 2022) around our ViT encoder; the whole method on one screen.

``patchify -> random_masking -> forward_encoder (visible tokens only) -> forward_decoder -> forward_loss``.
Given the same weights and the same masking noise, loss and predictions equal HF ``ViTMAEForPreTraining``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from pretrain.models.vit import Block, BlockStack, VisionTransformer, grid_side, sincos_pos_embed_2d


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[B, C, H, W] -> [B, L, p*p*C]``; patches row-major, pixels within a patch ordered (row, col, channel)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for a square grid: ``[B, L, p*p*C] -> [B, C, H, W]``."""
    batch, num_patches, _ = patches.shape
    side = grid_side(num_patches)
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, side * patch_size, side * patch_size)


def random_masking(tokens: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``1 - mask_ratio`` of the tokens of each sample, chosen independently per sample.

    ``tokens: [B, L, D] -> visible [B, L_keep, D]``, ``mask [B, L]`` (1 = removed, in original order) and
    ``ids_restore [B, L]`` (argsort that undoes the shuffle). The tokens with the smallest ``noise`` are kept.
    """
    batch, length, dim = tokens.shape
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = (ids_restore >= keep).to(tokens.dtype)
    return visible, mask, ids_restore


def pixel_targets(images: Tensor, patch_size: int, norm_pix_loss: bool, eps: float = 1e-6) -> Tensor:
    """Regression targets ``[B, L, p*p*C]``: raw patches, or each patch normalized by its own mean and variance."""
    target = patchify(images, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    return target


class MAEOutput(NamedTuple):
    """A named tuple, not a dataclass: DeepSpeed ZeRO-3 finds output tensors (for its hooks) only in tuples."""

    loss: Tensor  # scalar: mean squared error over masked patches
    pred: Tensor  # [B, L, p*p*C] predicted pixels (normalized per patch when norm_pix_loss)
    mask: Tensor  # [B, L], 1 = masked


class MaskedAutoencoder(nn.Module):
    """MAE: the encoder sees only visible patches; a light decoder reconstructs the pixels of the masked ones."""

    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if encoder.global_pool != "token":
            raise ValueError(
                "the MAE encoder needs global_pool='token' (its final norm); pool differently when fine-tuning"
            )
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        patch_embed = encoder.patch_embed
        in_chans = patch_embed.proj.in_channels
        norm_eps = encoder.blocks[0].norm1.eps
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        table = sincos_pos_embed_2d(decoder_embed_dim, patch_embed.grid_size, encoder.num_prefix_tokens)
        self.decoder_pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        self.decoder_blocks = BlockStack(
            *(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_eps=norm_eps) for _ in range(decoder_depth))
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_embed.patch_size**2 * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for linear in (self.decoder_embed, self.decoder_pred, *self._decoder_linears()):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder_blocks.grad_checkpointing = enable

    def _decoder_linears(self) -> list[nn.Linear]:
        return [m for m in self.decoder_blocks.modules() if isinstance(m, nn.Linear)]

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | {"mask_token", "decoder_pos_embed"}

    def forward_encoder(self, images: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, ...]:
        """``[B, C, H, W] -> latent [B, 1 + L_keep, D]``, ``mask [B, L]``, ``ids_restore [B, L]``."""
        visible, mask, ids_restore = random_masking(self.encoder.embed_patches(images), mask_ratio, noise)
        latent = self.encoder.norm(self.encoder.blocks(self.encoder.prepend_cls(visible)))
        return latent, mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``latent [B, 1 + L_keep, D] -> pred [B, L, p*p*C]``: mask tokens fill the removed places, order restored."""
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only; in fp32 whatever the compute dtype
        (bf16 per-patch means, variances and sums over thousands of patches lose the loss's small differences)."""
        target = pixel_targets(images.float(), self.patch_size, self.norm_pix_loss)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None) -> MAEOutput:
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(images, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(loss=self.forward_loss(images, pred, mask), pred=pred, mask=mask)

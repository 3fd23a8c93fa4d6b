"""Masked autoencoder (He et al., 2022) around our ViT encoder; the whole method on one screen.

``patchify -> random_masking -> forward_encoder (visible tokens only) -> forward_decoder -> forward_loss``.
Given the same weights and the same masking noise, loss and predictions equal HF ``ViTMAEForPreTraining``.
The encoder's tokens decide what a patch is: a 2-D patch of all channels, a cube of a volume, or one channel of a
patch (ChannelViT tokens, whose decoder positions add a learned channel embedding).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from pretrain.models.vit import (
    Block,
    BlockStack,
    ChannelPatchEmbed,
    VisionTransformer,
    patchify,
    sincos_pos_embed,
    unpatchify,
)

__all__ = ["MAEOutput", "MaskedAutoencoder", "patchify", "pixel_targets", "random_masking", "unpatchify"]


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


def pixel_targets(patches: Tensor, norm_pix_loss: bool, eps: float = 1e-6) -> Tensor:
    """Regression targets from the tokens' pixels ``[B, L, values]``: as they are, or each patch normalized by its
    own mean and variance (an N-channel patch, or a cube of a volume, over all its values)."""
    if not norm_pix_loss:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class MAEOutput(NamedTuple):
    """A named tuple, not a dataclass: DeepSpeed ZeRO-3 finds output tensors (for its hooks) only in tuples."""

    loss: Tensor  # scalar: mean squared error over masked patches
    pred: Tensor  # [B, L, values per token] predicted pixels (normalized per patch when norm_pix_loss)
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
        norm_eps = encoder.blocks[0].norm1.eps
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        table = sincos_pos_embed(decoder_embed_dim, patch_embed.grid_size, encoder.num_prefix_tokens)
        self.decoder_pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        self.channel_tokens = isinstance(patch_embed, ChannelPatchEmbed)
        if self.channel_tokens:
            self.decoder_channel_embed = nn.Parameter(torch.zeros(patch_embed.in_chans, decoder_embed_dim))
            nn.init.trunc_normal_(self.decoder_channel_embed, std=0.02)
        self.decoder_blocks = BlockStack(
            *(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_eps=norm_eps) for _ in range(decoder_depth))
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_embed.values_per_token)
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
        decoder = {"mask_token", "decoder_pos_embed"} | ({"decoder_channel_embed"} if self.channel_tokens else set())
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | decoder

    def decoder_positions(self) -> Tensor:
        """``[1, 1 + L, D_dec]``: the fixed table, and for channel tokens each channel's row added to its tokens."""
        if not self.channel_tokens:
            return self.decoder_pos_embed
        prefix, spatial = self.decoder_pos_embed[:, :1], self.decoder_pos_embed[:, 1:]
        channels = self.decoder_channel_embed[self.encoder.patch_embed.active_channels]
        return torch.cat([prefix, (spatial.unsqueeze(1) + channels[None, :, None]).flatten(1, 2)], dim=1)

    def forward_encoder(self, images: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, ...]:
        """``[B, C, *spatial] -> latent [B, 1 + L_keep, D]``, ``mask [B, L]``, ``ids_restore [B, L]``."""
        visible, mask, ids_restore = random_masking(self.encoder.embed_patches(images), mask_ratio, noise)
        latent = self.encoder.norm(self.encoder.blocks(self.encoder.prepend_cls(visible)))
        return latent, mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``latent [B, 1 + L_keep, D] -> pred [B, L, values]``: mask tokens fill the removed places, order restored."""
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_positions()
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only; in fp32 whatever the compute dtype
        (bf16 per-patch means, variances and sums over thousands of patches lose the loss's small differences)."""
        target = pixel_targets(self.encoder.patchify(images.float()), self.norm_pix_loss)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None) -> MAEOutput:
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(images, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(loss=self.forward_loss(images, pred, mask), pred=pred, mask=mask)

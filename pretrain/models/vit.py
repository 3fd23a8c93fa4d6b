"""Vision Transformer backbone (Dosovitskiy et al., 2021), parameter-compatible with timm's ``VisionTransformer``.

Parameter names and shapes follow timm, so a timm state dict loads with ``strict=True`` and gives the same outputs.
Attention runs through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU); the explicit
softmax path exists only for :meth:`VisionTransformer.forward_attention_maps`, used by the analysis tools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from data_pipelines.registry import check_name, lookup

PoolKind = Literal["token", "avg"]
PosEmbedKind = Literal["learn", "sincos"]
POOL_KINDS, POS_EMBED_KINDS = ("token", "avg"), ("learn", "sincos")
SPATIAL_DIMS = (2, 3)


def sincos_pos_embed(embed_dim: int, grid_size: Sequence[int], num_prefix_tokens: int = 1) -> Tensor:
    """Fixed sin-cos position embedding of a 2-D or 3-D patch grid, as in MAE: ``[prefix + prod(grid), D]``.

    Each axis gets ``2 * F`` channels, ``F = D // (2 * axes)``, filled with ``[sin(pos * omega), cos(pos * omega)]``,
    ``omega_i = 10000^(-i / F)``; the last axis comes first (2-D: columns then rows, MAE's layout; 3-D: width,
    height, depth). Prefix rows are zero, and so are the ``D mod (2 * axes)`` last channels (a width of 64 leaves 4
    of them unused in 3-D, where MONAI's table needs a multiple of 6 instead).
    """
    axes = len(grid_size)
    frequencies = embed_dim // (2 * axes)
    if frequencies == 0:
        raise ValueError(f"a {axes}-D sin-cos position embedding needs embed_dim >= {2 * axes}, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(frequencies, dtype=torch.float64) / frequencies)
    coordinates = torch.meshgrid(*(torch.arange(size, dtype=torch.float64) for size in grid_size), indexing="ij")

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(axis) for axis in reversed(coordinates)], dim=1)
    table = F.pad(table, (0, embed_dim - table.shape[1]))
    prefix = torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64)
    return torch.cat([prefix, table], dim=0).float()


def as_shape(size: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    """An image or patch size as one length per spatial axis: an int is the same on every axis."""
    shape = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    if len(shape) != spatial_dims:
        raise ValueError(f"{what} {size} has {len(shape)} axes; the model has spatial_dims={spatial_dims}")
    return shape


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: a conv with kernel = stride = patch, ``[B, C, *spatial] -> [B, L, D]``.

    2-D images (``[B, C, H, W]``, Conv2d) or 3-D volumes (``[B, C, D, H, W]``, Conv3d, as MONAI's
    ``PatchEmbeddingBlock``); sizes are an int (square, cubic) or one value per axis (anisotropic patches).
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in SPATIAL_DIMS:
            raise ValueError(f"spatial_dims must be one of {SPATIAL_DIMS} (images, volumes), got {spatial_dims}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.image_shape = as_shape(img_size, spatial_dims, "img_size")
        self.patch_shape = as_shape(patch_size, spatial_dims, "patch_size")
        if any(size % patch for size, patch in zip(self.image_shape, self.patch_shape, strict=True)):
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size} on every axis")
        self.in_chans = in_chans
        self.grid_size = tuple(size // patch for size, patch in zip(self.image_shape, self.patch_shape, strict=True))
        self.num_patches = math.prod(self.grid_size)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(self.proj_in_chans, embed_dim, kernel_size=self.patch_shape, stride=self.patch_shape)

    @property
    def proj_in_chans(self) -> int:
        return self.in_chans

    @property
    def values_per_token(self) -> int:
        """Pixel values one token covers: what an MAE decoder predicts per token."""
        return math.prod(self.patch_shape) * self.proj_in_chans

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def patchify(self, images: Tensor) -> Tensor:
        """The pixels of each token, ``[B, C, *spatial] -> [B, L, values_per_token]`` (see :func:`patchify`)."""
        return patchify(images, self.patch_shape)


class ChannelPatchEmbed(PatchEmbed):
    """ChannelViT's tokens (Bao et al., 2024): one token per channel per patch, ``[B, C, *spatial] -> [B, C*L, D]``.

    One projection of single-channel patches is shared by all channels; a learned ``channel_embed`` row says which
    channel a token comes from. Tokens are channel-major (token ``c * L + l``). A model trained on all channels
    runs on any subset: :meth:`select_channels` names the stored channels the input holds.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, spatial_dims)
        self.channel_embed = nn.Parameter(torch.zeros(in_chans, embed_dim))
        self.register_buffer("active_channels", torch.arange(in_chans), persistent=False)

    @property
    def proj_in_chans(self) -> int:
        return 1

    def select_channels(self, channels: Sequence[int]) -> None:
        """From now on the input's channels are these channels of the training data, in this order."""
        chosen = torch.as_tensor(list(channels), dtype=torch.long)
        if chosen.numel() == 0 or chosen.min() < 0 or chosen.max() >= self.in_chans:
            raise ValueError(f"channels {list(channels)} are not a non-empty subset of the model's {self.in_chans}")
        self.active_channels = chosen.to(self.active_channels.device)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        if channels != len(self.active_channels):
            raise ValueError(f"the input has {channels} channels; the model expects {len(self.active_channels)}")
        tokens = super().forward(x.flatten(0, 1).unsqueeze(1))  # [B*C, L, D]
        tokens = tokens.unflatten(0, (batch, channels)) + self.channel_embed[self.active_channels][None, :, None]
        return tokens.flatten(1, 2)

    def patchify(self, images: Tensor) -> Tensor:
        return (
            patchify(images.flatten(0, 1).unsqueeze(1), self.patch_shape).unflatten(0, images.shape[:2]).flatten(1, 2)
        )


def patchify(images: Tensor, patch_size: int | Sequence[int]) -> Tensor:
    """``[B, C, *spatial] -> [B, L, prod(patch) * C]``: patches in row-major grid order, the values of a patch
    ordered by position (row-major) and then channel: 2-D ``(row, col, channel)`` as in MAE."""
    batch, channels, *spatial = images.shape
    patch = as_shape(patch_size, len(spatial), "patch_size")
    grid = [size // step for size, step in zip(spatial, patch, strict=True)]
    x = images.reshape(batch, channels, *(n for pair in zip(grid, patch, strict=True) for n in pair))
    axes = len(spatial)
    order = [0, *(2 + 2 * axis for axis in range(axes)), *(3 + 2 * axis for axis in range(axes)), 1]
    return x.permute(order).reshape(batch, math.prod(grid), math.prod(patch) * channels)


def unpatchify(
    patches: Tensor, patch_size: int | Sequence[int], channels: int = 3, grid: Sequence[int] | None = None
) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, L, prod(patch) * C] -> [B, C, *spatial]``; ``grid`` None: a square one."""
    batch, num_patches, _ = patches.shape
    grid = (grid_side(num_patches),) * 2 if grid is None else tuple(grid)
    patch = as_shape(patch_size, len(grid), "patch_size")
    axes = len(grid)
    x = patches.reshape(batch, *grid, *patch, channels)
    order = [0, 2 * axes + 1, *(n for axis in range(axes) for n in (1 + axis, 1 + axes + axis))]
    spatial = [size * step for size, step in zip(grid, patch, strict=True)]
    return x.permute(order).reshape(batch, channels, *spatial)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection. ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(x.transpose(1, 2).flatten(2))

    def attention_probs(self, x: Tensor) -> Tensor:
        """Softmax attention weights ``[B, heads, N, N]`` (explicit path, for analysis only)."""
        q, k, _ = self._heads(x)
        return (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)


class Mlp(nn.Module):
    """Two-layer GELU MLP. ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scaling (CaiT); parameter named ``gamma`` as in timm."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _optional(module: nn.Module, enabled: bool) -> nn.Module:
    return module if enabled else nn.Identity()


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = _optional(LayerScale(dim, layer_scale_init or 0.0), layer_scale_init is not None)
        self.drop_path1 = _optional(DropPath(drop_path), drop_path > 0)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _optional(LayerScale(dim, layer_scale_init or 0.0), layer_scale_init is not None)
        self.drop_path2 = _optional(DropPath(drop_path), drop_path > 0)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class BlockStack(nn.Sequential):
    """Transformer blocks in sequence. With ``grad_checkpointing`` each block's activations are recomputed in the
    backward pass instead of kept (timm's ``set_grad_checkpointing``: memory for about a third more compute)."""

    grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return super().forward(x)
        for block in self:
            x = checkpoint(block, x, use_reentrant=False)  # the RNG state is replayed: drop path stays the same
        return x


class VisionTransformer(nn.Module):
    """ViT encoder with a CLS token and an optional linear head.

    ``global_pool="avg"`` averages patch tokens and normalizes them with ``fc_norm`` (the final ``norm`` becomes
    identity), as timm and the MAE fine-tuning recipe do; ``"token"`` uses the normalized CLS token.
    ``spatial_dims=3`` takes volumes ``[B, C, D, H, W]`` (3-D patches, a 3-D sin-cos table); ``channel_tokens``
    makes one token per channel per patch (:class:`ChannelPatchEmbed`, ChannelViT). The position table holds one
    row per patch position either way, so its shape and names stay timm's.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: PoolKind = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        drop_path_rate: float = 0.0,
        pos_embed: PosEmbedKind = "learn",
        norm_eps: float = 1e-6,
        spatial_dims: int = 2,
        channel_tokens: bool = False,
    ) -> None:
        super().__init__()
        check_name(global_pool, POOL_KINDS, "global_pool")
        check_name(pos_embed, POS_EMBED_KINDS, "pos_embed")
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.num_prefix_tokens = 1
        embed_class = ChannelPatchEmbed if channel_tokens else PatchEmbed
        self.patch_embed = embed_class(img_size, patch_size, in_chans, embed_dim, spatial_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim),
            requires_grad=pos_embed == "learn",
        )
        drop_rates = [drop_path_rate * index / max(1, depth - 1) for index in range(depth)]
        self.blocks = BlockStack(
            *(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, layer_scale_init, rate, norm_eps) for rate in drop_rates)
        )
        use_fc_norm = global_pool == "avg"
        self.norm = _optional(nn.LayerNorm(embed_dim, eps=norm_eps), not use_fc_norm)
        self.fc_norm = _optional(nn.LayerNorm(embed_dim, eps=norm_eps), use_fc_norm)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(pos_embed)

    def _init_weights(self, pos_embed: PosEmbedKind) -> None:
        """MAE's initialization: xavier-uniform linears and patch projection, small normal tokens."""
        if pos_embed == "sincos":
            table = sincos_pos_embed(self.embed_dim, self.patch_embed.grid_size, self.num_prefix_tokens)
            self.pos_embed.data.copy_(table.unsqueeze(0))
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        if isinstance(self.patch_embed, ChannelPatchEmbed):
            nn.init.trunc_normal_(self.patch_embed.channel_embed, std=0.02)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.blocks.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that the optimizer must not decay (besides norms and biases)."""
        embeddings = {"pos_embed", "cls_token"}
        return embeddings | (
            {"patch_embed.channel_embed"} if isinstance(self.patch_embed, ChannelPatchEmbed) else set()
        )

    def parameter_depths(self) -> dict[str, int]:
        """Depth of every parameter for layer-wise lr decay (BEiT, MAE): the embeddings (patch projection, CLS
        token, position table) 0, block ``i`` ``i + 1``, everything after the blocks ``depth + 1``."""
        after_blocks = len(self.blocks) + 1
        depth_of = {id(param): 0 for param in (self.cls_token, self.pos_embed, *self.patch_embed.parameters())}
        for index, block in enumerate(self.blocks):
            depth_of.update({id(param): index + 1 for param in block.parameters()})
        return {name: depth_of.get(id(param), after_blocks) for name, param in self.named_parameters()}

    def embed_patches(self, images: Tensor) -> Tensor:
        """Patch tokens with their position embedding added, no CLS: ``[B, C, *spatial] -> [B, L, D]`` (channel
        tokens: every channel's tokens of a patch get that patch's position)."""
        tokens = self.patch_embed(images)
        positions = self.pos_embed[:, self.num_prefix_tokens :]
        if isinstance(self.patch_embed, ChannelPatchEmbed):
            positions = positions.repeat(1, len(self.patch_embed.active_channels), 1)
        if tokens.shape[1] != positions.shape[1]:
            raise ValueError(
                f"input of shape {tuple(images.shape[1:])} gives {tokens.shape[1]} tokens; the model was built for "
                f"{tuple(self.patch_embed.image_shape)} ({positions.shape[1]} tokens): resize the input or build "
                "the model at this size (position embeddings are resampled when weights are loaded)"
            )
        return tokens + positions

    def patchify(self, images: Tensor) -> Tensor:
        """The pixels each token stands for, ``[B, L, values]``: the targets of a masked autoencoder."""
        return self.patch_embed.patchify(images)

    def prepend_cls(self, tokens: Tensor) -> Tensor:
        """``[B, L, D] -> [B, 1 + L, D]`` with the CLS token (plus its position embedding) first."""
        cls = (self.cls_token + self.pos_embed[:, : self.num_prefix_tokens]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_features(self, images: Tensor) -> Tensor:
        """``[B, C, *spatial] -> [B, 1 + L, D]`` encoded tokens (after the final norm when CLS pooling is used)."""
        return self.norm(self.blocks(self.prepend_cls(self.embed_patches(images))))

    def forward_intermediates(self, images: Tensor, last: int) -> list[Tensor]:
        """The tokens after each of the ``last`` blocks (DINOv2's linear evaluation over the last blocks); the last
        entry equals forward_features. See :meth:`block_outputs`."""
        if not 1 <= last <= len(self.blocks):
            raise ValueError(f"last={last}: the backbone has {len(self.blocks)} blocks")
        return self.block_outputs(images, range(len(self.blocks) - last, len(self.blocks)))

    def block_outputs(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """The tokens after blocks ``indices`` (0-based, increasing), ``[B, 1 + L, D]`` each, through ``norm`` as
        :meth:`forward_features` applies it (an average-pooling backbone's ``norm`` is the identity, its
        ``fc_norm`` follows pooling); blocks after the last index are not run."""
        indices = list(indices)
        if not indices or indices != sorted(set(indices)) or not 0 <= indices[0] <= indices[-1] < len(self.blocks):
            raise ValueError(f"block indices {indices} must increase within the backbone's {len(self.blocks)} blocks")
        x = self.prepend_cls(self.embed_patches(images))
        outputs = []
        for index, block in enumerate(self.blocks[: indices[-1] + 1]):
            x = block(x)
            if index in indices:
                outputs.append(self.norm(x))
        return outputs

    def pool(self, tokens: Tensor) -> Tensor:
        """``[B, 1 + L, D] -> [B, D]``: CLS token or mean of patch tokens followed by ``fc_norm``."""
        if self.global_pool == "avg":
            return self.fc_norm(tokens[:, self.num_prefix_tokens :].mean(dim=1))
        return tokens[:, 0]

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = self.pool(tokens)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def forward_attention_maps(self, images: Tensor) -> list[Tensor]:
        """Attention probabilities of every block, ``[B, heads, 1 + L, 1 + L]`` each (CLS first).

        A separate explicit-softmax pass, so the fused attention of :meth:`forward` stays untouched.
        """
        x = self.prepend_cls(self.embed_patches(images))
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_probs(block.norm1(x)))
            x = block(x)
        return maps

    def reset_classifier(self, num_classes: int, global_pool: PoolKind | None = None) -> None:
        """Swap the head (and optionally the pooling) for a downstream task; new layers are freshly initialized."""
        if global_pool is not None:
            check_name(global_pool, POOL_KINDS, "global_pool")
        if global_pool is not None and global_pool != self.global_pool:
            use_fc_norm = global_pool == "avg"
            self.norm = _optional(nn.LayerNorm(self.embed_dim, eps=self._norm_eps()), not use_fc_norm)
            self.fc_norm = _optional(nn.LayerNorm(self.embed_dim, eps=self._norm_eps()), use_fc_norm)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _norm_eps(self) -> float:
        return self.blocks[0].norm1.eps


# Architecture presets: (embed_dim, depth, num_heads). A named preset adds its patch size (and the test preset its
# 32 px image size); PRESET_KEYS are the options a preset owns, which a model config may not change.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "test": dict(embed_dim=64, depth=4, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _preset_table() -> dict[str, dict[str, Any]]:
    """``vit_<size>_patch<p>`` for the paper sizes and patches 4/8/14/16/32 (4: for 32 px inputs), plus the tiny
    ``vit_test_patch4`` (32 px), ``vit_test_patch8`` (64 px) and ``vit_test_patch16`` (32 px: UNETR's patch) for tests
    and CPU benchmarks."""
    table = {
        f"vit_{size}_patch{patch}": dict(ARCHITECTURES[size], patch_size=patch)
        for size in ("tiny", "small", "base", "large", "huge")
        for patch in (4, 8, 14, 16, 32)
    }
    table["vit_test_patch4"] = dict(ARCHITECTURES["test"], patch_size=4, img_size=32)
    table["vit_test_patch8"] = dict(ARCHITECTURES["test"], patch_size=8, img_size=64)  # bench/fidelity.py, on CPU
    table["vit_test_patch16"] = dict(ARCHITECTURES["test"], patch_size=16, img_size=32)  # UNETR's 16^3 patches
    return table


PRESETS: dict[str, dict[str, Any]] = _preset_table()
PRESET_KEYS = ("embed_dim", "depth", "num_heads", "patch_size")


def preset_options(name: str) -> dict[str, Any]:
    """The constructor options of a named preset; unknown names list the known ones."""
    return dict(lookup(PRESETS, name, "ViT preset"))


def create_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset, e.g. ``create_vit("vit_base_patch16", img_size=384, num_classes=100)``."""
    return VisionTransformer(**{**preset_options(name), **overrides})


def grid_side(num_tokens: int) -> int:
    """Side of a square token grid; a clear error when the count is not a square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} patch tokens do not form a square grid")
    return side

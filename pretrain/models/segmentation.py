"""Semantic segmentation on a ViT's patch tokens: the heads of the dense-evaluation literature, pure torch.

- :class:`LinearHead` -- DINOv2's linear protocol: BatchNorm + a 1x1 conv on the (frozen) patch tokens, logits at
  the patch grid upsampled bilinearly to the image;
- :class:`SETRPUP` -- SETR's progressive upsampling (Zheng et al., 2021): conv 3x3 + BN + ReLU and a x2
  upsampling, ``log2(patch)`` times, then a 1x1 classifier;
- :class:`SETRMLA` -- SETR's multi-level aggregation: four evenly spaced blocks' tokens, reduced, summed top-down,
  refined, upsampled x4 each, concatenated, classified;
- :class:`UNETRDecoder` -- UNETR (Hatamizadeh et al., 2022) for volumes: the tokens of four blocks deconvolved to
  1/8, 1/4, 1/2 of the input and joined with a conv stem of the input itself, U-Net style, at full resolution.

:class:`Segmenter` puts a backbone and a head together (``[B, C, *spatial] -> logits [B, K, *spatial]``), and
:func:`sliding_window_logits` evaluates images larger than the training crop window by window, as MMSegmentation's
``slide`` inference does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.vit import VisionTransformer


def tokens_to_grid(tokens: Tensor, grid: Sequence[int], num_prefix_tokens: int) -> Tensor:
    """Patch tokens ``[B, prefix + L, D]`` as a feature map ``[B, D, *grid]`` (the prefix dropped)."""
    patches = tokens[:, num_prefix_tokens:]
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def conv_norm_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv on the last block's patch tokens (DINOv2's ``linear`` segmentation head)."""

    blocks_needed = 1

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(embed_dim)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], images: Tensor) -> Tensor:
        return resize_logits(self.classifier(self.norm(features[-1])), images.shape[2:])


class SETRPUP(nn.Module):
    """SETR-PUP: ``log2(patch)`` stages of conv 3x3 + BN + ReLU + bilinear x2, then a 1x1 classifier."""

    blocks_needed = 1

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, channels: int) -> None:
        super().__init__()
        stages = int(math.log2(patch_size))
        if 2**stages != patch_size:
            raise ValueError(f"SETR-PUP upsamples x2 per stage: the patch size must be a power of 2, got {patch_size}")
        widths = [embed_dim] + [channels] * stages
        self.stages = nn.ModuleList(conv_norm_relu(a, b, 3) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.classifier = nn.Conv2d(widths[-1], num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], images: Tensor) -> Tensor:
        x = features[-1]
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        return resize_logits(self.classifier(x), images.shape[2:])


class SETRMLA(nn.Module):
    """SETR-MLA: the tokens of ``levels`` blocks, 1x1-reduced, aggregated top-down (each level adds the deeper
    ones), refined by two 3x3 convs, upsampled x4, concatenated and classified."""

    def __init__(self, embed_dim: int, num_classes: int, levels: int, channels: int) -> None:
        super().__init__()
        self.blocks_needed = levels
        self.reduce = nn.ModuleList(nn.Conv2d(embed_dim, channels, kernel_size=1) for _ in range(levels))
        self.refine = nn.ModuleList(
            nn.Sequential(conv_norm_relu(channels, channels // 2, 3), conv_norm_relu(channels // 2, channels // 2, 3))
            for _ in range(levels)
        )
        self.classifier = nn.Conv2d(levels * (channels // 2), num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], images: Tensor) -> Tensor:
        reduced = [reduce(feature) for reduce, feature in zip(self.reduce, features, strict=True)]
        aggregated, running = [], None
        for level in reversed(reduced):  # deepest first
            running = level if running is None else running + level
            aggregated.append(running)
        refined = [
            F.interpolate(refine(level), scale_factor=4, mode="bilinear", align_corners=False)
            for refine, level in zip(self.refine, reversed(aggregated), strict=True)
        ]
        return resize_logits(self.classifier(torch.cat(refined, dim=1)), images.shape[2:])


def conv3d_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """UNETR's residual-free basic block: two conv 3x3x3 + instance norm + leaky ReLU."""
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers += [
            nn.Conv3d(channels_in, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        ]
    return nn.Sequential(*layers)


def deconv3d(in_channels: int, out_channels: int) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)


def upsampling_path(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """UNETR's skip path from the tokens: ``steps`` x (transposed conv x2 + conv block), as MONAI's UnetrPrUpBlock."""
    layers: list[nn.Module] = []
    for step in range(steps):
        layers += [
            deconv3d(in_channels if step == 0 else out_channels, out_channels),
            conv3d_block(out_channels, out_channels),
        ]
    return nn.Sequential(*layers)


class UNETRDecoder(nn.Module):
    """UNETR's decoder for 16^3 patches: blocks ``depth/4, depth/2, 3 depth/4, depth`` (3, 6, 9, 12 of 12) of the
    encoder, brought to 1/8, 1/4, 1/2 of the input by transposed convolutions, joined from the deepest up with a
    conv stem of the input volume, classified at full resolution. Needs a patch of 16 (four x2 steps)."""

    blocks_needed = 4

    def __init__(self, embed_dim: int, num_classes: int, in_chans: int, patch_size: int, features: int) -> None:
        super().__init__()
        if patch_size != 16:
            raise ValueError(f"the UNETR decoder upsamples four times x2: it needs 16^3 patches, got {patch_size}")
        f = features
        self.stem = conv3d_block(in_chans, f)
        self.skip2 = upsampling_path(embed_dim, 2 * f, steps=3)
        self.skip3 = upsampling_path(embed_dim, 4 * f, steps=2)
        self.skip4 = upsampling_path(embed_dim, 8 * f, steps=1)
        self.up4 = deconv3d(embed_dim, 8 * f)
        self.merge4 = conv3d_block(16 * f, 8 * f)
        self.up3 = deconv3d(8 * f, 4 * f)
        self.merge3 = conv3d_block(8 * f, 4 * f)
        self.up2 = deconv3d(4 * f, 2 * f)
        self.merge2 = conv3d_block(4 * f, 2 * f)
        self.up1 = deconv3d(2 * f, f)
        self.merge1 = conv3d_block(2 * f, f)
        self.classifier = nn.Conv3d(f, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], images: Tensor) -> Tensor:
        z3, z6, z9, z12 = features
        x = self.merge4(torch.cat([self.up4(z12), self.skip4(z9)], dim=1))  # 1/8
        x = self.merge3(torch.cat([self.up3(x), self.skip3(z6)], dim=1))  # 1/4
        x = self.merge2(torch.cat([self.up2(x), self.skip2(z3)], dim=1))  # 1/2
        x = self.merge1(torch.cat([self.up1(x), self.stem(images)], dim=1))  # full resolution
        return self.classifier(x)


def evenly_spaced_blocks(depth: int, count: int) -> list[int]:
    """``count`` block indices ending at the last block, evenly spaced (0-based): 12 blocks, 4 -> 2, 5, 8, 11."""
    if not 1 <= count <= depth:
        raise ValueError(f"{count} blocks asked of a backbone with {depth}")
    return [depth * (level + 1) // count - 1 for level in range(count)]


class Segmenter(nn.Module):
    """A ViT backbone and a segmentation head: ``[B, C, *spatial] -> [B, K, *spatial]`` logits.

    The head reads ``head.blocks_needed`` evenly spaced blocks' tokens (the last one alone for the linear and PUP
    heads), as feature maps on the patch grid. ``freeze_backbone`` keeps the backbone fixed and in eval mode (the
    linear protocol: only the head learns).
    """

    def __init__(self, backbone: VisionTransformer, head: nn.Module, freeze_backbone: bool) -> None:
        super().__init__()
        backbone.reset_classifier(0)
        backbone.fc_norm = nn.Identity()  # pooling is not used: no parameter may go without a gradient (DDP)
        self.backbone = backbone
        self.head = head
        self.freeze_backbone = freeze_backbone
        self.blocks = evenly_spaced_blocks(len(backbone.blocks), head.blocks_needed)
        if freeze_backbone:
            backbone.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def parameter_depths(self) -> dict[str, int]:
        """The backbone's depths (layer-wise lr decay); the head is above its last block."""
        depths = {f"backbone.{name}": depth for name, depth in self.backbone.parameter_depths().items()}
        top = max(depths.values()) + 1
        return {name: depths.get(name, top) for name, _ in self.named_parameters()}

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, images: Tensor) -> list[Tensor]:
        """The chosen blocks' patch tokens, each through the final norm, as ``[B, D, *grid]`` maps."""
        backbone = self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            tokens = backbone.block_outputs(images, self.blocks)
        grid, prefix = backbone.patch_embed.grid_size, backbone.num_prefix_tokens
        return [tokens_to_grid(t, grid, prefix) for t in tokens]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images), images)


@torch.no_grad()
def sliding_window_logits(model: nn.Module, images: Tensor, window: int, stride: int, num_classes: int) -> Tensor:
    """Logits of images larger than the model's window: the average over every ``window``-sized crop, taken every
    ``stride`` pixels with the last one flush against the border (MMSegmentation's ``slide`` inference)."""
    batch, _, *spatial = images.shape
    if not 0 < stride <= window:
        raise ValueError(f"a window stride of {stride} px leaves gaps between {window} px windows")
    if any(side < window for side in spatial):
        raise ValueError(f"images of {tuple(spatial)} are smaller than the {window} px window: resize them first")
    starts = [sorted({*range(0, side - window, stride), side - window}) for side in spatial]
    logits = images.new_zeros(batch, num_classes, *spatial)
    counts = images.new_zeros(1, 1, *spatial)
    for corner in torch.cartesian_prod(*(torch.tensor(axis) for axis in starts)).reshape(-1, len(spatial)).tolist():
        region = (slice(None), slice(None), *(slice(start, start + window) for start in corner))
        logits[region] += model(images[region])
        counts[region] += 1
    return logits / counts

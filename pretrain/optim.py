"""Optimizer recipe shared by pretraining and fine-tuning: AdamW parameter groups and a warmup-cosine schedule.

MAE recipe: ``lr = base_lr * global_batch / 256``; no weight decay on norms, biases, tokens and position
embeddings; linear warmup then cosine decay to ``min_lr``. Fine-tuning adds layer-wise lr decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4
    lr: float | None = None  # absolute lr; when set, base_lr scaling is not applied
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 0
    min_lr: float = 0.0
    layer_decay: float | None = None  # e.g. 0.75 for fine-tuning; None = one lr for all layers


def scaled_lr(config: OptimConfig, global_batch: int) -> float:
    """The absolute learning rate: ``config.lr`` if given, else ``base_lr * global_batch / 256``."""
    return config.lr if config.lr is not None else config.base_lr * global_batch / 256


def _skips_decay(name: str, param: nn.Parameter, no_decay_names: set[str]) -> bool:
    return param.ndim <= 1 or name in no_decay_names or name.endswith(".bias")


def layer_id(name: str, num_blocks: int) -> int:
    """Depth of a backbone parameter for layer-wise decay: embeddings 0, block i -> i + 1, the rest num_blocks + 1."""
    stripped = name.split("encoder.", 1)[-1]
    if stripped.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if stripped.startswith("blocks."):
        return int(stripped.split(".")[1]) + 1
    return num_blocks + 1


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None, num_blocks: int | None = None
) -> list[dict]:
    """AdamW groups: decay vs no-decay, and with ``layer_decay`` one group per depth with ``lr_scale`` set.

    Frozen parameters are left out.
    """
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not _skips_decay(name, param, no_decay_names)
        depth = layer_id(name, num_blocks) if layer_decay is not None and num_blocks is not None else 0
        group = groups.setdefault((depth, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0})
        if layer_decay is not None and num_blocks is not None:
            group["lr_scale"] = layer_decay ** (num_blocks + 1 - depth)
        group["params"].append(param)
    return list(groups.values())


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear from 0 over ``warmup_steps``, then cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: nn.Module, config: OptimConfig, global_batch: int, total_steps: int, num_blocks: int | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` with a per-step :func:`warmup_cosine` schedule (group ``lr_scale`` kept)."""
    peak = scaled_lr(config, global_batch)
    groups = param_groups(model, config.weight_decay, config.layer_decay, num_blocks)
    for group in groups:
        group["lr"] = peak * group.get("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=peak, betas=tuple(config.betas))
    schedule = warmup_cosine(config.warmup_steps, total_steps, config.min_lr / peak if peak else 0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

"""Optimizers shared by every app: AdamW parameter groups, a warmup-cosine schedule, and LARS for linear probes.

MAE recipe: ``lr = base_lr * global_batch / 256``; no weight decay on norms, biases, tokens and position
embeddings; linear warmup then cosine decay to ``min_lr``. Fine-tuning adds layer-wise lr decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class OptimConfig:
    """The ``optim`` config group (``conf/optim/*.yaml``, or a fine-tuning mode's ``optim``); no defaults here."""

    base_lr: float
    lr: float | None  # absolute lr; when set, base_lr scaling is not applied
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    min_lr: float
    layer_decay: float | None  # e.g. 0.75 for fine-tuning; None = one lr for all layers


def scaled_lr(base_lr: float, global_batch: int, lr: float | None = None) -> float:
    """The absolute learning rate: ``lr`` if given, else ``base_lr * global_batch / 256`` (Goyal et al., 2017)."""
    return lr if lr is not None else base_lr * global_batch / 256


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
    peak = scaled_lr(config.base_lr, global_batch, config.lr)
    groups = param_groups(model, config.weight_decay, config.layer_decay, num_blocks)
    for group in groups:
        group["lr"] = peak * group.get("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=peak, betas=tuple(config.betas))
    schedule = warmup_cosine(config.warmup_steps, total_steps, config.min_lr / peak if peak else 0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as MAE's linear probe uses it.

    The update of every matrix is rescaled to ``trust_coefficient * ||w|| / ||g||`` of its gradient; biases and
    norms (1-d parameters) take plain momentum SGD.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(param), torch.norm(update)
                    trust = group["trust_coefficient"] * param_norm / update_norm
                    update = update.mul(torch.where((param_norm > 0) & (update_norm > 0), trust, 1.0))
                momentum = self.state[param].setdefault("momentum", torch.zeros_like(param))
                momentum.mul_(group["momentum"]).add_(update)
                param.add_(momentum, alpha=-group["lr"])
        return loss

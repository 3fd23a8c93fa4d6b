"""Optimizers shared by every app: parameter groups, AdamW or SGD, a warmup-cosine schedule, and LARS for probes.

MAE recipe: ``lr = base_lr * global_batch / 256``; no weight decay on norms, biases, tokens and position
embeddings; linear warmup then cosine decay to ``min_lr``. Fine-tuning adds layer-wise lr decay over the depths
the model declares; the ViT paper's transfer fine-tuning uses SGD with momentum instead of AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from data_pipelines.registry import lookup


@dataclass(frozen=True)
class OptimConfig:
    """The ``optim`` config group (``conf/optim/*.yaml``, or a fine-tuning mode's ``optim``); no defaults here.

    ``warmup_steps`` is computed by the app from the config's warmup in epochs and the run plan.
    """

    name: str  # adamw | sgd
    base_lr: float | None  # scaled by the global batch; None: ``lr`` must be given
    lr: float | None  # absolute lr; when set, base_lr scaling is not applied
    betas: tuple[float, float] | None  # adamw
    momentum: float | None  # sgd
    weight_decay: float
    warmup_steps: int
    min_lr: float
    layer_decay: float | None  # e.g. 0.65 for fine-tuning ViT-B; None = one lr for all layers


def scaled_lr(base_lr: float | None, global_batch: int, lr: float | None = None) -> float:
    """The absolute learning rate: ``lr`` if given, else ``base_lr * global_batch / 256`` (Goyal et al., 2017)."""
    if lr is not None:
        return lr
    if base_lr is None:
        raise ValueError("the optimizer config sets neither lr nor base_lr")
    return base_lr * global_batch / 256


def _skips_decay(name: str, param: nn.Parameter, no_decay_names: set[str]) -> bool:
    return param.ndim <= 1 or name in no_decay_names or name.endswith(".bias")


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None, depths: Mapping[str, int] | None = None
) -> list[dict]:
    """Groups of decayed and non-decayed parameters; with ``layer_decay``, one group per depth with ``lr_scale``.

    ``depths`` maps parameter names to the depth the model declares for them (``parameter_depths()``): the
    deepest gets scale 1, each shallower depth another factor ``layer_decay``. Frozen parameters are left out.
    """
    if layer_decay is not None and depths is None:
        raise ValueError("layer-wise lr decay needs the parameter depths the model declares (parameter_depths)")
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    deepest = max(depths.values()) if depths else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not _skips_decay(name, param, no_decay_names)
        depth = depths[name] if layer_decay is not None else deepest
        group = groups.setdefault((depth, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0})
        group["lr_scale"] = layer_decay ** (deepest - depth) if layer_decay is not None else 1.0
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


OPTIMIZERS: dict[str, Callable[[list[dict], float, OptimConfig], torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr, config: torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas)),
    "sgd": lambda groups, lr, config: torch.optim.SGD(groups, lr=lr, momentum=config.momentum),
}


def _offloaded_adamw(groups: list[dict], lr: float, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW stepped on the CPU by DeepSpeed's vectorized kernel: what ZeRO optimizer offload requires."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(groups, lr=lr, betas=tuple(config.betas), adamw_mode=True)


OFFLOADED_OPTIMIZERS = {"adamw": _offloaded_adamw}


def build_optimizer(
    model: nn.Module,
    config: OptimConfig,
    global_batch: int,
    total_steps: int,
    depths: Mapping[str, int] | None = None,
    offloaded: bool = False,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``config.name`` over :func:`param_groups` with a per-step :func:`warmup_cosine` schedule (``lr_scale`` kept).

    ``offloaded``: DeepSpeed keeps the optimizer state on the CPU and steps it there (``trainer.offload_optimizer``).
    """
    registry = OFFLOADED_OPTIMIZERS if offloaded else OPTIMIZERS
    make = lookup(registry, config.name, "optimizer with trainer.offload_optimizer" if offloaded else "optimizer")
    peak = scaled_lr(config.base_lr, global_batch, config.lr)
    groups = param_groups(model, config.weight_decay, config.layer_decay, depths)
    for group in groups:
        group["lr"] = peak * group["lr_scale"]
    optimizer = make(groups, peak, config)
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

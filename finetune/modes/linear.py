"""The selecting linear probe (DINOv2's linear evaluation): a grid of linear heads trained at once on frozen
features, chosen on validation, refit on all training labels, tested once.

Every head of the grid (feature set x learning rate x weight decay) sees the same batches in the same order, so
the whole grid costs one pass over the cached features per epoch. Features are standardized with the statistics
of the images the head is fit on (a frozen BatchNorm, as MAE's probe has); heads train with SGD and momentum
under a cosine schedule. The test split is scored once, for the chosen setting only. A choice on the edge of the
grid's learning rates or weight decays is logged and recorded (``on_edge`` in ``results.json``).

``run_linear``: the mode (one frozen pass over the splits it needs, then the probe).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune.modes.common import DownstreamContext, ModeOutcome, grid_edges, topk_accuracy
from finetune.modes.features import FeatureTable, feature_tables
from pretrain.engine.optim import warmup_cosine

log = logging.getLogger(__name__)

STD_FLOOR = 1e-6  # standardization: constant feature dimensions are left unscaled


@dataclass(frozen=True)
class HeadSetting:
    """One point of the grid."""

    features: str
    lr: float
    weight_decay: float


def probe_grid(probe: Mapping[str, Any]) -> list[HeadSetting]:
    """Every combination of the ``probe`` config's feature sets, learning rates and weight decays."""
    return [
        HeadSetting(name, float(lr), float(decay))
        for name, lr, decay in itertools.product(probe["features"], probe["lrs"], probe["weight_decays"])
    ]


class Standardizer:
    """Per-dimension z-scores with the mean and std of the rows it was fit on."""

    def __init__(self, rows: Tensor) -> None:
        self.mean = rows.mean(dim=0)
        self.std = rows.std(dim=0).clamp_min(STD_FLOOR)

    def __call__(self, rows: Tensor) -> Tensor:
        return (rows - self.mean) / self.std


def train_heads(
    table: FeatureTable,
    settings: Sequence[HeadSetting],
    num_classes: int,
    probe: Mapping[str, Any],
    seed: int,
    device: torch.device,
) -> dict[HeadSetting, tuple[nn.Linear, Standardizer]]:
    """Fit one linear head per setting on ``table`` (on ``device``), all on the same shuffled batches."""
    generator = torch.Generator().manual_seed(seed)
    names = sorted({setting.features for setting in settings})
    standardizers = {name: Standardizer(table.features[name].to(device)) for name in names}
    inputs = {name: standardizers[name](table.features[name].to(device)) for name in names}
    labels = table.labels.to(device)
    heads = {}
    for setting in settings:
        head = nn.Linear(inputs[setting.features].shape[1], num_classes)
        nn.init.normal_(head.weight, std=probe["head_init_std"], generator=generator)
        nn.init.zeros_(head.bias)
        heads[setting] = head.to(device)
    groups = [
        {"params": list(head.parameters()), "lr": setting.lr, "weight_decay": setting.weight_decay}
        for setting, head in heads.items()
    ]
    optimizer = torch.optim.SGD(groups, lr=settings[0].lr, momentum=probe["momentum"])
    batch_size = min(probe["batch_size"], len(table))
    total = probe["epochs"] * math.ceil(len(table) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(0, total, 0.0))
    for _ in range(probe["epochs"]):
        order = torch.randperm(len(table), generator=generator).to(device)
        for start in range(0, len(table), batch_size):
            index = order[start : start + batch_size]
            batch = {name: inputs[name][index] for name in names}
            targets = labels[index]
            loss = sum(F.cross_entropy(head(batch[s.features]), targets) for s, head in heads.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return {setting: (head, standardizers[setting.features]) for setting, head in heads.items()}


@torch.no_grad()
def accuracies(head: nn.Linear, standardize: Standardizer, rows: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 (and top-5 with more than 5 classes) in percent of a trained head."""
    device = head.weight.device
    return topk_accuracy(head(standardize(rows.to(device))), labels.to(device))


def select_head(
    fit: FeatureTable,
    val: FeatureTable,
    num_classes: int,
    probe: Mapping[str, Any],
    seed: int,
    device: torch.device,
) -> tuple[HeadSetting, list[dict[str, Any]]]:
    """Train the grid on ``fit``, score every head on ``val``; the best validation top-1 wins (ties: grid order).

    Returns the chosen setting and every candidate with its validation score.
    """
    settings = probe_grid(probe)
    trained = train_heads(fit, settings, num_classes, probe, seed, device)
    candidates = []
    for setting in settings:
        head, standardize = trained[setting]
        score = accuracies(head, standardize, val.features[setting.features], val.labels)["top1"]
        candidates.append({**asdict(setting), "val_top1": round(score, 4)})
    best = max(range(len(settings)), key=lambda index: (candidates[index]["val_top1"], -index))
    return settings[best], candidates


def selecting_linear_probe(
    tables: Mapping[str, FeatureTable],
    num_classes: int,
    probe: Mapping[str, Any],
    seed: int,
    validation: str,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Choose on ``tables["val"]`` after fitting ``tables["fit"]``, refit the choice on ``tables["train"]``, score
    ``tables["test"]``. Returns the test metrics and the selection record of ``results.json``."""
    chosen, candidates = select_head(tables["fit"], tables["val"], num_classes, probe, seed, device)
    log.info("linear probe: chose %s on validation (%s) out of %d heads", chosen, validation, len(candidates))
    head, standardize = train_heads(tables["train"], [chosen], num_classes, probe, seed, device)[chosen]
    test = tables["test"]
    metrics = accuracies(head, standardize, test.features[chosen.features], test.labels)
    grid = {key: list(probe[key]) for key in ("features", "lrs", "weight_decays")}
    edges = grid_edges({"lrs": chosen.lr, "weight_decays": chosen.weight_decay}, grid)
    if edges:
        log.warning(
            "linear probe: the chosen %s lies on the edge of the grid (%s): a value beyond it may score better "
            "(widen probe.lrs / probe.weight_decays)",
            chosen,
            ", ".join(f"{side} of probe.{axis}" for axis, side in edges.items()),
        )
    selection = {
        "validation": validation,
        "grid": grid,
        "candidates": candidates,
        "chosen": asdict(chosen),
        "on_edge": edges,
        "refit_on": "train",
    }
    return metrics, selection


def run_linear(context: DownstreamContext) -> ModeOutcome:
    """The selecting linear probe on frozen features. A hold-out's two sides are rows of the training split's
    table (one pass); a task's own validation split is a pass of its own."""
    probe, task = context.config["probe"], context.task
    splits = {"train": task.train, "test": task.test}
    if task.holdout is None:
        splits.update(fit=task.selection_train, val=task.val)
    tables, trainer, meta, image_size, speed = feature_tables(context, list(probe["features"]), splits)
    if task.holdout is not None:
        tables["fit"] = tables["train"].held_out(replace(task.holdout, side="train"))
        tables["val"] = tables["train"].held_out(replace(task.holdout, side="val"))
    device = trainer.strategy.root_device
    metrics, selection = selecting_linear_probe(
        tables, task.num_classes, probe, context.config["seed"], task.validation, device
    )
    return ModeOutcome(metrics, trainer, image_size, meta, speed, selection=selection)

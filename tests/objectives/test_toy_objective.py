"""Adding an objective is one module: a toy objective defined here, and registered only here, trains end to end
through the pretraining app without a line of project code knowing it."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from yaml_defaults import composed

from data_pipelines.demo import write_demo_shards
from pretrain.engine.backbone_io import load_backbone
from pretrain.engine.module import TrainingModule
from pretrain.models.vit import VisionTransformer
from pretrain.objectives.objective import OBJECTIVES, Objective, objective_named
from pretrain.run import pretrain

STEPS = 6


class MeanColourModule(TrainingModule):
    """Predicts each image's mean colour (per channel, normalized) from its CLS token."""

    model: VisionTransformer

    @property
    def backbone(self) -> VisionTransformer:
        return self.model

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        images = batch["image"]
        return F.mse_loss(self.model(images).float(), images.mean(dim=(2, 3)).float())


class StepCounter(Callback):
    """Stands in for a W&B panel: counts the training batches it was shown."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches += 1


class MeanColour(Objective):
    name = "mean_colour"
    transform = "mae"  # one random-resized crop per image, no label
    module_class = MeanColourModule

    def __init__(self) -> None:
        self.counter = StepCounter()

    def build_network(self, config: Mapping[str, Any], backbone: Mapping[str, Any]) -> VisionTransformer:
        return VisionTransformer(**{**backbone, "num_classes": backbone["in_chans"]})

    def panels(self, run_config: Mapping[str, Any], backbone: Mapping[str, Any]) -> list[Callback]:
        return [self.counter]

    def metadata(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"target": config["target"]}


@pytest.fixture
def mean_colour(monkeypatch) -> MeanColour:
    objective = MeanColour()
    monkeypatch.setitem(OBJECTIVES, objective.name, objective)
    return objective


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-shards")
    write_demo_shards(root, num_train=128, num_test=32, max_count=64, workers=1)
    return root / "train"


def test_a_registered_toy_objective_is_found_by_its_name(mean_colour):
    assert objective_named("mean_colour") is mean_colour


def test_a_toy_objective_trains_end_to_end_through_the_pretraining_app(mean_colour, shards, tmp_path):
    settings = [f"data.shards={shards}", "data.make_demo=false", "data.batch_size=16", "data.num_workers=0"]
    settings += [
        f"trainer.max_steps={STEPS}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=2",
        "logger=csv",
        f"run_dir={tmp_path}",
    ]
    config = composed("pretrain", *settings)
    config["objective"] = {"name": "mean_colour", "target": "mean RGB", "randaugment": None}

    pretrain(config, tmp_path)

    with (tmp_path / "csv" / "metrics.csv").open() as file:
        losses = [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert mean_colour.counter.batches == STEPS
    backbone, meta = load_backbone(tmp_path / "backbone.safetensors")
    assert meta.objective == "mean_colour" and meta.objective_config == {"target": "mean RGB"}
    assert meta.step == STEPS and meta.options["num_classes"] == 0
    assert torch.isfinite(backbone(torch.randn(1, 3, 32, 32))).all()

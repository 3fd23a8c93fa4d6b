"""Lightning modules driven by a real Trainer on in-memory batches, and the objective registry."""

from pathlib import Path

import lightning as L
import pytest
import torch
from yaml_defaults import composed, pretraining_module

from pretrain.engine.classification import ClassifierModule
from pretrain.engine.config import settings
from pretrain.engine.module import NonFiniteLossError
from pretrain.engine.plan import plan_run
from pretrain.objectives.mae import MAEModule
from pretrain.objectives.objective import OBJECTIVES, objective_named

REPO_ROOT = Path(__file__).resolve().parents[2]

OVERRIDES = (
    "objective.decoder_embed_dim=32",
    "objective.decoder_depth=1",
    "objective.decoder_num_heads=4",
    "optim.lr=1e-3",
    "warmup_epochs=0",
    "trainer.max_steps=4",
    "trainer.max_bad_steps=3",
    "data.batch_size=4",
)
CONFIG = settings(composed("pretrain", *OVERRIDES))


def mae_module(config=CONFIG):
    plan = plan_run(config["trainer"], config["data"]["batch_size"], batches_per_epoch=8)
    return pretraining_module(config, plan)


def batches(count: int, poison_from: int | None = None):
    out = []
    for index in range(count):
        images = torch.randn(4, 3, 32, 32)
        if poison_from is not None and index >= poison_from:
            images[0, 0, 0, 0] = float("nan")
        out.append({"image": images, "label": torch.zeros(4, dtype=torch.long), "corrupt_skipped": torch.tensor(1)})
    return out


def fit(module, data, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return trainer


def test_build_module_chooses_the_objective_and_counts_flops():
    module = mae_module()
    assert isinstance(module, MAEModule)
    assert module.flops_per_batch > 0
    assert module.meta.objective == "mae" and module.meta.objective_config["decoder_depth"] == 1


def test_supervised_objective_builds_a_classifier_with_mixing():
    config = settings(composed("pretrain", "objective=supervised", "data.batch_size=4"))
    module = pretraining_module(config, plan_run(config["trainer"], 4, batches_per_epoch=8), num_classes=7)
    assert isinstance(module, ClassifierModule) and module.model.num_classes == 7
    assert module.loss.mixup is not None and module.loss.erasing is not None
    assert module.meta.options["num_classes"] == 0


def test_non_finite_losses_are_skipped_then_stop_the_run():
    module = mae_module()
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        fit(module, batches(8, poison_from=2), max_steps=8)
    assert module.bad_steps_total == 3
    assert all(torch.isfinite(p).all() for p in module.parameters()), "a NaN step reached the weights"


def test_corrupt_sample_counts_accumulate_from_batches():
    module = mae_module()
    fit(module, batches(3), max_steps=3)
    assert module.corrupt_samples == 3


def test_unknown_objective_lists_the_known_ones():
    config = settings({**CONFIG, "objective": {**CONFIG["objective"], "name": "dino"}})
    with pytest.raises(ValueError, match="unknown objective 'dino'; choose one of: mae, supervised"):
        mae_module(config)


@pytest.mark.parametrize("path", ["pretrain/objectives/build.py", "pretrain/run.py", "pretrain/checks.py"])
def test_the_builder_the_app_and_the_checks_know_no_objective_by_name(path):
    objective_named("mae")  # imports every objective module, so the registry holds them all
    source = (REPO_ROOT / path).read_text()
    assert [name for name in OBJECTIVES if f'"{name}"' in source or f"'{name}'" in source] == []

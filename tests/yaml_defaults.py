"""The project's YAML defaults for tests that build engine and data objects directly (conf/ is their one source)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from data_pipelines.transforms import TransformOptions
from pretrain.engine.architecture import backbone_options
from pretrain.engine.module import TrainingModule
from pretrain.engine.optim import OptimConfig
from pretrain.engine.plan import RunPlan
from pretrain.objectives.build import build_module
from pretrain.objectives.objective import objective_named

CONF = Path(__file__).resolve().parents[1] / "conf"


@functools.cache
def _composed(root: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = compose(root, overrides=list(overrides), return_hydra_config=True)  # ${hydra:...} resolves
        HydraConfig.instance().set_config(config)
        try:
            with open_dict(config):
                del config["hydra"]
            return OmegaConf.to_container(config, resolve=True)
        finally:
            HydraConfig.instance().cfg = None  # leave no global Hydra state to other tests


def composed(root: str, *overrides: str) -> dict[str, Any]:
    """The resolved config of app ``root`` (``pretrain``, ``finetune``, ``analyze``) for these overrides (a copy)."""
    return OmegaConf.to_container(OmegaConf.create(_composed(root, tuple(overrides))))


def optim_config(**overrides: Any) -> OptimConfig:
    """``conf/optim/adamw.yaml`` without warmup (the apps compute ``warmup_steps``), with ``overrides``."""
    return OptimConfig(**{**composed("pretrain")["optim"], "warmup_steps": 0, **overrides})


def transform_options(image_size: int, **overrides: Any) -> TransformOptions:
    """The demo data group's crops and eval crop, the supervised objective's RandAugment, at ``image_size``."""
    data = composed("pretrain")["data"]
    values = {
        "image_size": image_size,
        "crop_scale": data["crop_scale"],
        "crop_ratio": data["crop_ratio"],
        "eval_crop_fraction": data["eval_crop_fraction"],
        "randaugment": composed("pretrain", "objective=supervised")["objective"]["randaugment"],
        "intensity_scale": data["intensity_scale"],
        "bands": data["bands"],
    }
    return TransformOptions(**{**values, **overrides})


def pretraining_module(config: Mapping[str, Any], plan: RunPlan, num_classes: int = 0) -> TrainingModule:
    """The pretraining app's Lightning module for a resolved ``config``, built as the app builds it."""
    objective = objective_named(config["objective"]["name"])
    return build_module(config, plan, objective, backbone_options(config["model"]), num_classes)

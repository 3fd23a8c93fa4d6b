"""The Hydra side of every app's start: the resolved config of this job, and where it writes.

The one module besides the apps that reads Hydra, so that the engine below stays plain Python on plain dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pretrain.engine.trainer import in_sweep


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved to plain containers; a job of a sweep (``-m``) logs into the sweep's W&B group."""
    config = OmegaConf.to_container(cfg, resolve=True)
    run = HydraConfig.get()
    if run.mode == RunMode.MULTIRUN:
        config["logger"] = in_sweep(config["logger"], str(run.sweep.dir), run.job.override_dirname)
    return config


def job_dir() -> Path:
    """The job's output directory: ``run_dir``, or the job's subdirectory of the sweep directory."""
    return Path(HydraConfig.get().runtime.output_dir)


def save_job_files(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's record of the job, ``run_dir/.hydra/{config,hydra,overrides}.yaml``, written by the app once it owns
    ``run_dir`` and has checked the config against what is there (``hydra.output_subdir: null`` keeps Hydra from
    writing it earlier, over the record of the run being resumed)."""
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    hydra_config = HydraConfig.get()
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_config}), out / "hydra.yaml")
    OmegaConf.save(hydra_config.overrides.task, out / "overrides.yaml")

"""The analysis app end to end: `python pretrain/analyze.py ckpt=...` on a tiny MAE run's checkpoint and export."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from wandb_offline import read_offline_run

from data_pipelines.demo import write_demo_shards
from pretrain.analyze import load_mae, resolve_checkpoint
from pretrain.engine.backbone_io import export_checkpoint
from pretrain.engine.metadata import BackboneMeta
from pretrain.models.vit import preset_options
from pretrain.objectives.build import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {**preset_options("vit_test_patch4"), "pos_embed": "sincos", "num_classes": 0}
OBJECTIVE = {
    "name": "mae",
    "mask_ratio": 0.75,
    "norm_pix_loss": True,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
}
# Written as a version-1 checkpoint: no format key and no objective_config, so the decoder options come from the
# run's .hydra/config.yaml.
LEGACY_META = {
    "options": OPTIONS,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "objective": "mae",
    "step": 3,
}
META = BackboneMeta.from_dict(LEGACY_META)
ALL_FIGURES = [
    "attention_maps.png",
    "mean_attention_distance.png",
    "patch_embedding_filters.png",
    "position_embedding_similarity.png",
    "reconstructions.png",
]


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory) -> Path:
    """A run directory as `pretrain/run.py` leaves it: .hydra/config.yaml, checkpoints/step_N.ckpt, the export."""
    run_dir = tmp_path_factory.mktemp("pretraining-run")
    torch.manual_seed(0)
    mae = build_model(OBJECTIVE, OPTIONS)
    checkpoint = run_dir / "checkpoints" / "step_000003.ckpt"
    checkpoint.parent.mkdir()
    state = {f"model.{key}": value for key, value in mae.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 3, "vitfm": LEGACY_META}, checkpoint)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save({"model": OPTIONS, "objective": OBJECTIVE}, run_dir / ".hydra" / "config.yaml")
    export_checkpoint(checkpoint, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-shards")
    write_demo_shards(root, num_train=32, num_test=8, max_count=16, workers=1)
    return root / "train"


def run_analyze(ckpt: Path, shards: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The app as users run it (a fresh interpreter) on 8 images, failing with its output when it fails."""
    command = [
        sys.executable,
        "pretrain/analyze.py",
        f"ckpt='{ckpt}'",
        f"data.shards={shards}",
        "data.make_demo=false",
        "data.batch_size=4",
        "num_images=8",
        "num_shown=2",
        f"run_dir={run_dir}",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"analyze.py failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def written_figures(run_dir: Path) -> list[str]:
    figures = sorted((run_dir / "figures").iterdir())
    assert all(path.stat().st_size > 5_000 for path in figures), [(p.name, p.stat().st_size) for p in figures]
    return [path.name for path in figures]


@pytest.mark.slow
def test_an_mae_checkpoint_gives_all_five_figures_and_logs_them_to_wandb(pretraining_run, demo_shards, tmp_path):
    run_dir = tmp_path / "analysis"
    run_analyze(pretraining_run, demo_shards, run_dir, "logger=wandb")

    assert written_figures(run_dir) == ALL_FIGURES
    logged = read_offline_run(run_dir / "wandb")
    assert sorted(key for row in logged.history for key in row if key.startswith("analysis/")) == [
        f"analysis/{name.removesuffix('.png')}" for name in ALL_FIGURES
    ]
    assert len(logged.images) == 5


@pytest.mark.slow
def test_an_exported_backbone_gives_four_figures_and_the_log_says_why_not_the_fifth(
    pretraining_run, demo_shards, tmp_path
):
    run_dir = tmp_path / "analysis"
    run_analyze(pretraining_run / "backbone.safetensors", demo_shards, run_dir)

    assert written_figures(run_dir) == [name for name in ALL_FIGURES if name != "reconstructions.png"]
    log = (run_dir / "analyze.log").read_text()
    assert "skipping the MAE reconstructions figure: backbone.safetensors is not a Lightning .ckpt file" in log


def test_a_run_directory_stands_for_its_newest_checkpoint(pretraining_run, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("step_000003.ckpt", "step_000010.ckpt"):
        shutil.copy(pretraining_run / "checkpoints" / "step_000003.ckpt", tmp_path / "checkpoints" / name)

    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000010.ckpt"


def test_the_mae_is_rebuilt_with_the_runs_decoder_options_and_its_weights(pretraining_run):
    checkpoint = pretraining_run / "checkpoints" / "step_000003.ckpt"

    loaded = load_mae(checkpoint, META, objective=None)

    assert loaded.norm_pix_loss and loaded.mask_ratio == 0.75 and loaded.decoder_blocks[0].attn.num_heads == 4
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key


def test_a_checkpoint_moved_out_of_its_run_needs_the_objective_given(pretraining_run, tmp_path):
    moved = tmp_path / "step_000003.ckpt"
    shutil.copy(pretraining_run / "checkpoints" / "step_000003.ckpt", moved)

    assert "+objective=mae" in load_mae(moved, META, objective=None)
    assert load_mae(moved, META, objective=OBJECTIVE).decoder_pred.out_features == 4 * 4 * 3


def test_a_supervised_checkpoint_has_no_decoder_to_load(pretraining_run):
    reason = load_mae(pretraining_run / "checkpoints" / "step_000003.ckpt", META.updated(objective="supervised"), None)

    assert reason == "step_000003.ckpt comes from objective='supervised' pretraining, which has no MAE decoder"

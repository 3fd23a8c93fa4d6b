"""The layers of docs/architecture.md, checked on the imports of every module: imports only go down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
APPS = {
    "pretrain/run.py",
    "pretrain/export.py",
    "pretrain/analyze.py",
    "pretrain/plan.py",
    "finetune/run.py",
    "finetune/report.py",
}


def modules(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` counts as ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def offending(paths: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = [name for name in imported(path) if name.startswith(forbidden) and not name.startswith(allowed)]
        if bad:
            found[str(path.relative_to(REPO_ROOT))] = sorted(bad)
    return found


def test_the_data_layer_knows_no_model_and_no_app():
    assert offending(modules("data_pipelines"), ("pretrain", "finetune", "lightning", "hydra", "omegaconf")) == {}


def test_models_are_pure_torch():
    forbidden = ("lightning", "hydra", "omegaconf", "data_pipelines", "pretrain.engine", "pretrain.objectives")
    # data_pipelines.registry (standard library only) gives every registry its one "unknown name" error.
    assert offending(modules("pretrain/models"), forbidden, allowed=("data_pipelines.registry",)) == {}


def test_the_engine_knows_no_objective_no_app_and_no_hydra():
    apps = ("pretrain.run", "pretrain.export", "pretrain.analyze")
    forbidden = ("pretrain.objectives", "pretrain.analysis", "finetune", "hydra", "omegaconf", *apps)
    assert offending(modules("pretrain/engine"), forbidden) == {}


def test_the_analysis_quantities_know_no_engine_no_objective_and_no_app():
    forbidden = ("pretrain.engine", "pretrain.objectives", "pretrain.run", "pretrain.analyze", "finetune", "lightning")
    assert offending(modules("pretrain/analysis"), forbidden) == {}


def test_downstream_code_never_uses_a_pretraining_objective():
    assert offending(modules("finetune"), ("pretrain.objectives",)) == {}


def test_pretraining_never_imports_the_downstream_app():
    assert offending(modules("pretrain"), ("finetune",)) == {}


# What the apps share of Hydra: the job's resolved config and directory.
HYDRA_JOB = "pretrain/hydra_job.py"


@pytest.mark.parametrize("folder", ["pretrain", "finetune"])
def test_only_the_apps_read_hydra(folder):
    below_apps = [path for path in modules(folder) if str(path.relative_to(REPO_ROOT)) not in {*APPS, HYDRA_JOB}]
    assert offending(below_apps, ("hydra", "omegaconf")) == {}


# The one adapter of Lightning's loop state: an elastic resume re-expresses the saved progress in its own layout.
LOOP_STATE_ADAPTER = REPO_ROOT / "pretrain" / "engine" / "loop_progress.py"


def test_no_code_but_the_one_adapter_touches_lightning_loop_internals():
    for path in modules("pretrain") + modules("finetune"):
        source = path.read_text()
        if path == LOOP_STATE_ADAPTER:
            continue
        assert "fit_loop" not in source and "epoch_loop" not in source, path


def test_no_module_imports_an_app():
    app_modules = tuple(app.removesuffix(".py").replace("/", ".") for app in APPS)
    paths = modules("pretrain") + modules("finetune")
    assert offending(paths, app_modules) == {}

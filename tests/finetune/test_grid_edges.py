"""A selection on the edge of its grid says so; the fine-tune lr grid extends past the edge until the best is inside.

The fits are replaced by a fixed validation score per lr (the shape measured on 1,000 labels of real 28 px images:
61 / 68 / 71 / 76 % for lr 0.001 / 0.003 / 0.01 / 0.03, still rising at the grid's largest lr), so the app runs its
selection, refit and results.json in a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.modes import fitting
from finetune.modes.common import grid_edges
from finetune.modes.fitting import FitResult, step_past_edge
from finetune.run import RESULTS_FILE, finetune
from pretrain.engine.metadata import BackboneMeta

RISING_THEN_FALLING = {0.001: 61.0, 0.003: 68.0, 0.01: 71.0, 0.03: 76.0, 0.09: 79.0, 0.27: 74.0}
TEST_TOP1 = 50.0  # the final fit's test score


@pytest.fixture
def scored_fits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every fit scores ``RISING_THEN_FALLING[lr]`` on validation (and ``TEST_TOP1`` on the test split); returns the
    lrs fit, in order."""
    fitted = []

    def fit_and_test(context, mode, fit_mode, fit_split, test_split, run_dir, logger, resume) -> FitResult:
        lr = mode["optim"]["lr"]
        fitted.append(lr)
        run_dir.mkdir(parents=True, exist_ok=True)  # a real fit writes its checkpoints there
        top1 = TEST_TOP1 if test_split is context.task.test else RISING_THEN_FALLING[lr]
        trainer = SimpleNamespace(is_global_zero=True, loggers=[], strategy=SimpleNamespace(barrier=lambda: None))
        return FitResult({"top1": top1}, trainer, BackboneMeta.for_architecture({}), 32, 1.0)

    monkeypatch.setattr(fitting, "fit_and_test", fit_and_test)
    return fitted


@pytest.fixture
def select(finetune_config, demo_root: Path, tmp_path: Path):
    """Run mode=finetune with this lr grid and cap on extensions; returns results.json's content."""

    def run(grid: str, extensions: int) -> dict:
        config = finetune_config(
            f"data_root={demo_root}",
            "ckpt=null",
            "model=vit_test",
            "mode=finetune",
            f"mode.lr_grid={grid}",
            f"mode.lr_grid_extensions={extensions}",
            "mode.compare_with_linear_probe=false",
        )
        finetune(config, tmp_path)
        return json.loads((tmp_path / RESULTS_FILE).read_text())

    return run


def test_a_best_lr_at_the_grid_edge_extends_the_grid_until_the_best_is_inside(select, scored_fits) -> None:
    selection = select("[0.001,0.003,0.01,0.03]", 3)["selection"]
    assert selection["extended"] == {"lr": [0.09, 0.27]}  # 0.09 beat 0.03; 0.27 fell below 0.09: inside
    assert selection["grid"] == {"lr": [0.001, 0.003, 0.01, 0.03, 0.09, 0.27]}
    assert [candidate["lr"] for candidate in selection["candidates"]] == selection["grid"]["lr"]
    assert selection["chosen"] == {"lr": 0.09} and selection["on_edge"] == {}
    assert scored_fits == [0.001, 0.003, 0.01, 0.03, 0.09, 0.27, 0.09]  # the candidates, then the refit


def test_extensions_stop_at_their_cap_and_the_results_say_the_choice_is_on_the_edge(select, scored_fits) -> None:
    results = select("[0.01,0.03]", 1)
    assert results["selection"]["extended"] == {"lr": [0.09]}
    assert results["selection"]["chosen"] == {"lr": 0.09} and results["selection"]["on_edge"] == {"lr": "largest"}
    assert results["metrics"] == {"top1": TEST_TOP1}


def test_no_extension_asked_keeps_the_grid_and_flags_its_edge(select, scored_fits) -> None:
    selection = select("[0.01,0.03]", 0)["selection"]
    assert selection["extended"] == {"lr": []} and selection["grid"] == {"lr": [0.01, 0.03]}
    assert selection["on_edge"] == {"lr": "largest"}


def test_a_rerun_takes_the_extended_candidates_from_their_records(select, scored_fits) -> None:
    first = select("[0.01,0.03]", 2)
    scored_fits.clear()
    assert select("[0.01,0.03]", 2)["selection"] == first["selection"]
    assert scored_fits == [0.09]  # only the refit: every candidate, extensions included, kept its score


def test_a_step_past_the_edge_keeps_the_ratio_of_the_edge_and_its_neighbour() -> None:
    assert step_past_edge([0.001, 0.003, 0.01, 0.03], "largest") == 0.09
    assert step_past_edge([0.001, 0.003, 0.01, 0.03], "smallest") == pytest.approx(0.000333333)
    assert step_past_edge([0.03, 0.01], "largest") == 0.09  # the grid's order does not matter


def test_grid_edges_name_each_axis_whose_extreme_was_chosen() -> None:
    grid = {"features": ["cls", "avg"], "lrs": [0.01, 0.1, 1.0], "weight_decays": [0.0, 1e-4]}
    assert grid_edges({"lrs": 1.0, "weight_decays": 1e-4}, grid) == {"lrs": "largest", "weight_decays": "largest"}
    assert grid_edges({"lrs": 0.01, "weight_decays": 0.0}, grid) == {"lrs": "smallest"}  # nothing lies below 0
    assert grid_edges({"lrs": 0.1}, grid) == {}
    assert grid_edges({"lrs": 0.1}, {"lrs": [0.1]}) == {}  # a single value has no neighbours to go past

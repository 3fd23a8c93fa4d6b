"""finetune/report.py: one row per (checkpoint, mode), tasks as columns, VTAB-1k group means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.sources.vtab import TASKS as VTAB_TASKS
from finetune.report import main, setting, summarize, to_csv, to_markdown, transfer_table, vtab_table


def result(
    task: str, top1: float, mode: str = "linear", checkpoint: str = "a.safetensors", overrides: tuple[str, ...] = ()
) -> dict:
    group = VTAB_TASKS[task.removeprefix("vtab_")].group if task.startswith("vtab_") else None
    metrics = {"top1": top1}
    return {
        "task": task,
        "mode": mode,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "group": group,
        "overrides": [f"task={task}", *overrides],
    }


def write_runs(root: Path, results: list[dict]) -> None:
    for number, content in enumerate(results):
        (root / str(number)).mkdir(parents=True)
        (root / str(number) / "results.json").write_text(json.dumps(content))


def test_vtab_group_means_average_the_group_and_all_tasks() -> None:
    results = [result(f"vtab_{name}", 10.0 * index) for index, name in enumerate(VTAB_TASKS)]
    columns, [row] = summarize(results, "top1")
    assert columns[-4:] == ["natural", "specialized", "structured", "vtab"]
    assert row["natural"] == (pytest.approx(30.0), 7)  # tasks 0..6
    assert row["specialized"] == (pytest.approx(85.0), 4)  # tasks 7..10
    assert row["structured"] == (pytest.approx(145.0), 8)  # tasks 11..18
    assert row["vtab"] == (pytest.approx(90.0), 19)


def test_repeated_runs_are_averaged_and_rows_split_by_checkpoint_mode_and_setting() -> None:
    results = [
        result("cifar10", 80.0, overrides=("seed=0",)),
        result("cifar10", 90.0, overrides=("seed=1",)),
        result("cifar10", 50.0, mode="knn"),
        result("cifar10", 20.0, checkpoint="b.ckpt"),
        result("cifar10", 10.0, overrides=("mode.epochs=1",)),
    ]
    columns, rows = summarize(results, "top1")
    assert columns == ["cifar10"]
    assert [(row["checkpoint"], row["mode"], row["setting"], row["cifar10"]) for row in rows] == [
        ("a.safetensors", "knn", "", 50.0),
        ("a.safetensors", "linear", "", 85.0),
        ("a.safetensors", "linear", "mode.epochs=1", 10.0),
        ("b.ckpt", "linear", "", 20.0),
    ]


def test_setting_leaves_out_identity_and_locations_but_keeps_task_splits() -> None:
    overrides = (
        "ckpt=a",
        "mode=linear",
        "seed=3",
        "data_root=/d",
        "logger=csv",
        "hydra.sweep.dir=/s",
        "task.train=[train800]",
        "mode.optim.base_lr=0.001",
        "trainer.devices=8",
    )
    assert setting(result("vtab_dtd", 1.0, overrides=overrides)) == (
        "task.train=[train800] mode.optim.base_lr=0.001 trainer.devices=8"
    )


def test_a_recipe_choice_is_part_of_a_rows_identity_not_a_setting() -> None:
    assert setting(result("cifar10", 1.0, overrides=("experiment=vit_transfer_cifar10",))) == ""


def test_incomplete_group_shows_how_many_tasks_it_averages() -> None:
    columns, rows = summarize([result("cifar100", 70.0), result("vtab_dtd", 60.0), result("vtab_svhn", 80.0)], "top1")
    assert columns == ["cifar100", "vtab_dtd", "vtab_svhn", "natural", "vtab"]
    markdown = to_markdown(columns, rows, "top1")
    assert "| a.safetensors | linear |  | 70.0 | 60.0 | 80.0 | 70.0 (2/7) | 70.0 (2/19) |" in markdown
    assert to_csv(columns, rows).splitlines() == [
        "checkpoint,mode,setting,cifar100,vtab_dtd,vtab_svhn,natural,natural_tasks,vtab,vtab_tasks",
        "a.safetensors,linear,,70.0,60.0,80.0,70.0,2,70.0,2",
    ]


def test_command_line_writes_markdown_and_csv_beside_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_runs(tmp_path / "sweep", [result("cifar10", 91.25), result("flowers102", 75.0, mode="knn")])
    main([str(tmp_path / "sweep")])
    assert "| a.safetensors | knn |  |  | 75.0 |" in capsys.readouterr().out
    assert (tmp_path / "sweep" / "report.md").is_file()
    assert (tmp_path / "sweep" / "report.csv").read_text().splitlines()[1] == "a.safetensors,knn,,,75.0"


def test_no_results_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no results.json below {tmp_path}"):
        main([str(tmp_path)])


def test_the_vtab_table_lists_the_19_tasks_in_the_papers_order_with_group_means() -> None:
    results = [result(f"vtab_{name}", 10.0 * index) for index, name in enumerate(VTAB_TASKS)]
    columns, rows = summarize(results, "top1")
    table = vtab_table(columns, rows, "top1")
    header = table.splitlines()[2]
    assert header.index("caltech101") < header.index("patch_camelyon") < header.index("smallnorb_ele")
    assert header.endswith("| Natural | Specialized | Structured | Mean |")
    assert table.splitlines()[4].endswith("| 30.0 | 85.0 | 145.0 | 90.0 |")
    assert vtab_table(*summarize([result("cifar10", 1.0)], "top1"), "top1") == ""
    one_task = vtab_table(*summarize([result("vtab_dtd", 50.0)], "top1"), "top1").splitlines()[4]
    assert one_task.count("|") == 1 + 19 + 4 + 1 and "50.0" in one_task


def test_the_transfer_table_has_a_row_per_dataset_and_the_papers_vit_h14_beside_ours() -> None:
    results = [result("cifar10", 97.0), result("pets", 90.0), result("cifar10", 95.0, checkpoint="b.ckpt")]
    table = transfer_table(summarize(results, "top1")[1], "top1")
    lines = table.splitlines()
    assert lines[2] == "|  | a.safetensors linear | b.ckpt linear | ViT-H/14 (Dosovitskiy et al., 2021) |"
    assert lines[4] == "| CIFAR-10 | 97.0 | 95.0 | 99.50 |"
    assert lines[5] == "| Oxford-IIIT Pets | 90.0 |  | 97.56 |"
    assert "CIFAR-100" not in table
    assert "ViT-H/14" not in transfer_table(summarize(results, "top1")[1], "top5")

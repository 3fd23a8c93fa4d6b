"""Tabulate the ``results.json`` of many runs (e.g. a Hydra multirun) as markdown and CSV.

    python finetune/report.py multirun/finetune/2026-11-23_10-00-00   # prints markdown, writes report.md + report.csv
    python finetune/report.py runs/finetune other/runs --metric top5 --out reports/vitb

One row per (checkpoint, mode, setting), one column per task (top-1 in percent unless ``--metric``, mIoU for runs
that only segment, followed by their per-class IoU up to 25 classes; repeated runs
such as seeds are averaged). The setting is what the command line changed besides the task, checkpoint, mode, seed
and where things are kept, e.g. ``mode.optim.base_lr=0.001`` in a learning-rate sweep (empty: the defaults).
VTAB-1k tasks are followed by their group means (natural, specialized, structured: the mean over the group's tasks)
and the mean over all VTAB tasks, as Zhai et al. (2019) report them. A group mean over fewer tasks than the group
has is shown with its count, e.g. ``71.3 (3/7)``.

Two more tables follow in the papers' layouts when their tasks are present: the 19 VTAB-1k tasks with the
Natural / Specialized / Structured means and the overall mean (as the ViT paper breaks VTAB down), and the transfer
table of CIFAR-10, CIFAR-100, Oxford-IIIT Pets, Oxford Flowers-102 and VTAB, one column per evaluated
backbone next to the paper's ViT-H/14 (Table 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data_pipelines.sources.vtab import TASKS as VTAB_TASKS
from finetune.results import RESULTS_FILE

ROW_KEYS = ("checkpoint", "mode", "setting")
METRIC_TITLES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "miou": "mIoU", "pixel_accuracy": "pixel accuracy"}
MAX_CLASS_COLUMNS = 25  # per-class IoU tables up to this many classes (VOC's 21)
GROUPS = tuple(dict.fromkeys(task.group for task in VTAB_TASKS.values()))  # natural, specialized, structured
GROUP_SIZES = Counter(task.group for task in VTAB_TASKS.values())
ALL_VTAB = "vtab"
# Overrides that are not a setting: what identifies a cell (task, checkpoint, mode; seeds are averaged) ...
IDENTITY = ("task", "ckpt", "mode", "seed", "experiment")
# ... and where things are kept or logged (any key below these).
LOCATION = ("data_root", "run_dir", "resume", "num_workers", "logger", "hydra")
VTAB_ORDER = {f"vtab_{name}": index for index, name in enumerate(VTAB_TASKS)}  # the paper's order, by group
# The ViT paper's transfer table (Table 2): its rows, and the JFT-300M ViT-H/14 column as the reference.
TRANSFER_ROWS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "pets": "Oxford-IIIT Pets",
    "flowers102": "Oxford Flowers-102",
    ALL_VTAB: "VTAB (19 tasks)",
}
PAPER_VIT_H14 = {"cifar10": 99.50, "cifar100": 94.55, "pets": 97.56, "flowers102": 99.68, ALL_VTAB: 77.63}


def collect(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` below the given folders (or the given files), sorted by path."""
    paths = []
    for root in map(Path, roots):
        paths.extend([root] if root.is_file() else sorted(root.rglob(RESULTS_FILE)))
    if not paths:
        raise FileNotFoundError(f"no {RESULTS_FILE} below {', '.join(map(str, roots))}")
    return [json.loads(path.read_text()) for path in paths]


def setting(result: dict[str, Any]) -> str:
    """The run's command-line overrides that change what it computes for a task, e.g. ``mode.epochs=50``."""
    keys = [(override, override.split("=", 1)[0].lstrip("+~")) for override in result.get("overrides", [])]
    return " ".join(override for override, key in keys if key not in IDENTITY and key.split(".")[0] not in LOCATION)


def summarize(results: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (tasks, then VTAB group means) and one row per (checkpoint, mode, setting) with the metric per column.

    A row maps ``checkpoint``, ``mode``, ``setting``, each task to its mean value, each group to
    ``(mean, tasks averaged)``.
    """
    values: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    groups: dict[str, str] = {}
    for result in results:
        if metric in result["metrics"]:
            row_key = (str(result["checkpoint"]), result["mode"], setting(result))
            values[row_key][result["task"]].append(result["metrics"][metric])
        if result.get("group"):
            groups[result["task"]] = result["group"]

    def in_table_order(task: str) -> tuple[bool, int, str]:
        return task in groups, VTAB_ORDER.get(task, 0), task

    tasks = sorted({task for row in values.values() for task in row}, key=in_table_order)
    vtab_tasks = [task for task in tasks if task in groups]
    group_columns = [group for group in GROUPS if group in groups.values()] + ([ALL_VTAB] if vtab_tasks else [])
    rows = []
    for (checkpoint, mode, changed), per_task in sorted(values.items()):
        row: dict[str, Any] = {"checkpoint": checkpoint, "mode": mode, "setting": changed}
        row.update({task: statistics.fmean(scores) for task, scores in per_task.items()})
        for group in group_columns:
            members = [row[task] for task in vtab_tasks if task in row and group in (ALL_VTAB, groups[task])]
            if members:
                row[group] = (statistics.fmean(members), len(members))
        rows.append(row)
    return tasks + group_columns, rows


def _group_size(group: str) -> int:
    return len(VTAB_TASKS) if group == ALL_VTAB else GROUP_SIZES[group]


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        mean, count = value
        complete = count == _group_size(column)
        return f"{mean:.1f}" if complete else f"{mean:.1f} ({count}/{_group_size(column)})"
    return f"{value:.1f}"


def to_markdown(columns: list[str], rows: list[dict[str, Any]], metric: str) -> str:
    """The main table: a row per (checkpoint, mode, setting), a column per task and VTAB group."""
    header = [*ROW_KEYS, *columns]
    lines = [
        f"{METRIC_TITLES.get(metric, metric)} (%) on each task's test split",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(ROW_KEYS) + ["---:"] * len(columns)) + "|",
    ]
    for row in rows:
        cells = [*(row[key] for key in ROW_KEYS), *(_cell(row.get(column), column) for column in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_metric(results: Sequence[dict[str, Any]]) -> str:
    """top1 when any run classifies, else miou (a report of segmentation runs)."""
    return "top1" if any("top1" in result["metrics"] for result in results) else "miou"


def per_class_iou_table(results: Sequence[dict[str, Any]]) -> str:
    """Segmentation runs of at most MAX_CLASS_COLUMNS classes: a row per run, a column per class (IoU %); runs of
    larger label sets (ADE20K's 150) keep theirs in results.json."""
    runs = [result for result in results if 0 < len(result.get("per_class_iou") or {}) <= MAX_CLASS_COLUMNS]
    if not runs:
        return ""
    classes = list(dict.fromkeys(name for result in runs for name in result["per_class_iou"]))
    lines = ["Per-class IoU (%)", "", "| run | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for result in runs:
        label = " ".join(part for part in (result["task"], str(result["checkpoint"]), setting(result)) if part)
        cells = [_cell(result["per_class_iou"].get(name), name) for name in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def row_label(row: dict[str, Any]) -> str:
    """A row's checkpoint, mode and setting as one column or row header."""
    return " ".join(part for part in (row["checkpoint"], row["mode"], row["setting"]) if part)


def vtab_table(columns: list[str], rows: list[dict[str, Any]], metric: str) -> str:
    """All 19 VTAB-1k tasks in the paper's order (blank where not run), the group means and the mean; empty
    when no VTAB task was run."""
    if not any(column in VTAB_ORDER for column in columns):
        return ""
    tasks = list(VTAB_ORDER)
    groups = [*GROUPS, ALL_VTAB]
    header = ["", *(task.removeprefix("vtab_") for task in tasks), *(group.capitalize() for group in GROUPS), "Mean"]
    lines = [f"VTAB-1k {metric} (%), by group (Zhai et al., 2019)", "", "| " + " | ".join(header) + " |"]
    lines.append("|---|" + "|".join(["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        cells = [_cell(row.get(column), column) for column in (*tasks, *groups)]
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def transfer_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The ViT paper's transfer table: a row per dataset, a column per backbone, and for top-1 the paper's
    ViT-H/14 last; empty when none of its datasets was run."""
    present = [key for key in TRANSFER_ROWS if any(key in row for row in rows)]
    if not present:
        return ""
    reference = metric == "top1"
    header = ["", *(row_label(row) for row in rows), *(["ViT-H/14 (Dosovitskiy et al., 2021)"] if reference else [])]
    lines = [
        f"Transfer {metric} (%), the layout of Dosovitskiy et al. (2021), Table 2",
        "",
        "| " + " | ".join(header) + " |",
    ]
    lines.append("|---|" + "|".join(["---:"] * (len(header) - 1)) + "|")
    for key in present:
        cells = [_cell(row.get(key), key) for row in rows] + ([f"{PAPER_VIT_H14[key]:.2f}"] if reference else [])
        lines.append(f"| {TRANSFER_ROWS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """Numbers only; each group mean is followed by ``<group>_tasks``, how many tasks it averages."""
    header = list(ROW_KEYS)
    for column in columns:
        header += [column, f"{column}_tasks"] if column in (*GROUPS, ALL_VTAB) else [column]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells: list[Any] = [row[key] for key in ROW_KEYS]
        for column in columns:
            value = row.get(column)
            if column in (*GROUPS, ALL_VTAB):
                cells += [round(value[0], 4), value[1]] if value else ["", 0]
            else:
                cells.append("" if value is None else round(value, 4))
        writer.writerow(cells)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="folders searched recursively for results.json (or the files)")
    parser.add_argument("--metric", help="metrics key to tabulate (default: top1, or miou when the runs only segment)")
    parser.add_argument("--out", help="write OUT.md and OUT.csv (default: report.md/.csv in the first folder)")
    args = parser.parse_args(argv)
    results = collect(args.roots)
    metric = args.metric or default_metric(results)
    columns, rows = summarize(results, metric)
    markdown = "\n".join(
        table
        for table in (
            to_markdown(columns, rows, metric),
            vtab_table(columns, rows, metric),
            transfer_table(rows, metric),
            per_class_iou_table(results),
        )
        if table
    )
    first = Path(args.roots[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown)
    out.with_suffix(".csv").write_text(to_csv(columns, rows))
    print(markdown)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()

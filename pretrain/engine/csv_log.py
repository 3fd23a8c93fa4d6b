"""A CSV logger whose ``metrics.csv`` survives resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` whenever a logger starts in a directory that has one, so every
resume (a signal, a preemption, a rerun) lost the curve logged before it. This one keeps the rows of the steps the
checkpoint it resumes from holds, drops the later ones (the resumed run logs those steps again, from the checkpoint's
state), and appends. Rows reach the file as they are logged (Lightning's default holds 100 steps of them in memory,
which a SIGKILL or a preemption loses).
"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ResumedExperimentWriter(ExperimentWriter):
    """Lightning's writer, keeping the rows of ``metrics.csv`` a checkpoint at ``start_step`` holds: Lightning's
    logging step counts from 0, so those of steps below ``start_step``."""

    def __init__(self, log_dir: str, start_step: int) -> None:
        self.start_step = start_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's hook that deletes the file
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if _step(row) < self.start_step]
        temporary = f"{self.metrics_file_path}.tmp-{os.getpid()}"
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, self.metrics_file_path)
        self.metrics_keys = header


def _step(row: dict[str, str]) -> float:
    value = row.get("step") or ""
    return float(value) if value else float("inf")  # a row without a step cannot be placed: dropped


class ResumedCSVLogger(CSVLogger):
    """``CSVLogger`` for a run that starts (or resumes) at ``start_step``, writing each row as it is logged."""

    def __init__(self, save_dir: str, start_step: int, **kwargs: object) -> None:
        super().__init__(save_dir, flush_logs_every_n_steps=1, **kwargs)
        self.start_step = start_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumedExperimentWriter(self.log_dir, self.start_step)
        return self._experiment

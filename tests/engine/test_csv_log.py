"""The CSV log across resumes: the rows a checkpoint holds are kept, the later ones are logged again."""

import csv

from pretrain.engine.csv_log import ResumedCSVLogger


def write_rows(path, steps):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "train/loss"])
        writer.writeheader()
        writer.writerows({"step": step, "train/loss": step / 10} for step in steps)


def logged_steps(path):
    with open(path, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_a_resumed_log_keeps_the_steps_its_checkpoint_holds_and_appends(tmp_path):
    metrics = tmp_path / "csv" / "metrics.csv"
    write_rows(metrics, range(10))  # a run killed after step 10, its last checkpoint at step 5
    logger = ResumedCSVLogger(str(tmp_path), start_step=5, name="csv", version="")
    logger.log_metrics({"train/loss": 0.5}, step=5)  # Lightning's logging step of the 6th step
    logger.save()
    assert logged_steps(metrics) == [0, 1, 2, 3, 4, 5]


def test_a_fresh_start_replaces_the_log_of_a_run_that_left_no_checkpoint(tmp_path):
    metrics = tmp_path / "csv" / "metrics.csv"
    write_rows(metrics, range(3))
    logger = ResumedCSVLogger(str(tmp_path), start_step=0, name="csv", version="")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.save()
    assert logged_steps(metrics) == [0]

"""Hydra sweeps on the test cluster through hydra-submitit-launcher (``-m hydra/launcher=slurm_cpu``): a two-point
pretraining sweep, one SLURM array task each, both interrupted mid-run (one preempted by ``scontrol requeue``, one
sent the time-limit warning, which the app answers with its own requeue), both resumed; their W&B runs (offline,
read back) share the sweep's group and each rerun continues its run. Then a two-point k-NN sweep over the two
exported backbones, tabulated by ``finetune/report.py``.

The sweep process is the user's login shell: it submits the array job and waits until every point has finished.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_jobs import SlurmJobs, make_repo, slurm_command
from wandb_offline import read_offline_run

from pretrain.engine.checkpoints import read_checkpoint

pytestmark = pytest.mark.slurm

MAX_STEPS, EVERY = 20, 5
SWEEP_TIMEOUT_S = 420
LEARNING_RATES = ("0.0001", "0.0002")
# Point 0 is preempted (`scontrol requeue`: SIGTERM), point 1 gets the time-limit warning (what --signal=USR1@120 does).
INTERRUPTS = (("scontrol", "requeue"), ("scancel", "--signal=USR1"))


def start_sweep(repo: Path, app: str, *overrides: str) -> subprocess.Popen:
    """``python <app>/run.py -m hydra/launcher=slurm_cpu ...`` from the repository stand-in, as a user would."""
    command = [sys.executable, f"{app}/run.py", "-m", "hydra/launcher=slurm_cpu", *overrides]
    return subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(sweep: subprocess.Popen) -> str:
    try:
        output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        sweep.kill()
        output, _ = sweep.communicate()
        pytest.fail(f"the sweep did not finish in {SWEEP_TIMEOUT_S} s:\n{output[-5000:]}")
    assert sweep.returncode == 0, output[-5000:]
    return output


def array_task(sweep_dir: Path, index: int, timeout_s: float = 60) -> str:
    """The SLURM id (``<array job>_<index>``) of sweep point ``index``: submitit's folder for it is named so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(path.name for path in (sweep_dir / ".submitit").glob(f"*_{index}") if path.is_dir())
        if found:
            return found[0]
        time.sleep(0.25)
    pytest.fail(f"no SLURM job for sweep point {index} under {sweep_dir}/.submitit after {timeout_s} s")


def job_log(sweep_dir: Path, task: str) -> str:
    return (sweep_dir / ".submitit" / task / f"{task}_0_log.out").read_text()


@pytest.fixture(scope="module")
def pretraining_sweep(slurm_cluster_ready: None, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = make_repo(tmp_path_factory.mktemp("sweep"))
    sweep_dir = repo / "multirun" / "pretrain"
    sweep = start_sweep(
        repo,
        "pretrain",
        f"hydra.sweep.dir={sweep_dir}",
        f"optim.base_lr={','.join(LEARNING_RATES)}",
        f"trainer.max_steps={MAX_STEPS}",
        f"trainer.checkpoint_every_n_steps={EVERY}",
        "trainer.keep_checkpoints=-1",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "logger.mode=offline",
        "logger.log_images_every_n_steps=0",
        "data.batch_size=16",
        "data.num_workers=1",
        f"data.shards={demo_root / 'demo' / 'train'}",
    )
    jobs = SlurmJobs(repo)
    try:
        tasks = [array_task(sweep_dir, point) for point in range(len(LEARNING_RATES))]
        jobs.submitted.extend(tasks)
        for point, (task, interrupt) in enumerate(zip(tasks, INTERRUPTS, strict=True)):
            jobs.wait_for_file(task, sweep_dir / str(point) / "checkpoints" / f"step_{EVERY:06d}.ckpt", timeout_s=240)
            slurm_command(*interrupt, task)
        for task in tasks:
            jobs.start_requeued_job_now(task)
        output = finish(sweep)
        # submitit sees a point done once its result file exists; SLURM's state follows when the batch shell exits.
        info = [jobs.wait_until_finished(task, timeout_s=60) for task in tasks]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        jobs.cancel_unfinished()
    return {"repo": repo, "dir": sweep_dir, "output": output, "info": info, "tasks": tasks}


def test_a_pretraining_sweep_runs_one_slurm_job_per_point_and_the_requeued_ones_resume(pretraining_sweep: dict):
    sweep_dir, tasks = pretraining_sweep["dir"], pretraining_sweep["tasks"]
    assert [info["JobState"] for info in pretraining_sweep["info"]] == ["COMPLETED", "COMPLETED"]
    assert [info["Restarts"] for info in pretraining_sweep["info"]] == ["1", "1"]
    assert {info["JobName"] for info in pretraining_sweep["info"]} == {"vitfm-pretrain"}
    for point, (lr, task, info) in enumerate(zip(LEARNING_RATES, tasks, pretraining_sweep["info"], strict=True)):
        run_dir = sweep_dir / str(point)
        assert f"optim.base_lr={lr}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert read_checkpoint(run_dir / "checkpoints" / f"step_{MAX_STEPS:06d}.ckpt")["global_step"] == MAX_STEPS
        assert (run_dir / "backbone.safetensors").is_file()
        log = job_log(sweep_dir, task)
        job_id = info["JobId"]  # the array task's own id, kept by the requeue
        assert f"job {job_id} restart 0 on " in log and f"job {job_id} restart 1 on " in log  # slurm/job_env.sh ran
        resumed = re.findall(r"\[pretrain[.a-z_]*\]\[INFO\] - resuming from (\S+)", log)
        assert len(resumed) == 1 and Path(resumed[0]).parent == run_dir / "checkpoints", log[-5000:]
        assert EVERY <= read_checkpoint(Path(resumed[0]))["global_step"] < MAX_STEPS
        assert log.count("exported the backbone to") == 1
    preempted, warned = (job_log(sweep_dir, task) for task in tasks)
    # scontrol requeue: SLURM SIGTERMs the step (W&B's service too) and requeues the job itself.
    assert "stopped by signal 15" in preempted and "requeued SLURM job" not in preempted
    assert "DataLoader worker" not in preempted  # the step's SIGTERM reaches the loader workers too; they stay
    # The time-limit warning: the app checkpoints, closes its loggers, and rank 0 requeues the array task.
    assert "stopped for SLURM's requeue" in warned and warned.count(f"requeued SLURM job {tasks[1]}") == 1


def test_the_sweeps_wandb_runs_share_its_group_and_the_requeued_jobs_continue_their_runs(pretraining_sweep: dict):
    sweep_dir = pretraining_sweep["dir"]
    runs = [sorted((sweep_dir / str(point) / "wandb").glob("offline-run-*")) for point in (0, 1)]
    assert [len(found) for found in runs] == [2, 2]  # each rerun writes a second offline folder
    ids = [(sweep_dir / str(point) / "wandb_run_id").read_text().strip() for point in (0, 1)]
    assert ids[0] != ids[1] and all(ids[point] in run.name for point in (0, 1) for run in runs[point])
    # The rerun's folders; and the warned job's first one, which closed before the requeue (the preempted job's
    # first one may end where SLURM stopped W&B's service).
    preempted_rerun, (warned_first, warned_rerun) = read_offline_run(runs[0][1]), map(read_offline_run, runs[1])
    assert preempted_rerun.group == warned_first.group == warned_rerun.group == str(sweep_dir)
    assert [preempted_rerun.run_id, warned_first.run_id, warned_rerun.run_id] == [ids[0], ids[1], ids[1]]
    assert f"optim.base_lr={LEARNING_RATES[1]}" in warned_rerun.name
    logged = [row["trainer/global_step"] for row in warned_rerun.history if "train/loss" in row]
    assert logged and logged[-1] == MAX_STEPS - 1 and len(set(logged)) == len(logged)
    assert max(row["trainer/global_step"] for row in warned_first.history if "train/loss" in row) < logged[0]


def test_a_finetuning_sweep_over_the_sweeps_backbones_is_tabulated_by_the_report(
    pretraining_sweep: dict, demo_root: Path
):
    repo, pretrained = pretraining_sweep["repo"], pretraining_sweep["dir"]
    sweep_dir = repo / "multirun" / "finetune"
    backbones = [str(pretrained / str(point) / "backbone.safetensors") for point in (0, 1)]
    sweep = start_sweep(
        repo,
        "finetune",
        f"hydra.sweep.dir={sweep_dir}",
        "task=demo",
        "mode=knn",
        f"ckpt={','.join(backbones)}",
        f"data_root={demo_root}",
        "logger=csv",
        "trainer.progress_bar=false",
        "num_workers=1",
    )
    finish(sweep)
    results = [json.loads((sweep_dir / str(point) / "results.json").read_text()) for point in (0, 1)]
    assert [result["checkpoint"] for result in results] == backbones

    report = subprocess.run(
        [sys.executable, "finetune/report.py", str(sweep_dir)], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| ") and "backbone.safetensors" in line]
    assert len(rows) == 2, report.stdout
    for backbone, result in zip(backbones, results, strict=True):
        (row,) = [line for line in rows if backbone in line]
        assert f"{result['metrics']['top1']:.1f}" in row, (row, result["metrics"])
    assert (sweep_dir / "report.md").read_text().count("backbone.safetensors") >= 2

"""The launch scripts run the real apps on the test cluster: `sbatch slurm/pretrain.sh` trains with DDP over two
CPU tasks (gloo) and exports one backbone; a job on two nodes sent the time-limit warning mid-run is requeued,
resumes on both from its newest checkpoint and stops at trainer.max_steps; a task killed on one node fails the job
at once and a rerun resumes; `sbatch slurm/finetune.sh` evaluates the exported backbone. (One node interrupted by
the warning or by `scontrol requeue`: the sweep jobs of test_sweeps_slurm.py.)

Each job runs in a stand-in for the repository under tmp_path (the real `slurm/` scripts, links to `pretrain/`,
`finetune/` and `conf/`; the package itself is imported from its editable install), so its `logs/` and
`runs/<app>/<job id>/` land in tmp_path. Python start-up dominates: each launch takes 15-45 s on 2 cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_jobs import REPO_ROOT, SlurmJobs, make_repo, slurm_command

from pretrain.engine.checkpoints import checkpoint_step, read_checkpoint

pytestmark = pytest.mark.slurm

# Two tasks of one CPU each on one node, DDP over gloo: the scripts' CPU-only form (docs/cluster.md).
CPU_JOB = ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10")
# GLOO_SOCKET_IFNAME: the test cluster's nodes reach each other over eth1 (tests/slurm/cluster_lib.sh); the machine's
# own hostname resolves to 127.0.0.1, which gloo would otherwise announce to the other node.
CPU_ENV = {"VITFM_TRAINER": "ddp_cpu", "VITFM_PYTHON": sys.executable, "GLOO_SOCKET_IFNAME": "eth1"}
# One CPU task on each of the cluster's two nodes: DDP over gloo between two network namespaces.
TWO_NODE_JOB = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10")
BATCH_PER_DEVICE = 16
JOB_TIMEOUT_S = 240


def tiny_pretraining(shards: Path, *overrides: str) -> tuple[str, ...]:
    return (
        "logger=csv",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"data.batch_size={BATCH_PER_DEVICE}",
        "data.num_workers=1",
        f"data.shards={shards}",
        *overrides,
    )


def steps_trained_by_last_run(run_dir: Path) -> int:
    """Optimizer steps the run's last process group took, from the throughput monitor's per-device sample count
    (which starts again with each process). The CSV log itself continues across resumes: one loss row per step
    (log_every_n_steps=1), none logged twice or skipped."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Lightning's logging step, not the global step: it counts steps from 0.
    logged = [int(row["step"]) for row in rows if row["train/loss"]]
    assert logged == list(range(len(logged))), f"steps logged twice or skipped: {logged}"
    samples = [float(row["train/samples"]) for row in rows if row["train/samples"]]
    assert samples[-1] % BATCH_PER_DEVICE == 0, samples[-1]
    return int(samples[-1] // BATCH_PER_DEVICE)


class PretrainJob:
    def __init__(self, repo: Path, job_id: int, info: dict[str, str], output: str) -> None:
        self.repo, self.job_id, self.info, self.output = repo, job_id, info, output
        self.run_dir = repo / "runs" / "pretrain" / str(job_id)


@pytest.fixture(scope="module")
def pretrained(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PretrainJob]:
    """One finished 6-step pretraining job on 2 CPU tasks, checkpoints every 3 steps: test (a), and test (c)'s input."""
    repo = make_repo(tmp_path_factory.mktemp("pretrain"))
    jobs = SlurmJobs(repo)
    job_id = jobs.submit(
        repo / "slurm" / "pretrain.sh",
        *CPU_JOB,
        cwd=repo,
        env=CPU_ENV,
        script_args=tiny_pretraining(
            demo_root / "demo" / "train", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3"
        ),
    )
    info = jobs.wait_until_finished(job_id, timeout_s=JOB_TIMEOUT_S)
    yield PretrainJob(repo, job_id, info, jobs.output(job_id))
    jobs.cancel_unfinished()


def test_pretrain_job_trains_with_ddp_on_two_cpu_tasks_and_exports_one_backbone(pretrained: PretrainJob) -> None:
    output, run_dir = pretrained.output, pretrained.run_dir
    assert pretrained.info["JobState"] == "COMPLETED", output[-5000:]
    # Both ranks joined one process group: each logs the layout, Lightning lists both members.
    assert output.count("1 node(s) x 2 device(s) = 2 processes; global batch 32 (16 per device") == 2, output
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in output
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output
    # One run directory, keyed by the job id, with one set of checkpoints (rank 0 writes) and one backbone.
    assert list((pretrained.repo / "runs" / "pretrain").iterdir()) == [run_dir]
    assert not (pretrained.repo / "outputs").exists()
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("*.ckpt")) == [
        "step_000003.ckpt",
        "step_000006.ckpt",
    ]
    assert not list(run_dir.glob("hpc_ckpt_*"))
    assert read_checkpoint(run_dir / "checkpoints" / "step_000006.ckpt")["global_step"] == 6
    assert steps_trained_by_last_run(run_dir) == 6
    assert [path.relative_to(pretrained.repo) for path in pretrained.repo.rglob("*.safetensors")] == [
        run_dir.relative_to(pretrained.repo) / "backbone.safetensors"
    ]
    assert json.loads((run_dir / "backbone.json").read_text())
    assert output.count("exported the backbone to") == 1


INTERRUPTED_STEPS, INTERRUPTED_EVERY = 20, 5  # max_steps and checkpoint interval of the interrupted jobs


def _warned_training(
    jobs: SlurmJobs, repo: Path, demo_root: Path, layout: tuple[str, ...]
) -> tuple[int, Path, dict[str, str]]:
    """Submit a pretraining job, send it the time-limit warning after its first periodic checkpoint, let the
    requeued job start at once and finish: (job id, run directory, final state)."""
    job_id = jobs.submit(
        repo / "slurm" / "pretrain.sh",
        *layout,
        cwd=repo,
        env=CPU_ENV,
        script_args=tiny_pretraining(
            demo_root / "demo" / "train",
            f"trainer.max_steps={INTERRUPTED_STEPS}",
            f"trainer.checkpoint_every_n_steps={INTERRUPTED_EVERY}",
            "trainer.keep_checkpoints=-1",
        ),
    )
    run_dir = repo / "runs" / "pretrain" / str(job_id)
    # Interrupt once training is under way: after the first periodic checkpoint, long before max_steps.
    jobs.wait_for_file(job_id, run_dir / "checkpoints" / f"step_{INTERRUPTED_EVERY:06d}.ckpt", JOB_TIMEOUT_S)
    # What `#SBATCH --signal=USR1@N` does before the time limit: signal every process of the srun step.
    slurm_command("scancel", "--signal=USR1", str(job_id))
    jobs.start_requeued_job_now(job_id)
    return job_id, run_dir, jobs.wait_until_finished(job_id, timeout_s=JOB_TIMEOUT_S)


@pytest.mark.skipif(
    not (REPO_ROOT / "finetune" / "run.py").exists(),
    reason="finetune/run.py is not written yet: slurm/finetune.sh has no app to run",
)
def test_finetune_job_evaluates_the_exported_backbone(pretrained: PretrainJob, demo_root: Path) -> None:
    assert pretrained.info["JobState"] == "COMPLETED", "the pretraining job this test starts from failed"
    repo = pretrained.repo
    jobs = SlurmJobs(repo)
    backbone = pretrained.run_dir / "backbone.safetensors"
    try:
        job_id = jobs.submit(
            repo / "slurm" / "finetune.sh",
            *CPU_JOB,
            cwd=repo,
            env=CPU_ENV,
            script_args=(
                "task=demo",
                f"ckpt={backbone}",
                f"data_root={demo_root}",
                "logger=csv",
                "trainer.progress_bar=false",
                "trainer.max_steps=10",
                "mode.batch_size=32",
                "num_workers=1",
            ),
        )
        info = jobs.wait_until_finished(job_id, timeout_s=JOB_TIMEOUT_S)
    finally:
        jobs.cancel_unfinished()

    output = jobs.output(job_id)
    assert info["JobState"] == "COMPLETED", output[-5000:]
    assert info["StdOut"] == f"{repo}/logs/vitfm-finetune-{job_id}.out"
    results = json.loads((repo / "runs" / "finetune" / str(job_id) / "results.json").read_text())
    assert results["task"] == "demo" and results["metrics"], results


def _namespace_of(node: str) -> str:
    return "vitfm-n" + node.removeprefix("vitfm-node")  # tests/slurm/cluster_lib.sh


def _app_pids_on(node: str) -> list[int]:
    """The pretraining processes (not their DataLoader workers) running on a test-cluster node."""
    pids = slurm_command("ip", "netns", "pids", _namespace_of(node)).split()
    found = []
    for pid in map(int, pids):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(part.endswith(b"pretrain/run.py") for part in command) and b"pretrain/run.py" not in parent_command:
            found.append(pid)
    return found


def test_a_two_node_job_trains_on_both_requeues_on_the_warning_signal_and_resumes_on_both(
    slurm_jobs: SlurmJobs, tmp_path: Path, demo_root: Path
) -> None:
    max_steps, every = INTERRUPTED_STEPS, INTERRUPTED_EVERY
    repo = make_repo(tmp_path)
    job_id, run_dir, info = _warned_training(slurm_jobs, repo, demo_root, TWO_NODE_JOB)

    output = slurm_jobs.output(job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output[-5000:]
    for restart in (0, 1):  # both runs on both nodes, the rendezvous taken from the node list
        assert (
            f"job {job_id} restart {restart} on vitfm-node[1-2]: 2 nodes x 1 devices = 2 processes, master "
            "vitfm-node1:" in output
        ), output[-5000:]
    # Each run: both ranks, one per node, in one process group of 2 (each rank logs the plan).
    assert output.count("2 node(s) x 1 device(s) = 2 processes; global batch 32") == 4, output[-5000:]
    assert output.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert output.count("requeued SLURM job") == 1  # by rank 0 alone
    resumed = {Path(path) for path in re.findall(r"\[pretrain[.a-z_]*\]\[INFO\] - resuming from (\S+)", output)}
    assert len(resumed) == 1, output[-5000:]  # every rank resumed from the same checkpoint
    resumed_step = read_checkpoint(resumed.pop())["global_step"]
    assert every <= resumed_step < max_steps
    assert steps_trained_by_last_run(run_dir) == max_steps - resumed_step
    assert (run_dir / "backbone.safetensors").is_file()


def test_a_task_killed_on_one_node_fails_the_job_at_once_and_a_rerun_resumes(
    slurm_jobs: SlurmJobs, tmp_path: Path, demo_root: Path
) -> None:
    max_steps, every = 30, 5
    repo = make_repo(tmp_path)
    run_dir = repo / "runs" / "pretrain" / "shared"  # both jobs: a rerun is a new job, with a new id
    arguments = tiny_pretraining(
        demo_root / "demo" / "train",
        f"trainer.max_steps={max_steps}",
        f"trainer.checkpoint_every_n_steps={every}",
        f"run_dir={run_dir}",
    )
    job_id = slurm_jobs.submit(
        repo / "slurm" / "pretrain.sh", *TWO_NODE_JOB, "--no-requeue", cwd=repo, env=CPU_ENV, script_args=arguments
    )
    slurm_jobs.wait_for_file(job_id, run_dir / "checkpoints" / f"step_{every:06d}.ckpt", JOB_TIMEOUT_S)
    (victim,) = _app_pids_on("vitfm-node2")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=120)
    # srun --kill-on-bad-exit ends the other node's task: nobody waits in a collective for the dead rank.
    assert info["JobState"] == "FAILED", info
    assert time.monotonic() - killed_at < 60

    rerun = slurm_jobs.submit(
        repo / "slurm" / "pretrain.sh", *TWO_NODE_JOB, cwd=repo, env=CPU_ENV, script_args=arguments
    )
    info = slurm_jobs.wait_until_finished(rerun, timeout_s=JOB_TIMEOUT_S)
    output = slurm_jobs.output(rerun)
    assert info["JobState"] == "COMPLETED", output[-5000:]
    resumed = set(re.findall(r"\[pretrain[.a-z_]*\]\[INFO\] - resuming from (\S+)", output))
    # By its name: the rotation (trainer.keep_checkpoints) has removed the file since.
    assert len(resumed) == 1 and checkpoint_step(Path(resumed.pop())) >= every, output[-5000:]
    assert read_checkpoint(run_dir / "checkpoints" / f"step_{max_steps:06d}.ckpt")["global_step"] == max_steps

"""The test cluster runs what the SLURM launch scripts rely on (multi-task srun steps that form one
torch.distributed group, requeued jobs that rerun in the same log with SLURM_RESTART_COUNT set), and the
launch scripts hand the allocation to the app as the Hydra overrides the app expects."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_jobs import REPO_ROOT, SlurmJobs

pytestmark = pytest.mark.slurm

ALL_REDUCE = """
import os
from datetime import timedelta

import torch
import torch.distributed as dist

rank, world_size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
total = torch.tensor([rank + 1])
dist.all_reduce(total)
print(f"rank {rank} of {world_size}: sum {total.item()}")
dist.destroy_process_group()
"""


def test_two_srun_tasks_join_one_gloo_all_reduce(slurm_jobs: SlurmJobs, tmp_path: Path) -> None:
    (tmp_path / "all_reduce.py").write_text(ALL_REDUCE)
    script = tmp_path / "job.sh"
    # slurm/job_env.sh is what slurm/pretrain.sh uses to set MASTER_ADDR and MASTER_PORT for the srun step.
    script.write_text(
        f"#!/bin/bash\nset -euo pipefail\nsource {REPO_ROOT}/slurm/job_env.sh\nsrun {sys.executable} all_reduce.py\n"
    )

    job_id = slurm_jobs.submit(script, "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=5")
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=120)

    output = slurm_jobs.output(job_id)
    assert info["JobState"] == "COMPLETED", output
    assert "1 nodes x 2 devices = 2 processes" in output
    assert sorted(line for line in output.splitlines() if line.startswith("rank ")) == [
        "rank 0 of 2: sum 3",
        "rank 1 of 2: sum 3",
    ]


def test_requeued_job_reruns_with_restart_count_1_in_the_same_log(slurm_jobs: SlurmJobs, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    # The first run waits to be requeued; ending on its own (exit 1) would mean the requeue never came.
    script.write_text(
        '#!/bin/bash\necho "run ${SLURM_RESTART_COUNT:-0}"\n'
        "if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then sleep 120; exit 1; fi\n"
    )
    job_id = slurm_jobs.submit(script, "--requeue", "--open-mode=append", "--ntasks=1", "--time=5")
    slurm_jobs.wait_for(job_id, lambda info: "run 0" in slurm_jobs.output(job_id), "running", timeout_s=60)

    subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60)
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=90)

    assert info["JobState"] == "COMPLETED"
    assert info["Restarts"] == "1"
    runs = [line for line in slurm_jobs.output(job_id).splitlines() if line.startswith("run ")]
    assert runs == ["run 0", "run 1"]


STUB_APP = """
import json, os, sys
print("app", json.dumps({"rank": os.environ["SLURM_PROCID"], "cluster": os.environ["SLURM_CLUSTER_NAME"],
                         "argv": sys.argv[1:], "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"}))
"""


@pytest.mark.parametrize("app", ["pretrain", "finetune"])
def test_launch_script_passes_the_allocation_and_job_keyed_overrides_to_the_app(
    slurm_jobs: SlurmJobs, tmp_path: Path, app: str
) -> None:
    # A stand-in for the repository: the real launch scripts, a stub app that prints what it was given.
    shutil.copytree(REPO_ROOT / "slurm", tmp_path / "slurm")
    (tmp_path / app).mkdir()
    (tmp_path / app / "run.py").write_text(STUB_APP)
    (tmp_path / "logs").mkdir()

    job_id = slurm_jobs.submit(
        tmp_path / "slurm" / f"{app}.sh",
        "--nodes=1",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        "--time=5",
        script_args=("optim.lr=0.5", "data.path=/a b"),
        cwd=tmp_path,
        env={"VITFM_TRAINER": "ddp", "VITFM_PYTHON": sys.executable},
    )
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=60)

    output = slurm_jobs.output(job_id)
    assert info["JobState"] == "COMPLETED", output
    assert info["StdOut"] == f"{tmp_path}/logs/vitfm-{app}-{job_id}.out"
    assert f"job {job_id} restart 0 on " in output and "1 nodes x 2 devices = 2 processes" in output
    launches = [json.loads(line.removeprefix("app ")) for line in output.splitlines() if line.startswith("app ")]
    assert sorted(launch["rank"] for launch in launches) == ["0", "1"]
    assert launches[0]["argv"] == [
        "trainer=ddp",
        "trainer.num_nodes=1",
        "trainer.devices=2",
        f"run_dir=runs/{app}/{job_id}",
        "resume=auto",
        f"++logger.run_id=slurm-{launches[0]['cluster']}-{job_id}",
        "optim.lr=0.5",
        "data.path=/a b",
    ]
    # The rendezvous is the first node of the allocation, by name (one node here: vitfm-node1 or vitfm-node2).
    assert launches[0]["master"] == launches[1]["master"] == f"{info['NodeList']}:{10000 + job_id % 20000}"

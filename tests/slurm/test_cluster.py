"""The test cluster runs what the SLURM launch scripts rely on: multi-task srun steps that form one
torch.distributed group, and requeued jobs that rerun in the same log with SLURM_RESTART_COUNT set."""

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
    script.write_text(f"#!/bin/bash\nset -euo pipefail\nsource {REPO_ROOT}/slurm/job_env.sh\n"
                      f"srun {sys.executable} all_reduce.py\n")

    job_id = slurm_jobs.submit(script, "--ntasks=2", "--cpus-per-task=1", "--time=5")
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=120)

    output = slurm_jobs.output(job_id)
    assert info["JobState"] == "COMPLETED", output
    assert "1 nodes x 2 devices = 2 processes" in output
    assert sorted(line for line in output.splitlines() if line.startswith("rank ")) == [
        "rank 0 of 2: sum 3", "rank 1 of 2: sum 3"]


def test_requeued_job_reruns_with_restart_count_1_in_the_same_log(slurm_jobs: SlurmJobs, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    # The first run waits to be requeued; ending on its own (exit 1) would mean the requeue never came.
    script.write_text('#!/bin/bash\necho "run ${SLURM_RESTART_COUNT:-0}"\n'
                      'if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then sleep 120; exit 1; fi\n')
    job_id = slurm_jobs.submit(script, "--requeue", "--open-mode=append", "--ntasks=1", "--time=5")
    slurm_jobs.wait_for(job_id, lambda info: "run 0" in slurm_jobs.output(job_id), "running", timeout_s=60)

    subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60)
    info = slurm_jobs.wait_until_finished(job_id, timeout_s=90)

    assert info["JobState"] == "COMPLETED"
    assert info["Restarts"] == "1"
    runs = [line for line in slurm_jobs.output(job_id).splitlines() if line.startswith("run ")]
    assert runs == ["run 0", "run 1"]

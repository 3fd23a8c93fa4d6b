"""Submitting batch jobs to a real SLURM cluster and waiting for their states, for tests/slurm."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Jobs in these states never run again (a requeued job passes through REQUEUED and PENDING instead).
FINISHED_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
POLL_INTERVAL_S = 0.25
CREDENTIAL_EXPIRY_S = 11  # AuthInfo=cred_expire=10 in slurm.conf.in, and a second to spare
COMMAND_TIMEOUT_S = 60


def slurm_command(*args: str) -> str:
    """Runs a SLURM client command and returns its stdout; raises RuntimeError with its stderr on failure."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


class SlurmJobs:
    """Submits batch jobs, polls their state through scontrol, cancels what is still alive at teardown.

    Jobs are kept in `scontrol show job` for MinJobAge (300 s by default) after they end, long enough to read
    their final state: the test cluster has no accounting, so sacct is unavailable.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.submitted: list[int | str] = []

    def submit(
        self,
        script: Path,
        *sbatch_args: str,
        script_args: tuple[str, ...] = (),
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        """`sbatch --parsable` SCRIPT from `cwd` (default: the test's workdir); returns the job id.

        The job runs in `cwd`; its output goes where the script's #SBATCH --output says, else to
        `cwd/slurm-<id>.out` (read it with `output(job_id)`).
        """
        cwd = cwd or self.workdir
        result = subprocess.run(
            ["sbatch", "--parsable", *sbatch_args, str(script), *script_args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert result.returncode == 0, f"sbatch failed: {result.stderr.strip()}"
        job_id = int(result.stdout.strip().split(";")[0])
        self.submitted.append(job_id)
        return job_id

    def info(self, job_id: int | str) -> dict[str, str]:
        """The fields of `scontrol show job -o`: JobState, Restarts, ExitCode, StdOut, Reason, ..."""
        line = slurm_command("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line))

    def output(self, job_id: int | str) -> str:
        path = Path(self.info(job_id)["StdOut"])
        return path.read_text() if path.exists() else ""

    def wait_for(
        self, job_id: int | str, condition: Callable[[dict[str, str]], bool], description: str, timeout_s: float
    ) -> dict[str, str]:
        """Polls the job until `condition(info)` holds; on timeout cancels it and fails with its state and log."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(job_id)
            if condition(info):
                return info
            if time.monotonic() > deadline:
                subprocess.run(["scancel", str(job_id)], timeout=COMMAND_TIMEOUT_S)
                pytest.fail(
                    f"job {job_id} not {description} after {timeout_s} s: JobState={info['JobState']} "
                    f"Reason={info.get('Reason')}\n--- output:\n{self.output(job_id)[-3000:]}"
                )
            time.sleep(POLL_INTERVAL_S)

    def wait_until_finished(self, job_id: int | str, timeout_s: float) -> dict[str, str]:
        return self.wait_for(job_id, lambda info: info["JobState"] in FINISHED_STATES, "finished", timeout_s)

    def wait_for_file(self, job_id: int | str, path: Path, timeout_s: float) -> None:
        """Until the job has written ``path``; fails with its log if it ends first."""
        self.wait_for(
            job_id,
            lambda info: path.exists() or info["JobState"] not in ("PENDING", "RUNNING"),
            f"writing {path.name}",
            timeout_s,
        )
        assert path.exists(), f"job {job_id} ended before writing {path}:\n{self.output(job_id)[-5000:]}"

    def start_requeued_job_now(self, job_id: int | str) -> None:
        """A requeued job waits for its BeginTime before it may start again; skip that wait once it is pending.

        Not before the previous run's job credential has expired (``AuthInfo=cred_expire`` in slurm.conf.in): a
        rerun allocated earlier is killed as "non-startable: Job credential revoked" and the job ends FAILED.
        """
        self.wait_for(
            job_id,
            lambda info: info["Restarts"] != "0" and info["JobState"] in ("PENDING", "RUNNING"),
            "requeued",
            timeout_s=60,
        )
        time.sleep(CREDENTIAL_EXPIRY_S)
        if self.info(job_id)["JobState"] == "PENDING":
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
            )

    def cancel_unfinished(self) -> None:
        for job_id in self.submitted:
            try:
                finished = self.info(job_id)["JobState"] in FINISHED_STATES
            except RuntimeError:  # already purged from the controller
                continue
            if not finished:
                subprocess.run(["scancel", str(job_id)], timeout=COMMAND_TIMEOUT_S)


def make_repo(root: Path) -> Path:
    """A stand-in for the repository to submit from: the launch scripts and links to the apps and configs."""
    repo = root / "repo"
    repo.mkdir()
    for name in ("slurm", "pretrain", "finetune", "conf"):
        (repo / name).symlink_to(REPO_ROOT / name)
    (repo / "logs").mkdir()  # sbatch does not create the --output directory
    return repo

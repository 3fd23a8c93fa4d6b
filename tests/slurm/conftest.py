"""Fixtures for tests that run jobs on a real SLURM cluster.

Start the two-node test cluster with `tests/slurm/start_cluster.sh` (root, Debian). Without one these tests skip,
unless VITFM_REQUIRE_SLURM=1 (set in CI), where they fail instead so that CI cannot pass without running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_jobs import SlurmJobs, slurm_command


def _cluster_problem() -> str | None:
    """Why no job can run here, or None when a node is ready."""
    if shutil.which("sbatch") is None:
        return "sbatch not found: start the test cluster with tests/slurm/start_cluster.sh"
    try:
        nodes = slurm_command("sinfo", "-h", "-N", "-o", "%N %T").split()
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return f"sinfo failed, is slurmctld running? (tests/slurm/start_cluster.sh): {error}"
    node_states = dict(zip(nodes[::2], nodes[1::2], strict=True))
    if not {"idle", "mixed"} & set(node_states.values()):
        return f"no idle SLURM node; sinfo says: {node_states}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster_ready() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("VITFM_REQUIRE_SLURM") == "1":
        pytest.fail(f"VITFM_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture
def slurm_jobs(slurm_cluster_ready: None, tmp_path: Path) -> Iterator[SlurmJobs]:
    jobs = SlurmJobs(tmp_path)
    yield jobs
    jobs.cancel_unfinished()


@pytest.fixture(scope="session")
def demo_root(slurm_cluster_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set in `<root>/demo/{train,test}`, the layout finetune's task=demo expects below data_root."""
    root = tmp_path_factory.mktemp("data")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipelines.demo",
            "--out",
            str(root / "demo"),
            "--num-train",
            "1024",
            "--num-test",
            "256",
            "--max-count",
            "128",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root

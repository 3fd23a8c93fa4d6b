"""One owner per run directory: a live holder is named, a killed one leaves no stale lock, resume=none never mixes
two runs, and half-written files of dead writers are removed."""

import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from pretrain.engine.checkpoints import AtomicCheckpointIO, checkpoint_path
from pretrain.engine.lifecycle import continued_on_requeue
from pretrain.engine.run_dir import (
    RunDirectoryBusyError,
    RunDirectoryNotEmptyError,
    claim_run_dir,
    own_run_dir,
)

HOLD = """
import sys, time
from pathlib import Path
from pretrain.engine.run_dir import own_run_dir
with own_run_dir(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/run``'s lock."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_owner_fails_at_once_naming_the_holder(tmp_path, holder):
    with pytest.raises(
        RunDirectoryBusyError, match=f"in use by another run \\(pid {holder.pid} on {socket.gethostname()}"
    ):
        with own_run_dir(tmp_path / "run"):
            pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with own_run_dir(tmp_path / "run"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "run" / ".lock").read_text()


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch, caplog):
    def refuse(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", refuse)
    with caplog.at_level(logging.WARNING), own_run_dir(tmp_path / "run"):
        pass
    assert "does not support locks" in caplog.text


def finished_run(run_dir):
    AtomicCheckpointIO().save_checkpoint({"global_step": 10}, checkpoint_path(run_dir / "checkpoints", 10))
    (run_dir / "backbone.safetensors").write_bytes(b"weights")
    (run_dir / ".hydra").mkdir()
    (run_dir / "run.log").write_text("this job's log\n")


def test_resume_none_refuses_a_directory_that_holds_a_run(tmp_path):
    finished_run(tmp_path)
    with pytest.raises(RunDirectoryNotEmptyError, match="overwrite=true to move it aside"):
        claim_run_dir(tmp_path, "none", overwrite=False)
    assert (tmp_path / "backbone.safetensors").exists()
    claim_run_dir(tmp_path, "auto", overwrite=False)  # continuing it is fine


def test_overwrite_moves_the_previous_run_aside(tmp_path):
    finished_run(tmp_path)
    claim_run_dir(tmp_path, "none", overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["replaced", "run.log"]
    (moved,) = (tmp_path / "replaced").iterdir()
    assert sorted(path.name for path in moved.iterdir()) == [".hydra", "backbone.safetensors", "checkpoints"]
    assert (moved / "checkpoints" / "step_000010.ckpt").exists()


def test_claiming_removes_files_half_written_by_dead_writers(tmp_path):
    finished_run(tmp_path)
    left = tmp_path / "checkpoints" / ".step_000020.ckpt.tmp-4242"
    left.write_bytes(b"half")
    claim_run_dir(tmp_path, "auto", overwrite=False)
    assert not left.exists()
    assert checkpoint_path(tmp_path / "checkpoints", 10).exists()


def test_resume_none_in_a_requeued_slurm_job_continues_the_run(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert continued_on_requeue("none") == "none"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert continued_on_requeue("none") == "auto"
    assert continued_on_requeue("outputs/r/checkpoints/step_000010.ckpt").endswith("step_000010.ckpt")

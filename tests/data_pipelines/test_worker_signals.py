"""Loader workers outlive the stop signals a terminal or scheduler sends their whole group while their parent
runs, end when it exits, and die with it when it is killed (data_pipelines/worker_signals.py)."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from data_pipelines.worker_signals import leave_stop_signals_to_parent

EXIT_TIMEOUT_S = 60
# Less than torch's MP_STATUS_CHECK_INTERVAL (5 s), the period of the watchdog that ended orphans before.
ORPHAN_TIMEOUT_S = 3
POLL_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


def stream_script(demo_dir: Path, then: str) -> str:
    """Python that builds a two-worker stream over the demo shards, takes one batch, and runs ``then``."""
    return textwrap.dedent(
        f"""
        import multiprocessing, sys
        from tests.yaml_defaults import transform_options
        from data_pipelines.stream import StreamConfig, build_loader

        config = StreamConfig(
            shards={str(demo_dir / "train")!r}, batch_size=4, num_workers=2, transform="mae",
            augment=transform_options(16), mean=(0.5,) * 3, std=(0.25,) * 3, seed=0, shuffle_buffer=10,
            manifest=None, pin_memory=False,
        )
        batches = iter(build_loader(config))
        print(next(batches)["image"].shape[0], flush=True)
        """
    ) + textwrap.dedent(then)


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead child waits as one until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_script_that_exits_holding_a_stream_iterator_ends_quietly(demo_dir: Path) -> None:
    # At interpreter exit multiprocessing SIGTERMs the live workers and waits for them: workers that ignored that
    # signal kept the script waiting forever; workers dying of it made torch report them killed during the exit.
    script = stream_script(demo_dir, then="")
    ended = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S
    )
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "4"
    assert "DataLoader worker" not in ended.stderr and "Exception ignored" not in ended.stderr, ended.stderr


def test_a_worker_outlives_stop_signals_while_its_parent_runs() -> None:
    # Compute threads set in the parent, as the apps set them, make torch start a native thread in each worker
    # before its worker_init_fn, with no signal blocked: the signal may be delivered to any thread.
    threads = torch.get_num_threads()
    before = set(multiprocessing.active_children())
    torch.set_num_threads(2)
    try:
        loader = torch.utils.data.DataLoader(
            range(64), batch_size=4, num_workers=1, worker_init_fn=leave_stop_signals_to_parent()
        )
        batches = iter(loader)
        assert next(batches).tolist() == [0, 1, 2, 3]  # the worker has run its init
    finally:
        torch.set_num_threads(threads)
    try:
        (worker,) = set(multiprocessing.active_children()) - before
        for stop in (signal.SIGTERM, signal.SIGINT):
            subprocess.run(["kill", f"-{stop.name.removeprefix('SIG')}", str(worker.pid)], check=True)
        time.sleep(0.5)
        assert worker.is_alive()
        assert [next(batches).tolist()[0] for _ in range(3)] == [4, 8, 12]
    finally:
        del batches


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_workers_die_with_a_parent_killed_by_sigkill(demo_dir: Path) -> None:
    then = """
        print(*(child.pid for child in multiprocessing.active_children()), flush=True)
        sys.stdin.read()  # until killed
    """
    script = subprocess.Popen(
        [sys.executable, "-c", stream_script(demo_dir, then)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert script.stdout.readline().strip() == "4"
        workers = [int(pid) for pid in script.stdout.readline().split()]
        assert len(workers) == 2 and all(map(running, workers))
    finally:
        script.kill()
        script.wait(EXIT_TIMEOUT_S)
    deadline = time.monotonic() + ORPHAN_TIMEOUT_S
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert not any(map(running, workers)), f"workers {workers} outlived their killed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_worker_whose_parent_died_before_its_init_ends_itself() -> None:
    # The parent-death signal is only sent for a death after the request: the init must catch an earlier one.
    script = textwrap.dedent(
        f"""
        import os, time
        from data_pipelines.worker_signals import leave_stop_signals_to_parent

        init = leave_stop_signals_to_parent()
        parent = os.getpid()
        if os.fork():
            os._exit(0)
        while os.getppid() == parent:  # adopted once the parent is gone
            time.sleep({POLL_S})
        print("adopted", flush=True)
        init(0)
        print("still running", flush=True)
        """
    )
    ended = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S
    )
    assert ended.stdout.split("\n")[0] == "adopted" and "still running" not in ended.stdout, ended.stderr

"""Loader workers outlive the stop signals a terminal or scheduler sends their whole group while their parent
runs, and end when it exits (data_pipelines/worker_signals.py)."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from data_pipelines.worker_signals import leave_stop_signals_to_parent

EXIT_TIMEOUT_S = 60


def test_a_script_that_exits_holding_a_stream_iterator_ends_quietly(demo_dir: Path) -> None:
    # At interpreter exit multiprocessing SIGTERMs the live workers and waits for them: workers that ignored that
    # signal kept the script waiting forever; workers dying of it made torch report them killed during the exit.
    script = textwrap.dedent(
        f"""
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
    )
    root = Path(__file__).resolve().parents[2]
    ended = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S
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

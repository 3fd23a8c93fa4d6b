"""Loader workers outlive the stop signals a terminal or scheduler sends their whole group, and end on their
parent's (data_pipelines/worker_signals.py)."""

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


def test_a_script_that_exits_holding_a_stream_iterator_ends(demo_dir: Path) -> None:
    # At interpreter exit multiprocessing SIGTERMs the live workers and waits for them: a worker that ignored its
    # parent's signal kept the script waiting forever.
    script = textwrap.dedent(
        f"""
        from tests.yaml_defaults import transform_options
        from data_pipelines.stream import StreamConfig, build_loader

        config = StreamConfig(
            shards={str(demo_dir / "train")!r}, batch_size=4, num_workers=1, transform="mae",
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


def test_a_worker_ignores_stop_signals_sent_by_another_process() -> None:
    # Compute threads set in the parent, as the apps set them, make torch start a native thread in each worker
    # before its worker_init_fn, with no signal blocked: no thread of the worker can then wait for the signal.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loader = torch.utils.data.DataLoader(
            range(64), batch_size=4, num_workers=1, worker_init_fn=leave_stop_signals_to_parent()
        )
        batches = iter(loader)
        assert next(batches).tolist() == [0, 1, 2, 3]  # the worker has run its init
    finally:
        torch.set_num_threads(threads)
    (worker,) = multiprocessing.active_children()
    for stop in (signal.SIGTERM, signal.SIGINT):
        subprocess.run(["kill", f"-{stop.name.removeprefix('SIG')}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    assert [next(batches).tolist()[0] for _ in range(3)] == [4, 8, 12]
    del batches

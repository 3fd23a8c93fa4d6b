"""Where each dataloader worker resumes when a rank skips its first N batches.

A DataLoader over an IterableDataset serves its workers' batches round-robin (worker 0, 1, ..., 0, 1, ...) and
drops a worker from the cycle once it is exhausted. So the batches a rank sees are a fixed interleaving of its
workers' batch sequences, and skipping N of them means: skip `skips[w]` batches inside each worker, and give the
resumed loader's worker 0 the role of the worker that would have served batch N (`first_worker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SkipPlan:
    first_worker: int  # the worker role that the resumed loader's worker 0 plays
    skips: tuple[int, ...]  # batches each worker role skips, by role


def plan_skip(skip_batches: int, worker_batches: Sequence[int | None]) -> SkipPlan:
    """Replay the round-robin over `worker_batches` (batches per worker, None = endless) for `skip_batches` turns."""
    num_workers = len(worker_batches)
    total = None if None in worker_batches else sum(worker_batches)
    if total is not None and skip_batches > total:
        raise ValueError(f"cannot skip {skip_batches} batches: this rank yields {total} in this epoch")
    served = [0] * num_workers
    worker = 0
    for _ in range(skip_batches):
        while worker_batches[worker] is not None and served[worker] >= worker_batches[worker]:
            worker = (worker + 1) % num_workers
        served[worker] += 1
        worker = (worker + 1) % num_workers
    return SkipPlan(first_worker=worker, skips=tuple(served))

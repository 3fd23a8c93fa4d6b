"""Seeds derived from (seed, epoch, rank, worker, position), so any sample's randomness can be recreated alone.

Exact resume needs this: a resumed stream skips batches without decoding them, so no random generator may be
advanced by the samples it skips. Every shuffle and every sample's augmentation draws from its own seed instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def stable_seed(*parts: int | str) -> int:
    """A 63-bit seed that is the same in every process and Python version (unlike `hash()` of strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_host(seed: int) -> None:
    """Seed torch's CPU generator, Python's `random` and NumPy's global generator (timm's augmentations draw from
    the latter two) from one seed. Per sample this is cheap; ``torch.manual_seed`` is not: on a process without an
    initialized GPU it queues a seeding of every accelerator with a formatted stack trace (about 1.4 ms, 75% of
    a 32 px sample's decode and augmentation)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def seed_all(seed: int) -> None:
    """:func:`seed_host` plus every accelerator's generator (the model's masks and drop paths draw on the device)."""
    torch.manual_seed(seed)
    seed_host(seed)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run random transforms (torchvision's and timm's) from `seed`, leaving the caller's generators as they were.

    Restoring matters when the loader runs in the training process (num_workers=0): the model's own randomness
    (MAE masking, dropout) must not depend on how many images were decoded. A loader worker draws nothing else
    from the global generators, so it skips the save and restore (a sixth of a 32 px sample's cost).
    """
    if torch.utils.data.get_worker_info() is not None:
        seed_host(seed)
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_host(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

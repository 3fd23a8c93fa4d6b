"""Seeds derived from (seed, epoch, rank, worker, position), so any sample's randomness can be recreated alone.

Exact resume needs this: a resumed stream skips batches without decoding them, so no random generator may be
advanced by the samples it skips. Every shuffle and every sample's augmentation draws from its own seed instead.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def stable_seed(*parts: int | str) -> int:
    """A 63-bit seed that is the same in every process and Python version (unlike `hash()` of strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded_torch_rng(seed: int) -> Iterator[None]:
    """Run torchvision's random transforms from `seed`, leaving the caller's CPU generator as it was.

    Restoring matters when the loader runs in the training process (num_workers=0): the model's own randomness
    (MAE masking, dropout) must not depend on how many images were decoded.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield

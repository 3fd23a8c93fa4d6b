"""Peak memory of one MAE ViT-B/16 train step on CPU with and without activation checkpointing.

Each variant runs in its own process (peak RSS is a per-process high-water mark), alternating, ``--rounds`` times;
the step is forward, backward and AdamW on a batch of 224 px images. Prints the median peak RSS and step time of
each variant and the ratio of the peaks.

    python bench/checkpointing_memory.py                  # ViT-B/16, batch 8: about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit


def one_step(batch_size: int, checkpointing: bool) -> dict[str, float]:
    """Build the model, take two steps (the second with the optimizer state in place); the process's RSS
    high-water mark then holds the step's activations, parameters, gradients and AdamW state."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(create_vit("vit_base_patch16", pos_embed="sincos"), 512, 8, 16)
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, 224, 224)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images).loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_rss_gib": peak_kib / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.batch_size, args.child == "checkpointed")))
        return
    results: dict[str, list[dict[str, float]]] = {"plain": [], "checkpointed": []}
    for _ in range(args.rounds):
        for variant in results:
            command = [sys.executable, __file__, f"--batch-size={args.batch_size}", f"--child={variant}"]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[variant].append(json.loads(output.strip().splitlines()[-1]))
    print(f"MAE ViT-B/16, 224 px, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads")
    print(f"{'variant':<14} {'peak RSS GiB':>12} {'step s':>8}")
    peaks = {}
    for variant, runs in results.items():
        peaks[variant] = statistics.median(run["peak_rss_gib"] for run in runs)
        seconds = statistics.median(run["seconds"] for run in runs)
        print(f"{variant:<14} {peaks[variant]:12.2f} {seconds:8.2f}")
    print(f"checkpointed / plain peak RSS: {peaks['checkpointed'] / peaks['plain']:.2f}x")


if __name__ == "__main__":
    main()

"""The peak tensor memory of training steps on CPU, for ``test_memory_plan.py``: DeepSpeed ZeRO engines, or plain
torch steps with or without activation checkpointing.

    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \
        tests/engine/deepspeed_cpu_peak.py --zero-stage 2 --batch-size 8 --bucket 2000000 --output /tmp/peak.json
    PYTHONPATH=. python tests/engine/deepspeed_cpu_peak.py --checkpointing --batch-size 8 --output /tmp/peak.json

Each rank builds the MAE of :data:`ENCODER` and :data:`DECODER` (fp32, as DeepSpeed runs on CPU) and a torch AdamW,
in a ZeRO engine with Lightning's bucket settings (``overlap_comm``, ``contiguous_gradients``) or alone, and takes
:data:`STEPS` steps under torch's profiler; the peak is the largest sum of live CPU tensor bytes over the
allocations it recorded (the CPU counterpart of ``torch.cuda.max_memory_allocated``). One measurement per process:
a second profiler session in a process records fewer allocations. Rank 0 writes ``{"peak_bytes": [per rank]}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import VisionTransformer

ENCODER = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 6, "num_heads": 6, "num_classes": 0}
DECODER = {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8}
STEPS = 3  # the first step creates the optimizer states, the later ones run with everything in place


def build_model() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(VisionTransformer(**ENCODER, pos_embed="sincos"), **DECODER)


def peak_tensor_bytes(profiler: profile) -> int:
    """The largest running sum of the CPU allocations and frees the profiler recorded (``profile_memory``)."""
    changes = []
    pending = list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        kind, fields = event.typed
        if kind == _EventType.Allocation and fields.device.type == "cpu":
            changes.append((event.start_time_ns, fields.alloc_size))
    live = peak = 0
    for _, change in sorted(changes):
        live += change
        peak = max(peak, live)
    return peak


def measure_deepspeed(zero_stage: int, images: torch.Tensor, bucket: int) -> list[int]:
    """The peak of each rank of a ZeRO engine (all ranks return the list)."""
    # Read by DeepSpeed at import, so imported here: the test imports this module for its model and must not
    # change its own environment (see deepspeed_cpu_train.py for the extension cache).
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR",
        str(Path.home() / ".cache" / "vitfm" / "torch_extensions" / f"torch-{torch.__version__}"),
    )
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    world = dist.get_world_size()
    config = {
        "train_batch_size": len(images) * world,
        "train_micro_batch_size_per_gpu": len(images),
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
            "overlap_comm": True,
            "contiguous_gradients": True,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
    }
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        for _ in range(STEPS):
            engine.backward(engine(images).loss)
            engine.step()
    peaks = [None] * world
    dist.all_gather_object(peaks, peak_tensor_bytes(prof))
    dist.destroy_process_group()
    return peaks


def measure_plain(images: torch.Tensor, checkpointing: bool) -> list[int]:
    """The peak of plain torch steps in this one process (what DDP on one process runs)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_model()
        model.set_grad_checkpointing(checkpointing)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            model(images).loss.backward()
            optimizer.step()
    return [peak_tensor_bytes(prof)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero-stage", type=int, help="a DeepSpeed engine of this stage; without: plain torch steps")
    parser.add_argument("--checkpointing", action="store_true", help="plain steps with activation checkpointing")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--bucket", type=int, default=0, help="reduce_bucket_size, in elements")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, ENCODER["img_size"], ENCODER["img_size"])
    if args.zero_stage is None:
        peaks = measure_plain(images, args.checkpointing)
    else:
        peaks = measure_deepspeed(args.zero_stage, images, args.bucket)
    if int(os.environ.get("RANK", 0)) == 0:
        args.output.write_text(json.dumps({"peak_bytes": peaks}))


if __name__ == "__main__":
    main()

"""A few steps of DeepSpeed ZeRO training of our tiny MAE on CPU, for ``test_deepspeed_cpu.py``.

    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \
        tests/engine/deepspeed_cpu_train.py --zero-stage 3 --output-dir /tmp/deepspeed-cpu

Lightning refuses DeepSpeed on CPU, so this drives DeepSpeed's engine directly, as Lightning's strategy does on
GPUs: a torch AdamW over our ``param_groups``, ``save_checkpoint`` with our metadata as client state. Each rank
trains on its own slice of one fixed random batch. Writes into ``--output-dir``:

- ``checkpoint/``: the ZeRO checkpoint (``latest`` and ``global_step<N>/`` with the per-rank shards);
- ``gathered.pt``: every parameter of the engine's model in full (frozen ones included) after the last step;
- ``results.json``: mean loss per step, optimizer state elements held by each rank, parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

# Read by DeepSpeed at import. The extension cache outlives the run (CI keeps ~/.cache/vitfm): DeepSpeed JIT-compiles
# its shared-memory communication op on first use (about a minute on two cores), later runs load it in a second.
# One folder per torch version, since a compiled op only fits the torch it was built against.
os.environ["DS_ACCELERATOR"] = "cpu"
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vitfm" / "torch_extensions" / f"torch-{torch.__version__}")
)

import deepspeed  # noqa: E402

from pretrain.engine.metadata import CHECKPOINT_META_KEY, BackboneMeta  # noqa: E402
from pretrain.engine.optim import param_groups  # noqa: E402
from pretrain.models.mae import MaskedAutoencoder  # noqa: E402
from pretrain.models.vit import VisionTransformer, preset_options  # noqa: E402

PRESET = "vit_test_patch4"
ENCODER_OPTIONS = {**preset_options(PRESET), "pos_embed": "sincos", "num_classes": 0}


def build_model() -> MaskedAutoencoder:
    """The same weights on every rank: without ``zero.Init``, ZeRO-3 partitions each rank's own full copy."""
    torch.manual_seed(0)
    encoder = VisionTransformer(**ENCODER_OPTIONS)
    return MaskedAutoencoder(encoder, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


def rank_batch(rank: int, world_size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of fixed random images ``[B, 3, H, W]`` and of fixed masking noise ``[B, L]``.

    The same batch and mask at every step make the loss a clean signal that the optimizer works.
    """
    generator = torch.Generator().manual_seed(1234)
    size = ENCODER_OPTIONS["img_size"]
    num_patches = (size // ENCODER_OPTIONS["patch_size"]) ** 2
    images = torch.rand(world_size * batch_size, 3, size, size, generator=generator)
    noise = torch.rand(world_size * batch_size, num_patches, generator=generator)
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return images[rows], noise[rows]


def deepspeed_config(zero_stage: int, batch_size: int, world_size: int) -> dict:
    """fp32 ZeRO: no ``bf16``/``fp16`` section, so DeepSpeed keeps the model and its master copy in fp32."""
    return {
        "train_batch_size": batch_size * world_size,
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # a torch AdamW, as Lightning's strategy hands it over
        "steps_per_print": 1_000_000,
    }


def optimizer_state_elements(engine: deepspeed.DeepSpeedEngine) -> int:
    """Elements of AdamW's ``exp_avg`` on this rank: the size of the fp32 partition ZeRO gave it."""
    return sum(state["exp_avg"].numel() for state in engine.optimizer.optimizer.state.values())


def gathered_parameters(engine: deepspeed.DeepSpeedEngine) -> dict[str, torch.Tensor]:
    """Full copies of all parameters on every rank. ZeRO-3 holds a shard of each (a collective gathers them);
    ZeRO-2 keeps full parameters, refreshed from the updated partitions after every step."""
    named = list(engine.module.named_parameters())
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters([param for _, param in named], modifier_rank=None):
            return {name: param.detach().clone() for name, param in named}
    return {name: param.detach().clone() for name, param in named}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="images per rank and step")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = build_model()
    trainable_parameters = sum(param.numel() for param in model.parameters() if param.requires_grad)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=args.lr, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(args.zero_stage, args.batch_size, world_size)
    )
    images, noise = rank_batch(rank, world_size, args.batch_size)

    losses = []
    for _ in range(args.steps):
        loss = engine(images, noise=noise).loss
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world_size)

    meta = BackboneMeta.for_architecture(ENCODER_OPTIONS).updated(objective="mae", step=args.steps)
    engine.save_checkpoint(str(args.output_dir / "checkpoint"), client_state={CHECKPOINT_META_KEY: meta.to_dict()})
    gathered = gathered_parameters(engine)
    state_elements = [None] * world_size
    dist.all_gather_object(state_elements, optimizer_state_elements(engine))

    if rank == 0:
        torch.save(gathered, args.output_dir / "gathered.pt")
        results = {
            "zero_stage": args.zero_stage,
            "world_size": world_size,
            "steps": args.steps,
            "losses": losses,
            "optimizer_state_elements_per_rank": state_elements,
            "trainable_parameters": trainable_parameters,
            "parameters": sum(value.numel() for value in gathered.values()),
        }
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

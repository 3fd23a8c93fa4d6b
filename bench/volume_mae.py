"""Train-step throughput of our 3-D MAE against MONAI's ``MaskedAutoEncoderViT``, measured in one run on one machine.

Contenders, both built at the same sizes and stepped with the same AdamW (foreach, lr 1e-4):
  * ``ours``  -- pretrain.models.MaskedAutoencoder around a ``spatial_dims=3`` VisionTransformer (sin-cos positions)
  * ``monai`` -- monai.networks.nets.MaskedAutoEncoderViT (``spatial_dims=3``, sin-cos positions, ``qkv_bias=True``)
  * ``monai_sdpa`` (``--monai-sdpa``, optional) -- the same MONAI model with every SABlock switched to its
    ``use_flash_attention`` path (``F.scaled_dot_product_attention``), which its MAE constructor does not expose

Why: MONAI is what people reach for to pretrain a ViT on volumes; the question is whether our general N-D encoder
costs anything against it on the same work. The work is made equal: one-channel volumes, cubic patches (64 tokens
at the defaults), the same encoder and decoder widths, depths, heads, MLP ratio 4, mask ratio 0.75 (16 visible
tokens), a CLS token in both, fixed sin-cos position tables in both, and the same loss: MONAI's forward returns
(predicted patch pixels, mask) and no loss, so its step computes the loss ours computes -- mean squared error
against the patches' raw pixels (``pretrain.models.mae.patchify``, no per-patch normalization), averaged over the
masked patches, in fp32. The parameter counts (all, trainable, and those that get a gradient: equal for the two)
and the FLOPs per volume (``torch.utils.flop_counter``, forward + backward) are printed. The counter does not see
the CPU kernels of ``scaled_dot_product_attention`` (it counts 0 for them), so on CPU ours (and ``monai_sdpa``)
show fewer FLOPs than MONAI's einsum attention by exactly the attention matmuls (0.018 of 0.692 GFLOP per volume
at the defaults); everything else counts the same.

Remaining differences, all MONAI's own structure:
  * attention: MONAI's SABlock computes softmax attention explicitly (two einsums and a softmax; its
    ``use_flash_attention=False`` default, which ``MaskedAutoEncoderViT`` does not let one change); ours calls
    ``scaled_dot_product_attention``. ``--monai-sdpa`` measures how much of the gap that explains;
  * masking: MONAI draws the kept tokens with ``torch.multinomial`` on the CPU (on CUDA too: the index tensors
    live on the host), gathers them by advanced indexing and scatters them back into a ``repeat``-ed copy of the
    mask token (``index_put``); ours argsorts noise on the device and uses ``gather`` on ``expand``-ed views;
  * MONAI's blocks hold an unused ``norm_cross_attn`` LayerNorm each (in its parameter count, never given a
    gradient, so AdamW skips it) and ``Dropout(p=0)`` modules; its LayerNorm eps is 1e-5 (ours 1e-6); its decoder
    table has no row for the CLS token (ours adds a zero one). None of these changes the FLOPs.
  * the 3-D sin-cos table needs widths divisible by 6 in MONAI, so the default decoder is 96 wide (not 128);
  * under autocast MONAI's forward fails ("Index put requires the source and destination dtypes match": the bf16
    output of ``decoder_embed`` is written into an fp32 ``repeat`` of the mask token), so on CUDA the bench casts
    that output to fp32 with a forward hook; ours' ``torch.cat`` of the same two tensors promotes to fp32 there
    anyway, so both decoders start from the same fp32 tokens.

Rounds are interleaved (ours, monai, ours, monai, ...) so a busy machine slows both alike; "ours / monai" is the
median of the in-round ratios, with their range and quartiles; short rounds (2 steps each by default) keep
the two halves of a round close in time, so a neighbour's burst of work tends to hit both. The ratio of the
medians and of the best rounds are printed beside it. CPU runs in fp32 with ``--threads`` threads (default: all the
cores this process may use); when CUDA is available, the same comparison also runs on the GPU under bf16
autocast (the loss stays fp32 in both).

    python bench/volume_mae.py
    python bench/volume_mae.py --monai-sdpa
    python bench/volume_mae.py --devices cuda --cuda-batch-size 256 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from model_step import count_flops, make_step, synchronize, time_rounds  # model_step.py's step and timing
from torch import Tensor, nn

from pretrain.models.mae import MaskedAutoencoder, patchify
from pretrain.models.vit import VisionTransformer

Builder = Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor]]]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Our MAE's loss (``MaskedAutoencoder.forward_loss`` without norm_pix): per-patch MSE over masked patches, fp32."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def build_models(args: argparse.Namespace, bf16: bool = False) -> dict[str, Builder]:
    """Constructors returning ``(module, loss_fn(volumes) -> scalar)`` for each contender; ``bf16``: the step runs
    under bf16 autocast."""
    dim, depth, heads = args.encoder
    decoder_dim, decoder_depth, decoder_heads = args.decoder

    def ours():
        encoder = VisionTransformer(
            img_size=args.img_size,
            patch_size=args.patch_size,
            in_chans=1,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            spatial_dims=3,
            pos_embed="sincos",
            global_pool="token",
        )
        model = MaskedAutoencoder(
            encoder,
            decoder_embed_dim=decoder_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_heads,
            mask_ratio=args.mask_ratio,
            norm_pix_loss=False,
        )
        return model, lambda volumes: model(volumes).loss

    def monai(sdpa: bool = False):
        try:
            from monai.networks.blocks.selfattention import SABlock
            from monai.networks.nets import MaskedAutoEncoderViT
        except ImportError as error:
            raise SystemExit(f"this benchmark needs MONAI: pip install monai ({error})") from error
        model = MaskedAutoEncoderViT(
            in_channels=1,
            img_size=args.img_size,
            patch_size=args.patch_size,
            hidden_size=dim,
            mlp_dim=4 * dim,
            num_layers=depth,
            num_heads=heads,
            masking_ratio=args.mask_ratio,
            decoder_hidden_size=decoder_dim,
            decoder_mlp_dim=4 * decoder_dim,
            decoder_num_layers=decoder_depth,
            decoder_num_heads=decoder_heads,
            spatial_dims=3,
            qkv_bias=True,
        )
        if sdpa:
            for module in model.modules():
                if isinstance(module, SABlock):
                    module.use_flash_attention = True
        if bf16:  # MONAI's forward writes the bf16 decoder_embed output into an fp32 copy of the mask token
            model.decoder_embed.register_forward_hook(lambda module, inputs, output: output.float())

        def loss(volumes: Tensor) -> Tensor:
            pred, mask = model(volumes)
            return masked_mse(pred, patchify(volumes, args.patch_size), mask.to(pred.device))

        return model, loss

    return {"ours": ours, "monai": monai, "monai_sdpa": lambda: monai(sdpa=True)}


@dataclass
class Contender:
    name: str
    step: Callable[[], None]
    params: int
    trainable: int
    trained: int  # parameters that receive a gradient (MONAI's unused norm_cross_attn does not)
    flops_per_volume: float
    rounds: list[float]


def bench_device(args: argparse.Namespace, device: torch.device) -> None:
    bf16 = device.type == "cuda"
    precision = "bf16" if bf16 else "fp32"
    batch = args.cuda_batch_size if device.type == "cuda" else args.batch_size
    generator = torch.Generator().manual_seed(0)
    volumes = torch.randn(batch, 1, args.img_size, args.img_size, args.img_size, generator=generator).to(device)
    builders = build_models(args, bf16)
    names = ["ours", "monai"] + (["monai_sdpa"] if args.monai_sdpa else [])
    contenders = []
    for name in names:
        torch.manual_seed(0)
        model, loss_fn = builders[name]()
        model.to(device).train()
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = count_flops(loss_fn, volumes, precision)
        trained = sum(p.numel() for p in model.parameters() if p.grad is not None)
        model.zero_grad(set_to_none=True)
        step = make_step(model, loss_fn, volumes, precision, fused_adamw=False)
        contenders.append(Contender(name, step, params, trainable, trained, flops, []))
    for _ in range(args.warmup):  # interleaved too: both see the same warm caches and allocator state
        for contender in contenders:
            contender.step()
    synchronize(device)
    time_rounds(contenders, args.rounds, args.steps, batch, device)

    tokens = (args.img_size // args.patch_size) ** 3
    visible = int(tokens * (1 - args.mask_ratio))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, threads={torch.get_num_threads()}"
    print(
        f"device={device} ({where}) precision={'bf16 autocast' if bf16 else 'fp32'} batch={batch} "
        f"volume={args.img_size}^3 patch={args.patch_size}^3 tokens={tokens} visible={visible} "
        f"encoder={tuple(args.encoder)} decoder={tuple(args.decoder)} steps={args.steps} rounds={args.rounds}"
    )
    print(
        f"{'model':<11} {'params':>10} {'trainable':>10} {'trained':>10} {'GFLOP/vol':>10} {'vol/s':>8} "
        f"{'ms/step':>8} {'best vol/s':>10}"
    )
    rate = {}
    for contender in contenders:
        rate[contender.name] = statistics.median(contender.rounds)
        print(
            f"{contender.name:<11} {contender.params:>10,} {contender.trainable:>10,} {contender.trained:>10,} "
            f"{contender.flops_per_volume / 1e9:10.3f} {rate[contender.name]:8.1f} "
            f"{1000 * batch / rate[contender.name]:8.1f} {max(contender.rounds):10.1f}"
        )
    rounds = {c.name: c.rounds for c in contenders}
    if device.type == "cpu":
        print("(GFLOP/vol: the flop counter does not see CPU SDPA kernels; MONAI's einsum attention it does)")
    for peer in names[1:]:
        ratios = [x / y for x, y in zip(rounds["ours"], rounds[peer], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4)
        best = max(rounds["ours"]) / max(rounds[peer])
        print(
            f"ours / {peer}: {statistics.median(ratios):.3f}x "
            f"(per-round ratios {min(ratios):.2f}-{max(ratios):.2f}, quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}; "
            f"ratio of medians {rate['ours'] / rate[peer]:.3f}x, of best rounds {best:.3f}x)"
        )
    for contender in contenders:
        row = {"row": f"volume step {contender.name}", "device": device.type, "batch": batch}
        print("RESULT " + json.dumps({**row, "volumes_per_s": rate[contender.name]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=32, help="cubic volume side (default: 32)")
    parser.add_argument("--patch-size", type=int, default=8, help="cubic patch side (default: 8, 64 tokens)")
    parser.add_argument(
        "--encoder", type=int, nargs=3, default=[192, 12, 3], metavar=("DIM", "DEPTH", "HEADS"), help="(192 12 3)"
    )
    parser.add_argument(
        "--decoder",
        type=int,
        nargs=3,
        default=[96, 2, 3],
        metavar=("DIM", "DEPTH", "HEADS"),
        help="(96 2 3; MONAI's 3-D sin-cos table needs DIM divisible by 6)",
    )
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of tokens masked (default: 0.75)")
    parser.add_argument("--batch-size", type=int, default=16, help="volumes per CPU step (default: 16)")
    parser.add_argument("--cuda-batch-size", type=int, default=128, help="volumes per GPU step (default: 128)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round (default: 2)")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds; medians are reported (default: 41)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (default: 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores this process may use)")
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, plus cuda when torch sees a GPU"
    )
    parser.add_argument("--monai-sdpa", action="store_true", help="add monai_sdpa: MONAI with SDPA attention")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the ratio's quartiles need two rounds)")
    warnings.filterwarnings("ignore", message="torch.meshgrid")  # MONAI's sin-cos table, not ours

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    print(f"torch {torch.__version__}, monai {monai_version}, cores available {cores}")
    for index, device in enumerate(devices):
        if index:
            print()
        bench_device(args, torch.device(device))


if __name__ == "__main__":
    main()

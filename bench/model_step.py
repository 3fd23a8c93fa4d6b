"""Train-step throughput of our MAE against peers, measured in one run on one machine.

Peers, all with the same encoder/decoder sizes, the same batch and the same AdamW:
  * ``ours``        -- pretrain.models.MaskedAutoencoder
  * ``timm_blocks`` -- an MAE assembled from timm's PatchEmbed/Block the way the MAE reference code does it
  * ``hf``          -- transformers' ViTMAEForPreTraining (SDPA attention)
  * ``supervised``  -- our encoder on all tokens + linear head + cross-entropy (what MAE's masking saves against)

Rounds are interleaved (every model once per round) so a busy machine slows all of them alike; the median
round is reported. FLOPs per image come from ``torch.utils.flop_counter`` (forward + backward); on a GPU the
achieved FLOP/s divided by ``--peak-tflops`` is the MFU.

    python bench/model_step.py --preset tiny
    python bench/model_step.py --preset base --batch-size 8 --steps 2 --rounds 3
    python bench/model_step.py --preset base --device cuda --precision bf16 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models.mae import MaskedAutoencoder, patchify
from pretrain.models.vit import create_vit, sincos_pos_embed

# Encoder preset, image size, patch size, decoder (dim, depth, heads), default batch.
CONFIGS = {
    "tiny": dict(preset="vit_tiny_patch16", img_size=32, patch_size=4, decoder=(128, 4, 4), batch_size=64),
    "base": dict(preset="vit_base_patch16", img_size=224, patch_size=16, decoder=(512, 8, 16), batch_size=8),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


class TimmBlockMAE(nn.Module):
    """The MAE reference's structure (models_mae.py) on timm's PatchEmbed and Block: the usual way people build it."""

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int, decoder: tuple) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        decoder_dim, decoder_depth, decoder_heads = decoder
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, grid).unsqueeze(0), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size**2 * 3)

    def forward(self, images: Tensor, mask_ratio: float = 0.75) -> Tensor:
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        batch, length, dim = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(batch, length), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, dim))
        mask = torch.ones(batch, length)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.repeat(batch, length - keep, 1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        loss = (pred - patchify(images, self.patch_size)).pow(2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()


def build_models(config: dict) -> dict[str, Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor]]]]:
    """Constructors returning ``(module, loss_fn(images) -> scalar)`` for each contender."""
    preset, img, patch = config["preset"], config["img_size"], config["patch_size"]
    decoder_dim, decoder_depth, decoder_heads = config["decoder"]

    def ours():
        model = MaskedAutoencoder(
            create_vit(preset, img_size=img, patch_size=patch, pos_embed="sincos"),
            decoder_embed_dim=decoder_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_heads,
        )
        return model, lambda images: model(images).loss

    def timm_blocks():
        encoder = create_vit(preset)
        model = TimmBlockMAE(
            img, patch, encoder.embed_dim, len(encoder.blocks), encoder.blocks[0].attn.num_heads, config["decoder"]
        )
        return model, model

    def hf():
        import transformers

        encoder = create_vit(preset)
        hf_config = transformers.ViTMAEConfig(
            hidden_size=encoder.embed_dim,
            num_hidden_layers=len(encoder.blocks),
            num_attention_heads=encoder.blocks[0].attn.num_heads,
            intermediate_size=4 * encoder.embed_dim,
            image_size=img,
            patch_size=patch,
            decoder_hidden_size=decoder_dim,
            decoder_num_hidden_layers=decoder_depth,
            decoder_num_attention_heads=decoder_heads,
            decoder_intermediate_size=4 * decoder_dim,
            layer_norm_eps=1e-6,
            attn_implementation="sdpa",
        )
        model = transformers.ViTMAEForPreTraining(hf_config)
        return model, lambda images: model(pixel_values=images).loss

    def supervised():
        model = create_vit(preset, img_size=img, patch_size=patch, num_classes=1000)
        labels: dict[int, Tensor] = {}

        def loss(images: Tensor) -> Tensor:
            target = labels.setdefault(
                images.shape[0], torch.randint(0, 1000, (images.shape[0],), device=images.device)
            )
            return F.cross_entropy(model(images), target)

        return model, loss

    return {"ours": ours, "timm_blocks": timm_blocks, "hf": hf, "supervised": supervised}


def compiled(builder: Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor]]]) -> Callable:
    """The same contender after ``nn.Module.compile()`` (what ``trainer.compile=true`` does in the app)."""

    def build() -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
        model, loss_fn = builder()
        model.compile()
        return model, loss_fn

    return build


@dataclass
class Contender:
    name: str
    step: Callable[[], None]
    flops_per_image: float
    rounds: list[float]


def make_step(
    model: nn.Module, loss_fn: Callable, images: Tensor, precision: str, fused_adamw: bool
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_adamw or None)
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            loss = loss_fn(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def count_flops(loss_fn: Callable, images: Tensor, precision: str) -> float:
    """Forward + backward FLOPs of one batch, per image."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(images)
        loss.backward()
    return counter.get_total_flops() / images.shape[0]


def time_rounds(contenders: list, rounds: int, steps: int, batch: int, device: torch.device) -> None:
    """Interleaved rounds (a, b, a, b, ...): each contender's samples per second of each round, in its ``rounds``."""
    for _ in range(rounds):
        for contender in contenders:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                contender.step()
            synchronize(device)
            contender.rounds.append(steps * batch / (time.perf_counter() - start))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(CONFIGS), default="tiny", help="model sizes (default: tiny, 32px)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: per preset)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default: 3)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds; medians are reported (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast (default: fp32)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--fused-adamw", action="store_true", help="use the fused AdamW kernel for every contender")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' bf16 dense peak)")
    parser.add_argument("--only", nargs="+", help="run a subset of: ours timm_blocks hf supervised ours_compiled")
    parser.add_argument("--compile", action="store_true", help="add ours_compiled: our MAE after model.compile()")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = CONFIGS[args.preset]
    batch = args.batch_size or config["batch_size"]
    images = torch.randn(batch, 3, config["img_size"], config["img_size"], device=device)
    builders = build_models(config)
    if args.compile:
        builders["ours_compiled"] = compiled(builders["ours"])
    contenders = []
    for name in args.only or list(builders):
        torch.manual_seed(0)
        model, loss_fn = builders[name]()
        model.to(device).train()
        flops = count_flops(loss_fn, images, args.precision)
        step = make_step(model, loss_fn, images, args.precision, args.fused_adamw)
        for _ in range(args.warmup):
            step()
        contenders.append(Contender(name, step, flops, []))
    time_rounds(contenders, args.rounds, args.steps, batch, device)

    peak = args.peak_tflops or next(
        (v for k, v in PEAK_TFLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None
    )
    print(
        f"preset={args.preset} img={config['img_size']} batch={batch} device={device} precision={args.precision} "
        f"threads={torch.get_num_threads()} fused_adamw={args.fused_adamw}"
    )
    print(f"{'model':<12} {'img/s':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6}")
    rate = {}
    for contender in contenders:
        rate[contender.name] = statistics.median(contender.rounds)
        achieved = rate[contender.name] * contender.flops_per_image / 1e12
        mfu = f"{100 * achieved / peak:5.1f}%" if peak else "   n/a"
        gflops = contender.flops_per_image / 1e9
        print(f"{contender.name:<12} {rate[contender.name]:9.1f} {gflops:10.3f} {achieved:8.3f} {mfu}")
    for contender in contenders:
        achieved = rate[contender.name] * contender.flops_per_image / 1e12
        row = {"row": f"step {contender.name}", "images_per_s": rate[contender.name], "tflops": achieved}
        print("RESULT " + json.dumps({**row, "mfu": achieved / peak if peak else float("nan")}))
    flops = {c.name: c.flops_per_image for c in contenders}
    rounds = {c.name: c.rounds for c in contenders}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of the in-round ratio: drifts of a shared machine cancel within a round."""
        return statistics.median(x / y for x, y in zip(rounds[a], rounds[b], strict=True))

    for peer in ("timm_blocks", "hf", "ours_compiled"):
        if "ours" in rate and peer in rate:
            print(
                f"ours / {peer}: {ratio('ours', peer):.3f}x (per-round ratios "
                f"{min(x / y for x, y in zip(rounds['ours'], rounds[peer], strict=True)):.2f}-"
                f"{max(x / y for x, y in zip(rounds['ours'], rounds[peer], strict=True)):.2f})"
            )
    if "ours" in rate and "supervised" in rate:
        speedup = ratio("ours", "supervised")
        flop_ratio = flops["supervised"] / flops["ours"]
        print(
            f"MAE speed-up over supervised full-token step: {speedup:.2f}x; FLOP ratio {flop_ratio:.2f}x; "
            f"tracking {speedup / flop_ratio:.2f} (1.00 = time saved exactly as FLOPs saved)"
        )


if __name__ == "__main__":
    main()

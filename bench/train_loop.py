"""The framework tax: the whole pretraining app loop against bare PyTorch loops of the same model, in one run.

Contenders, interleaved round by round (every contender once per round, so a busy machine slows all alike):
  * ``app``          -- ``pretrain.run.pretrain`` as users run it, its default config but for the model: real PNG
                        shards, the streaming loader and its workers, Lightning, the CSV logger, checkpoints at
                        the app's interval; images/s from its own throughput log, after ``--warmup`` steps
  * ``bare``         -- our MaskedAutoencoder and AdamW on one in-memory batch: forward, backward, step
  * ``timm_blocks``  -- the MAE reference's structure on timm's Block, the same bare loop

The model is the science config of the downstream issue: ViT-Ti/4 at 32 px, decoder 128 wide x 4 blocks, batch
128. Prints images/s per contender (median round), the tax as the median in-round ratio app / bare, and the host
synchronisations per step of the app loop (counted in one more, untimed run; see pretrain/engine/host_syncs.py).
On CUDA it runs bf16 and prints MFU.

    python bench/train_loop.py                          # CPU: 3 rounds, about 5 minutes on 2 cores
    python bench/train_loop.py --device cuda --steps 200 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from model_step import PEAK_TFLOPS, build_models, count_flops, make_step, synchronize
from omegaconf import OmegaConf, open_dict

from data_pipelines.demo import write_demo_shards
from pretrain.engine.host_syncs import HostSyncCounter
from pretrain.run import pretrain

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIENCE = dict(preset="vit_tiny_patch4", img_size=32, patch_size=4, decoder=(128, 4, 4))
LOG_EVERY = 5


def app_config(work: Path, args: argparse.Namespace, run_dir: Path, steps: int) -> dict[str, Any]:
    """The pretraining app's resolved config for the science model on the bench shards."""
    decoder_dim, decoder_depth, decoder_heads = SCIENCE["decoder"]
    overrides = [
        f"trainer={args.trainer or ('gpu' if args.device == 'cuda' else 'cpu')}",
        "model=vit_tiny",
        f"model.preset={SCIENCE['preset']}",
        f"model.img_size={SCIENCE['img_size']}",
        f"objective.decoder_embed_dim={decoder_dim}",
        f"objective.decoder_depth={decoder_depth}",
        f"objective.decoder_num_heads={decoder_heads}",
        f"data.shards={work / 'shards' / 'train'}",
        "data.make_demo=false",
        f"data.batch_size={args.batch_size}",
        "logger=csv",
        f"trainer.max_steps={args.warmup + steps}",
        f"trainer.log_every_n_steps={LOG_EVERY}",
        *([f"trainer.checkpoint_every_n_steps={args.checkpoint_every}"] if args.checkpoint_every else []),
        "trainer.progress_bar=false",
        "export_backbone=false",
        *args.app_overrides,
    ]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose("pretrain", overrides=overrides, return_hydra_config=True)
        with open_dict(config):
            config["hydra"]["runtime"]["output_dir"] = str(run_dir)
        HydraConfig.instance().set_config(config)
        with open_dict(config):
            del config["hydra"]
        resolved = OmegaConf.to_container(config, resolve=True)
        HydraConfig.instance().cfg = None
    return resolved


def app_run(work: Path, args: argparse.Namespace, name: str, steps: int) -> Path:
    """One run of the app for ``steps`` steps (after the warm-up) in ``work/app/name``."""
    run_dir = work / "app" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the peak printed is the last app run's
    pretrain(app_config(work, args, run_dir, steps), run_dir)
    torch.set_num_threads(threads)  # the app sets its own; the bare loops keep the bench's
    return run_dir


def app_round(work: Path, args: argparse.Namespace, index: int) -> tuple[float, float]:
    """(images/s after the warm-up, MFU or nan), from the app's own throughput log."""
    run_dir = app_run(work, args, f"round{index}", args.steps)
    rows = [row for row in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if row.get("train/time")]
    steady = [row for row in rows if int(row["step"]) + 1 >= args.warmup]
    if len(steady) < 2:
        raise SystemExit(f"{len(steady)} throughput row(s) logged after the warm-up: use --steps >= {LOG_EVERY}")
    first, last = steady[0], steady[-1]
    rate = (float(last["train/samples"]) - float(first["train/samples"])) / (
        float(last["train/time"]) - float(first["train/time"])
    )
    mfu = float(last["train/device/mfu"]) if last.get("train/device/mfu") else float("nan")
    return rate, mfu


def app_syncs_per_step(work: Path, args: argparse.Namespace, device: torch.device) -> float:
    """Host synchronisations per step of an untimed app run (the counter's Python hook on every op would slow
    the timed ones), setup included."""
    steps = 2 * LOG_EVERY
    with HostSyncCounter(device) as syncs:
        app_run(work, args, "counted", steps)
    return syncs.count / (args.warmup + steps)


def bare_contenders(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[Any, float]]:
    """``name -> (one optimizer step, FLOPs per image)`` for the bare loops, warmed up."""
    images = torch.rand(args.batch_size, 3, SCIENCE["img_size"], SCIENCE["img_size"], device=device)
    builders = build_models({**SCIENCE, "batch_size": args.batch_size})
    contenders = {}
    for name, label in (("ours", "bare"), ("timm_blocks", "timm_blocks")):
        torch.manual_seed(0)
        model, loss_fn = builders[name]()
        model.to(device).train()
        flops = count_flops(loss_fn, images, args.precision)
        step = make_step(model, loss_fn, images, args.precision, fused_adamw=False)
        for _ in range(args.warmup):
            step()
        contenders[label] = (step, flops)
    return contenders


def bare_round(step: Any, args: argparse.Namespace, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/train_loop"), help="shards and app runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (the app's: its first steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, help="the app's checkpoint interval (default: the app's)")
    parser.add_argument("--images", type=int, default=10_000, help="32 px PNG images in the bench shards")
    parser.add_argument("--trainer", help="the app's trainer config (default: gpu on cuda, cpu on cpu)")
    parser.add_argument("--app-overrides", nargs="*", default=[], help="more Hydra overrides for the app")
    parser.add_argument("--label", default="app", help="the app row's name in the RESULT line")
    args = parser.parse_args()
    args.precision = "bf16" if args.device == "cuda" else "fp32"
    device = torch.device(args.device)
    work = args.work.resolve()
    if not (work / "shards" / "train" / "manifest.json").is_file():
        write_demo_shards(work / "shards", num_train=args.images, num_test=10, image_size=SCIENCE["img_size"])

    contenders = bare_contenders(args, device)
    rates: dict[str, list[float]] = {"app": [], **{name: [] for name in contenders}}
    mfus = []
    for index in range(args.rounds):
        rate, mfu = app_round(work, args, index)
        rates["app"].append(rate)
        mfus.append(mfu)
        for name, (step, _) in contenders.items():
            rates[name].append(bare_round(step, args, device))
        print(
            f"round {index + 1}: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items()), flush=True
        )

    peak = next((v for k, v in PEAK_TFLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), 0)
    print(f"\ndevice={device} precision={args.precision} batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"{'contender':<12} {'img/s':>8} {'MFU':>6}")
    for name, values in rates.items():
        flops = contenders[name][1] if name in contenders else contenders["bare"][1]
        mfu = 100 * statistics.median(values) * flops / 1e12 / peak if peak else float("nan")
        print(f"{name:<12} {statistics.median(values):8.1f} {mfu:5.1f}%")
    for peer in contenders:
        ratio = statistics.median(a / b for a, b in zip(rates["app"], rates[peer], strict=True))
        print(f"app / {peer}: {ratio:.3f}x")
    syncs_per_step = app_syncs_per_step(work, args, device)
    unit = "device reads" if device.type == "cuda" else "host reads (CPU: every scalar read counts)"
    print(f"app host synchronisations per step: {syncs_per_step:.2f} ({unit}, setup included)")
    if device.type == "cuda":
        print(f"app MFU from its own log: {100 * statistics.median(mfus):.1f}%")
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    summary = {
        "row": args.label,
        "images_per_s": statistics.median(rates["app"]),
        "bare_images_per_s": statistics.median(rates["bare"]),
        "app_over_bare": statistics.median(a / b for a, b in zip(rates["app"], rates["bare"], strict=True)),
        "mfu": statistics.median(mfus),
        "peak_memory_gib": peak_gib,
        "host_syncs_per_step": syncs_per_step,
    }
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

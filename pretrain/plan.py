"""Plan a pretraining run: memory per device, the largest micro-batch that fits, step and epoch time.

    python pretrain/plan.py model=vit_base objective=mae trainer=deepspeed_zero2 trainer.devices=8
    python pretrain/plan.py model=vit_large trainer=deepspeed_zero3 trainer.num_nodes=4 data.batch_size=64
    python pretrain/plan.py --help

The same config as ``pretrain/run.py`` (``conf/plan.yaml`` adds the devices under ``plan``), so the overrides of a
run plan exactly that run. Memory is tabulated for every ZeRO stage, with and without optimizer offload, and the
configured one is marked; model states follow DeepSpeed's estimators, activations are traced on the CPU
(:mod:`pretrain.engine.memory_plan`). Time is the model's FLOPs at ``plan.mfu`` of ``plan.peak_tflops``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import hydra
import torch
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from omegaconf import DictConfig, OmegaConf

from data_pipelines.manifest import read_manifest
from pretrain.engine.architecture import backbone_options, input_shape
from pretrain.engine.config import settings
from pretrain.engine.memory_plan import (
    ActivationProfile,
    Layout,
    ModelSize,
    buffer_bytes,
    compute_bytes,
    largest_micro_batch,
    model_size,
    model_state_bytes,
    peak_bytes,
    trace_activations,
)
from pretrain.engine.plan import accumulation, devices_per_node
from pretrain.objectives.build import build_model, flops_per_batch

log = logging.getLogger("pretrain.plan")
GIB = 2**30
# The DeepSpeed columns, by (ZeRO stage, optimizer offload): every stage, and the two that offload.
ZERO_COLUMNS = {
    (0, False): "ZeRO-0",
    (1, False): "ZeRO-1",
    (2, False): "ZeRO-2",
    (3, False): "ZeRO-3",
    (2, True): "ZeRO-2 off",
    (3, True): "ZeRO-3 off",
}


def run_layout(trainer: Mapping[str, Any]) -> Layout:
    """The layout ``pretrain/run.py`` builds from the ``trainer`` group."""
    strategy = "deepspeed" if trainer["strategy"] == "deepspeed" else "ddp"
    if strategy == "deepspeed" and trainer["offload_optimizer"] and int(trainer["zero_stage"]) == 0:
        raise ValueError("trainer.offload_optimizer=true needs trainer.zero_stage 1, 2 or 3: ZeRO-0 keeps no partition")
    return Layout(
        strategy=strategy,
        zero_stage=int(trainer["zero_stage"]) if strategy == "deepspeed" else 0,
        processes=int(trainer["num_nodes"]) * devices_per_node(trainer),
        compute_bytes=compute_bytes(strategy, trainer["precision"]),
        offload_optimizer=strategy == "deepspeed" and bool(trainer["offload_optimizer"]),
        reduce_bucket_size=int(trainer["reduce_bucket_size"]),
        prefetch_bucket_size=int(DeepSpeedZeroConfig().prefetch_bucket_size),  # DeepSpeed's default; Lightning keeps it
    )


def profile_model(config: Mapping[str, Any], cast: bool) -> tuple[ModelSize, ActivationProfile]:
    """Build the run's network on the CPU and trace its activations in the run's precision."""
    torch.manual_seed(0)
    backbone = backbone_options(config["model"])
    model = build_model(config["objective"], backbone)
    encoder = model.encoder if hasattr(model, "encoder") else model
    shape = input_shape(encoder)

    def loss_of(batch_size: int) -> torch.Tensor:
        images = torch.rand(batch_size, *shape)
        output = model(images.to(next(model.parameters()).dtype))
        return output.loss if hasattr(output, "loss") else output.float().logsumexp(-1).mean()

    return model_size(model), trace_activations(model, loss_of, config["trainer"]["precision"], cast)


def memory_table(
    size: ModelSize,
    layouts: dict[str, Layout],
    profile: ActivationProfile,
    memory_gib: float,
    batch_size: int,
    chosen: str,
) -> str:
    """GiB per device of each state for each layout (a column each, ``chosen`` starred), and the largest
    micro-batch that fits ``memory_gib``, without and with activation checkpointing."""
    labels = [
        "parameters (GiB)",
        "gradients (GiB)",
        "optimizer states (GiB)",
        "buffers (GiB)",
        f"activations, {batch_size} images (GiB)",
        "  checkpointed",
        "peak (GiB)",
        "  checkpointed",
        f"largest micro-batch in {memory_gib:g} GiB",
        "  checkpointed",
    ]
    columns = []
    for layout in layouts.values():
        states, buffers = model_state_bytes(size, layout), buffer_bytes(size, layout)
        plain, checkpointed = profile.at(batch_size, False), profile.at(batch_size, True)
        gib = [
            *(states[key] for key in ("parameters", "gradients", "optimizer states")),
            buffers,
            plain,
            checkpointed,
            peak_bytes(states, buffers, plain),
            peak_bytes(states, buffers, checkpointed),
        ]
        fits = [largest_micro_batch(int(memory_gib * GIB), states, buffers, kept) for kept in profile.kinds]
        columns.append([f"{value / GIB:.2f}" for value in gib] + [str(count) for count in fits])
    width = max(map(len, labels)) + 2
    names = [f"{name}*" if name == chosen else name for name in layouts]
    lines = ["".ljust(width) + "".join(f"{name:>12}" for name in names)]
    for row, label in enumerate(labels):
        lines.append(label.ljust(width) + "".join(f"{column[row]:>12}" for column in columns))
    return "\n".join(lines)


def plan_report(config: Mapping[str, Any]) -> str:
    """The whole printed plan of ``config`` (the pretraining config plus ``plan``)."""
    trainer, data, plan = config["trainer"], config["data"], config["plan"]
    layout = run_layout(trainer)
    batch_size = int(data["batch_size"])
    size, profile = profile_model(config, cast=layout.strategy == "deepspeed" and layout.compute_bytes == 2)
    deepspeed = replace(layout, strategy="deepspeed", compute_bytes=compute_bytes("deepspeed", trainer["precision"]))
    ddp = replace(layout, strategy="ddp", zero_stage=0, offload_optimizer=False)
    layouts = {"DDP": replace(ddp, compute_bytes=compute_bytes("ddp", trainer["precision"]))}
    columns = dict(ZERO_COLUMNS)
    if layout.strategy == "deepspeed":  # the run's own column, also where it is none of the usual ones (ZeRO-1 offload)
        columns.setdefault((layout.zero_stage, layout.offload_optimizer), f"ZeRO-{layout.zero_stage} off")
    for (stage, off), name in columns.items():
        layouts[name] = replace(deepspeed, zero_stage=stage, offload_optimizer=off)
    chosen = "DDP" if layout.strategy == "ddp" else columns[(layout.zero_stage, layout.offload_optimizer)]
    accumulate = accumulation(trainer, batch_size)
    global_batch = batch_size * layout.processes * accumulate
    flops_per_image = flops_per_batch(config["objective"], backbone_options(config["model"]), 1)
    step_s = flops_per_image * global_batch / (layout.processes * plan["peak_tflops"] * 1e12 * plan["mfu"])
    images = plan["images_per_epoch"] or read_manifest(data["shards"], data["manifest"])["total"]
    states = model_state_bytes(size, layouts[chosen])
    peak = peak_bytes(
        states, buffer_bytes(size, layouts[chosen]), profile.at(batch_size, trainer["grad_checkpointing"])
    )
    memory = plan["gpu_memory_gib"] * GIB
    header = (
        f"{config['objective']['name']} {config['model']['preset']}: {size.total / 1e6:.1f} M parameters "
        f"(largest layer {size.largest_layer / 1e6:.2f} M), {trainer['precision']}, "
        f"{trainer['num_nodes']} node(s) x {devices_per_node(trainer)} device(s) = {layout.processes} processes; "
        f"micro-batch {batch_size} x accumulation {accumulate} = global batch {global_batch}"
    )
    verdict = "fits" if peak <= memory else "does NOT fit"
    summary = [
        f"this run ({chosen}, activation checkpointing {'on' if trainer['grad_checkpointing'] else 'off'}): "
        f"peak {peak / GIB:.1f} GiB of {plan['gpu_memory_gib']:g} GiB per device: {verdict}",
        f"compute: {flops_per_image / 1e9:.1f} GFLOP per image (forward + backward); at {plan['mfu']:.0%} MFU of "
        f"{plan['peak_tflops']:g} TFLOP/s: {step_s:.3f} s per step, {global_batch / step_s:,.0f} images/s, "
        + f"{images / global_batch * step_s / 60:,.1f} min per epoch of {images:,} images",
    ]
    if trainer["global_batch_size"] is None:
        summary.append("set trainer.global_batch_size to get the accumulation for a target batch on any layout")
    return "\n".join(
        [header, "", memory_table(size, layouts, profile, plan["gpu_memory_gib"], batch_size, chosen), "", *summary]
    )


@hydra.main(config_path="../conf", config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = settings(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    print(plan_report(config))


if __name__ == "__main__":
    main()

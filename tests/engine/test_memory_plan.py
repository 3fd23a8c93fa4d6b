"""The memory planner against DeepSpeed's own estimators and against peaks measured on CPU engines.

Model states must equal DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` (the numbers its ``_all_live``
functions print) for any layout; the planned peak of a step must be within 15% of the peak the profiler measures:
on two ZeRO-2 DeepSpeed engines (fp32 on CPU) and on a plain step with and without activation checkpointing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import (
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_live,
    model_to_params,
)
from deepspeed.runtime.zero.stage_1_and_2 import (
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_live,
)
from deepspeed_cpu_peak import ENCODER, build_model
from test_deepspeed_cpu import free_port

from pretrain.engine.memory_plan import (
    Layout,
    buffer_bytes,
    model_size,
    model_state_bytes,
    peak_bytes,
    trace_activations,
)
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TOLERANCE = 0.15
BATCH = 8
BUCKET = 2_000_000  # elements: below the model's size, so the buckets are filled and measured in full


@pytest.fixture(scope="module")
def vit_base_mae() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(create_vit("vit_base_patch16", pos_embed="sincos"), 512, 8, 16)


def printed_gpu_gib(estimate, model, gpus: int, nodes: int) -> dict[str, float]:
    """The per-GPU column of a DeepSpeed ``_all_live`` table, by its options column."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        estimate(model, num_gpus_per_node=gpus, num_nodes=nodes)
    rows = re.findall(r"^\s*[\d.]+GB \|\s*([\d.]+)GB \| (.+)$", output.getvalue(), re.MULTILINE)
    return {" ".join(options.split()): float(gib) for gib, options in rows}


@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (8, 1), (8, 4)])
def test_model_states_equal_deepspeeds_estimators_for_bf16_zero2_and_zero3(vit_base_mae, gpus, nodes):
    size = model_size(vit_base_mae)
    assert (size.total, size.largest_layer) == model_to_params(vit_base_mae)
    for offload in (False, True):
        layout = Layout("deepspeed", 2, gpus * nodes, compute_bytes=2, offload_optimizer=offload)
        ours = sum(model_state_bytes(size, layout).values())
        assert ours == estimate_zero2_model_states_mem_needs(size.total, gpus, nodes, cpu_offload=offload)[1]
        layout = Layout("deepspeed", 3, gpus * nodes, compute_bytes=2, offload_optimizer=offload)
        ours = sum(model_state_bytes(size, layout).values())
        theirs = estimate_zero3_model_states_mem_needs(
            size.total, size.largest_layer, gpus, nodes, cpu_offload=offload, cpu_offload_params=False
        )[1]
        assert ours == theirs

    printed = printed_gpu_gib(estimate_zero2_model_states_mem_needs_all_live, vit_base_mae, gpus, nodes)
    zero2 = Layout("deepspeed", 2, gpus * nodes, compute_bytes=2)
    assert printed["offload_optimizer=none"] == round(sum(model_state_bytes(size, zero2).values()) / 2**30, 2)
    printed = printed_gpu_gib(estimate_zero3_model_states_mem_needs_all_live, vit_base_mae, gpus, nodes)
    zero3 = Layout("deepspeed", 3, gpus * nodes, compute_bytes=2)
    ours = round(sum(model_state_bytes(size, zero3).values()) / 2**30, 2)
    assert printed["offload_param=none, offload_optimizer=none, zero_init=1"] == ours


def test_the_stages_partition_what_zero_says_they_do(vit_base_mae):
    size = model_size(vit_base_mae)
    states = {stage: model_state_bytes(size, Layout("deepspeed", stage, 8, compute_bytes=2)) for stage in (0, 1, 2, 3)}
    p = size.total
    assert states[0] == {"parameters": 2 * p, "gradients": 2 * p, "optimizer states": 16 * p}
    assert states[1]["optimizer states"] == 2 * p and states[1]["gradients"] == 2 * p
    assert states[2]["gradients"] == p // 4 and states[2]["parameters"] == 2 * p
    assert states[3]["parameters"] == 2 * p // 8 + 4 * size.largest_layer  # an eighth, the largest layer gathered
    # DDP under bf16-mixed autocast keeps fp32 parameters: 16 bytes per parameter, not partitioned.
    assert sum(model_state_bytes(size, Layout("ddp", 0, 8, compute_bytes=4)).values()) == 16 * p


def planned_peak(layout: Layout, checkpointing: bool) -> int:
    """What the planner says of :func:`deepspeed_cpu_peak.build_model` at ``BATCH`` images in fp32."""
    model = build_model()
    size = model_size(model)
    side = ENCODER["img_size"]
    profile_ = trace_activations(model, lambda n: model(torch.rand(n, 3, side, side)).loss, "32-true", cast=False)
    return peak_bytes(model_state_bytes(size, layout), buffer_bytes(size, layout), profile_.at(BATCH, checkpointing))


# What a rank prints when kineto's threads are torn down while running (std::terminate) as the profiler stops.
PROFILER_ABORT = "terminate called without an active exception"
PROFILER_ATTEMPTS = 3


def measured_peaks(tmp_path: Path, *arguments: str, processes: int = 1) -> list[int]:
    """Peaks per rank from ``deepspeed_cpu_peak.py``, in fresh processes."""
    output = tmp_path / "peak.json"
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1"]
        launch += [f"--master_port={free_port()}"]
    command = [*launch, str(HERE / "deepspeed_cpu_peak.py"), f"--batch-size={BATCH}", f"--output={output}", *arguments]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Again only after torch's profiler aborted as it stopped: rare, but seen twice in a row on a busy CI machine.
    for _ in range(PROFILER_ATTEMPTS):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode == 0 or PROFILER_ABORT not in result.stderr:
            break
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(output.read_text())["peak_bytes"]


@pytest.mark.slow
def test_the_planned_peak_is_within_15_percent_of_two_zero2_engines_on_cpu(tmp_path):
    measured = measured_peaks(tmp_path, "--zero-stage=2", f"--bucket={BUCKET}", processes=2)
    planned = planned_peak(Layout("deepspeed", 2, 2, compute_bytes=4, reduce_bucket_size=BUCKET), False)
    for peak in measured:
        assert abs(planned - peak) / peak < TOLERANCE, (planned, measured)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_the_planned_peak_of_one_process_is_within_15_percent_of_its_measured_step(tmp_path, checkpointing):
    (measured,) = measured_peaks(tmp_path, *(["--checkpointing"] if checkpointing else []))
    planned = planned_peak(Layout("ddp", 0, 1, compute_bytes=4), checkpointing)
    assert abs(planned - measured) / measured < TOLERANCE, (planned, measured)

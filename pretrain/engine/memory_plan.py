"""Bytes per device of one training run, before it runs: model states by ZeRO stage, activations, buffers.

Model states follow DeepSpeed's own accounting, so that for mixed precision they equal its estimators
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``) exactly; ``c`` is the bytes of
the compute copy of a parameter (2 under bf16/fp16, 4 in fp32), ``P`` the parameters, ``N`` the processes:

============  =============  ===========  =============================================================
ZeRO stage    parameters     gradients    optimizer states (fp32 master copy, fp32 gradients, Adam m, v)
============  =============  ===========  =============================================================
0             c P            c P          16 P (8 P in fp32: no master copy, the gradients are fp32)
1             c P            c P          16 P / N
2             c P            c P / N      16 P / N
3             c P / N        (reduced     16 P / N, plus the largest layer's parameters and gradients
                             at once)     gathered: 2 c L
============  =============  ===========  =============================================================

Optimizer offload moves the optimizer states and fp32 gradients to the CPU (ZeRO-2 also the gradients). DDP keeps
fp32 parameters under autocast: 4 P each for parameters, gradients and Adam's two moments, and its reducer holds a
second copy of the gradients in buckets.

The peak adds the larger of activations and gradients to the rest (:func:`peak_bytes`). Activations are not
modelled but traced: one forward of the real model on the CPU, at one and at two images, in the
run's precision (autocast for ``bf16-mixed``, a bf16 copy of the model under DeepSpeed, which casts it), summing
the storages autograd saves for the backward pass, parameters excluded. The difference is the cost per image. With
activation checkpointing the saved tensors are the blocks' inputs, and the backward pass recomputes one block at a
time, so the largest block's own activations come on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pretrain.models.vit import BlockStack

AUTOCAST_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16", "16")  # Lightning's names ("bf16" is "bf16-mixed")
HALF_PRECISIONS = (*AUTOCAST_PRECISIONS, "bf16-true", "16-true")
MASTER_STATES = 16  # bytes per parameter: fp32 master copy 4, fp32 gradient 4, Adam m 4, v 4


@dataclass(frozen=True)
class ModelSize:
    """Parameters as DeepSpeed's estimators count them (shared ones once), and the most held by one module."""

    total: int
    largest_layer: int


def model_size(model: nn.Module) -> ModelSize:
    """As DeepSpeed's ``model_to_params``: the largest layer is the module with the most parameters of its own."""
    total = sum({param.data_ptr(): param.numel() for param in model.parameters()}.values())
    largest = max(sum(param.numel() for param in module.parameters(recurse=False)) for module in model.modules())
    return ModelSize(total, largest)


@dataclass(frozen=True)
class Layout:
    """What decides the bytes of model states and buffers on one device."""

    strategy: str  # ddp | deepspeed (auto: one process, as ddp)
    zero_stage: int
    processes: int
    compute_bytes: int  # of the parameters' compute copy
    offload_optimizer: bool = False
    reduce_bucket_size: int = 0  # elements, DeepSpeed's gradient reduction buckets
    overlap_comm: bool = True  # DeepSpeed: double reduction buckets
    prefetch_bucket_size: int = 0  # elements, ZeRO-3's parameters gathered ahead of their modules


def compute_bytes(strategy: str, precision: str) -> int:
    """Bytes of a parameter's compute copy: DeepSpeed casts the model under bf16/fp16; DDP keeps fp32 but for
    ``*-true`` half precisions."""
    half = str(precision) in HALF_PRECISIONS
    if strategy == "deepspeed":
        return 2 if half else 4
    return 2 if str(precision) in ("bf16-true", "16-true") else 4


def model_state_bytes(size: ModelSize, layout: Layout) -> dict[str, int]:
    """Bytes per device of parameters, gradients and optimizer states (see the module docstring)."""
    p, n, c = size.total, layout.processes, layout.compute_bytes
    if layout.strategy != "deepspeed":
        return {"parameters": c * p, "gradients": c * p, "optimizer states": 2 * c * p if c == 2 else 8 * p}
    stage = layout.zero_stage
    master = MASTER_STATES * p if c < 4 else 8 * p  # fp32 at stage 0: the torch optimizer on the model itself
    if stage == 0:
        states = {"parameters": c * p, "gradients": c * p, "optimizer states": master}
    elif stage == 1:
        states = {"parameters": c * p, "gradients": c * p, "optimizer states": int(MASTER_STATES * p / n)}
    elif stage == 2:
        # DeepSpeed rounds the partitioned sum, (c + 16) P / N, once; the optimizer states take the rest of it.
        partition = int(c * p / n)
        states = {
            "parameters": c * p,
            "gradients": partition,
            "optimizer states": int((c + MASTER_STATES) * p / n) - partition,
        }
    elif stage == 3:
        partition = int(c * p / n)
        states = {
            "parameters": partition + 2 * c * size.largest_layer,
            "gradients": 0,
            "optimizer states": int((c + MASTER_STATES) * p / n) - partition,
        }
    else:
        raise ValueError(f"trainer.zero_stage={stage}: DeepSpeed's ZeRO stages are 0, 1, 2 and 3")
    if layout.offload_optimizer and stage > 0:
        states["optimizer states"] = 0
        if stage == 2:
            states["gradients"] = 0
    return states


def buffer_bytes(size: ModelSize, layout: Layout) -> int:
    """Communication buffers: DeepSpeed's gradient reduction buckets (two with ``overlap_comm`` at stages 1-2, in
    fp32 at stage 1) and ZeRO-3's prefetched parameters; DDP's gradient buckets (a second copy of the gradients)."""
    if layout.strategy != "deepspeed":
        return layout.compute_bytes * size.total if layout.processes > 1 else 0
    if layout.zero_stage == 0 or layout.processes == 1 and layout.zero_stage < 3:
        return 0
    if layout.zero_stage == 3:
        prefetched = min(layout.prefetch_bucket_size, size.total)
        return (layout.reduce_bucket_size + prefetched) * layout.compute_bytes
    element = 4 if layout.zero_stage == 1 else layout.compute_bytes
    buckets = 2 if layout.overlap_comm else 1
    return buckets * layout.reduce_bucket_size * element


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for the backward pass: ``fixed + per_image * batch``."""

    fixed: int
    per_image: int

    def at(self, batch_size: int) -> int:
        return self.fixed + self.per_image * batch_size


@dataclass(frozen=True)
class ActivationProfile:
    plain: Activations
    checkpointed: Activations

    def at(self, batch_size: int, checkpointing: bool) -> int:
        return (self.checkpointed if checkpointing else self.plain).at(batch_size)

    @property
    def kinds(self) -> tuple[Activations, Activations]:
        """Without and with activation checkpointing."""
        return self.plain, self.checkpointed


def trace_activations(
    model: nn.Module, loss_of: Callable[[int], torch.Tensor], precision: str, cast: bool
) -> ActivationProfile:
    """Trace ``loss_of(batch_size)`` (a forward of ``model`` on a CPU batch) at 1 and 2 images, plain and with
    activation checkpointing; ``cast``: a bf16 copy of the model (2-byte parameters: DeepSpeed's cast, ``*-true``),
    else autocast per ``precision``."""
    model = model.to(torch.bfloat16) if cast else model
    blocks = [module for module in model.modules() if isinstance(module, BlockStack)]

    def saved(batch_size: int, checkpointing: bool) -> tuple[int, int]:
        model.set_grad_checkpointing(checkpointing)
        with _saved_storages(model, blocks) as (storages, per_block):
            with _autocast(precision, cast):
                loss_of(batch_size)
        return sum(storages.values()), max(per_block.values(), default=0)

    (plain_1, block_1), (plain_2, block_2) = saved(1, False), saved(2, False)
    (kept_1, _), (kept_2, _) = saved(1, True), saved(2, True)
    model.set_grad_checkpointing(False)
    plain = Activations(2 * plain_1 - plain_2, plain_2 - plain_1)
    # Checkpointed: the blocks' inputs stay; during the backward pass one block's activations are recomputed.
    checkpointed = Activations(2 * kept_1 - kept_2 + 2 * block_1 - block_2, kept_2 - kept_1 + block_2 - block_1)
    return ActivationProfile(plain, checkpointed)


@contextlib.contextmanager
def _autocast(precision: str, cast: bool) -> Iterator[None]:
    if not cast and str(precision) in AUTOCAST_PRECISIONS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def _saved_storages(model: nn.Module, blocks: list[nn.Sequential]) -> Iterator[tuple[dict[int, int], dict[int, int]]]:
    """Storages autograd saves (by address: views of one storage count once), parameters excluded, and the bytes
    saved inside each block of ``blocks``' children."""
    parameters = {param.untyped_storage().data_ptr() for param in model.parameters()}
    storages: dict[int, int] = {}
    per_block: dict[int, int] = {}
    inside: list[int] = []

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address not in parameters and address not in storages:
            storages[address] = storage.nbytes()
            if inside:
                per_block[inside[-1]] = per_block.get(inside[-1], 0) + storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    def enter(module: nn.Module, args: tuple) -> None:
        keep(args[0])  # a checkpointed block's input: kept by the checkpoint, not through saved tensors
        inside.append(id(module))

    def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        inside.pop()

    hooks = []
    for block in (child for sequence in blocks for child in sequence):
        hooks.append(block.register_forward_pre_hook(enter))
        hooks.append(block.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield storages, per_block
    finally:
        for hook in hooks:
            hook.remove()


def peak_bytes(states: dict[str, int], buffers: int, activations: int) -> int:
    """Peak bytes of a step: parameters, optimizer states and buffers stay; the gradients are created while the
    backward pass frees the activations (``zero_grad(set_to_none=True)``), so the larger of the two counts."""
    return states["parameters"] + states["optimizer states"] + buffers + max(activations, states["gradients"])


def largest_micro_batch(memory: int, states: dict[str, int], buffers: int, activations: Activations) -> int:
    """The most images per micro-batch whose :func:`peak_bytes` fits ``memory`` bytes (0: not even one)."""
    room = memory - states["parameters"] - states["optimizer states"] - buffers
    if room < states["gradients"] or activations.per_image <= 0:
        return 0
    return max(0, (room - activations.fixed) // activations.per_image)

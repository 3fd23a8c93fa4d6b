"""Count the host reads of device values (each one drains a GPU's queue) while a block of code runs.

Seen by a ``TorchDispatchMode``: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``), ops whose
output size depends on the data (``nonzero``, ``masked_select``, ``unique``, ``equal``) and
copies from the device to the host; explicit ``torch.cuda.synchronize`` calls are not seen. ``Tensor.tolist()``
and ``Tensor.numpy()`` bypass the dispatcher on CPU, so they are wrapped for the duration. On a CUDA device only
reads of that device's tensors count; with the CPU as the device every read counts except those of the step
counters torch's optimizers keep on the host on purpose (their reads cost nothing on a GPU either).
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALAR_READ = torch.ops.aten._local_scalar_dense.default
# Ops whose output size depends on the data: the host waits for the device to learn it.
DATA_DEPENDENT = {
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten.equal.default,
}
COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)
HOST_COUNTER_READER = "torch/optim/optimizer.py"  # ``_get_value``: optimizer step counters, host tensors anywhere


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter(device) as syncs: ...``; then ``syncs.count`` and ``syncs.sites`` (where they came
    from, ``file:line`` of the innermost frame outside torch)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.count = 0
        self.sites: Counter[str] = Counter()
        self._wrapped_depth = 0

    def _on_device(self, tensor: Any) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.device.type == self.device.type

    def _record(self) -> None:
        stack = traceback.extract_stack()[:-2]
        if self.device.type == "cpu" and any(
            frame.name == "_get_value" and frame.filename.endswith(HOST_COUNTER_READER) for frame in stack[-5:]
        ):
            return
        outside = [frame for frame in stack if "/torch/" not in frame.filename and "host_syncs" not in frame.filename]
        site = outside[-1] if outside else stack[-1]
        self.count += 1
        self.sites[f"{site.filename}:{site.lineno}"] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self._wrapped_depth:
            if (func is SCALAR_READ or func in DATA_DEPENDENT) and self._on_device(args[0]):
                self._record()
            elif func in COPIES and self.device.type != "cpu":
                source = args[1] if func is torch.ops.aten.copy_.default else args[0]
                target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
                if self._on_device(source) and target is not None and torch.device(target).type == "cpu":
                    self._record()
        return func(*args, **kwargs)

    def __enter__(self) -> HostSyncCounter:
        self._originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._counted(original))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def _counted(self, original: Any) -> Any:
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self._on_device(tensor) and not self._wrapped_depth:
                self._record()
            self._wrapped_depth += 1  # the copy a CUDA ``tolist`` makes is the same read
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._wrapped_depth -= 1

        return read

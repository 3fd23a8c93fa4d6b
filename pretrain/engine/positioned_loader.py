"""Training loaders positioned from the global step, and saying so to Lightning."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)


class StepPositionedLoader:
    """A training loader built for the epoch and the batches of it that the global step says were consumed
    (:meth:`~pretrain.engine.plan.RunPlan.resume_position`).

    Lightning resumes mid-epoch only loaders with ``state_dict``/``load_state_dict`` and warns of "unreliable
    results" for others. These need no state of their own, the position follows from the step; what they save is
    the layout that position was computed for, and a run resumed with another layout (world size, batch size,
    accumulation, epoch length, seed) is told that it will not read what the interrupted run would have.
    """

    def __init__(self, loader: Iterable[Any], layout: Mapping[str, Any], batches_per_epoch: int) -> None:
        self.loader = loader
        self.layout = dict(layout)
        self.batches_per_epoch = batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        """The whole epoch's batches, although a resumed epoch yields only the rest: Lightning counts a resumed
        epoch's batches on from those already consumed and ends the epoch when the count reaches this length."""
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"layout": dict(self.layout)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("layout", {})
        changed = {key: (saved.get(key), value) for key, value in self.layout.items() if saved.get(key) != value}
        if changed:
            described = ", ".join(f"{key} {before} -> {now}" for key, (before, now) in changed.items())
            log.warning(
                "resuming with another data layout than the checkpoint's (%s): the rest of this epoch is not what "
                "the interrupted run would have read",
                described,
            )

"""How the transforms crop, resize and augment: one frozen record the apps fill from their config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TransformOptions:
    """How a transform crops, resizes and augments; the apps fill it from their config (no defaults here).

    A transform that does not use a field gets None for it: the eval transform takes no crop ranges, the
    training transforms no eval crop.
    """

    image_size: int  # output side in pixels
    crop_scale: tuple[float, float] | None  # training crops: area fraction range of RandomResizedCrop
    crop_ratio: tuple[float, float] | None  # training crops: aspect-ratio range of RandomResizedCrop
    eval_crop_fraction: float | None  # eval: the centre crop's share of the resized shorter side (1: whole image)
    randaugment: str | None  # supervised transform: a timm RandAugment policy (rand-m9-mstd0.5-inc1); None: off
    intensity_scale: float | None  # arrays, training: values scaled by a factor in [1 - s, 1 + s]; None/0: off
    bands: tuple[int, ...] | None  # arrays: the stored channels to read, in this order; None: all

    def __post_init__(self) -> None:
        if self.randaugment is not None and not str(self.randaugment).startswith("rand"):
            raise ValueError(
                f"randaugment takes a timm RandAugment policy such as rand-m9-mstd0.5-inc1, or null "
                f"(off); got {self.randaugment!r}"
            )
        for name in ("crop_scale", "crop_ratio", "bands"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.crop_ratio is not None and not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.eval_crop_fraction is not None and not 0 < self.eval_crop_fraction <= 1:
            raise ValueError(f"eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}")

    def required(self, name: str, transform: str) -> Any:
        """The field ``name``, which the ``transform`` transform cannot do without."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the {transform} transform needs {name}; it is None in {self}")
        return value

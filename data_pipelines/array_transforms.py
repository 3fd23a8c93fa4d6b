"""The transforms of :mod:`data_pipelines.transforms` for arrays: N-channel images ``[C, H, W]`` and volumes
``[C, D, H, W]``, as float32 tensors of their stored values (normalized later, per channel, like images).

Geometry only, on every channel alike: colour operations (RandAugment) assume RGB and are refused. 2-D arrays
get the image transforms' geometry (RandomResizedCrop, bicubic antialiased resize, horizontal flip; resize the
shorter side and centre crop for eval). Volumes become cubes: in training a random sub-volume of a fraction
``crop_scale`` of the volume (its proportions kept) resized trilinearly to the cube, flipped along each axis with
probability 1/2 (MONAI's ``RandSpatialCrop`` + ``RandFlip``); for eval the whole volume resized to the cube of
side ``image_size / eval_crop_fraction`` and its centre cube kept (the whole volume at fraction 1). Training
transforms then scale each value's distance from its channel's mean by a random factor in
``[1 - intensity_scale, 1 + intensity_scale]``: MONAI's ``RandScaleIntensity`` on normalized values, so the
scale of a CT volume around -500 HU does not shift its offset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data_pipelines.transform_options import TransformOptions

RGB_ONLY = (
    "RandAugment is a colour augmentation of RGB images; arrays (N channels, volumes) train with crops, flips "
    "and intensity scaling: set objective.randaugment=null (or mode.randaugment=null)"
)


def select_bands(array: torch.Tensor, bands: Sequence[int] | None) -> torch.Tensor:
    if bands is None:
        return array
    if min(bands) < 0 or max(bands) >= array.shape[0]:
        raise IndexError(
            f"bands {list(bands)} asked of an array with {array.shape[0]} channels (0-{array.shape[0] - 1})"
        )
    return array[list(bands)]


def resize(array: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[C, *spatial]`` to ``size``: bicubic antialiased in 2-D (as images), trilinear in 3-D."""
    if array.ndim == 3:
        return TF.resize(array, list(size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return F.interpolate(array[None], size=tuple(size), mode="trilinear", align_corners=False)[0]


def random_box(spatial: Sequence[int], options: TransformOptions) -> list[slice]:
    """A random crop, one slice per spatial axis: torchvision's RandomResizedCrop box in 2-D; in 3-D a box of a
    volume fraction drawn from ``crop_scale``, the volume's proportions kept, at a random place."""
    scale = options.required("crop_scale", "training crop")
    if len(spatial) == 2:
        ratio = options.required("crop_ratio", "training crop")
        top, left, height, width = v2.RandomResizedCrop.get_params(torch.empty(1, *spatial), list(scale), list(ratio))
        return [slice(top, top + height), slice(left, left + width)]
    fraction = float(torch.empty(1).uniform_(*scale)) ** (1 / len(spatial))
    sizes = [max(1, round(side * fraction)) for side in spatial]
    starts = [int(torch.randint(0, side - size + 1, (1,))) for side, size in zip(spatial, sizes, strict=True)]
    return [slice(start, start + size) for start, size in zip(starts, sizes, strict=True)]


class ArrayCropFlip:
    """Training: random crop resized to ``image_size`` on every axis, flips, intensity scaling."""

    def __init__(self, options: TransformOptions, mean: Sequence[float]) -> None:
        if options.randaugment is not None:
            raise ValueError(RGB_ONLY)
        options.required("crop_scale", "training crop")
        options.required("crop_ratio", "training crop")
        self.options = options
        self.mean = torch.tensor(list(mean), dtype=torch.float32)

    def __call__(self, array: torch.Tensor) -> torch.Tensor:
        array = select_bands(array, self.options.bands)
        spatial = array.shape[1:]
        box = (slice(None), *random_box(spatial, self.options))
        crop = resize(array[box], [self.options.image_size] * len(spatial))
        # 2-D: a horizontal flip, as images; 3-D: each axis (a volume has no canonical left-right axis)
        axes = [-1] if len(spatial) == 2 else range(1, 1 + len(spatial))
        flipped = [axis for axis in axes if torch.rand(1) < 0.5]
        if flipped:
            crop = crop.flip(flipped)
        spread = self.options.intensity_scale
        if spread:
            factor = 1 + float(torch.empty(1).uniform_(-spread, spread))
            centre = self.mean.view(-1, *(1,) * len(spatial))
            crop = (crop - centre) * factor + centre
        return crop


class ArrayResizeCenterCrop:
    """Eval: 2-D, the shorter side to ``image_size / eval_crop_fraction`` (proportions kept); 3-D, the whole volume
    to a cube of that side; then the centre ``image_size`` crop."""

    def __init__(self, options: TransformOptions) -> None:
        self.options = options
        self.resized_side = int(options.image_size / options.required("eval_crop_fraction", "eval"))

    def __call__(self, array: torch.Tensor) -> torch.Tensor:
        array = select_bands(array, self.options.bands)
        spatial = array.shape[1:]
        size, shortest = self.options.image_size, min(spatial)
        if len(spatial) == 3:
            sides = [max(size, self.resized_side)] * 3
        else:
            sides = [max(size, int(self.resized_side * side / shortest)) for side in spatial]
        resized = resize(array, sides)
        starts = [round((side - size) / 2) for side in resized.shape[1:]]
        return resized[(slice(None), *(slice(start, start + size) for start in starts))]


class ArrayResizeFlip:
    """Light transfer augmentation: the eval view, flipped along the last axis half the time."""

    def __init__(self, options: TransformOptions, mean: Sequence[float]) -> None:
        self.resize = ArrayResizeCenterCrop(options)

    def __call__(self, array: torch.Tensor) -> torch.Tensor:
        view = self.resize(array)
        return view.flip(-1) if torch.rand(1) < 0.5 else view


# name -> constructor from (options, the normalization mean: the centre of intensity scaling)
ARRAY_TRANSFORMS: dict[str, Callable[[TransformOptions, Sequence[float]], Callable[[torch.Tensor], torch.Tensor]]] = {
    "mae": ArrayCropFlip,
    "supervised": ArrayCropFlip,
    "eval": lambda options, mean: ArrayResizeCenterCrop(options),
    "flip": ArrayResizeFlip,
}

"""Decode and augment one image per objective, as uint8 tensors; normalization runs once per batch.

- mae:        RandomResizedCrop(crop_scale, bicubic) + horizontal flip (the MAE recipe)
- supervised: mae + timm's RandAugment (mixup/cutmix and erasing belong to the training module: whole batches)
- eval:       resize the shorter side to image_size / eval_crop_fraction, then center crop image_size
- flip:       eval + horizontal flip (light augmentation for transfer)

Why it is fast (bench/loader.py measures it): the crop is drawn from the image header before decoding, and only
as many pixels are decoded as the crop needs at output resolution (:mod:`data_pipelines.decode`); crop + resize
is one antialiased bicubic resize on uint8 (torchvision.transforms.v2), and floats appear only for the whole
batch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as timm_augment
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from data_pipelines.array_transforms import ARRAY_TRANSFORMS
from data_pipelines.arrays import array_member, decode_array
from data_pipelines.decode import Box, StoredImage
from data_pipelines.registry import lookup
from data_pipelines.segmentation_transforms import (
    MASK_MEMBER,
    SEGMENTATION_TRANSFORMS,
    VOLUME_MASK_MEMBER,
    VOLUME_SEGMENTATION_TRANSFORMS,
)
from data_pipelines.transform_options import TransformOptions

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its centred fallback (torchvision's get_params)
TIMM_TRANSLATE_FRACTION = 0.45  # timm's create_transform: RandAugment translates by up to 45 % of the side
# timm clips RandAugment magnitudes to [0, 10]; at exactly 10 its increasing posterize keeps 0 bits, which Pillow 11+
# rejects (ValueError). A bound just below 10 keeps at least 1 bit and moves no other op measurably.
TIMM_MAGNITUDE_MAX = 9.999
# What a corrupt, truncated or incomplete sample raises while it is decoded; anything else is a bug.
CORRUPT_SAMPLE_ERRORS = (OSError, SyntaxError, ValueError, KeyError, Image.DecompressionBombError)

# stored (encoded) image -> uint8 [3, S, S]; or, for arrays, float32 [C, *spatial] -> float32 [C, S, S(, S)]
ImageTransform = Callable[[StoredImage | torch.Tensor], torch.Tensor]


def open_image(sample: dict[str, Any]) -> StoredImage:
    """The sample's image, of which only the header is read until pixels are needed."""
    for extension in IMAGE_EXTENSIONS:
        if extension in sample:
            return StoredImage.read(sample[extension])
    raise KeyError(f"sample {sample.get('__key__')} has no image member ({', '.join(IMAGE_EXTENSIONS)})")


def open_input(sample: dict[str, Any]) -> StoredImage | torch.Tensor:
    """The sample's image (its header read) or, for array samples, its values as a float32 ``[C, *spatial]``."""
    member = array_member(sample)
    if member is None:
        return open_image(sample)
    array = decode_array(sample[member], member)
    if array.ndim not in (3, 4):
        raise ValueError(f"sample {sample.get('__key__')}: array of shape {array.shape}, not [C, H, W] or [C, D, H, W]")
    return torch.from_numpy(array.astype(np.float32, copy=False))


def read_label(sample: dict[str, Any]) -> int:
    """The integer in `key.cls`, or -1 for unlabeled samples."""
    return int(sample["cls"]) if "cls" in sample else -1


def open_mask(sample: dict[str, Any]) -> Image.Image | torch.Tensor | None:
    """A segmentation sample's mask (`key.seg.png`; a volume's `key.seg.npz` as a tensor), or None without one."""
    if MASK_MEMBER in sample:
        return Image.open(io.BytesIO(sample[MASK_MEMBER]))
    if VOLUME_MASK_MEMBER in sample:
        return torch.from_numpy(decode_array(sample[VOLUME_MASK_MEMBER], "npz").astype(np.int64))
    return None


def collate_targets(targets: Sequence[int | torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"label": long [B]}`` for class labels, ``{"mask": long [B, H, W]}`` for segmentation masks."""
    if isinstance(targets[0], torch.Tensor):
        return {"mask": torch.stack(list(targets))}
    return {"label": torch.tensor(targets, dtype=torch.long)}


def resize_square(pixels: torch.Tensor, size: int) -> torch.Tensor:
    return F.resize(pixels, [size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


class CropPlan(NamedTuple):
    """Where a transform crops a stored image and whether it flips the crop, drawn from the header alone: the
    pixels can then be decoded elsewhere (on the GPU: :mod:`data_pipelines.device_decode`)."""

    box: Box
    flip: bool


class PlannedCrop:
    """A transform that is a crop, a resize to ``size`` squared and maybe a horizontal flip."""

    size: int

    def plan(self, image: StoredImage) -> CropPlan:
        raise NotImplementedError

    def finish(self, region: torch.Tensor, flip: bool) -> torch.Tensor:
        """The output from the decoded pixels of the plan's box (uint8 ``[3, h, w]``, on any device)."""
        crop = resize_square(region, self.size)
        return F.horizontal_flip(crop) if flip else crop

    def __call__(self, image: StoredImage) -> torch.Tensor:
        box, flip = self.plan(image)
        return self.finish(image.region(box, self.size), flip)


class RandomResizedCropFlip(PlannedCrop):
    """MAE's train transform: RandomResizedCrop(crop_scale, crop_ratio, bicubic) then a horizontal flip."""

    def __init__(self, options: TransformOptions) -> None:
        self.size = options.image_size
        self.scale = list(options.required("crop_scale", "training crop"))
        self.ratio = list(options.required("crop_ratio", "training crop"))

    def plan(self, image: StoredImage) -> CropPlan:
        draws = torch.rand(2 * CROP_ATTEMPTS + 3).tolist()  # one generator call per image, not a dozen
        box = random_resized_crop_box(image.width, image.height, self.scale, self.ratio, draws)
        return CropPlan(box, flip=draws[-1] < 0.5)


def random_resized_crop_box(
    width: int, height: int, scale: Sequence[float], ratio: Sequence[float], draws: Sequence[float]
) -> Box:
    """torchvision's RandomResizedCrop box (its ``get_params``: up to ten tries of area fraction ~ U(scale) and
    log aspect ratio ~ U(log ratio), the first that fits, else the largest centred crop within ``ratio``), from
    uniform ``draws`` in [0, 1): two per try, then two for the position. Drawn at once because the dozen tensor
    calls of ``get_params`` cost as much as the crop and resize of a 32 px image."""
    area, log_low, log_high = width * height, math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(CROP_ATTEMPTS):
        fraction = scale[0] + (scale[1] - scale[0]) * draws[2 * attempt]
        aspect = math.exp(log_low + (log_high - log_low) * draws[2 * attempt + 1])
        crop_width = round(math.sqrt(area * fraction * aspect))
        crop_height = round(math.sqrt(area * fraction / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = math.floor(draws[2 * CROP_ATTEMPTS] * (width - crop_width + 1))
            top = math.floor(draws[2 * CROP_ATTEMPTS + 1] * (height - crop_height + 1))
            return left, top, crop_width, crop_height
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


class ResizeCenterCrop(PlannedCrop):
    """The eval transform: shorter side to image_size / eval_crop_fraction, center crop image_size."""

    def __init__(self, options: TransformOptions) -> None:
        self.size = options.image_size
        self.resized_short_side = int(options.image_size / options.required("eval_crop_fraction", "eval"))

    def plan(self, image: StoredImage) -> CropPlan:
        width, height = image.size
        # torchvision's Resize + CenterCrop geometry (its rounding included), mapped back to stored pixels.
        short, long = sorted((width, height))
        resized_long = int(self.resized_short_side * long / short)
        resized_width, resized_height = (resized_long, self.resized_short_side)[:: 1 if width >= height else -1]
        scale_x, scale_y = width / resized_width, height / resized_height
        left, top = round((resized_width - self.size) / 2), round((resized_height - self.size) / 2)
        return CropPlan((left * scale_x, top * scale_y, self.size * scale_x, self.size * scale_y), flip=False)


class CropFlipRandAugment:
    """The MAE crop and flip, then timm's RandAugment (DeiT, MAE fine-tuning: ``rand-m9-mstd0.5-inc1``).

    timm's RandAugment works on PIL images with the hyper-parameters its ``create_transform`` gives it:
    translations up to 45 % of the side and the dataset's mean colour as fill.
    """

    def __init__(self, options: TransformOptions, mean: Sequence[float]) -> None:
        self.crop_flip = RandomResizedCropFlip(options)
        hparams = {
            "translate_const": int(options.image_size * TIMM_TRANSLATE_FRACTION),
            "img_mean": tuple(min(255, round(255 * value)) for value in mean),
            "magnitude_max": TIMM_MAGNITUDE_MAX,
        }
        policy = options.required("randaugment", "supervised")
        self.randaugment = timm_augment.rand_augment_transform(policy, hparams)

    def __call__(self, image: StoredImage) -> torch.Tensor:
        augmented = self.randaugment(F.to_pil_image(self.crop_flip(image)))
        return F.pil_to_tensor(augmented)


class ResizeFlip(ResizeCenterCrop):
    """Light augmentation for transfer: the eval transform's whole image (or centre crop), flipped half the time.

    For small labelled sets where random crops can cut out what the label is about (a defect at a cell's edge).
    """

    def plan(self, image: StoredImage) -> CropPlan:
        return CropPlan(super().plan(image).box, bool(torch.rand(1) < 0.5))


def supervised_transform(options: TransformOptions, mean: Sequence[float]) -> ImageTransform:
    """The MAE crop and flip, with timm's RandAugment when ``options.randaugment`` names a policy."""
    if options.randaugment is None:
        return RandomResizedCropFlip(options)
    return CropFlipRandAugment(options, mean)


TRANSFORMS: dict[str, Callable[[TransformOptions, Sequence[float]], ImageTransform]] = {
    "mae": lambda options, mean: RandomResizedCropFlip(options),
    "supervised": supervised_transform,
    "eval": lambda options, mean: ResizeCenterCrop(options),
    "flip": lambda options, mean: ResizeFlip(options),
}


TRANSFORM_NAMES = (*TRANSFORMS, *SEGMENTATION_TRANSFORMS)


def build_transform(
    name: str, options: TransformOptions, mean: Sequence[float], arrays: bool = False
) -> ImageTransform:
    """The per-image transform ``name``, of images or (``arrays``) of array tensors (:mod:`array_transforms`), or
    of an image and its mask (``segment``, ``segment_eval``: :mod:`segmentation_transforms`); ``mean`` (the
    normalization mean) is RandAugment's fill colour, and the centre of arrays' intensity scaling."""
    if name in SEGMENTATION_TRANSFORMS:
        return (VOLUME_SEGMENTATION_TRANSFORMS if arrays else SEGMENTATION_TRANSFORMS)[name](options)
    if arrays:
        return lookup(ARRAY_TRANSFORMS, name, "transform")(options, mean)
    return lookup(TRANSFORMS, name, "transform")(options, mean)


class Normalize:
    """Per channel ``(x - mean) / std`` in float32, in two in-place passes, on the batch's device.

    uint8 batches ``[B, C, H, W]`` are 0-255 pixels, taken to [0, 1] first (mean/std in [0, 1] units, the
    ImageNet convention); float batches (arrays, ``[B, C, *spatial]``) are normalized in their stored units.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels, std {len(std)}")
        self.std = torch.tensor(std, dtype=torch.float32)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        # Per (device, pixel unit, rank): copied to a GPU once, not every batch (a copy from pageable host memory
        # waits for the GPU's queue to drain).
        self.constants: dict[tuple[torch.device, float, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != len(self.mean):
            raise ValueError(
                f"batch of {images.shape[1]} channels normalized with {len(self.mean)}-channel mean/std: set "
                "data.mean/data.std (null: the shards' channel statistics) to one value per channel"
            )
        pixel = 255.0 if images.dtype == torch.uint8 else 1.0
        key = (images.device, pixel, images.ndim)
        if key not in self.constants:
            shape = (1, -1) + (1,) * (images.ndim - 2)
            scale = (1 / (pixel * self.std)).view(shape).to(images.device)
            self.constants[key] = scale, (-self.mean / self.std).view(shape).to(images.device)
        scale, shift = self.constants[key]
        return images.float().mul_(scale).add_(shift)

"""Transforms of an image and its segmentation mask together (torchvision transforms v2 on ``tv_tensors``: the
image is resized bicubic with antialiasing, the ``Mask`` by nearest neighbour, both by the same random draw).

- segment:      RandomResizedCrop(crop_scale, crop_ratio) to ``image_size`` + horizontal flip (training crops)
- segment_eval: the shorter side to ``image_size``, proportions kept (the longer side is covered by sliding
                windows at test time, so whole images are scored)

Each returns ``(uint8 image [3, H, W], int64 mask [H, W])``. Volumes (float ``[C, D, H, W]`` with ``[D, H, W]``
labels) get the same two, in 3-D: a random sub-volume resized to the cube and flipped, or the whole volume.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from data_pipelines.array_transforms import random_box, resize
from data_pipelines.decode import StoredImage
from data_pipelines.transform_options import TransformOptions

MASK_MEMBER = "seg.png"
VOLUME_MASK_MEMBER = "seg.npz"  # a volume's label map, an npz array like the volume itself


def as_tv_tensors(image: StoredImage, mask: Image.Image | np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    labels = np.array(mask, dtype=np.uint8)
    if (image.height, image.width) != labels.shape:
        raise ValueError(f"image {image.size} and mask {labels.shape[::-1]} differ in size")
    return tv_tensors.Image(image.decode().permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(labels))


class JointTransform:
    """A torchvision v2 transform applied to an image and its mask in one call (one random draw for both)."""

    transform: v2.Transform

    def __call__(self, image: StoredImage, mask: Image.Image | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = self.transform(*as_tv_tensors(image, mask))
        return pixels.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor).long()


class SegmentationCrop(JointTransform):
    """Training: the same random-resized crop and flip of image and mask."""

    def __init__(self, options: TransformOptions) -> None:
        scale = options.required("crop_scale", "segmentation crop")
        ratio = options.required("crop_ratio", "segmentation crop")
        size = options.image_size
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=v2.InterpolationMode.BICUBIC),
                v2.RandomHorizontalFlip(),
            ]
        )


class SegmentationResize(JointTransform):
    """Eval: the shorter side to ``image_size`` for image and mask (the mask by nearest neighbour)."""

    def __init__(self, options: TransformOptions) -> None:
        self.transform = v2.Resize(options.image_size, interpolation=v2.InterpolationMode.BICUBIC)


class VolumeSegmentationCrop:
    """Training on volumes: the same random sub-volume (``crop_scale`` of the volume) of volume and labels, resized
    to the ``image_size`` cube (trilinear; labels nearest), flipped along the same axes."""

    def __init__(self, options: TransformOptions) -> None:
        options.required("crop_scale", "segmentation crop")
        self.options = options

    def __call__(self, volume: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_grids(volume, labels)
        box = random_box(volume.shape[1:], self.options)
        size = [self.options.image_size] * 3
        crop = resize(volume[(slice(None), *box)], size)
        crop_labels = nearest(labels[tuple(box)], size)
        flipped = [axis for axis in (1, 2, 3) if torch.rand(1) < 0.5]
        if flipped:
            crop, crop_labels = crop.flip(flipped), crop_labels.flip([axis - 1 for axis in flipped])
        return crop, crop_labels


class VolumeSegmentationResize:
    """Eval on volumes: the whole volume and its labels resized to the ``image_size`` cube."""

    def __init__(self, options: TransformOptions) -> None:
        self.size = [options.image_size] * 3

    def __call__(self, volume: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_grids(volume, labels)
        return resize(volume, self.size), nearest(labels, self.size)


def check_grids(volume: torch.Tensor, labels: torch.Tensor) -> None:
    if tuple(volume.shape[1:]) != tuple(labels.shape):
        raise ValueError(f"volume {tuple(volume.shape[1:])} and labels {tuple(labels.shape)} differ")


def nearest(labels: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Label volume ``[D, H, W]`` to ``size`` by nearest neighbour (centre-aligned), as int64."""
    resized = torch.nn.functional.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].long()


SEGMENTATION_TRANSFORMS = {"segment": SegmentationCrop, "segment_eval": SegmentationResize}
VOLUME_SEGMENTATION_TRANSFORMS = {"segment": VolumeSegmentationCrop, "segment_eval": VolumeSegmentationResize}

"""Transforms of an image and its segmentation mask together (torchvision transforms v2 on ``tv_tensors``: the
image is resized bicubic with antialiasing, the ``Mask`` by nearest neighbour, both by the same random draw).

- segment:      RandomResizedCrop(crop_scale, crop_ratio) to ``image_size`` + horizontal flip (training crops)
- segment_eval: the shorter side to ``image_size``, proportions kept (the longer side is covered by sliding
                windows at test time, so whole images are scored)

Each returns ``(uint8 image [3, H, W], int64 mask [H, W])``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from data_pipelines.transform_options import TransformOptions

MASK_MEMBER = "seg.png"


def as_tv_tensors(image: Image.Image, mask: Image.Image) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    if image.size != mask.size:
        raise ValueError(f"image {image.size} and mask {mask.size} differ in size")
    pixels = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
    return pixels, tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8)))


class SegmentationCrop:
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

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = self.transform(*as_tv_tensors(image, mask))
        return pixels.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor).long()


class SegmentationResize:
    """Eval: the shorter side to ``image_size`` for image and mask (the mask by nearest neighbour)."""

    def __init__(self, options: TransformOptions) -> None:
        self.transform = v2.Resize(options.image_size, interpolation=v2.InterpolationMode.BICUBIC)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = self.transform(*as_tv_tensors(image, mask))
        return pixels.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor).long()


SEGMENTATION_TRANSFORMS = {"segment": SegmentationCrop, "segment_eval": SegmentationResize}

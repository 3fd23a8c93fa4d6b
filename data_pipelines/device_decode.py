"""Decode on the training device: workers hand over JPEG bytes and their drawn crops; the device finishes the batch.

At thousands of images per second a GPU outruns the CPU cores that decode for it (about 1.5-2 ms of a core per
400-500 px photo, bench/loader.py). With ``decode_on_device`` a worker reads each JPEG's header, draws its crop and
flip from the sample's seed exactly as the CPU path would, and hands over the encoded bytes; the training process
decodes the whole batch in one ``torchvision.io.decode_jpeg(device=...)`` call (nvJPEG on CUDA), then crops,
resizes and flips on the device, into a uint8 batch the consumer normalizes there, as it does with
``normalize=False`` batches. Samples in other formats (PNG, WebP, CMYK JPEGs) are decoded and
transformed by the workers as before and travel as uint8 pixels. On a CPU device the same code decodes with
libjpeg-turbo in the training process.

Fallbacks, so that no decodable sample is lost: a batch the device decoder refuses is decoded image by image; an
image it still refuses is decoded on the CPU (simplejpeg, then Pillow); an image nothing decodes is dropped and
counted in ``corrupt_skipped``, as the workers count theirs.

The handover batch (``handover_batch``) holds, besides ``label``, ``key`` and ``corrupt_skipped``:
    image:   uint8 [K, 3, S, S]  the samples the workers decoded
    encoded: {"data": uint8 [bytes], "offsets": long [J + 1], "box": float64 [J, 4], "flip": bool [J],
              "rows": long [J] (their rows in the finished batch), "image_rows": long [K]}
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from data_pipelines.decode import StoredImage, box_slices
from data_pipelines.transforms import CORRUPT_SAMPLE_ERRORS, CropPlan, PlannedCrop, collate_targets

logger = logging.getLogger(__name__)
ENCODED = "encoded"


class PendingJpeg:
    """A worker's JPEG sample: the encoded image and its drawn crop, to be decoded by the device."""

    def __init__(self, image: StoredImage, plan: CropPlan) -> None:
        self.image = image
        self.plan = plan


def handover_batch(
    outputs: Sequence[torch.Tensor | PendingJpeg], targets: Sequence[int], keys: list[str], size: int
) -> dict[str, Any]:
    """One batch as the workers hand it over: pixels they decoded, JPEGs still encoded (see the module)."""
    pending = [row for row, output in enumerate(outputs) if isinstance(output, PendingJpeg)]
    decoded = [row for row, output in enumerate(outputs) if not isinstance(output, PendingJpeg)]
    jpegs = [outputs[row] for row in pending]
    lengths = torch.tensor([len(jpeg.image.data) for jpeg in jpegs], dtype=torch.long)
    data = np.frombuffer(b"".join(jpeg.image.data for jpeg in jpegs), dtype=np.uint8)
    images = [outputs[row] for row in decoded]
    return {
        "image": torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8),
        ENCODED: {
            "data": torch.from_numpy(data.copy()),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
            "box": torch.tensor([jpeg.plan.box for jpeg in jpegs], dtype=torch.float64).reshape(-1, 4),
            "flip": torch.tensor([jpeg.plan.flip for jpeg in jpegs], dtype=torch.bool),
            "rows": torch.tensor(pending, dtype=torch.long),
            "image_rows": torch.tensor(decoded, dtype=torch.long),
        },
        **collate_targets(targets),
        "key": keys,
    }


def is_handover(batch: Any) -> bool:
    return isinstance(batch, dict) and ENCODED in batch


class DeviceDecoder:
    """Handover batch -> the stream's batch of ``normalize=False``: uint8 ``image`` [B, 3, S, S] on ``device`` (the
    other entries stay where they are, for the usual transfer to move)."""

    def __init__(self, transform: PlannedCrop) -> None:
        self.transform = transform

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        encoded, keys = batch.pop(ENCODED), batch["key"]
        images = torch.empty(len(keys), 3, self.transform.size, self.transform.size, dtype=torch.uint8, device=device)
        decoded = batch["image"].to(device, non_blocking=True)
        for index, row in enumerate(encoded["image_rows"].tolist()):  # Python indices: no index tensor to copy over
            images[row] = decoded[index]
        offsets = encoded["offsets"].tolist()
        data = [encoded["data"][start:end] for start, end in itertools.pairwise(offsets)]
        boxes, flips, rows = encoded["box"].tolist(), encoded["flip"].tolist(), encoded["rows"].tolist()
        lost = set()
        for row, pixels, box, flip in zip(rows, decode_all(data, device), boxes, flips, strict=True):
            if pixels is None:
                logger.warning("skipping corrupt sample %s: no decoder could read its JPEG", keys[row])
                lost.add(row)
                continue
            size = (pixels.shape[2], pixels.shape[1])  # decoded at full size: the stored grid
            box_rows, box_columns = box_slices(box, size, size)
            images[row] = self.transform.finish(pixels[:, box_rows, box_columns], flip)
        if lost:
            keep = [row for row in range(len(keys)) if row not in lost]
            images = torch.stack([images[row] for row in keep]) if keep else images[:0]
            batch["key"], batch["label"] = [keys[row] for row in keep], batch["label"][keep]
            batch["corrupt_skipped"] = batch["corrupt_skipped"] + len(lost)
        batch["image"] = images
        return batch


def decode_all(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as uint8 [3, H, W] on ``device``: all in one call, else one by one, else on the CPU; None for
    those nothing can decode."""
    if not data:
        return []
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [decode_one(jpeg, device) for jpeg in data]


def decode_one(jpeg: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:
        logger.info("the %s JPEG decoder refused an image (%s); decoding it on the CPU", device.type, error)
    try:
        return StoredImage.read(jpeg.numpy().tobytes()).decode().permute(2, 0, 1).to(device)
    except CORRUPT_SAMPLE_ERRORS:
        return None

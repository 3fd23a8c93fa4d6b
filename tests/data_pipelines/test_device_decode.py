"""Decoding on the device (run here on the CPU device): the same batches as the workers give, and every fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from image_files import image_bytes
from yaml_defaults import transform_options

from data_pipelines import device_decode
from data_pipelines.device_decode import is_handover
from data_pipelines.stream import StreamConfig, build_loader, device_decoder
from data_pipelines.transforms import Normalize

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
CPU = torch.device("cpu")
NORMALIZE = Normalize(MEAN, STD)


def asymmetric_pixels(index: int) -> np.ndarray:
    """Smooth, different left and right (a wrong flip shows), of varied sizes around 48 px."""
    height, width = 40 + index % 7 * 3, 44 + index % 5 * 4
    y, x = np.mgrid[0:height, 0:width]
    channels = [20 + x * (1 + c) + y * (index % 3) + 30 * np.sin(y / (5 + c)) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 JPEGs (two grayscale), 4 PNGs and a JPEG cut short after its header, labels 0-4."""
    path = tmp_path_factory.mktemp("device") / "mixed-000000.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        for index in range(25):
            pixels = asymmetric_pixels(index)
            if index in (3, 11):
                pixels = pixels[..., :1].repeat(3, -1)
            image_format = "PNG" if index % 6 == 5 else "JPEG"
            data = image_bytes(pixels, image_format)
            if index == 17:
                data = data[: len(data) // 2]  # the header reads, the scan does not
            sink.write(
                {
                    "__key__": f"{index:03d}",
                    image_format.lower().replace("jpeg", "jpg"): data,
                    "cls": str(index % 5).encode(),
                }
            )
    return path


def stream(shard: Path, transform: str = "eval", **overrides) -> StreamConfig:
    settings = {
        "batch_size": 8,
        "num_workers": 0,
        "transform": transform,
        "augment": transform_options(32, eval_crop_fraction=1.0),
        "shuffle_buffer": 0,
        "mean": MEAN,
        "std": STD,
        "seed": 3,
        "manifest": None,
        "pin_memory": False,
    }
    return StreamConfig(shards=str(shard), **{**settings, **overrides})


def both_paths(config: StreamConfig) -> tuple[list[dict], list[dict]]:
    """The workers' batches, and the handover batches finished by the device decoder."""
    on_cpu = list(build_loader(config))
    handover = StreamConfig(**{**config.__dict__, "decode_on_device": True})
    decoder = device_decoder(handover)
    batches = list(build_loader(handover))
    assert all(is_handover(batch) for batch in batches)
    finished = [decoder(batch, CPU) for batch in batches]
    assert all(batch["image"].dtype == torch.uint8 for batch in finished)  # the consumer normalizes, as the app does
    return on_cpu, [{**batch, "image": NORMALIZE(batch["image"])} for batch in finished]


def pixel_levels(images: torch.Tensor) -> torch.Tensor:
    """Normalized images back in 0-255 pixel levels."""
    return images * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255


def test_device_decoded_eval_batches_equal_the_workers(mixed_shard: Path) -> None:
    on_cpu, on_device = both_paths(stream(mixed_shard))
    assert [batch["key"] for batch in on_device] == [batch["key"] for batch in on_cpu]
    for cpu_batch, device_batch in zip(on_cpu, on_device, strict=True):
        assert torch.equal(device_batch["label"], cpu_batch["label"])
        assert device_batch["image"].dtype == torch.float32 and device_batch["image"].shape[1:] == (3, 32, 32)
        gap = (pixel_levels(device_batch["image"]) - pixel_levels(cpu_batch["image"])).abs()
        assert gap.max() < 1.01  # libjpeg-turbo both; no crop is twice the output, so neither decodes reduced


def test_mae_crops_and_flips_are_the_ones_the_workers_draw(mixed_shard: Path) -> None:
    on_cpu, on_device = both_paths(stream(mixed_shard, "mae", augment=transform_options(12)))
    for cpu_batch, device_batch in zip(on_cpu, on_device, strict=True):
        gaps = (pixel_levels(device_batch["image"]) - pixel_levels(cpu_batch["image"])).abs().mean((1, 2, 3))
        # Crops of at least twice the output are decoded at half DCT scale by the workers, at full size here.
        assert gaps.max() < 6, gaps  # a missed flip differs by 15-55 levels on these images, another crop more


def test_a_jpeg_no_decoder_reads_is_skipped_and_counted_once(mixed_shard: Path) -> None:
    on_cpu, on_device = both_paths(stream(mixed_shard))
    for batches in (on_cpu, on_device):
        keys = [key for batch in batches for key in batch["key"]]
        assert "017" not in keys and len(keys) == 24
        assert sum(int(batch["corrupt_skipped"]) for batch in batches) == 1


def test_jpegs_the_device_decoder_refuses_are_decoded_on_the_cpu(
    mixed_shard: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [batch["image"] for batch in both_paths(stream(mixed_shard))[1]]

    def refusing_decoder(*args, **kwargs):  # as nvJPEG refuses a JPEG kind it does not support
        raise RuntimeError("unsupported JPEG")

    monkeypatch.setattr(device_decode, "decode_jpeg", refusing_decoder)
    fallback = [batch["image"] for batch in both_paths(stream(mixed_shard))[1]]
    assert [images.shape for images in fallback] == [images.shape for images in expected]
    assert max((a - b).abs().max().item() for a, b in zip(fallback, expected, strict=True)) < 0.02


def test_transforms_that_are_not_a_crop_and_flip_are_refused_with_the_choice(mixed_shard: Path) -> None:
    config = stream(
        mixed_shard,
        "supervised",
        augment=transform_options(24, randaugment="rand-m9-mstd0.5-inc1"),
        decode_on_device=True,
    )
    with pytest.raises(ValueError, match="mae, eval and flip transforms.*data.decode=cpu"):
        build_loader(config)

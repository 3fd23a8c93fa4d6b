"""Decoded, augmented images per CPU-second: our shard stream against torchvision ImageFolder + PIL + DataLoader.

The loaders read the same images and apply the MAE train transform (RandomResizedCrop(0.2-1.0, bicubic),
horizontal flip, normalize):
  * ``plain``  -- torchvision.datasets.ImageFolder, PIL, transforms.Compose as in the MAE reference, DataLoader
  * ``stream`` -- data_pipelines.stream.build_loader over shards written from the same folder by write_shards, as
    the pretraining app streams: uint8 batches, normalized on the training device (here outside the timed part,
    for the statistics only)
  * ``stream float`` -- the same, normalized to float32 in the loader workers
  * ``stream resized`` -- ``stream`` over shards written with ``--resize-short-side`` (224 px output only: the
    32 px images are smaller than any limit)
  * ``stream on DEVICE`` (``--device``) -- ``data.decode=gpu``: workers hand over the JPEG bytes, the main process
    decodes and crops on the device (timed, synchronized; normalized like ``stream``, outside the timed part)

Two sets are generated into a temporary folder: 224 px output from photo-like JPEGs of 400-500 px on the short
side (1/f-noise textures with edges, about 0.5 bytes per pixel at quality 90, like photos), and 32 px output from
32 px PNGs (the demo set's images). Per core means per CPU-second of the main process and its workers together
(getrusage), which a busy machine disturbs less than wall time. Rounds are interleaved and the median is
reported. The per-channel mean and std of all outputs must agree between the loaders (same transform, same
statistics); the check and both values are printed.

    python bench/loader.py                       # both sizes, 1 and 2 workers (about a minute on 2 cores)
    python bench/loader.py --sizes 224 --workers 2 --images-224 512 --rounds 3
    python bench/loader.py --sizes 224 --workers 8 --device cuda --results   # GPU decode; RESULT lines
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from data_pipelines.demo import draw_image
from data_pipelines.stream import StreamConfig, build_loader, device_decoder
from data_pipelines.transforms import Normalize, TransformOptions
from data_pipelines.write_shards import write_shards

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_SCALE, CROP_RATIO = (0.2, 1.0), (3 / 4, 4 / 3)  # MAE's RandomResizedCrop, in both loaders
NORMALIZE = Normalize(MEAN, STD)
NUM_CLASSES = 8
STATS_TOLERANCE = 0.05  # in normalized units; random crops of a few hundred images vary about this much


def pink_noise_fields(count: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Textures with a 1/f amplitude spectrum, the spectrum of natural images, scaled to unit std."""
    frequency = np.sqrt(np.fft.fftfreq(side)[:, None] ** 2 + np.fft.fftfreq(side)[None, :] ** 2)
    amplitude = 1 / np.maximum(frequency, 1 / side)
    phases = np.exp(2j * np.pi * rng.random((count, side, side)))
    fields = np.real(np.fft.ifft2(amplitude * phases))
    return (fields - fields.mean((1, 2), keepdims=True)) / fields.std((1, 2), keepdims=True)


def photo_like(fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of textures (a luminance one and two weaker colour ones), a few hard-edged shapes, noise."""
    short = int(rng.integers(400, 501))
    long = int(short * rng.choice([4 / 3, 3 / 2, 1.0]))
    height, width = (short, long) if rng.random() < 0.7 else (long, short)
    top, left = rng.integers(0, fields.shape[1] - height), rng.integers(0, fields.shape[2] - width)
    textures = fields[rng.choice(len(fields), 3, replace=False), top : top + height, left : left + width]
    mixing = np.concatenate([np.full((1, 3), 32.0), rng.normal(0, 10, (2, 3))]).astype(np.float32)
    image = np.einsum("khw,kc->hwc", textures, mixing) + rng.uniform(70, 180, 3).astype(np.float32)
    for _ in range(4):  # ellipses, drawn inside their bounding boxes only
        (centre_y, centre_x), (radius_y, radius_x) = rng.uniform((0, 0), (height, width)), rng.uniform(15, short / 4, 2)
        y0, y1 = int(max(centre_y - radius_y, 0)), int(min(centre_y + radius_y, height))
        x0, x1 = int(max(centre_x - radius_x, 0)), int(min(centre_x + radius_x, width))
        y, x = np.ogrid[y0:y1, x0:x1]
        inside = ((y - centre_y) / radius_y) ** 2 + ((x - centre_x) / radius_x) ** 2 < 1
        region = image[y0:y1, x0:x1]
        region[inside] = region[inside] * 0.4 + rng.uniform(0, 255, 3).astype(np.float32) * 0.6
    image += 3 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photo_folder(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    fields = pink_noise_fields(4, 1024, rng).astype(np.float32)
    for index in range(count):
        folder = root / f"class{index % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(fields, rng)).save(folder / f"{index:05d}.jpg", quality=90)


def write_small_folder(root: Path, count: int, seed: int = 0) -> None:
    for index in range(count):
        folder = root / f"class{index % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = draw_image(index % 10, 32, np.random.default_rng([seed, index]))
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")


def plain_loader(root: Path, size: int, batch_size: int, workers: int) -> DataLoader:
    transform = T.Compose(
        [
            T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def stream_config(shards: Path, size: int, batch_size: int, workers: int, **handover) -> StreamConfig:
    """The stream's settings; ``handover``: StreamConfig's ``normalize`` / ``decode_on_device``."""
    options = TransformOptions(size, CROP_SCALE, CROP_RATIO, None, randaugment=None, intensity_scale=None, bands=None)
    return StreamConfig(
        str(shards),
        batch_size,
        workers,
        "mae",
        augment=options,
        mean=MEAN,
        std=STD,
        seed=0,
        shuffle_buffer=1000,
        manifest=None,
        pin_memory=False,
        **handover,
    )


def stream_loader(shards: Path, size: int, batch_size: int, workers: int, normalize: bool) -> Iterable:
    return build_loader(stream_config(shards, size, batch_size, workers, normalize=normalize))


def device_decoded_loader(shards: Path, size: int, batch_size: int, workers: int, device: str) -> Iterator:
    """data.decode=gpu: handover batches finished on ``device`` in this process, synchronized per batch."""
    config = stream_config(shards, size, batch_size, workers, decode_on_device=True)
    decoder, target = device_decoder(config), torch.device(device)
    for batch in build_loader(config):
        images = decoder(batch, target)["image"]
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        yield {"image": images}


def images_of(batch) -> torch.Tensor:
    """The float, normalized images of either loader's batch (uint8 ones are normalized here, as a GPU would)."""
    images = (batch["image"] if isinstance(batch, dict) else batch[0]).cpu()
    return NORMALIZE(images) if images.dtype == torch.uint8 else images


@dataclass
class Measurements:
    images_per_cpu_second: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    channel_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    channel_square_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    pixels: int = 0
    shape: tuple = ()

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.channel_sum / self.pixels
        return mean, (self.channel_square_sum / self.pixels - mean**2).sqrt()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (dataloader workers are joined after each pass)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_pass(make_loader: Callable[[], Iterable], result: Measurements) -> None:
    """One full pass; the statistics bookkeeping is timed separately and taken out of both clocks."""
    wall, cpu, bookkeeping, count = time.perf_counter(), cpu_seconds(), 0.0, 0
    for batch in make_loader():
        started = time.thread_time()
        images = images_of(batch).double()
        result.channel_sum += images.sum((0, 2, 3))
        result.channel_square_sum += (images**2).sum((0, 2, 3))
        result.pixels += images[:, 0].numel()
        result.shape = tuple(images.shape[1:])
        count += len(images)
        bookkeeping += time.thread_time() - started
    result.images_per_cpu_second.append(count / (cpu_seconds() - cpu - bookkeeping))
    result.images_per_second.append(count / (time.perf_counter() - wall - bookkeeping))


RESIZE_SHORT_SIDE = {224: 256}  # the stored size for "stream resized": ImageNet's usual 256 px for 224 px crops


def loaders_for(args: argparse.Namespace, size: int, workers: int, folder: Path, shards: dict[str, Path]) -> dict:
    """The contenders of one row, by name (see the module)."""
    batch = args.batch_size
    loaders = {
        "plain": functools.partial(plain_loader, folder, size, batch, workers),
        "stream": functools.partial(stream_loader, shards["stored"], size, batch, workers, normalize=False),
        "stream float": functools.partial(stream_loader, shards["stored"], size, batch, workers, normalize=True),
    }
    if "resized" in shards:
        loaders["stream resized"] = functools.partial(
            stream_loader, shards["resized"], size, batch, workers, normalize=False
        )
    if args.device is not None:
        loaders[f"stream on {args.device}"] = functools.partial(
            device_decoded_loader, shards["stored"], size, batch, workers, args.device
        )
    return loaders


def write_sets(args: argparse.Namespace, size: int, work: Path) -> tuple[Path, dict[str, Path], int]:
    """The image folder, its shards (as stored, and resized where a limit applies) and the image count."""
    folder, count = work / f"images{size}", args.images_224 if size == 224 else args.images_32
    (write_photo_folder if size == 224 else write_small_folder)(folder, count)
    shards = {"stored": work / f"shards{size}"}
    write_shards("imagefolder", folder, shards["stored"], max_count=max(1, count // 8), workers=args.workers[-1])
    if size in RESIZE_SHORT_SIDE:
        shards["resized"] = work / f"shards{size}-resized"
        manifest = write_shards(
            "imagefolder",
            folder,
            shards["resized"],
            max_count=max(1, count // 8),
            workers=args.workers[-1],
            resize_short_side=RESIZE_SHORT_SIDE[size],
        )
        resize = manifest["resize"]
        print(
            f"resized shards ({RESIZE_SHORT_SIDE[size]} px short side): {resize['source_bytes'] / 1e6:.1f} MB -> "
            f"{resize['bytes'] / 1e6:.1f} MB, {resize['resized']} of {manifest['total']} images resized",
            flush=True,
        )
    return folder, shards, count


def run(args: argparse.Namespace, work: Path) -> None:
    for size in args.sizes:
        folder, shards, count = write_sets(args, size, work)
        for workers in args.workers:
            loaders = loaders_for(args, size, workers, folder, shards)
            results = {name: Measurements() for name in loaders}
            for _ in range(args.rounds):
                for name, make_loader in loaders.items():
                    measure_pass(make_loader, results[name])
            print(report_table(size, workers, count, results), flush=True)
            if args.results:
                for name, result in results.items():
                    row = {"row": f"loader {name} {size} px, {workers} workers", "images_per_s": median_wall(result)}
                    print("RESULT " + json.dumps(row), flush=True)


def median_wall(result: Measurements) -> float:
    return statistics.median(result.images_per_second)


def report_table(size: int, workers: int, count: int, results: dict[str, Measurements]) -> str:
    """One table per row of settings: each loader's images per CPU-second, its ratio to plain, wall img/s, and
    whether its outputs have the plain loader's channel statistics."""
    plain = statistics.median(results["plain"].images_per_cpu_second)
    plain_mean, plain_std = results["plain"].mean_std()
    lines = [
        f"{size} px output, {workers} workers, {count} images",
        "",
        "| loader | img/CPU-s | ratio to plain | wall img/s | mean (R/G/B) | std (R/G/B) | largest gap | stats match |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for name, result in results.items():
        per_core = statistics.median(result.images_per_cpu_second)
        mean, std = result.mean_std()
        gap = max((mean - plain_mean).abs().max(), (std - plain_std).abs().max()).item()
        same = result.shape == results["plain"].shape and gap < STATS_TOLERANCE
        lines.append(
            f"| {name} | {per_core:.0f} | **{per_core / plain:.2f}x** | {median_wall(result):.0f} "
            f"| {'/'.join(f'{value:.3f}' for value in mean.tolist())} "
            f"| {'/'.join(f'{value:.3f}' for value in std.tolist())} | {gap:.3f} | {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=[32, 224], help="output sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="dataloader worker counts to try")
    parser.add_argument("--images-224", type=int, default=256, help="photo-like JPEGs for the 224 px runs")
    parser.add_argument("--images-32", type=int, default=2048, help="32 px PNGs for the 32 px runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes per loader; the median is reported")
    parser.add_argument("--device", help="also decode on this device (data.decode=gpu), e.g. cuda or cpu")
    parser.add_argument("--results", action="store_true", help="print RESULT lines (bench/gpu_check.sh reads them)")
    parser.add_argument("--work-dir", type=Path, help="keep the generated images and shards here (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; extra threads would just contend with the workers
    print(f"torch {torch.__version__}, {args.batch_size} per batch, {args.rounds} rounds\n", flush=True)
    if args.work_dir is not None:
        run(args, args.work_dir)
        return
    with tempfile.TemporaryDirectory() as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()

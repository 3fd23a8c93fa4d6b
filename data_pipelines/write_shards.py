"""Convert a dataset from its official on-disk layout into WebDataset shards: `python -m data_pipelines.write_shards`.

Example: python -m data_pipelines.write_shards cifar10 --root ~/data --split train --out shards/cifar10-train
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from data_pipelines.arrays import ARRAY_FORMATS
from data_pipelines.sources import SOURCES, get_source, resolve_split
from data_pipelines.sources.base import ENCODINGS, Source, SourceRequest
from data_pipelines.sources.vtab import resolve_task
from data_pipelines.writer import WriteOptions, write_listing

# The writer's defaults, shown by --help: WriteOptions is their one source.
WRITE_DEFAULTS = {field.name: field.default for field in fields(WriteOptions) if field.default is not MISSING}


def write_shards(
    source: str,
    root: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    task: str | None = None,
    name: str | None = None,
    **write_options: Any,
) -> dict[str, Any]:
    """Write one split of `source` under `root` as shards in `out`; returns the manifest (also in out/manifest.json).

    ``write_options`` are :class:`WriteOptions` fields (``max_count``, ``image_format``, ``workers``, ...); an
    ``image_format`` left out or None is the source's: ``npy``/``npz`` for arrays, else the writer's default.
    """
    spec = get_source(source)
    split = resolve_split(spec, split)
    if spec.needs_task != (task is not None):
        raise ValueError(f"--task is required by the vtab source and only by it (source {source!r}, task {task!r})")
    task = None if task is None else resolve_task(task).name
    listing = spec.load(SourceRequest(Path(root), split, task))
    if write_options.get("image_format") is None:  # the source's own kind: arrays (npy/npz) or images (png)
        write_options["image_format"] = spec.array_format or WRITE_DEFAULTS["image_format"]
    options = WriteOptions(name=name or default_name(spec, split, task), **write_options)
    provenance = {"source": source, "root": str(Path(root).resolve()), "split": split, "task": task}
    return write_listing(listing, Path(out), options, provenance)


def default_name(source: Source, split: str | None, task: str | None) -> str:
    base = task or source.name
    return f"{base}-{split}" if split else base


def describe_layout(source: Source) -> str:
    indent = " " * 20
    splits = f"{', '.join(source.splits)} (default {source.splits[0]})" if source.splits else "any sub-folder (--split)"
    return f"{indent}layout: {source.layout}\n{indent}splits: {splits}"


def build_parser() -> argparse.ArgumentParser:
    sources = "\n".join(f"  {name:17s} {source.summary}\n{describe_layout(source)}" for name, source in SOURCES.items())
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.write_shards",
        description="Convert a dataset into WebDataset shards NAME-%06d.tar (key.jpg|png|webp|npy|npz + key.cls) "
        "with a manifest.json beside them. Encoded files (JPEG/PNG/WebP) keep their original bytes unless "
        "--resize-* makes them smaller; arrays and other formats are encoded in --format. Re-running the same "
        "command resumes an interrupted conversion; existing shards from anything else are never mixed in "
        "(see --overwrite).",
        epilog=f"sources:\n{sources}\n\nexamples:\n"
        "  python -m data_pipelines.write_shards cifar10 --root ~/data --split train --out shards/cifar10-train\n"
        "  python -m data_pipelines.write_shards imagefolder --root ~/photos --split train --out shards/photos\n"
        "  python -m data_pipelines.write_shards imagefolder --root ~/imagenet --split train --resize-short-side 256 "
        "--out shards/in1k-train-256\n"
        "  python -m data_pipelines.write_shards vtab --root ~/vtab-1k --task cifar --split train800val200 "
        "--out shards/vtab-cifar\n"
        "  python -m data_pipelines.write_shards geotiff_folder --root ~/EuroSAT_MS --out shards/eurosat-ms\n"
        "  python -m data_pipelines.write_shards medmnist --root ~/organmnist3d.npz --split train --out shards/organ3d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", choices=list(SOURCES), help="which layout to read (see 'sources' below)")
    parser.add_argument("--root", required=True, help="folder holding the dataset in its official layout")
    parser.add_argument("--out", required=True, help="folder the shards and manifest.json are written to")
    parser.add_argument("--split", help="split to convert (folders: a sub-folder of --root; default: the root)")
    parser.add_argument("--task", help="VTAB-1k task name, for the vtab source only")
    parser.add_argument("--name", help="shard name prefix (default: SOURCE-SPLIT, or TASK-SPLIT for vtab)")
    parser.add_argument(
        "--max-count",
        type=int,
        default=WRITE_DEFAULTS["max_count"],
        help="samples per shard at most (default %(default)s)",
    )
    parser.add_argument(
        "--max-size", type=int, default=WRITE_DEFAULTS["max_size"], help="bytes per shard at most (default %(default)s)"
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=[*ENCODINGS, *ARRAY_FORMATS],
        default=None,
        help=f"encoding for images that are not already JPEG/PNG/WebP files (default {WRITE_DEFAULTS['image_format']});"
        " arrays (N channels, volumes): npy or npz (compressed), default the source's own",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: all cores)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=WRITE_DEFAULTS["seed"],
        help="seed of the order samples are written in (default %(default)s)",
    )
    parser.add_argument(
        "--resize-short-side",
        type=int,
        metavar="PIXELS",
        help="store images larger than this on their shorter side smaller, keeping the aspect ratio (e.g. 256 to "
        "train at 224): fewer bytes to read and pixels to decode; images are never enlarged (default: as they are)",
    )
    parser.add_argument(
        "--resize-max-pixels",
        type=int,
        metavar="PIXELS",
        help="likewise, at most this many pixels per image (e.g. 262144 = 512 x 512)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete shards and manifest already in --out first")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        manifest = write_shards(args.pop("source"), args.pop("root"), args.pop("out"), **args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, ModuleNotFoundError) as error:
        parser.exit(2, f"error: {error.args[0] if error.args else error}\n")
    print(f"{manifest['total']} samples in {len(manifest['shards'])} shards, {manifest['skipped']['count']} skipped")
    resize = manifest.get("resize")  # absent from manifests written before resizing existed
    if resize is not None:
        saved = 1 - resize["bytes"] / resize["source_bytes"]
        print(
            f"resized {resize['resized']} of {manifest['total']} images: {resize['source_bytes'] / 1e6:.1f} MB -> "
            f"{resize['bytes'] / 1e6:.1f} MB ({saved:.0%} saved)"
        )


if __name__ == "__main__":
    main()

"""Export any pretraining checkpoint to one fp32 backbone file plus the JSON that rebuilds it.

    python pretrain/export.py CHECKPOINT OUT_DIR
    python pretrain/export.py outputs/pretrain/2026-11-23_10-00-00/checkpoints/step_000300.ckpt exported/

CHECKPOINT is a Lightning ``.ckpt`` file or a DeepSpeed checkpoint directory (ZeRO shards are consolidated).
OUT_DIR receives ``backbone.safetensors`` (timm parameter names, loads with ``weights_only`` semantics: no
pickled code) and ``backbone.json`` (architecture options, normalization, objective, step, config hash).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pretrain.engine.backbone_io import export_checkpoint


def file_in_the_way(out_dir: Path) -> Path | None:
    """The file that ``out_dir`` or the nearest of its existing parents is, if one is a file (no folder fits)."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="folder for backbone.safetensors and backbone.json")
    args = parser.parse_args(argv)
    # Checked before the checkpoint is read (minutes for a large DeepSpeed one): one line each, saying what to do.
    if not args.checkpoint.strip() or not Path(args.checkpoint).exists():
        parser.error(
            f"CHECKPOINT {args.checkpoint!r} does not exist: pass a .ckpt file or a DeepSpeed checkpoint folder"
        )
    if not args.out_dir.strip():
        parser.error("OUT_DIR is empty: name the folder for backbone.safetensors and backbone.json")
    blocking = file_in_the_way(Path(args.out_dir))
    if blocking is not None:
        parser.error(f"OUT_DIR must be a directory: {blocking} exists as a file; choose another OUT_DIR")
    print(export_checkpoint(args.checkpoint, args.out_dir))


if __name__ == "__main__":
    main()

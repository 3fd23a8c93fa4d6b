"""Export any pretraining checkpoint to one fp32 backbone file plus the JSON that rebuilds it.

    python pretrain/export.py CHECKPOINT OUT_DIR
    python pretrain/export.py outputs/pretrain/2026-11-23_10-00-00/checkpoints/step_000300.ckpt exported/

CHECKPOINT is a Lightning ``.ckpt`` file or a DeepSpeed checkpoint directory (ZeRO shards are consolidated).
OUT_DIR receives ``backbone.safetensors`` (timm parameter names, loads with ``weights_only`` semantics: no
pickled code) and ``backbone.json`` (architecture options, normalization, objective, step, config hash).
"""

from __future__ import annotations

import argparse

from pretrain.engine.backbone_io import export_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="folder for backbone.safetensors and backbone.json")
    args = parser.parse_args()
    print(export_checkpoint(args.checkpoint, args.out_dir))


if __name__ == "__main__":
    main()

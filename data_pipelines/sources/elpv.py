"""ELPV: 2,624 electroluminescence images of solar-cell crops (Buerhop-Lutz et al., 2018; Deitsch et al., 2019).

The official layout is the one of the dataset's repository and of its PyPI package ``elpv-dataset``
(``elpv_dataset/data/``): ``labels.csv`` with one line per image, ``images/cellNNNN.png  <defect probability>
<mono|poly>``, and the 300 x 300 grayscale PNGs under ``images/``. The four defect probabilities (0, 1/3, 2/3, 1)
are the classes. The dataset has no official split; ours is seeded and stratified by class: a quarter of each
class is ``test``, the rest ``train``, and ``train800``/``val200``/``train800val200`` are a VTAB-1k-style
1,000-label subset of ``train`` (800 + 200, stratified as well).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from data_pipelines.registry import check_name
from data_pipelines.seeding import stable_seed
from data_pipelines.sources.base import Listing, Source, SourceRequest, file_items, require_files

CLASSES = ("0", "1/3", "2/3", "1")  # defect probability as the experts annotated it
SPLITS = ("train", "test", "train800", "val200", "train800val200")
TEST_SHARE = 0.25
LABELED_SUBSET = 1000  # train800val200 (fewer when train holds fewer images, as in tests' tiny copies)
VAL_SHARE = 0.2  # val200 of it
SPLIT_SEED = "elpv-split"


def read_labels(root: Path) -> list[tuple[Path, int]]:
    """(image path, class index) for every line of ``labels.csv``, in file order."""
    labels_file = root / "labels.csv"
    require_files([labels_file, root / "images"], "ELPV")
    samples = []
    for number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{labels_file}:{number}: expected 'path probability type', got {line!r}")
        probability = float(fields[1])
        label = min(range(len(CLASSES)), key=lambda index: abs(index / (len(CLASSES) - 1) - probability))
        samples.append((root / fields[0], label))
    return samples


def stratified(samples: list[tuple[Path, int]], share: float | int, salt: str) -> tuple[list, list]:
    """(picked, rest): per class, the first images in a seeded order; ``share`` is a fraction of every class, or a
    total count shared out over the classes in proportion to their size (largest remainders, so it is exact)."""
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    labels = sorted(by_class)
    total = share * len(samples) if isinstance(share, float) else share
    quotas = {label: total * len(by_class[label]) / len(samples) for label in labels}
    counts = {label: int(quota) for label, quota in quotas.items()}
    by_remainder = sorted(labels, key=lambda label: counts[label] - quotas[label])
    for label in by_remainder[: round(total) - sum(counts.values())]:
        counts[label] += 1
    picked, rest = [], []
    for label in labels:
        members = sorted(by_class[label], key=lambda sample: stable_seed(SPLIT_SEED, salt, sample[0].name))
        picked += members[: counts[label]]
        rest += members[counts[label] :]
    return sorted(picked), sorted(rest)


def load_elpv(request: SourceRequest) -> Listing:
    """One of the seeded, stratified splits of ``labels.csv`` under ``request.root``."""
    check_name(request.split, SPLITS, "ELPV split")
    test, train = stratified(read_labels(request.root), TEST_SHARE, "test")
    subset, _ = stratified(train, min(LABELED_SUBSET, len(train)), "1k")
    val200, train800 = stratified(subset, VAL_SHARE, "val")
    splits = {"train": train, "test": test, "train800": train800, "val200": val200, "train800val200": subset}
    return Listing(file_items(splits[request.split], request.root), list(CLASSES))


ELPV = Source(
    name="elpv",
    summary="ELPV solar-cell electroluminescence images, 4 defect-probability classes (seeded stratified splits)",
    layout="ROOT/labels.csv + ROOT/images/cellNNNN.png (pip install elpv-dataset: ROOT = .../elpv_dataset/data)",
    splits=SPLITS,
    load=load_elpv,
)

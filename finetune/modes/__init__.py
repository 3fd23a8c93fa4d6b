"""The downstream modes (``mode=`` in conf/mode/), one file each with its module and its runner, and their registry.

- ``linear`` (:mod:`.linear`): the selecting linear probe on frozen features (a grid of heads, chosen on validation);
- ``knn`` (:mod:`.knn`): cosine k-NN on frozen features;
- ``finetune`` (:mod:`.full`): the whole backbone plus a new head, the ViT paper's transfer protocol (lr chosen on
  validation);
- ``finetune_mae`` (:mod:`.full`): the same module with MAE's ImageNet recipe (AdamW, layer decay, RandAugment,
  mixing, erasing);
- ``linear_mae`` (:mod:`.linear_mae`): MAE's linear probe as a fixed recipe (BatchNorm + linear head, LARS,
  augmented images);
- ``segment`` (:mod:`.segment`): a segmentation head (linear, SETR, UNETR) on the patch tokens, scored by mIoU.

What they share: :mod:`.common` (the context a mode runs in and the outcome it reports, run plan, normalization,
the fit's Trainer, grid edges; top-k accuracy and the classifier test loop), :mod:`.features` (the frozen pass of
the feature modes), :mod:`.fitting` (the fitting modes: lr selection on validation with its candidate cache, refit,
test once), :mod:`.dense_metrics` (mIoU). Every mode chooses on validation, refits on the training split and scores
the test split once, for the chosen setting; the test split never chooses.

Adding a mode: its file with a ``run_<mode>(context) -> ModeOutcome | None`` runner, a line in :data:`MODES` and its
``conf/mode/<name>.yaml``. The modes use the engine and the models, never a pretraining objective.
"""

from __future__ import annotations

from data_pipelines.registry import lookup
from finetune.modes.common import Mode
from finetune.modes.full import run_finetune
from finetune.modes.knn import run_knn
from finetune.modes.linear import run_linear
from finetune.modes.linear_mae import run_linear_mae
from finetune.modes.segment import run_segment

MODES: dict[str, Mode] = {
    "linear": Mode(run_linear),
    "knn": Mode(run_knn),
    "linear_mae": Mode(run_linear_mae),
    "finetune": Mode(run_finetune),
    "finetune_mae": Mode(run_finetune),
    "segment": Mode(run_segment),
}


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; an unknown name lists the known ones."""
    return lookup(MODES, name, "mode")

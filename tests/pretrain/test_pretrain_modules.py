"""Lightning modules driven by a real Trainer on in-memory batches."""

import lightning as L
import pytest
import torch

from pretrain.build import build_module
from pretrain.modules import MAEModule, NonFiniteLossError

CONFIG = {
    "seed": 0,
    "model": {"preset": "vit_test_patch4", "img_size": 32, "patch_size": 4, "pos_embed": "sincos"},
    "objective": {"name": "mae", "mask_ratio": 0.75, "norm_pix_loss": True, "decoder_embed_dim": 32,
                  "decoder_depth": 1, "decoder_num_heads": 4},
    "optim": {"lr": 1e-3, "warmup_steps": 0},
    "trainer": {"max_steps": 4, "max_bad_steps": 3},
    "data": {"batch_size": 4},
}


def batches(count: int, poison_from: int | None = None):
    out = []
    for index in range(count):
        images = torch.randn(4, 3, 32, 32)
        if poison_from is not None and index >= poison_from:
            images[0, 0, 0, 0] = float("nan")
        out.append({"image": images, "label": torch.zeros(4, dtype=torch.long), "corrupt_skipped": torch.tensor(1)})
    return out


def fit(module, data, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return trainer


def test_build_module_chooses_the_objective_and_counts_flops():
    module = build_module(CONFIG, num_classes=0, global_batch=4, meta={})
    assert isinstance(module, MAEModule)
    assert module.flops_per_batch > 0


def test_non_finite_losses_are_skipped_then_stop_the_run():
    module = build_module(CONFIG, num_classes=0, global_batch=4, meta={})
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        fit(module, batches(8, poison_from=2), max_steps=8)
    assert module.bad_steps_total == 3
    assert all(torch.isfinite(p).all() for p in module.parameters()), "a NaN step reached the weights"


def test_corrupt_sample_counts_accumulate_from_batches():
    module = build_module(CONFIG, num_classes=0, global_batch=4, meta={})
    fit(module, batches(3), max_steps=3)
    assert module.corrupt_samples == 3


def test_unknown_objective_lists_the_known_ones():
    config = {**CONFIG, "objective": {"name": "dino"}}
    with pytest.raises(ValueError, match="mae, supervised"):
        build_module(config, num_classes=0, global_batch=4, meta={})

"""The pieces of the three modes on tiny tensors: layer-wise lr decay, the linear head, k-NN votes, resolution
change."""

from __future__ import annotations

import pytest
import torch
from yaml_defaults import composed, optim_config

from finetune.modes import get_mode
from finetune.modes.common import DownstreamRun
from finetune.modes.full import FinetuneModule, build_finetune
from finetune.modes.knn import knn_scores
from finetune.modes.linear_mae import LinearProbeModule
from pretrain.engine.backbone_io import load_backbone, save_backbone
from pretrain.engine.classification import MixedLabelLoss
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan
from pretrain.models.vit import create_vit, preset_options

DEPTH = 4  # vit_test_patch4


PLAN = RunPlan(num_nodes=1, devices=1, batch_size=8, accumulate=1, batches_per_epoch=10, total_steps=10)
META = BackboneMeta.for_architecture(preset_options("vit_test_patch4"))


def finetune_module(backbone=None, layer_decay: float | None = 0.75) -> FinetuneModule:
    return FinetuneModule(
        create_vit("vit_test_patch4") if backbone is None else backbone,
        num_classes=10,
        pool="avg",
        head_init_std=2e-5,
        loss=MixedLabelLoss(
            10,
            label_smoothing=0.1,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            mixup_prob=1.0,
            mixup_switch_prob=0.5,
            random_erasing=0.0,
        ),
        meta=META,
        optim=optim_config(lr=1e-3, layer_decay=layer_decay),
        plan=PLAN,
        seed=0,
        max_bad_steps=5,
        flops_per_batch=None,
    )


def lr_of(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> float:
    return next(group["lr"] for group in optimizer.param_groups if any(p is parameter for p in group["params"]))


def test_layer_decay_scales_each_block_by_the_decay_per_depth() -> None:
    module = finetune_module(layer_decay=0.75)
    optimizer = module.configure_optimizers()["optimizer"]
    model = module.model
    assert lr_of(optimizer, model.head.weight) == pytest.approx(1e-3)
    assert lr_of(optimizer, model.fc_norm.weight) == pytest.approx(1e-3)
    for index, block in enumerate(model.blocks):  # block i is depth i + 1 of DEPTH + 1
        assert lr_of(optimizer, block.attn.qkv.weight) == pytest.approx(1e-3 * 0.75 ** (DEPTH - index))
    assert lr_of(optimizer, model.patch_embed.proj.weight) == pytest.approx(1e-3 * 0.75 ** (DEPTH + 1))
    ratios = [
        lr_of(optimizer, model.blocks[i].mlp.fc1.weight) / lr_of(optimizer, model.blocks[i + 1].mlp.fc1.weight)
        for i in range(DEPTH - 1)
    ]
    assert ratios == pytest.approx([0.75] * (DEPTH - 1))


def test_layer_decay_keeps_norms_biases_and_tokens_out_of_weight_decay() -> None:
    module = finetune_module()
    names = {id(parameter): name for name, parameter in module.model.named_parameters()}
    for group in module.configure_optimizers()["optimizer"].param_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            exempt = parameter.ndim == 1 or name in ("pos_embed", "cls_token")
            assert group["weight_decay"] == (0.0 if exempt else 0.05), name


def test_without_layer_decay_every_parameter_gets_the_peak_lr() -> None:
    optimizer = finetune_module(layer_decay=None).configure_optimizers()["optimizer"]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3] * len(optimizer.param_groups))


def test_linear_probe_trains_only_the_batchnorm_linear_head() -> None:
    module = LinearProbeModule(create_vit("vit_test_patch4"), 10, "token", "lars", 0.1, 0.0, 10, 1)
    trainable = [name for name, parameter in module.named_parameters() if parameter.requires_grad]
    assert trainable == ["head.1.weight", "head.1.bias"]
    assert not module.head[0].affine
    assert not module.train().model.training


def test_knn_votes_are_weighted_by_exponentiated_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = knn_scores(torch.tensor([[1.0, 0.0]]), bank, torch.tensor([0, 1, 1]), k=2, temperature=0.5, num_classes=3)
    expected = torch.tensor([[torch.exp(torch.tensor(2.0)), torch.exp(torch.tensor(1.2)), 0.0]])
    assert torch.allclose(scores, expected)


def test_unknown_mode_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown mode 'probe'; choose one of: finetune, finetune_mae, knn, linear, linear_mae"
    ):
        get_mode("probe")  # the modes: finetune, finetune_mae, knn, linear, linear_mae


def test_finetune_mode_builds_from_its_yaml_with_warmup_in_epochs() -> None:
    mode = composed("finetune", "ckpt=null", "mode=finetune_mae")["mode"]
    run = DownstreamRun(num_classes=10, plan=PLAN, seed=0, meta=META, max_bad_steps=5)
    module = build_finetune(create_vit("vit_test_patch4"), mode, run)
    assert module.optim_config.warmup_steps == mode["warmup_epochs"] * PLAN.steps_per_epoch
    assert module.optim_config.layer_decay == mode["optim"]["layer_decay"]


def test_fine_tune_modules_count_their_flops_for_mfu() -> None:
    mode = composed("finetune", "ckpt=null", "mode=finetune")["mode"]
    flops = {}
    for batch_size in (8, 16):
        plan = RunPlan(
            num_nodes=1, devices=1, batch_size=batch_size, accumulate=1, batches_per_epoch=10, total_steps=10
        )
        run = DownstreamRun(num_classes=10, plan=plan, seed=0, meta=META, max_bad_steps=5)
        flops[batch_size] = build_finetune(create_vit("vit_test_patch4"), mode, run).flops_per_batch
    assert flops[8] > 0 and flops[16] == 2 * flops[8]


def test_higher_resolution_resamples_positions_and_stays_loadable(tmp_path) -> None:
    options = {**preset_options("vit_test_patch4"), "pos_embed": "learn"}
    save_backbone(tmp_path, create_vit("vit_test_patch4", pos_embed="learn"), BackboneMeta.for_architecture(options))
    backbone, _ = load_backbone(tmp_path / "backbone.safetensors", {"img_size": 48})
    assert backbone.pos_embed.shape == (1, 1 + 12 * 12, 64)
    module = finetune_module(backbone)
    logits = module(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert module.meta.options["img_size"] == 48 and module.meta.options["global_pool"] == "avg"
    save_backbone(tmp_path / "fine", module.model, module.meta)
    reloaded, _ = load_backbone(tmp_path / "fine" / "backbone.safetensors")
    assert torch.isfinite(reloaded(torch.randn(1, 3, 48, 48))).all()

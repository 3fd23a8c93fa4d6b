"""The pieces of the three modes on tiny tensors: layer-wise lr decay, LARS, k-NN votes, resolution change."""

from __future__ import annotations

import pytest
import torch

from finetune.modules import LARS, FinetuneModule, LinearProbeModule, get_mode, knn_scores
from pretrain.backbone_io import load_backbone, save_backbone
from pretrain.models.vit import create_vit, preset_options
from pretrain.optim import OptimConfig

DEPTH = 4  # vit_test_patch4


def finetune_module(layer_decay: float | None = 0.75, **vit_options) -> FinetuneModule:
    return FinetuneModule(
        create_vit("vit_test_patch4", **vit_options),
        num_classes=10,
        pool="avg",
        optim=OptimConfig(lr=1e-3, layer_decay=layer_decay),
        total_steps=10,
        global_batch=8,
        meta={},
        label_smoothing=0.1,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
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
    ratios = [lr_of(optimizer, model.blocks[i].mlp.fc1.weight) / lr_of(optimizer, model.blocks[i + 1].mlp.fc1.weight)
              for i in range(DEPTH - 1)]
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


def test_lars_scales_a_matrix_update_to_the_trust_ratio_of_its_weights() -> None:
    weight = torch.nn.Parameter(torch.full((2, 2), 3.0))  # ||w|| = 6
    weight.grad = torch.full((2, 2), 100.0)
    LARS([weight], lr=1.0, trust_coefficient=0.01, momentum=0.0).step()
    # update = g * 0.01 * ||w|| / ||g|| -> norm 0.06, whatever the gradient's scale
    assert torch.linalg.norm(weight.detach() - 3.0) == pytest.approx(0.06)


def test_knn_votes_are_weighted_by_exponentiated_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = knn_scores(torch.tensor([[1.0, 0.0]]), bank, torch.tensor([0, 1, 1]), k=2, temperature=0.5, num_classes=3)
    expected = torch.tensor([[torch.exp(torch.tensor(2.0)), torch.exp(torch.tensor(1.2)), 0.0]])
    assert torch.allclose(scores, expected)


def test_unknown_mode_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown mode 'probe'; choose one of: finetune, knn, linear"):
        get_mode("probe")


def test_higher_resolution_resamples_positions_and_stays_loadable(tmp_path) -> None:
    options = preset_options("vit_test_patch4")
    save_backbone(tmp_path, create_vit("vit_test_patch4", pos_embed="learn"), {"options": options})
    backbone, _ = load_backbone(tmp_path / "backbone.safetensors", {"img_size": 48})
    assert backbone.pos_embed.shape == (1, 1 + 12 * 12, 64)
    module = FinetuneModule(
        backbone, 10, "avg", optim=OptimConfig(lr=1e-3), total_steps=1, global_batch=2, meta={"options": options},
        label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0,
    )
    logits = module(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert module.meta["options"]["img_size"] == 48 and module.meta["options"]["global_pool"] == "avg"
    save_backbone(tmp_path / "fine", module.model, module.meta)
    reloaded, _ = load_backbone(tmp_path / "fine" / "backbone.safetensors")
    assert torch.isfinite(reloaded(torch.randn(1, 3, 48, 48))).all()

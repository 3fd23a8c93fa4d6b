import pytest
import torch
from yaml_defaults import optim_config

from pretrain.engine.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit


def names_in(group, model):
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_no_decay_on_norms_biases_tokens_and_pos_embed():
    model = create_vit("vit_test_patch4", pos_embed="learn")
    decay, no_decay = sorted(param_groups(model, 0.05), key=lambda g: g["weight_decay"], reverse=True)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    skipped = names_in(no_decay, model)
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= skipped
    assert "blocks.0.attn.qkv.weight" in names_in(decay, model)


def test_frozen_sincos_embeddings_are_not_optimized():
    mae = MaskedAutoencoder(create_vit("vit_test_patch4", pos_embed="sincos"), 32, 1, 4)
    optimized = set().union(*(names_in(g, mae) for g in param_groups(mae, 0.05)))
    assert "encoder.pos_embed" not in optimized and "decoder_pos_embed" not in optimized
    assert "mask_token" in optimized


def test_lr_scales_with_global_batch_unless_given():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1.5e-4, 4096, lr=1e-3) == 1e-3


def test_warmup_then_cosine_to_min():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1)


def test_layer_decay_gives_geometric_lr_per_block():
    model = create_vit("vit_test_patch4", num_classes=3)
    optimizer, _ = build_optimizer(
        model, optim_config(lr=1.0, layer_decay=0.5), global_batch=256, total_steps=10, depths=model.parameter_depths()
    )
    lr_of = {}
    for group in optimizer.param_groups:
        for name in names_in(group, model):
            lr_of[name] = group["lr"]
    assert lr_of["head.weight"] == 1.0
    assert lr_of["blocks.3.mlp.fc1.weight"] == 0.5
    assert lr_of["blocks.0.mlp.fc1.weight"] == 0.5**4
    assert lr_of["patch_embed.proj.weight"] == 0.5**5


def test_scheduler_steps_per_step_from_zero():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, optim_config(lr=1.0, warmup_steps=4), 256, total_steps=8)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_lars_scales_a_matrix_update_to_the_trust_ratio_of_its_weights():
    weight = torch.nn.Parameter(torch.full((2, 2), 3.0))  # ||w|| = 6
    weight.grad = torch.full((2, 2), 100.0)
    LARS([weight], lr=1.0, trust_coefficient=0.01, momentum=0.0).step()
    # update = g * 0.01 * ||w|| / ||g|| -> norm 0.06, whatever the gradient's scale
    assert torch.linalg.norm(weight.detach() - 3.0) == pytest.approx(0.06)

"""The training-module base: randomness per micro-batch, layer depths declared by the model, fine-tuning's head
and position embedding."""

import torch
from yaml_defaults import optim_config

from finetune.modes.full import FinetuneModule
from pretrain.engine.classification import MixedLabelLoss
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.plan import RunPlan
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import create_vit, preset_options
from pretrain.objectives.mae import MAEModule

LOSS = dict(
    label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, random_erasing=0.0
)


def plan(accumulate: int = 1) -> RunPlan:
    return RunPlan(num_nodes=1, devices=1, batch_size=4, accumulate=accumulate, batches_per_epoch=8, total_steps=4)


def mae_module(accumulate: int) -> MAEModule:
    model = MaskedAutoencoder(create_vit("vit_test_patch4", pos_embed="sincos"), 32, 1, 4)
    meta = BackboneMeta.for_architecture(preset_options("vit_test_patch4"))
    return MAEModule(model, optim_config(), plan(accumulate), meta, seed=0, max_bad_steps=5, flops_per_batch=None)


def finetune_module(std: float) -> FinetuneModule:
    meta = BackboneMeta.for_architecture({**preset_options("vit_test_patch4"), "pos_embed": "sincos"})
    return FinetuneModule(
        create_vit("vit_test_patch4", pos_embed="sincos"),
        5,
        "token",
        std,
        MixedLabelLoss(5, **LOSS),
        meta,
        optim=optim_config(),
        plan=plan(),
        seed=0,
        max_bad_steps=5,
        flops_per_batch=None,
    )


def masks_of(module: MAEModule, batch_idx: int) -> torch.Tensor:
    module.on_train_batch_start({}, batch_idx)
    return module.model(torch.randn(1, 3, 32, 32)).mask


def test_the_micro_batches_of_one_accumulated_step_draw_different_masks_and_replay_on_resume():
    module = mae_module(accumulate=2)
    first, second = masks_of(module, 0), masks_of(module, 1)
    assert not torch.equal(first, second)
    assert torch.equal(masks_of(module, 0), first)  # same (step, micro-batch): the same masks after a resume
    assert torch.equal(masks_of(module, 2), first)  # micro-batch 0 of the next step counts from the step, here 0


def test_the_model_declares_the_depth_of_every_parameter_for_layer_decay():
    model = create_vit("vit_test_patch4", num_classes=3)
    depths = model.parameter_depths()
    assert set(depths) == {name for name, _ in model.named_parameters()}
    assert depths["pos_embed"] == depths["cls_token"] == depths["patch_embed.proj.weight"] == 0
    assert [depths[f"blocks.{index}.mlp.fc1.weight"] for index in range(4)] == [1, 2, 3, 4]
    assert depths["norm.weight"] == depths["head.weight"] == 5


def test_fine_tuning_trains_the_position_embedding_from_the_pretrained_table():
    module = finetune_module(std=0.02)  # a zero head passes no gradient back at the first step
    table = module.model.pos_embed.detach().clone()
    optimized = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert id(module.model.pos_embed) in optimized
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    module.compute_loss({"image": images, "label": labels}).backward()
    assert module.model.pos_embed.grad.abs().sum() > 0
    torch.testing.assert_close(table, create_vit("vit_test_patch4", pos_embed="sincos").pos_embed.detach())
    assert module.meta.options["pos_embed"] == "learn"


def test_the_head_starts_as_the_recipe_says():
    zero, small = finetune_module(std=0.0).model.head, finetune_module(std=2e-5).model.head
    assert (zero.weight == 0).all() and (zero.bias == 0).all() and (small.bias == 0).all()
    assert 0 < small.weight.std() < 1e-4

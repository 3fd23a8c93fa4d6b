"""Segmentation heads on the ViT (linear, SETR-PUP, SETR-MLA, UNETR), sliding windows, and mIoU by hand."""

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_jaccard_index

from finetune.modes.dense_metrics import confusion_matrix, segmentation_scores
from pretrain.models.segmentation import (
    SETRMLA,
    SETRPUP,
    LinearHead,
    Segmenter,
    UNETRDecoder,
    evenly_spaced_blocks,
    sliding_window_logits,
)
from pretrain.models.vit import VisionTransformer
from pretrain.models.weights import resample_pos_embed

CLASSES = 5


def backbone(**options) -> VisionTransformer:
    return VisionTransformer(
        **{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, **options}
    )


@pytest.mark.parametrize(
    "make_head",
    [
        lambda: LinearHead(32, CLASSES),
        lambda: SETRPUP(32, CLASSES, patch_size=8, channels=16),
        lambda: SETRMLA(32, CLASSES, levels=4, channels=16),
    ],
    ids=["linear", "setr_pup", "setr_mla"],
)
def test_each_2d_head_gives_full_resolution_logits(make_head):
    model = Segmenter(backbone(), make_head(), freeze_backbone=False)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES, 32, 32)


def test_mla_reads_four_evenly_spaced_blocks_and_pup_needs_a_power_of_two_patch():
    assert evenly_spaced_blocks(12, 4) == [2, 5, 8, 11] and evenly_spaced_blocks(4, 1) == [3]
    model = Segmenter(backbone(), SETRMLA(32, CLASSES, levels=4, channels=16), freeze_backbone=False)
    assert model.blocks == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="power of 2"):
        SETRPUP(32, CLASSES, patch_size=14, channels=16)


def test_block_outputs_match_forward_features_and_the_intermediates():
    model = backbone().eval()
    images = torch.randn(2, 3, 32, 32)
    outputs = model.block_outputs(images, [1, 3])
    torch.testing.assert_close(outputs[-1], model.forward_features(images))
    torch.testing.assert_close(outputs[0], model.forward_intermediates(images, last=3)[0])
    with pytest.raises(ValueError, match="must increase"):
        model.block_outputs(images, [3, 1])


def test_unetr_decoder_segments_a_volume_at_full_resolution():
    encoder = VisionTransformer(
        img_size=32, patch_size=16, in_chans=1, embed_dim=24, depth=4, num_heads=2, spatial_dims=3
    )
    model = Segmenter(encoder, UNETRDecoder(24, CLASSES, in_chans=1, patch_size=16, features=4), freeze_backbone=False)
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, CLASSES, 32, 32, 32)


def test_the_linear_protocol_trains_the_head_only_and_keeps_the_backbone_in_eval():
    model = Segmenter(backbone(drop_path_rate=0.5), LinearHead(32, CLASSES), freeze_backbone=True).train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.head.classifier.weight.grad is not None


def test_a_few_steps_on_one_image_drive_the_loss_down():
    torch.manual_seed(0)
    model = Segmenter(backbone(), SETRPUP(32, CLASSES, patch_size=8, channels=16), freeze_backbone=False)
    image = torch.randn(1, 3, 32, 32)
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    mask = ((rows // 8 + cols // 6) % CLASSES)[None]  # regions that do not follow the patch grid
    mask[:, :4] = 255  # an ignored border
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(image), mask, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_backbone_resampled_to_a_new_crop_size_segments_at_that_size():
    small = backbone(pos_embed="learn")
    large = backbone(pos_embed="learn", img_size=48)
    state = small.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (6, 6))
    large.load_state_dict(state)
    model = Segmenter(large, LinearHead(32, CLASSES), freeze_backbone=True)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, CLASSES, 48, 48)


def test_sliding_windows_average_the_overlapping_crops():
    model = Segmenter(backbone(), LinearHead(32, CLASSES), freeze_backbone=False).eval()
    images = torch.randn(1, 3, 32, 56)
    logits = sliding_window_logits(model, images, window=32, stride=16, num_classes=CLASSES)
    crops = [model(images[..., start : start + 32]) for start in (0, 16, 24)]
    expected = torch.zeros(1, CLASSES, 32, 56)
    counts = torch.zeros(56)
    for start, crop in zip((0, 16, 24), crops, strict=True):
        expected[..., start : start + 32] += crop
        counts[start : start + 32] += 1
    torch.testing.assert_close(logits, expected / counts)
    torch.testing.assert_close(sliding_window_logits(model, images[..., :32], 32, 16, CLASSES), model(images[..., :32]))


def test_miou_of_a_constructed_prediction_is_the_hand_computed_one():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    scores = segmentation_scores(confusion_matrix(predictions, labels, num_classes=4, ignore_index=255))
    # class 0: hit 1, union 3 (labels 2 + predictions 2 - 1); class 1: 2 / 3; class 2: 1 / 2; class 3: absent
    assert scores["per_class_iou"] == [pytest.approx(100 / 3, abs=1e-3), pytest.approx(200 / 3, abs=1e-3), 50.0, None]
    assert scores["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-3)
    assert scores["pixel_accuracy"] == pytest.approx(100 * 4 / 6, abs=1e-3)
    assert math.isnan(segmentation_scores(torch.zeros(2, 2, dtype=torch.long))["miou"])


def test_miou_equals_torchmetrics_jaccard_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 16, 16), generator=generator)
    labels[:, :2] = 255
    predictions = torch.randint(0, 4, (3, 16, 16), generator=generator)
    ours = segmentation_scores(confusion_matrix(predictions, labels, num_classes=4, ignore_index=255))["miou"]
    reference = 100 * multiclass_jaccard_index(predictions, labels, num_classes=4, ignore_index=255, average="macro")
    assert ours == pytest.approx(reference.item(), abs=1e-3)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_every_trainable_parameter_gets_a_gradient_as_ddp_requires(pool):
    model = Segmenter(backbone(global_pool=pool, num_classes=7), LinearHead(32, CLASSES), freeze_backbone=False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    depths = model.parameter_depths()
    head = {depths[name] for name in depths if name.startswith("head.")}
    assert len(head) == 1 and head.pop() > max(depths[name] for name in depths if name.startswith("backbone."))
    assert "backbone.pos_embed" in model.no_weight_decay()

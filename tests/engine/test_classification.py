"""The classification loss: timm's erasing and mixing as the DeiT/MAE recipes use them, plain CE without them."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.engine.classification import MixedLabelLoss, require_labels

OFF = dict(
    label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, random_erasing=0.0
)


class Recorder(torch.nn.Module):
    """A 'model' that keeps the images it was given and returns fixed logits."""

    def forward(self, images):
        self.seen = images
        return torch.zeros(len(images), 3, requires_grad=True)


def test_without_mixing_it_is_cross_entropy_with_label_smoothing():
    model, labels = torch.nn.Linear(4, 3), torch.tensor([0, 2])
    images = torch.randn(2, 4)
    loss = MixedLabelLoss(3, **{**OFF, "label_smoothing": 0.1})(model, images, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(model(images), labels, label_smoothing=0.1).item())


def test_mixup_gives_soft_targets_that_mix_each_image_with_its_reverse():
    model, images = Recorder(), torch.randn(4, 3, 8, 8)
    torch.manual_seed(0)
    MixedLabelLoss(3, **{**OFF, "mixup_alpha": 0.8})(model, images, torch.tensor([0, 1, 2, 0]))
    mixed = model.seen
    lam = ((mixed[0] - images[3]) / (images[0] - images[3])).median()
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


def test_an_odd_batch_loses_one_image_to_pair_the_rest():
    model = Recorder()
    MixedLabelLoss(3, **{**OFF, "cutmix_alpha": 1.0})(model, torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert len(model.seen) == 4


def test_random_erasing_replaces_a_box_with_noise_and_keeps_the_input_intact():
    model, images = Recorder(), torch.zeros(8, 3, 16, 16)
    torch.manual_seed(0)
    MixedLabelLoss(3, **{**OFF, "random_erasing": 1.0})(model, images, torch.zeros(8, dtype=torch.long))
    assert (images == 0).all(), "the caller's batch was changed in place"
    erased = (model.seen != 0).flatten(1).any(dim=1)
    assert erased.all() and (model.seen == 0).any()


def test_unlabeled_samples_are_refused_on_the_host():
    require_labels(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unlabeled"):
        require_labels(torch.tensor([0, -1]))

import pytest
import torch

from pretrain.models.mae import MaskedAutoencoder, patchify, pixel_targets, random_masking, unpatchify
from pretrain.models.vit import create_vit


def tiny_mae(**overrides) -> MaskedAutoencoder:
    options = dict(decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4)
    options.update(overrides)
    return MaskedAutoencoder(create_vit("vit_test_patch4", pos_embed="sincos"), **options)


def test_patchify_unpatchify_round_trip():
    images = torch.randn(2, 3, 32, 32)
    patches = patchify(images, 4)
    assert patches.shape == (2, 64, 48)
    assert torch.equal(unpatchify(patches, 4, 3), images)


def test_patchify_orders_patches_row_major_and_pixels_row_col_channel():
    images = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    patches = patchify(images, 2)
    # second patch = top row, right half; first pixel of it = (row 0, col 2) for channel 0 then channel 1
    assert patches[0, 1, :2].tolist() == [images[0, 0, 0, 2].item(), images[0, 1, 0, 2].item()]


def test_masking_keeps_exactly_25_percent():
    tokens = torch.randn(4, 64, 8)
    visible, mask, _ = random_masking(tokens, 0.75)
    assert visible.shape == (4, 16, 8)
    assert mask.sum(dim=1).tolist() == [48.0] * 4


def test_masking_differs_per_sample():
    _, mask, _ = random_masking(torch.randn(8, 64, 8), 0.75)
    assert len({tuple(row.tolist()) for row in mask}) == 8


def test_masking_keeps_the_lowest_noise_tokens_in_their_own_values():
    tokens = torch.randn(1, 8, 2)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.5, 0.4]])
    visible, mask, ids_restore = random_masking(tokens, 0.75, noise)
    assert torch.equal(visible, tokens[:, [1, 3]])
    assert mask.tolist() == [[1, 0, 1, 0, 1, 1, 1, 1]]
    assert torch.equal(torch.argsort(ids_restore, dim=1)[:, :2], torch.tensor([[1, 3]]))


def test_norm_pix_targets_have_zero_mean_unit_variance_per_patch():
    targets = pixel_targets(patchify(torch.rand(2, 3, 32, 32), 4), norm_pix_loss=True)
    torch.testing.assert_close(targets.mean(dim=-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(dim=-1), torch.ones(2, 64), atol=1e-3, rtol=0)


def test_loss_counts_only_masked_patches():
    model = tiny_mae()
    images = torch.randn(2, 3, 32, 32)
    output = model(images)
    target = pixel_targets(patchify(images, 4), norm_pix_loss=False)
    # make the prediction perfect on masked patches: the loss must not see the visible ones
    perfect = torch.where(output.mask.bool().unsqueeze(-1), target, output.pred + 100.0)
    assert model.forward_loss(images, perfect, output.mask).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_reaches_only_visible_patches_of_the_input():
    model = tiny_mae(norm_pix_loss=False)
    images = torch.randn(1, 3, 32, 32, requires_grad=True)
    noise = torch.rand(1, 64)
    latent, mask, ids_restore = model.forward_encoder(images, 0.75, noise)
    latent.sum().backward()
    per_patch_grad = patchify(images.grad, 4).abs().sum(dim=-1)[0]
    assert torch.all(per_patch_grad[mask[0].bool()] == 0)
    assert torch.all(per_patch_grad[~mask[0].bool()] > 0)


def test_encoder_sees_only_visible_tokens():
    latent, _, _ = tiny_mae().forward_encoder(torch.randn(2, 3, 32, 32), 0.75)
    assert latent.shape == (2, 1 + 16, 64)


def test_mae_needs_token_pooling_encoder():
    with pytest.raises(ValueError, match="global_pool"):
        MaskedAutoencoder(create_vit("vit_test_patch4", global_pool="avg"))


def test_fifty_steps_on_a_fixed_batch_halve_the_loss():
    torch.manual_seed(0)
    model = tiny_mae()
    images = torch.rand(8, 3, 32, 32)
    noise = torch.rand(8, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        loss = model(images, noise=noise).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = MaskedAutoencoder(create_vit("vit_test_patch4", pos_embed="sincos", drop_path_rate=0.1), 32, 2, 4)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same drop-path draws in both passes
        loss = model(images, noise=noise).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    model.set_grad_checkpointing(True)
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    assert model.encoder.blocks.grad_checkpointing and model.decoder_blocks.grad_checkpointing
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=1e-6)
    assert set(checkpointed_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)

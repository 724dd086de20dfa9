import pytest
import torch

from ldm_core.autoencoder import Autoencoder, AutoencoderConfig
from ldm_core.losses import (PatchDiscriminator, PerceptualLoss, adaptive_weight, autoencoder_loss,
                             digit_feature_layers, generator_adversarial_loss, hinge_discriminator_loss)
from ldm_core.metrics import DigitClassifier


def test_hinge_loss_closed_forms():
    # confident and right: no loss; undecided (logits 0): 0.5 * (1 + 1) = 1; confidently wrong by 2: 0.5 * (3 + 3)
    assert hinge_discriminator_loss(torch.full((4,), 1.5), torch.full((4,), -1.5)).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0
    assert hinge_discriminator_loss(torch.full((4,), -2.0), torch.full((4,), 2.0)).item() == 3.0
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_adaptive_weight_equals_its_definition_on_a_toy_decoder():
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    z = torch.randn(8, 3)
    x = torch.randn(8, 2)
    x_hat = decoder(z)
    rec = (x - x_hat).abs().mean()
    adv = -(x_hat ** 3).mean()
    last = decoder[-1].weight
    weight = adaptive_weight(rec, adv, last)
    g_rec, = torch.autograd.grad((x - decoder(z)).abs().mean(), last)
    g_adv, = torch.autograd.grad(-(decoder(z) ** 3).mean(), last)
    torch.testing.assert_close(weight, g_rec.norm() / (g_adv.norm() + 1e-4))
    assert not weight.requires_grad


def test_adaptive_weight_is_clamped():
    w = torch.ones(1, requires_grad=True)
    assert adaptive_weight((w * 1e9).sum(), (w * 0).sum() + 0 * w.sum(), w, max_weight=10.0).item() == 10.0


def test_patch_discriminator_outputs_a_logit_per_patch():
    assert PatchDiscriminator(1, 8, layers=2)(torch.randn(3, 1, 32, 32)).shape == (3, 1, 8, 8)


def test_perceptual_loss_is_zero_for_equal_images_positive_otherwise_and_frozen():
    classifier = DigitClassifier(width=8)
    loss = PerceptualLoss(digit_feature_layers(classifier))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(loss(x, x), torch.zeros(2))
    assert (loss(x, x.flip(-1)) > 0).all()
    assert not any(p.requires_grad for p in loss.parameters())
    x_hat = x.clone().requires_grad_(True)
    loss(x, x_hat + 0.1).sum().backward()
    assert x_hat.grad.abs().sum() > 0, "gradients reach the reconstruction"
    with pytest.raises(ValueError, match="same shape"):
        loss(x, x[:1])


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_autoencoder_loss_trains_both_regularisers(regularizer):
    model = Autoencoder(AutoencoderConfig(channels=8, channel_mult=(1, 2), latent_channels=2, groups=4,
                                          regularizer=regularizer, num_codes=16))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    loss, logs, d_loss = autoencoder_loss(model, x, 1e-6 if regularizer == "kl" else 1.0)
    loss.backward()
    assert set(logs) == {"l1", "reg"} and loss.item() > 0 and d_loss is None
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_autoencoder_loss_with_perceptual_and_adversarial_terms():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(channels=8, channel_mult=(1, 2), latent_channels=2, groups=4))
    classifier = DigitClassifier(width=8)
    discriminator = PatchDiscriminator(1, 8, layers=2)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    plain, _, _ = autoencoder_loss(model, x, 1e-6, torch.Generator().manual_seed(0))
    loss, logs, d_loss = autoencoder_loss(model, x, 1e-6, generator, PerceptualLoss(digit_feature_layers(classifier)),
                                          1.0, discriminator, 0.5)
    assert set(logs) == {"l1", "perceptual", "reg", "adversarial_weight"} and logs["adversarial_weight"] > 0
    assert loss.item() != plain.item() and d_loss.item() > 0
    assert all(p.requires_grad for p in classifier.parameters()), "the classifier itself is not frozen"
    d_loss.backward()
    assert all(p.grad is None for p in model.parameters()), "the discriminator loss does not reach the autoencoder"

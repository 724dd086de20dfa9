import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from ldm_core.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian


@pytest.mark.parametrize("levels,f", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_encoder_and_decoder_shapes_for_every_f(levels, f):
    config = AutoencoderConfig(channels=8, channel_mult=levels, latent_channels=3, groups=4)
    assert config.f == f
    model = Autoencoder(config)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mode().shape == (2, 3, 32 // f, 32 // f)
    assert posterior.sample().shape == (2, 3, 32 // f, 32 // f)
    assert model.decode(posterior.mode()).shape == x.shape


def test_kl_equals_torch_distributions():
    moments = torch.randn(3, 4, 2, 2)
    posterior = DiagonalGaussian(moments)
    q = Independent(Normal(posterior.mean, posterior.std), 3)
    p = Independent(Normal(torch.zeros_like(posterior.mean), torch.ones_like(posterior.std)), 3)
    torch.testing.assert_close(posterior.kl(), kl_divergence(q, p))


def test_kl_of_standard_normal_is_zero_and_sample_has_the_posterior_moments():
    posterior = DiagonalGaussian(torch.zeros(1, 2, 4, 4))
    assert torch.equal(posterior.kl(), torch.zeros(1))
    posterior = DiagonalGaussian(torch.cat([torch.full((4000, 1, 1, 1), 3.0), torch.full((4000, 1, 1, 1), 2 * torch.tensor(0.5).log())], 1))
    z = posterior.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean() - 3.0) < 0.05 and abs(z.std() - 0.5) < 0.02
    assert torch.equal(posterior.mode(), posterior.mean)


def test_logvar_is_clamped():
    posterior = DiagonalGaussian(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 1000.0)], 1))
    assert torch.isfinite(posterior.std).all() and posterior.logvar.item() == 20.0


def test_bad_input_and_config_are_named():
    model = Autoencoder(AutoencoderConfig.tiny())
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) with H and W divisible by f=4"):
        model.encode(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"z must be \(B, 2, h, w\)"):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="groups=3 must divide"):
        AutoencoderConfig(channels=8, groups=3)


def test_vq_picks_the_nearest_code_and_passes_gradients_straight_through():
    from ldm_core.autoencoder import VectorQuantizer, codebook_usage

    quantizer = VectorQuantizer(num_codes=16, dim=3)
    torch.nn.init.normal_(quantizer.codebook.weight)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    quantized = quantizer(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, quantizer.codebook.weight).argmin(1).view(2, 4, 4)
    assert torch.equal(quantized.indices, expected)
    torch.testing.assert_close(quantized.mode(), quantizer.codebook.weight[expected].permute(0, 3, 1, 2))
    (quantized.mode() * 2).sum().backward()
    torch.testing.assert_close(z.grad, torch.full_like(z, 2.0))  # identity from z_q back to z
    perplexity, dead = codebook_usage(quantized.indices, 16)
    assert 1 <= perplexity <= 16 and dead == 16 - len(quantized.indices.unique())


def test_vq_gradient_reaches_the_encoder_through_the_decoder():
    model = Autoencoder(AutoencoderConfig(channels=8, channel_mult=(1, 2), latent_channels=2, groups=4,
                                          regularizer="vq", num_codes=8))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    reconstruction = model.decode(model.encode(x).mode())
    (reconstruction - x).abs().mean().backward()  # no codebook loss: only the straight-through path
    first_conv = model.encoder[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_codebook_usage_closed_forms():
    from ldm_core.autoencoder import codebook_usage

    assert codebook_usage(torch.zeros(10, dtype=torch.int64), 4) == (1.0, 3)
    perplexity, dead = codebook_usage(torch.arange(8), 8)
    assert perplexity == pytest.approx(8.0) and dead == 0


def test_vq_loss_is_codebook_plus_commitment_with_the_right_stop_gradients():
    from ldm_core.autoencoder import VectorQuantizer

    quantizer = VectorQuantizer(num_codes=8, dim=2, commitment=0.25)
    torch.nn.init.normal_(quantizer.codebook.weight)
    z = torch.randn(3, 2, 2, 2, requires_grad=True)
    quantized = quantizer(z)
    e = quantizer.codebook.weight[quantized.indices].permute(0, 3, 1, 2).detach()  # (3, 2, 2, 2)
    torch.testing.assert_close(quantized.loss, 1.25 * (z.detach() - e).pow(2).flatten(1).sum(1))
    quantized.loss.sum().backward()
    # d/dz of beta ||z - sg[e]||^2 = 2 beta (z - e); the codebook term moves only the codes: 2 (e - z) per use
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - e))
    code_grad = torch.zeros_like(quantizer.codebook.weight)
    flat_index = quantized.indices.flatten()
    code_grad.index_add_(0, flat_index, 2 * (e - z.detach()).permute(0, 2, 3, 1).reshape(-1, 2))
    torch.testing.assert_close(quantizer.codebook.weight.grad, code_grad)


def test_scale_factor_is_one_over_the_latent_std_far_from_one():
    # an autoencoder whose latents are far from unit scale: the encoder's mean and std both 7x larger (the log-
    # variance + log 49), so every posterior sample is exactly 7x larger for the same noise
    import math

    from ldm_core.autoencoder import latent_scale_factor
    from ldm_core.pipeline import LatentDiffusion
    from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule
    from ldm_core.unet import Denoiser, UNet, UNetConfig

    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig.tiny())
    c = model.config.latent_channels
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    base = latent_scale_factor(model, x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.encoder[-1].weight[:c] *= 7
        model.encoder[-1].bias[:c] *= 7
        model.encoder[-1].bias[c:] += math.log(49)
    loud = latent_scale_factor(model, x, torch.Generator().manual_seed(0))
    assert base / loud == pytest.approx(7, rel=1e-4)  # 1 / std: a missing or inverted factor fails here
    model.scale_factor.fill_(loud)
    ldm = LatentDiffusion(model, Denoiser(UNet(UNetConfig.tiny(in_channels=c))),
                          alpha_bar_from_betas(linear_beta_schedule(10)), prediction="v")
    with torch.no_grad():
        raw = model.encode(x).sample(torch.Generator().manual_seed(1))
    assert raw.std().item() > 5 and abs((loud * raw).std().item() - 1) < 0.05  # unit scale after the factor
    z = ldm.encode(x)  # the pipeline's latents carry the factor, and its decoder removes it
    torch.testing.assert_close(z, loud * model.encode(x).mode())
    torch.testing.assert_close(ldm.decode(z), model.decode(model.encode(x).mode()))
    with pytest.raises(ValueError, match="at least 2 images"):
        latent_scale_factor(model, x[:1])

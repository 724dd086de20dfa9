"""Appendix A's naive latent diffusion: the notebook's pieces and the switches that repair them."""

import pytest
import torch

from ldm_core import naive
from ldm_core.samplers import ddim_sample


class KnownNoise(torch.nn.Module):
    """A 'denoiser' whose noise prediction is a fixed function of z_t and t, so samplers can be compared exactly."""

    def forward(self, z_t, t, cond=None):
        return torch.tanh(z_t) * (1 + t[:, None].float() / 1000)


def test_the_repaired_sampler_is_ddim_on_the_same_timesteps():
    alpha_bar = naive.naive_alpha_bar()
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    ours = naive.naive_sample(KnownNoise(), noise, alpha_bar, stride=20, last_alpha_bar="one")
    reference = ddim_sample(KnownNoise(), noise, alpha_bar, torch.arange(980, -1, -20))
    assert torch.allclose(ours, reference, atol=1e-5)


def test_the_notebooks_last_step_keeps_a_little_of_the_predicted_noise():
    """T = 2, stride 1: steps t = 1 then t = 0. At t = 0 the notebook returns sqrt(a0) x0_hat + sqrt(1 - a0) eps
    (a' = alpha_bar[max(0 - 1, 0)] = a0), the repaired sampler x0_hat."""
    alpha_bar = naive.naive_alpha_bar()[:2]
    a0, a1 = float(alpha_bar[0]), float(alpha_bar[1])
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    model = KnownNoise()
    eps = model(z, torch.ones(4, dtype=torch.int64))
    z = a0**0.5 * (z - (1 - a1) ** 0.5 * eps) / a1**0.5 + (1 - a0) ** 0.5 * eps  # the step from t = 1
    eps = model(z, torch.zeros(4, dtype=torch.int64))
    x0_hat = (z - (1 - a0) ** 0.5 * eps) / a0**0.5
    start = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(naive.naive_sample(model, start, alpha_bar, 1, "one"), x0_hat, atol=1e-6)
    assert torch.allclose(naive.naive_sample(model, start, alpha_bar, 1, "alpha_bar_0"),
                          a0**0.5 * x0_hat + (1 - a0) ** 0.5 * eps, atol=1e-6)
    assert abs(a0 - (1 - 1e-4)) < 1e-9  # DDPM's beta_1


def test_the_mean_reduced_loss_is_an_elbo_with_beta_64():
    """mse_loss + mean KL over 16 dims = (sum of squared errors + 64 x summed KL) / 1024, the same sample z."""
    torch.manual_seed(0)
    vae = naive.NaiveVAE()
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    mean, parts_mean = naive.naive_vae_loss(vae, x, torch.Generator().manual_seed(3), "mean")
    _, parts_sum = naive.naive_vae_loss(vae, x, torch.Generator().manual_seed(3), "sum")
    assert parts_mean["reconstruction"] * 1024 == pytest.approx(parts_sum["reconstruction"], rel=1e-5)
    assert parts_mean["kl"] * 16 == pytest.approx(parts_sum["kl"], rel=1e-5)
    assert mean.item() * 1024 == pytest.approx(parts_sum["reconstruction"] + 64 * parts_sum["kl"], rel=1e-5)


def test_the_kl_matches_torch_distributions():
    torch.manual_seed(1)
    vae = naive.NaiveVAE()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    mu, logvar = vae.encode(x)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                                 torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    _, parts = naive.naive_vae_loss(vae, x, torch.Generator().manual_seed(0), "sum")
    assert parts["kl"] == pytest.approx(expected.item(), rel=1e-5)


def test_latent_statistics_tell_a_collapsed_posterior_from_an_informative_one():
    n, d = 500, 16
    collapsed = naive.latent_statistics(torch.full((n, d), 0.01), torch.ones(n, d))
    assert collapsed == {"mu_spread": pytest.approx(0.0, abs=1e-6), "posterior_std": pytest.approx(1.0),
                         "active_units": 0}
    mu = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    mu[:, :4] *= 0.01  # 4 dimensions that barely move: Var = 1e-4 < 0.01
    informative = naive.latent_statistics(mu, torch.full((n, d), 0.1))
    assert informative["active_units"] == d - 4 and informative["posterior_std"] == pytest.approx(0.1)


def test_the_notebooks_denoiser_ignores_t_and_the_repaired_one_does_not():
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    early, late = torch.zeros(3, dtype=torch.int64), torch.full((3,), 900)
    torch.manual_seed(0)
    blind, sighted = naive.MLPDenoiser(16, 32, False), naive.MLPDenoiser(16, 32, True)
    assert torch.equal(blind(z, early), blind(z, late))
    assert not torch.allclose(sighted(z, early), sighted(z, late))
    assert sighted(z, early).shape == (3, 16)


def test_training_is_deterministic_and_learns():
    x = torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, history = naive.fit_vae(x, 2, "sum", seed=4)
    b, _ = naive.fit_vae(x, 2, "sum", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(history["loss"]) == 2 * (256 // naive.NOTEBOOK_BATCH)
    mu = torch.randn(256, 4, generator=torch.Generator().manual_seed(1))
    model, history = naive.fit_denoiser(mu, torch.full_like(mu, 0.1), naive.naive_alpha_bar(), 20, True)
    assert sum(history["loss"][-4:]) < sum(history["loss"][:4])


def test_bad_input_is_refused_with_what_was_expected():
    vae = naive.NaiveVAE()
    with pytest.raises(ValueError, match="reduction"):
        naive.naive_vae_loss(vae, torch.zeros(2, 1, 32, 32), reduction="median")
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        vae.encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        vae.decode(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="last_alpha_bar"):
        naive.naive_sample(KnownNoise(), torch.zeros(2, 16), naive.naive_alpha_bar(), last_alpha_bar="zero")
    with pytest.raises(ValueError, match="stride"):
        naive.naive_sample(KnownNoise(), torch.zeros(2, 16), naive.naive_alpha_bar(), stride=1000)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        naive.MLPDenoiser(16)(torch.zeros(2, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="one shape"):
        naive.fit_denoiser(torch.zeros(8, 4), torch.zeros(8, 3), naive.naive_alpha_bar(), 1, False)

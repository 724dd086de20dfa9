"""DDPM's variational bound (appendix B): each term against its closed form or an independent Gaussian KL."""

import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal, kl_divergence

from ldm_core import likelihood
from ldm_core.autoencoder import PixelSpace
from ldm_core.pipeline import LatentDiffusion
from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule


class Constant(nn.Module):
    """An eps-model whose prediction of the clean image is the constant c at every t and x_t."""

    def __init__(self, c: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.register_buffer("c", c)
        self.register_buffer("alpha_bar", alpha_bar)
        self.unused = nn.Parameter(torch.zeros(1))  # a device for the pipeline

    def forward(self, z_t, t, cond=None):
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        return ((z_t.double() - a.sqrt() * self.c) / (1 - a).sqrt()).float()


def _digits(n=3, seed=0):
    v = torch.randint(0, 256, (n, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    return v / 127.5 - 1


def _pipeline(c, T=10):
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(T, 1e-3, 0.2))
    return LatentDiffusion(PixelSpace(), Constant(c, alpha_bar), alpha_bar, image_size=4, prediction="eps"), alpha_bar


def test_discretised_gaussian_gives_each_8_bit_value_its_bin_and_sums_to_one():
    grid = torch.arange(256) / 127.5 - 1
    for mean, log_scale in [(0.3, math.log(0.05)), (-1.0, math.log(0.5)), (0.999, math.log(1e-3))]:
        p = likelihood.discretized_gaussian_log_likelihood(grid, torch.tensor(mean), log_scale).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
        inner = Normal(mean, math.exp(log_scale))
        k = 100  # an inner bin: the normal's mass between the bin's edges
        assert p[k].item() == pytest.approx((inner.cdf(grid[k] + 1 / 255) - inner.cdf(grid[k] - 1 / 255)).item(), abs=1e-6)


def test_diffusion_terms_are_the_kl_of_the_samplers_gaussians_and_telescope():
    """With x0_hat = c, every L_t is KL(q(x_{t-1} | x_t, x) || N(mu_theta, beta_tilde_t)) for the DDPM sampler's mean
    and variance (independent of x_t), and the sum over t = 1 .. T-1 telescopes to 1/2 (SNR(0) - SNR(T-1)) |x - c|^2."""
    x, c = _digits(), _digits(1, seed=1)[0].double()
    ldm, alpha_bar = _pipeline(c)
    T = len(alpha_bar)
    x_t = torch.randn(x.shape, dtype=torch.float64)
    total = torch.zeros(len(x), dtype=torch.float64)
    for t in range(1, T):
        a, a_prev = alpha_bar[t], alpha_bar[t - 1]
        beta = 1 - a / a_prev
        var = (1 - a_prev) / (1 - a) * beta

        def mean(x0):
            return a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t

        kl = kl_divergence(Normal(mean(x.double()), var.sqrt()), Normal(mean(c.expand_as(x)), var.sqrt()))
        total += kl.flatten(1).sum(1)
    snr = alpha_bar / (1 - alpha_bar)
    closed = 0.5 * (snr[0] - snr[-1]) * (x.double() - c).pow(2).flatten(1).sum(1)
    assert torch.allclose(total, closed, rtol=1e-9)
    terms = likelihood.ddpm_terms(ldm, x, strata=T - 1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(terms["diffusion"], closed, rtol=1e-5)


def test_stratified_estimate_is_unbiased():
    """With fewer strata than steps each draw differs, but the mean over draws is the exact sum."""
    x, c = _digits(2), _digits(1, seed=1)[0].double()
    ldm, alpha_bar = _pipeline(c, T=40)
    exact = likelihood.ddpm_terms(ldm, x, strata=39)["diffusion"]
    draws = torch.stack([likelihood.ddpm_terms(ldm, x, strata=3,
                                               generator=torch.Generator().manual_seed(s))["diffusion"]
                         for s in range(400)])
    assert draws.std(0).min() > 0
    assert torch.allclose(draws.mean(0), exact, rtol=3 * (draws.std(0) / 20 / exact).max().item())


def test_prior_and_decoder_terms():
    x = _digits()
    ldm, alpha_bar = _pipeline(x[0].double())
    terms = likelihood.ddpm_terms(ldm, x, strata=1)
    a = alpha_bar[-1]
    prior = kl_divergence(Normal(a.sqrt() * x.double(), (1 - a).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(terms["prior"], prior, rtol=1e-9)
    # the model predicts the first digit exactly: each pixel's bin then gets the mass of +-1/255 around the mean of
    # N(x, beta_tilde_1), or of one side of it at the end values -1 and 1 (their bins extend to infinity)
    beta_1 = 1 - alpha_bar[1] / alpha_bar[0]
    sigma = ((1 - alpha_bar[0]) / (1 - alpha_bar[1]) * beta_1).sqrt().item()
    inner = 2 * Normal(0.0, 1.0).cdf(torch.tensor(1 / 255 / sigma)).item() - 1
    edge = Normal(0.0, 1.0).cdf(torch.tensor(1 / 255 / sigma)).item()
    at_edge = (x[0].abs() == 1).sum().item()
    closed = -(at_edge * math.log(edge) + (x[0].numel() - at_edge) * math.log(inner))
    assert terms["decoder"][0].item() == pytest.approx(closed, rel=1e-4)
    assert (terms["decoder"][1:] > terms["decoder"][0]).all(), "a wrong prediction costs more"
    bits = likelihood.ddpm_bits_per_dim(ldm, x, strata=1)
    fewer = likelihood.ddpm_bits_per_dim(ldm, x, dims=12, strata=1)
    assert fewer["bpd"] == pytest.approx(bits["bpd"] * 16 / 12)
    assert bits["bpd"] == pytest.approx(bits["prior"] + bits["diffusion"] + bits["decoder"])


def test_bad_input_is_refused():
    x = _digits()
    ldm, _ = _pipeline(x[0].double())
    with pytest.raises(ValueError, match="strata"):
        likelihood.ddpm_terms(ldm, x, strata=10)
    with pytest.raises(ValueError, match="PixelSpace"):
        likelihood.ddpm_terms(LatentDiffusion(nn.Identity(), ldm.denoiser, ldm.alpha_bar, prediction="eps"), x)

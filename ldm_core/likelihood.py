"""DDPM's variational bound on the negative log-likelihood of 8-bit images, in bits per dimension (appendix B).

For a diffusion model on pixels x in [-1, 1] with 0-based timesteps t = 0 .. T-1 and alpha_bar_{-1} = 1, the
reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with sigma_t^2 = beta_tilde_t (the variance the
book's DDPM sampler uses) and a discretised Gaussian decoder p(x | x_0) bound the code length of the data
(DDPM, Ho et al. 2020, Eq. 5 and Sec. 3.3):

    -log p(x) <= L_prior + sum_{t=1}^{T-1} L_t + L_decoder,
    L_prior   = KL(q(x_{T-1} | x) || N(0, I)),
    L_t       = KL(q(x_{t-1} | x_t, x) || p(x_{t-1} | x_t)) = 1/2 (SNR(t-1) - SNR(t)) ||x - x0_hat(x_t, t)||^2,
    L_decoder = -log of the mass that N(x0_hat(x_0, 0), beta_tilde_1) gives x's 8-bit bin,

with SNR(t) = alpha_bar_t / (1 - alpha_bar_t): the two Gaussians of L_t share their variance and their means differ
by sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) (x - x0_hat). The decoder's variance is beta_tilde_1, not
beta_tilde_0 = 0 (DDPM's code "clips" it so). The T - 1 terms L_t are estimated without bias by stratified sampling:
t = 1 .. T-1 is cut into K runs of consecutive steps, one t drawn in each run per image, weighted by the run's
length.
"""

from __future__ import annotations

import math

import torch

from .autoencoder import PixelSpace
from .checks import check_images, check_int
from .pipeline import LatentDiffusion
from .schedules import predict_x0_from_eps, q_sample, randn_like, rng_device


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float,
                                        bins: int = 256) -> torch.Tensor:
    """log P(x) per element of a Gaussian N(mean, exp(log_scale)^2) discretised to the ``bins`` values of x in
    [-1, 1] (bin width 2 / (bins - 1)); the end bins extend to -inf and +inf, so the masses sum to 1.

    Args:
        x: data on the grid -1, -1 + 2/(bins - 1), ..., 1; mean, log_scale broadcastable to x.

    Returns:
        log-probabilities (nats), the shape of x.
    """
    half = 1.0 / (bins - 1)
    inv_scale = torch.exp(-torch.as_tensor(log_scale, dtype=x.dtype, device=x.device))
    normal = torch.distributions.Normal(0.0, 1.0)
    upper = normal.cdf((x - mean + half) * inv_scale)
    lower = normal.cdf((x - mean - half) * inv_scale)
    mass = torch.where(x > 1 - half, 1 - lower, torch.where(x < -1 + half, upper, upper - lower))
    return mass.clamp_min(1e-12).log()


def ddpm_terms(ldm: LatentDiffusion, x: torch.Tensor, strata: int = 100,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The three parts of DDPM's bound for each image, in nats summed over its pixels.

    Args:
        ldm: a diffusion model on pixels (first stage :class:`~ldm_core.autoencoder.PixelSpace`).
        x: 8-bit images (B, C, H, W) in [-1, 1], on the grid v / 127.5 - 1.
        strata: K runs of timesteps for the estimate of sum_t L_t (K model calls per image); K = T - 1 is exact.
        generator: the randomness of the drawn timesteps and of x_t.

    Returns:
        dict(prior, diffusion, decoder) of (B,) float64 tensors on the CPU.

    Raises:
        ValueError: if the model is not on pixels, or strata is not in [1, T - 1].
    """
    if not isinstance(ldm.autoencoder, PixelSpace):
        raise ValueError("a likelihood of pixels needs a diffusion model on pixels (first stage PixelSpace), got "
                         f"{type(ldm.autoencoder).__name__}")
    check_images("x", x, ldm.autoencoder.config.in_channels)
    T = ldm.T
    strata = check_int("strata", strata, 1, T - 1)
    device = ldm.device
    x = x.to(device)
    alpha_bar = ldm.alpha_bar.to(device)
    snr = alpha_bar / (1 - alpha_bar)
    snr_prev = torch.cat([snr.new_tensor([math.inf]), snr[:-1]])
    batch = x.shape[0]

    def x0_hat(t: torch.Tensor) -> torch.Tensor:
        x_t = q_sample(x, t, randn_like(x, generator), alpha_bar)
        with torch.no_grad():
            return predict_x0_from_eps(x_t, t, ldm.eps(x_t, t), alpha_bar)

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.double().flatten(1).sum(1).cpu()

    a_last = alpha_bar[-1]
    prior = 0.5 * (a_last * x.double() ** 2 + (1 - a_last) - 1 - torch.log(1 - a_last))
    edges = torch.linspace(1, T, strata + 1).round().long().tolist()  # runs [edges[k], edges[k + 1]) of 1 .. T-1
    diffusion = torch.zeros(batch, dtype=torch.float64)
    for lo, hi in zip(edges, edges[1:]):
        u = torch.rand(batch, generator=generator, device=rng_device(generator, "cpu"))
        t = (lo + (u * (hi - lo)).long().clamp_max(hi - lo - 1)).to(device)
        weight = 0.5 * (snr_prev[t] - snr[t]) * (hi - lo)
        diffusion += per_image(weight.view(-1, *[1] * (x.dim() - 1)) * (x - x0_hat(t)).double() ** 2)
    beta_1 = 1 - alpha_bar[1] / alpha_bar[0]
    log_scale = 0.5 * torch.log((1 - alpha_bar[0]) / (1 - alpha_bar[1]) * beta_1)
    mean = x0_hat(torch.zeros(batch, dtype=torch.int64, device=device))
    decoder = -discretized_gaussian_log_likelihood(x, mean, log_scale.float())
    return {"prior": per_image(prior), "diffusion": diffusion, "decoder": per_image(decoder)}


def ddpm_bits_per_dim(ldm: LatentDiffusion, x: torch.Tensor, dims: int | None = None, strata: int = 100,
                      seed: int = 0) -> dict[str, float]:
    """DDPM's bound on the test code length in bits per dimension, mean and standard error over the images.

    Args:
        dims: the dimensions D the bits are shared among; default every element of an image. The book passes 784:
            its digits are 28x28 pixels padded to 32x32 with a constant border, so the bound over all 1,024
            elements, divided by 784, bounds the 784 real pixels' code length (P(digit) >= P(digit, border)).
        strata, seed: see :func:`ddpm_terms` (its generator is seeded ``seed``).

    Returns:
        dict(bpd, bpd_se, and each part's bits per dimension: prior, diffusion, decoder).
    """
    dims = check_int("dims", dims if dims is not None else x[0].numel(), 1)
    parts = ddpm_terms(ldm, x, strata, torch.Generator().manual_seed(seed))
    to_bits = 1 / (dims * math.log(2))
    total = sum(parts.values()) * to_bits
    result = {"bpd": total.mean().item(), "bpd_se": (total.std() / len(total) ** 0.5).item()}
    return {**result, **{name: (value * to_bits).mean().item() for name, value in parts.items()}}

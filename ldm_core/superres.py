"""Super-resolution by concatenation (chapter 8; paper Sec. 4.4): 8x8 digits to 32x32, a factor of 4.

The factor is the autoencoder's f, so the low-resolution image lies on the latent grid: the super-resolution UNet
reads it beside z_t as it is, concatenated along the channels (the paper's "tau_theta is the identity", Sec. 4.4).
Two baselines measure what diffusion adds: bicubic upsampling, and the same UNet trained as a one-shot regressor
that maps the low-resolution image to the latent directly (the paper's "image regression", Tab. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_finite, check_images, check_int

DEGRADATIONS = ("bicubic", "blur", "noise")  # what made the low-resolution image: training uses "bicubic" only


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Bicubic downsampling with antialiasing (``torch.nn.functional.interpolate``), the degradation the
    super-resolution model is trained on: x (B, C, H, W) in [-1, 1] -> (B, C, H / factor, W / factor), clamped
    to [-1, 1].

    Raises:
        TypeError, ValueError: for x that is not a float image batch in [-1, 1], or H, W not divisible by factor.
    """
    check_images("x", x)
    factor = check_int("factor", factor, 1)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"H and W must be divisible by factor = {factor}, got {tuple(x.shape[-2:])}")
    return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True).clamp(-1, 1)


def upsample_bicubic(low: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The first baseline: bicubic upsampling (B, C, h, w) -> (B, C, h * factor, w * factor), clamped to [-1, 1]."""
    factor = check_int("factor", factor, 1)
    return F.interpolate(low, scale_factor=factor, mode="bicubic").clamp(-1, 1)


def degrade(x: torch.Tensor, kind: str = "bicubic", factor: int = 4, sigma: float = 1.0,
            noise_std: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """A low-resolution image made one of three ways, to test how far a model trained on one of them carries:

    - ``"bicubic"``: :func:`downsample` (the training degradation);
    - ``"blur"``: a Gaussian blur of std ``sigma`` pixels (of the high-resolution image) before it: softer input;
    - ``"noise"``: :func:`downsample`, then Gaussian noise of std ``noise_std`` (in [-1, 1] units), clamped.

    Args:
        x: images (B, C, H, W) in [-1, 1]. generator: the noise's source (CPU).

    Returns:
        (B, C, H / factor, W / factor) in [-1, 1].

    Raises:
        ValueError: for an unknown kind, a sigma or noise_std that is not a finite number > 0, or as
            :func:`downsample`.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"kind must be one of {DEGRADATIONS}, got {kind!r}")
    if kind == "blur":
        sigma = check_finite("sigma", sigma, low=0.0, open_low=True)
        radius = max(1, round(3 * sigma))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
        taps = (taps / taps.sum()).to(x.device)
        c = x.shape[1]
        padded = F.pad(x, (radius,) * 4, mode="replicate")
        blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c),
                           taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return downsample(blurred.clamp(-1, 1), factor)
    low = downsample(x, factor)
    if kind == "noise":
        noise_std = check_finite("noise_std", noise_std, low=0.0, open_low=True)
        noise = torch.randn(low.shape, generator=generator, dtype=low.dtype).to(low.device)
        low = (low + noise_std * noise).clamp(-1, 1)
    return low


def regression_timestep(T: int) -> int:
    """The timestep the one-shot regressor is always called with: T - 1, where a diffusion UNet expects the least
    of its input and must take its answer from the condition."""
    return T - 1


def regress(ldm, low: torch.Tensor) -> torch.Tensor:
    """The regression baseline's output: the UNet (trained by :func:`ldm_core.pretrained.superres_regression`) reads
    z_t = 0 and the low-resolution image at ``regression_timestep``, its output is taken as the scaled latent z_0
    itself, and decoded. low (B, C, h, w) in [-1, 1] -> images (B, C, H, W) clamped to [-1, 1], on the CPU."""
    with torch.no_grad():
        low = low.to(ldm.device)
        t = torch.full((len(low),), regression_timestep(ldm.T), dtype=torch.int64, device=ldm.device)
        z0 = ldm.denoiser(torch.zeros(len(low), *ldm.latent_shape, device=ldm.device), t, None, low)
        return ldm.decode(z0).clamp(-1, 1).cpu()


def super_resolve(ldm, low: torch.Tensor, **sample_kwargs) -> torch.Tensor:
    """Samples of the super-resolution LDM (:func:`ldm_core.pretrained.superres_diffusion`) for low-resolution
    images low (B, C, h, w) in [-1, 1], on the latent grid (h, w): images (B, C, H, W) clamped to [-1, 1], on the
    CPU. ``sample_kwargs`` go to ``ldm.sample`` (steps, generator, noise, ...)."""
    return ldm.sample(n=len(low), concat=low.to(ldm.device), **sample_kwargs).clamp(-1, 1)

"""Noise schedules, the forward process q(z_t | z_0), and the conversions between eps, x0 and v.

DDPM (Ho et al. 2020) Eq. 4: q(z_t | z_0) = N(sqrt(alpha_bar_t) z_0, (1 - alpha_bar_t) I), with
alpha_bar_t = prod_{s<=t} (1 - beta_s). The same process runs on pixels x or on latents z; the book writes z.

Timesteps ``t`` are 0-based int64 in [0, T-1]: ``alpha_bar[0]`` is the first noising step, not "no noise".
"""

from __future__ import annotations

import torch


def linear_beta_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM linear schedule: beta_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4).

    Args:
        T: number of diffusion steps, >= 1.
        beta_start, beta_end: first and last beta, 0 < beta_start <= beta_end < 1.

    Returns:
        betas, float64 tensor of shape (T,).

    Raises:
        ValueError: if T < 1 or the betas are not 0 < beta_start <= beta_end < 1.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_beta_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """The schedule of the LDM / Stable Diffusion code: sqrt(beta_t) evenly spaced from sqrt(beta_start) to
    sqrt(beta_end), then squared. The reference code calls this "linear"; it is linear in sqrt(beta), not beta.

    Returns:
        betas, float64 (T,).

    Raises:
        ValueError: as :func:`linear_beta_schedule`.
    """
    linear_beta_schedule(T, beta_start, beta_end)  # validates the arguments
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_beta_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, Eq. 17): alpha_bar(t) = f(t) / f(0) with
    f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2, and beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t) for the
    0-based step t, clipped at ``max_beta`` so the last steps stay finite.

    ``max_beta`` must stay below 1: at beta = 1 the last step destroys all signal, alpha_bar_{T-1} falls to about
    1e-33, and the x0_hat = (z_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) of every sampler explodes.

    Returns:
        betas, float64 (T,).

    Raises:
        ValueError: if T < 1, s < 0 or max_beta is not in (0, 1).
    """
    if T < 1 or s < 0 or not 0 < max_beta < 1:
        raise ValueError(f"need T >= 1, s >= 0 and 0 < max_beta < 1, got T={T}, s={s}, max_beta={max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * torch.pi / 2) ** 2
    alpha_bar = f / f[0]  # (T + 1,): alpha_bar before any noise, then after each of the T steps
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_beta_schedule, "scaled_linear": scaled_linear_beta_schedule,
             "cosine": cosine_beta_schedule}


def log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)): signal-to-noise ratio of z_t on a log scale. (T,)."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s=0}^{t} (1 - beta_s), shape (T,), float64, decreasing from ~1 towards 0."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def randn_like(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like z, drawn on the generator's device (so a CPU generator gives the
    same numbers whatever device z is on), then moved to z's device."""
    return torch.randn(z.shape, generator=generator, device=rng_device(generator, z.device), dtype=z.dtype).to(z.device)


def rng_device(generator: torch.Generator | None, default: torch.device | str) -> torch.device | str:
    """Where random numbers from ``generator`` must be drawn: its own device, or ``default`` without one."""
    return generator.device if generator is not None else default


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast against ``like``, in ``like``'s dtype and device."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Sample the forward process: z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps (DDPM Eq. 4). Taught in
    chapter 2.

    Args:
        z0: clean data (B, ...), pixels or (scaled) latents.
        t: int64 timesteps (B,) in [0, T-1].
        eps: standard normal noise, same shape as ``z0``.
        alpha_bar: (T,) from :func:`alpha_bar_from_betas`.

    Returns:
        z_t, same shape and dtype as ``z0``.

    Raises:
        ValueError: if shapes disagree or t is out of range.
    """
    if eps.shape != z0.shape:
        raise ValueError(f"eps must have the shape of z0 {tuple(z0.shape)}, got {tuple(eps.shape)}")
    if t.shape != (z0.shape[0],) or t.dtype != torch.int64:
        raise ValueError(f"t must be int64 timesteps ({z0.shape[0]},), got {t.dtype} {tuple(t.shape)}")
    T = alpha_bar.shape[0]
    if t.min() < 0 or t.max() >= T:
        raise ValueError(f"t must lie in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
    a = _gather(alpha_bar, t, z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def predict_x0_from_eps(z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Invert :func:`q_sample` for z_0: z0_hat = (z_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t). Shape of z_t."""
    a = _gather(alpha_bar, t, z_t)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


def predict_eps_from_x0(z_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """eps = (z_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t). Shape of z_t."""
    a = _gather(alpha_bar, t, z_t)
    return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The v-parameterisation (Salimans & Ho 2022, Sec. 4): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0."""
    a = _gather(alpha_bar, t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def x0_from_v(z_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(alpha_bar_t) z_t - sqrt(1 - alpha_bar_t) v. Shape of z_t."""
    a = _gather(alpha_bar, t, z_t)
    return a.sqrt() * z_t - (1 - a).sqrt() * v


def eps_from_v(z_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) z_t + sqrt(alpha_bar_t) v. Shape of z_t."""
    a = _gather(alpha_bar, t, z_t)
    return (1 - a).sqrt() * z_t + a.sqrt() * v

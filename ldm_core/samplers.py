"""Samplers as small pure functions over an explicit, strictly decreasing timestep sequence.

Notation (DDPM, Ho et al. 2020; DDIM, Song et al. 2021):

=============  ============================  ====================================================
code           paper                         meaning
=============  ============================  ====================================================
``z``          z_t                           the sample at the current step (B, c, h, w)
``t``          t                             0-based timestep, int in [0, T-1]
``t_prev``     t - 1 (DDPM), tau_{i-1}       the next (smaller) timestep; -1 means "clean data"
``alpha_bar``  alpha_bar_t                   prod (1 - beta); alpha_bar at t_prev = -1 is 1
``eps``        eps_theta(z_t, t)             the model's noise prediction
``x0_hat``     f_theta(z_t) / predicted z_0  (z_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
``eta``        eta                           DDIM's stochasticity; 0 deterministic, 1 DDPM-like
=============  ============================  ====================================================

A ``model`` is any callable ``model(z_t, t, cond) -> eps`` with z_t (B, ...), t (B,) int64; ``cond`` is passed
through untouched (None when unconditional). Randomness comes only from ``generator``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_finite, check_int
from .schedules import predict_x0_from_eps, q_sample, randn_like

Model = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
Callback = Callable[[dict], None]
SPACINGS = ("linspace", "leading", "trailing")


def make_timesteps(T: int, n: int, spacing: str = "linspace") -> torch.Tensor:
    """n timesteps out of [0, T-1], strictly decreasing, for a sampler of n steps.

    Args:
        T: steps of the training schedule.
        n: sampler steps, 1 <= n <= T.
        spacing: ``"linspace"`` (round(linspace(T-1, 0, n)): from T-1 down to 0), ``"leading"`` (0, k, 2k, ...
            with k = T // n, DDIM's choice: it never reaches T-1, and with n = 1 its only step is t = 0) or
            ``"trailing"`` (T-1, T-1-k', ... with k' = T / n, rounded; Lin et al. 2024). linspace and trailing
            always start at T-1, where the sampler's pure noise belongs.

    Returns:
        int64 tensor (n,), strictly decreasing, in [0, T-1].

    Raises:
        TypeError: if T or n is not an integer.
        ValueError: if n is not in [1, T] or the spacing is unknown.
    """
    T = check_int("T", T, 1)
    n = check_int("n (sampler steps)", n, 1, T)
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long()
    if spacing == "leading":
        return (torch.arange(n, dtype=torch.int64) * (T // n)).flip(0)
    if spacing == "trailing":
        return (T - 1 - torch.arange(n, dtype=torch.float64) * (T / n)).round().long()
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


def _alpha_bar_pair(alpha_bar: torch.Tensor, t: int, t_prev: int) -> tuple[float, float]:
    """(alpha_bar_t, alpha_bar_{t_prev}) as Python floats (float64), with alpha_bar_{-1} = 1."""
    return float(alpha_bar[t]), (float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0)


def _replace_known(z: torch.Tensor, t: torch.Tensor, known: tuple, alpha_bar: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Inpainting without training, "blended" latents (the reference code's DDIM ``mask`` and ``x0``; Avrahami
    et al. 2023): where ``keep`` is 1, z_t is replaced by the known latent z0_known noised to t,
    sqrt(alpha_bar_t) z0_known + sqrt(1 - alpha_bar_t) eps, so that the model only generates the rest."""
    z0_known, keep = known
    return keep * q_sample(z0_known, t, randn_like(z, generator), alpha_bar) + (1 - keep) * z


def _jump_back(z_prev: torch.Tensor, a: float, a_prev: float, generator: torch.Generator | None) -> torch.Tensor:
    """RePaint's resampling jump (Lugmayr et al. 2022, Algorithm 1): from z_{t_prev} back to a fresh
    z_t ~ q(z_t | z_{t_prev}) = N(sqrt(a / a') z_{t_prev}, (1 - a / a') I), so that the step from t is taken again
    and the generated region can agree with the known one it was just given."""
    return (a / a_prev) ** 0.5 * z_prev + (1 - a / a_prev) ** 0.5 * randn_like(z_prev, generator)


def _pairs(timesteps: torch.Tensor) -> list[tuple[int, int]]:
    """Consecutive pairs (t, t_prev) of the sequence, the last paired with -1 (clean data)."""
    ts = [int(t) for t in timesteps]
    if any(a <= b for a, b in zip(ts, ts[1:])) or not ts or ts[-1] < 0:
        raise ValueError(f"timesteps must be non-empty, non-negative and strictly decreasing, got {ts}")
    return list(zip(ts, ts[1:] + [-1]))


@torch.no_grad()
def ddpm_sample(model: Model, noise: torch.Tensor, alpha_bar: torch.Tensor, timesteps: torch.Tensor, cond=None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                known: tuple[torch.Tensor, torch.Tensor] | None = None, resample: int = 1) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(z_{t_prev} | z_t, x0_hat) (DDPM Eq. 6-7, Algorithm 2). Taught
    in chapter 5.

    For each pair (t, t_prev), with a = alpha_bar_t, a' = alpha_bar_{t_prev} and beta = 1 - a / a':
        mean = sqrt(a') beta / (1 - a) x0_hat + sqrt(1 - beta) (1 - a') / (1 - a) z_t
        var  = (1 - a') / (1 - a) beta          (beta_tilde, DDPM Eq. 7)
        z_{t_prev} = mean + sqrt(var) noise      (no noise on the last step, where a' = 1 and var = 0)
    Over all T steps this is DDPM's Algorithm 2; over a subsequence it is the same posterior on a coarser chain.

    Args:
        model: eps-prediction model, ``model(z_t, t, cond)``.
        noise: z_T ~ N(0, I), (B, ...); its device and dtype are used throughout.
        alpha_bar: (T,) cumulative products of the training schedule.
        timesteps: strictly decreasing int64 (n,), usually ``make_timesteps(T, T)`` (all T steps).
        cond: passed to the model unchanged.
        generator: randomness of the ancestral noise.
        callback: called after each step with dict(step, t, z_t, x0_hat, t_prev, z_prev): the state at t, the
            prediction of the clean latent made from it, and the state the step produced at t_prev.
        known: (z0_known, keep) for inpainting without training: before each step, where ``keep`` (broadcast to
            z, 1 = known) is 1, z_t is replaced by z0_known noised to t (chapter 7's "blended" baseline).
        resample: U >= 1, RePaint's resampling (Lugmayr et al. 2022, Algorithm 1): every step but the last is
            taken U times, each time after jumping back from z_{t_prev} to a fresh z_t ~ q(z_t | z_{t_prev});
            U times the model calls. 1: no resampling. The callback sees the last of the U.

    Returns:
        z_0 samples, shape of ``noise``.
    """
    resample = check_int("resample", resample, 1)
    z = noise
    for step, (t, t_prev) in enumerate(_pairs(timesteps)):
        a, a_prev = _alpha_bar_pair(alpha_bar, t, t_prev)
        t_batch = torch.full((z.shape[0],), t, dtype=torch.int64, device=z.device)
        beta = 1 - a / a_prev
        var = (1 - a_prev) / (1 - a) * beta
        for repeat in range(resample if t_prev >= 0 else 1):
            if repeat:
                z = _jump_back(z_prev, a, a_prev, generator)
            if known is not None:
                z = _replace_known(z, t_batch, known, alpha_bar, generator)
            eps = model(z, t_batch, cond)
            x0_hat = predict_x0_from_eps(z, t_batch, eps, alpha_bar)
            mean = (a_prev**0.5 * beta / (1 - a)) * x0_hat + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * z
            z_prev = mean
            if t_prev >= 0:
                z_prev = z_prev + var**0.5 * randn_like(z, generator)
        if callback is not None:
            callback(dict(step=step, t=t, z_t=z, x0_hat=x0_hat, t_prev=t_prev, z_prev=z_prev))
        z = z_prev
    return z


@torch.no_grad()
def ddim_sample(model: Model, noise: torch.Tensor, alpha_bar: torch.Tensor, timesteps: torch.Tensor, cond=None,
                eta: float = 0.0, generator: torch.Generator | None = None, callback: Callback | None = None,
                known: tuple[torch.Tensor, torch.Tensor] | None = None, resample: int = 1) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12 with sigma from Eq. 16). Taught in chapter 5.

    For each pair (t, t_prev), with a = alpha_bar_t and a' = alpha_bar_{t_prev}:
        sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')
        z_{t_prev} = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps + sigma noise
    eta = 0 is deterministic; eta = 1 has the DDPM posterior variance.

    Args:
        model, noise, alpha_bar, cond, generator, callback, known, resample: as in :func:`ddpm_sample`.
        timesteps: strictly decreasing int64 (n,), e.g. ``make_timesteps(T, 50)``.
        eta: in [0, 1].

    Returns:
        z_0 samples, shape of ``noise``.
    """
    eta = check_finite("eta", eta, 0.0, 1.0)  # above 1, sigma^2 can exceed 1 - alpha_bar_t_prev
    resample = check_int("resample", resample, 1)
    z = noise
    for step, (t, t_prev) in enumerate(_pairs(timesteps)):
        a, a_prev = _alpha_bar_pair(alpha_bar, t, t_prev)
        t_batch = torch.full((z.shape[0],), t, dtype=torch.int64, device=z.device)
        sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        for repeat in range(resample if t_prev >= 0 else 1):
            if repeat:
                z = _jump_back(z_prev, a, a_prev, generator)
            if known is not None:
                z = _replace_known(z, t_batch, known, alpha_bar, generator)
            eps = model(z, t_batch, cond)
            x0_hat = predict_x0_from_eps(z, t_batch, eps, alpha_bar)
            z_prev = a_prev**0.5 * x0_hat + (1 - a_prev - sigma**2) ** 0.5 * eps
            if sigma > 0:
                z_prev = z_prev + sigma * randn_like(z, generator)
        if callback is not None:
            callback(dict(step=step, t=t, z_t=z, x0_hat=x0_hat, t_prev=t_prev, z_prev=z_prev))
        z = z_prev
    return z


def classifier_free_guidance(model: Model, guidance_scale: float, null_cond: Callable[[int], object]) -> Model:
    """Wrap a conditional model: eps = eps_u + guidance_scale * (eps_c - eps_u). Taught in chapter 5.

    This is Ho & Salimans 2022, Eq. 6, eps = (1 + w) eps_c - w eps_u, written with s = 1 + w as in the LDM and
    GLIDE code: s = 1 is the plain conditional model (w = 0).

    Both predictions come from one batched call on [z_t; z_t] with conditions [cond; null]. Scale 1 returns
    the conditional prediction, scale 0 the unconditional one (from one call on z_t with the null condition).

    Args:
        model: ``model(z_t, t, cond)`` where ``cond`` is a tensor with the batch on dim 0 (labels or tokens).
        guidance_scale: s >= 0.
        null_cond: ``null_cond(B)`` returns the null condition for a batch of B, the same one used in training.

    Returns:
        A model with the same signature.

    Raises:
        ValueError: if guidance_scale is not a finite number >= 0.
    """
    guidance_scale = check_finite("guidance_scale", guidance_scale, low=0.0)  # NaN or inf: NaN images
    if guidance_scale == 0:  # eps_u exactly, at half the cost: the conditional half would be multiplied by 0
        return lambda z_t, t, cond: model(z_t, t, null_cond(z_t.shape[0]))

    def guided(z_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        B = z_t.shape[0]
        eps_c, eps_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, null_cond(B)])).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    return guided


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of the same shape (Shoemake 1985), over all elements:
    sin((1 - w) theta) / sin(theta) * z_a + sin(w theta) / sin(theta) * z_b, theta the angle between them.

    Gaussian noise in many dimensions lives near a sphere of radius sqrt(d); a straight line between two such
    points passes well inside it (at w = 0.5 its norm is about 0.71 sqrt(d)), where the sampler has never seen
    a starting point, while slerp stays near the sphere. weight in [0, 1]; returns z_a at 0 and z_b at 1.
    """
    check_finite("weight", weight, 0.0, 1.0)
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    a, b = z_a.flatten().double(), z_b.flatten().double()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    if theta < 1e-6:  # parallel up to rounding (sin(theta) ~ 0): the sphere's arc is a line
        return torch.lerp(z_a, z_b, weight)
    if torch.pi - theta < 1e-6:  # antiparallel: every great circle joins them, so no one arc is "the" slerp
        raise ValueError("z_a and z_b point in opposite directions: spherical interpolation is not defined")
    mixed = (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / torch.sin(theta)
    return mixed.view_as(z_a).to(z_a.dtype)

"""The one training loop every model goes through, the diffusion objective, and the one way a diffusion model
is fitted on the latents of a frozen first stage."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Collection

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from .attention import explicit_attention
from .cache import Checkpoint, load_checked, save_atomic
from .checks import check_finite, check_int
from .conditioning import condition_dropout
from .schedules import q_sample, randn_like, rng_device, v_from_eps_x0

PREDICTIONS = ("eps", "v")  # what the denoiser outputs: the noise (DDPM), or v (Salimans & Ho 2022)
LR_DECAYS = ("constant", "cosine")
T_SAMPLINGS = ("uniform", "logit_normal")  # how diffusion_loss draws t (timestep_probabilities)


class Batches:
    """Minibatches as a pure function of the step, so a resumed run sees exactly the data an uninterrupted run
    would: epoch e visits the N examples in the order ``randperm(N)`` seeded with ``seed + e``; a last,
    incomplete batch of an epoch is dropped.

    Args:
        tensors: tensors with the same first dimension N (on any one device).
        batch_size: 1 <= batch_size <= N.
        seed: seed of the permutations.

    ``batches(step)`` returns a tuple of tensors with first dimension ``batch_size``.

    Raises:
        TypeError: if batch_size is not an integer.
        ValueError: if batch_size is out of range or the first dimensions differ.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0):
        n = tensors[0].shape[0]
        check_int("batch_size", batch_size, 1)
        if not 1 <= batch_size <= n or any(x.shape[0] != n for x in tensors):
            raise ValueError(f"need 1 <= batch_size <= N and equal first dimensions, got batch_size={batch_size}, "
                             f"shapes {[tuple(x.shape) for x in tensors]}")
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._order = -1, None

    def __call__(self, step: int) -> tuple:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch = epoch
            self._order = torch.randperm(self.tensors[0].shape[0], generator=generator).to(self.tensors[0].device)
        index = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        return tuple(x[index] for x in self.tensors)


def loss_weight(alpha_bar: torch.Tensor, t: torch.Tensor, prediction: str = "eps",
                min_snr_gamma: float | None = None) -> torch.Tensor:
    """The weight w_t of each timestep's regression error in :func:`diffusion_loss`, (B,) float64.

    With ``min_snr_gamma`` None every timestep weighs 1: the paper's L_simple (Eq. 2) for eps-prediction, plain
    v-MSE for v-prediction. Min-SNR-gamma weighting (Hang et al. 2023) clamps each timestep's
    weight *in x0-space* at gamma: w = min(SNR_t, gamma) / SNR_t on the eps error, min(SNR_t, gamma) / (SNR_t + 1)
    on the v error, where SNR_t = alpha_bar_t / (1 - alpha_bar_t): the nearly clean timesteps, which the eps error
    weighs by SNR_t in x0-space (||eps - eps_hat||^2 = SNR_t ||x0 - x0_hat||^2), are turned down. Taught in
    chapter 2.

    Raises:
        ValueError: for an unknown prediction or gamma <= 0.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if min_snr_gamma is None:
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    check_finite("min_snr_gamma (or None)", min_snr_gamma, low=0.0, open_low=True)
    a = alpha_bar.to(t.device)[t]
    snr = a / (1 - a)
    return snr.clamp(max=min_snr_gamma) / (snr if prediction == "eps" else snr + 1)


def check_t_sampling(t_sampling: str) -> str:
    """``t_sampling`` if it is one of :data:`T_SAMPLINGS`.

    Raises:
        ValueError: otherwise, naming the choices.
    """
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
    return t_sampling


def timestep_probabilities(T: int, t_sampling: str = "uniform") -> torch.Tensor:
    """P(t) of each timestep index t = 0, ..., T-1 under a timestep sampling of :func:`diffusion_loss`, (T,)
    float64 on the CPU, summing to 1. Taught in chapter 2.

    ``"uniform"``: 1 / T (DDPM, and the paper's L_simple). ``"logit_normal"``: t = floor(T sigmoid(u)) with
    u ~ N(0, 1), so P(t) = Phi(logit((t + 1) / T)) - Phi(logit(t / T)): the middle indices are drawn most (1.6 / T
    at T / 2), both ends hardly ever (P(0) = P(T - 1) = 2.5e-12 for T = 1000). This is the shape of the
    logit-normal sampling of Esser et al. 2024 (Sec. 3.1, m = 0, s = 1), put on the *index* of the schedule, not on
    the paper's rectified-flow time: along DDPM's linear schedule the middle index has log-SNR -2.5 (SNR = 1 is at
    t = 259), where the paper's middle has log-SNR 0. Drawing t from P is, in expectation, the uniform draw with
    the loss weight T P(t): a timestep sampling is a loss weighting that spends the training steps where the
    weight is.

    Raises:
        TypeError, ValueError: for a T that is not an integer >= 1, or an unknown t_sampling.
    """
    check_int("T", T, 1)
    if check_t_sampling(t_sampling) == "uniform":
        return torch.full((T,), 1 / T, dtype=torch.float64)
    edges = torch.special.logit(torch.arange(T + 1, dtype=torch.float64) / T)  # -inf at 0, +inf at T
    return torch.diff(torch.special.ndtr(edges))


def sample_timesteps(B: int, T: int, t_sampling: str = "uniform", generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Timestep indices drawn as :func:`timestep_probabilities` says.

    Args:
        B: how many, >= 0. T: the number of timesteps, >= 1. t_sampling: one of :data:`T_SAMPLINGS`.
        generator: drawn from on its own device (the uniform draw is ``torch.randint``'s, number for number).
        device: where the result goes.

    Returns:
        (B,) int64 in [0, T-1] on ``device``. The logit-normal's u is drawn in float64, as the closed form's bin
        edges are computed, so that floor(T sigmoid(u)) falls in the bin the closed form gives it.

    Raises:
        TypeError, ValueError: for B or T that are not integers >= 0 and >= 1, or an unknown t_sampling.
    """
    check_int("B", B, 0)
    check_int("T", T, 1)
    where = rng_device(generator, device)
    if check_t_sampling(t_sampling) == "uniform":
        return torch.randint(0, T, (B,), generator=generator, device=where).to(device)
    u = torch.randn((B,), generator=generator, device=where, dtype=torch.float64)
    return (torch.sigmoid(u) * T).long().clamp(max=T - 1).to(device)  # sigmoid(u) = 1 in float64 for u > 37


def diffusion_loss(model: nn.Module, z0: torch.Tensor, alpha_bar: torch.Tensor, cond=None,
                   generator: torch.Generator | None = None, prediction: str = "eps",
                   min_snr_gamma: float | None = None, concat: torch.Tensor | None = None, *,
                   t_sampling: str = "uniform") -> torch.Tensor:
    """The LDM objective (paper Eq. 2; DDPM's simplified loss L_simple, Ho et al. 2020, Eq. 14), taught in chapter 2:
    E_{z0, eps ~ N(0, I), t ~ P(t)} w_t || target - model(z_t, t, cond) ||^2, averaged per element, where the
    target is eps (``prediction="eps"``) or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z0 (``"v"``), and
    w_t is :func:`loss_weight` (1 for every t unless ``min_snr_gamma`` is set; eps without it is exactly L_simple).

    Args:
        model: ``model(z_t, t, cond) -> eps_hat`` (or v_hat), or ``model(z_t, t, cond, concat)`` with ``concat``.
        z0: clean (scaled) latents or images (B, ...).
        alpha_bar: (T,) schedule.
        cond: condition passed to the model (labels after condition dropout, or None).
        generator: randomness of t and eps.
        prediction, min_snr_gamma: see :func:`loss_weight`.
        concat: a spatial condition (B, k, h, w) concatenated to z_t at the UNet's input, or None.
        t_sampling: P(t), see :func:`timestep_probabilities` (``"uniform"``: t ~ U{0..T-1}).

    Returns:
        scalar loss.
    """
    B, T = z0.shape[0], alpha_bar.shape[0]
    t = sample_timesteps(B, T, t_sampling, generator, z0.device)
    eps = randn_like(z0, generator)
    z_t = q_sample(z0, t, eps, alpha_bar)
    target = eps if prediction == "eps" else v_from_eps_x0(eps, z0, t, alpha_bar)
    out = model(z_t, t, cond) if concat is None else model(z_t, t, cond, concat)
    error = (out - target).pow(2).flatten(1).mean(1)  # (B,) per-example mean squared error
    return (loss_weight(alpha_bar, t, prediction, min_snr_gamma).to(error.dtype) * error).mean()


def training_flops(model: nn.Module, z0: torch.Tensor, cond=None) -> int:
    """Floating-point operations of one training step of ``model`` on the batch ``z0``: the forward and backward
    pass of :func:`diffusion_loss`, counted by ``torch.utils.flop_counter`` (matrix products and convolutions,
    the bulk of the work, attention's included; elementwise operations are not counted). Deterministic, unlike a
    wall-clock time, so it can decide step counts; the optimiser's update is not included."""
    alpha_bar = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    counter = FlopCounterMode(display=False)
    with counter, explicit_attention():  # attention's matrix products as written, which the counter sees
        diffusion_loss(model, z0, alpha_bar, cond, torch.Generator(z0.device).manual_seed(0)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def lr_factor(step: int, steps: int, warmup_steps: int = 0, decay: str = "constant") -> float:
    """The learning rate at 0-based ``step`` of ``steps``, as a fraction of the peak: a linear warm-up over the
    first ``warmup_steps`` ((step + 1) / warmup_steps), then constant or a cosine decay,
    0.5 (1 + cos(pi (step - warmup_steps) / (steps - warmup_steps))), which would reach 0 one step after the last.
    A pure function of the step, so a resumed run follows the same schedule.

    Raises:
        ValueError: for an unknown decay or warmup_steps outside [0, steps).
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"decay must be one of {LR_DECAYS}, got {decay!r}")
    if not 0 <= warmup_steps < max(steps, 1):
        raise ValueError(f"warmup_steps must lie in [0, steps={steps}), got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (steps - warmup_steps)))


def ema_decay_at(update: int, decay: float, warmup: bool = True) -> float:
    """The EMA's decay at its ``update``-th update (1-based): min(decay, (1 + n) / (10 + n)) with warm-up, as the
    reference code's ``LitEma``; ``decay`` without. The warm-up keeps the first steps' weights from lingering in
    the average: with decay 0.995 and no warm-up, after 86 steps 65% of the average is still the first step's.
    (torch's AveragedModel copies the weights at update 1, so update 1 is a copy whatever this returns.)"""
    return min(decay, (1 + update) / (10 + update)) if warmup else decay


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """The EMA of ``model``'s weights and buffers that :func:`train` keeps: torch's AveragedModel, updated by
    ``ema.update_parameters(model)`` as ema <- d ema + (1 - d) w with d = :func:`ema_decay_at` of that update."""

    def update(ema_params: list, params: list, num_averaged: torch.Tensor) -> None:
        get_ema_multi_avg_fn(ema_decay_at(int(num_averaged) + 1, decay, warmup))(ema_params, params, num_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def adamw(parameters, lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay (that is, Adam; Loshchilov & Hutter 2019), the optimiser of every model here, in
    torch's default implementation (on a CPU, a loop that updates one tensor at a time).

    torch's fused one (``fused=True``) computes the same update up to float rounding and is 6-8x faster per update
    for the book's UNet (1.2 against 7.5-9.3 ms, 209 tensors, 2 CPU cores: 7-9% of a training step), but rounding
    differences grow over a run like another seed: with it the book's autoencoder ended at rFID 56 instead of 14
    (PSNR 24.2 against 25.5 dB) and appendix A's claim about its floor failed. It is not used until the claims that
    depend on one run's luck (the autoencoder's above all) hold across such perturbations."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)


def train(model: nn.Module, loss_fn: Callable, *, steps: int, lr: float, desc: str,
          grad_clip: float | None = 1.0, ema_decay: float | None = None, ema_warmup: bool = True,
          warmup_steps: int = 0, lr_decay: str = "constant", generator: torch.Generator | None = None,
          discriminator: nn.Module | None = None, discriminator_lr: float | None = None,
          checkpoint: Checkpoint | str | Path | None = None, checkpoint_every: int = 250,
          monitor: Callable[[nn.Module], dict] | None = None, monitor_every: int | Collection[int] = 0) -> dict:
    """The one training loop: AdamW, gradient clipping, optional EMA and discriminator, a progress bar, a loss
    history, and checkpoints to resume from.

    Each step calls ``loss_fn(step)``, which draws its own batch (for example with :class:`Batches`) and returns
    the loss, or ``(loss, logs)``, or ``(loss, logs, discriminator_loss)``; logs is a dict of floats shown on
    the progress bar. A discriminator loss (None before the discriminator starts) is minimised by a second
    AdamW over ``discriminator``'s parameters, after the model's step; it must not backpropagate into the model.

    Resuming: with ``checkpoint`` set, the model, optimisers, EMA, loss history and ``generator``'s state are
    saved there atomically every ``checkpoint_every`` steps and once more at the end, and a run that finds the file
    continues from its step. With batches drawn by step (:class:`Batches`) and all other randomness from
    ``generator``, the resumed run computes exactly what an uninterrupted one would. The file records what made it
    (the :class:`~ldm_core.cache.Checkpoint`'s ``made_by``, the step count, the optimiser's settings, the
    parameters' names and shapes): a file that another run made, or that cannot be read, is set aside
    (:func:`~ldm_core.cache.set_aside`, with a warning) and training starts from step 0. The finished file is
    kept, so that nothing is lost if the caller's next write fails: the caller removes it once the result is safe
    (:func:`~ldm_core.cache.load_or_train` does, after writing the cache file); a finished checkpoint resumes to
    the same result without a step.

    Args:
        model: the module to train (set to train mode, then eval mode).
        steps: total optimiser steps, >= 1.
        lr: peak learning rate of AdamW (weight decay 0), scheduled by :func:`lr_factor` with ``warmup_steps`` and
            ``lr_decay``; ``discriminator_lr`` (constant) defaults to it.
        desc: label of the progress bar.
        grad_clip: max global gradient norm of the model, or None.
        ema_decay: if set, keep an exponential moving average of the weights (decay per step, e.g. 0.999, with
            :func:`ema_decay_at`'s warm-up unless ``ema_warmup`` is False) and copy it into ``model`` at the end:
            the returned model is the average.
        generator: the random generator ``loss_fn`` uses, saved and restored with checkpoints.
        monitor: if set, called every ``monitor_every`` (>= 1) steps, or after each number of steps in
            ``monitor_every`` if it is a collection, and after the last, with the model that would be returned at
            that point (the EMA if there is one), in eval mode and without gradients; it returns a
            dict of numbers, recorded with the step and the training seconds so far (its own time excluded), and
            kept in checkpoints like the loss history.

    Returns:
        dict(loss=[float per step], seconds=training wall time, summed over resumed segments,
        monitor=[dict(step, seconds, **numbers)] if ``monitor`` is set).

    Raises:
        TypeError, ValueError: for steps, lr, checkpoint_every or monitor_every that are not positive numbers of
            their kind (integers where they count steps).
        FloatingPointError: if a loss is not finite.
    """
    steps = check_int("steps", steps, 1)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    lr = check_finite("lr", lr, low=0.0, open_low=True)
    optimizer = adamw(model.parameters(), lr)
    d_optimizer = adamw(discriminator.parameters(), discriminator_lr or lr) if discriminator is not None else None
    lr_factor(0, steps, warmup_steps, lr_decay)  # validates the schedule before any work
    monitor_at = None  # the step counts to monitor after, when given as a collection
    if monitor is not None and isinstance(monitor_every, Collection):
        monitor_at = {check_int("each of monitor_every", n, 1, steps) for n in monitor_every} | {steps}
    elif monitor is not None:
        check_int("monitor_every (with a monitor)", monitor_every, 1)
    ema = make_ema(model, ema_decay, ema_warmup) if ema_decay is not None else None
    losses: list[float] = []
    monitored: list[dict] = []
    seconds_before = 0.0  # training seconds of the segments a checkpoint carries
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(Path(checkpoint))
    run = json.dumps({"made_by": checkpoint.made_by if checkpoint else "", "steps": steps, "lr": lr,
                      "warmup_steps": warmup_steps, "lr_decay": lr_decay, "grad_clip": grad_clip,
                      "ema_decay": ema_decay, "ema_warmup": ema_warmup, "discriminator_lr": discriminator_lr,
                      "parameters": [[name, list(p.shape)] for name, p in model.state_dict().items()],
                      "discriminator": discriminator is not None, "generator": generator is not None},
                     sort_keys=True)
    parts = ((d_optimizer, "d_optimizer"), (discriminator, "discriminator"), (ema, "ema"), (generator, "generator"))
    keys = {"model", "optimizer", "loss", "seconds", "monitor"} | {key for part, key in parts if part is not None}
    state = None if checkpoint is None else load_checked(
        checkpoint.path, next(model.parameters()).device,
        lambda state: isinstance(state, dict) and state.get("run") == run and keys <= set(state),
        "this checkpoint was made by another run (recipe, steps, optimiser or architecture), not by this one")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for part, key in ((d_optimizer, "d_optimizer"), (discriminator, "discriminator"), (ema, "ema")):
            if part is not None:
                part.load_state_dict(state[key])
        if generator is not None:
            generator.set_state(state["generator"].cpu())  # a generator's state is a CPU byte tensor on any device
        losses = list(state["loss"])
        seconds_before = float(state["seconds"])
        monitored = [dict(point) for point in state["monitor"]]

    def save() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loss": losses, "run": run,
                 "seconds": seconds_before + time.perf_counter() - start - monitor_seconds, "monitor": monitored}
        for part, key in ((d_optimizer, "d_optimizer"), (discriminator, "discriminator"), (ema, "ema")):
            if part is not None:
                state[key] = part.state_dict()
        if generator is not None:
            state["generator"] = generator.get_state()
        save_atomic(state, checkpoint.path)

    model.train()
    if discriminator is not None:
        discriminator.train()
    start, monitor_seconds = time.perf_counter(), 0.0

    def watch(step: int) -> None:
        nonlocal monitor_seconds
        begin = time.perf_counter()
        watched = ema.module if ema is not None else model
        watched.eval()
        with torch.no_grad():
            numbers = monitor(watched)
        watched.train()
        monitored.append({"step": step, "seconds": seconds_before + begin - start - monitor_seconds, **numbers})
        monitor_seconds += time.perf_counter() - begin

    with tqdm(range(len(losses), steps), desc=desc, mininterval=2.0, initial=len(losses), total=steps) as bar:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup_steps, lr_decay)
            out = loss_fn(step)
            loss, logs, d_loss = (*out, None, None)[:3] if isinstance(out, tuple) else (out, {}, None)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if d_loss is not None:
                d_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                d_optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", **{k: f"{v:.3g}" for k, v in (logs or {}).items()})
            if monitor is not None and (step + 1 in monitor_at if monitor_at is not None else
                                        (step + 1) % monitor_every == 0 or step + 1 == steps):
                watch(step + 1)
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save()
    seconds = time.perf_counter() - start - monitor_seconds
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    last = losses[-min(50, len(losses)):]
    # one plain line that outlives the progress bar (the HTML book hides the bar: TQDM_DISABLE=1 in `make book`)
    print(f"{desc}: {steps} steps, {seconds:.0f} s in this run; mean loss over the last {len(last)} steps "
          f"{sum(last) / len(last):.4g}", flush=True)
    history = {"loss": losses, "seconds": seconds_before + seconds}
    if monitor is not None:
        history["monitor"] = monitored
    return history


def fit_diffusion(model: nn.Module, first_stage: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe, *, desc: str,
                  checkpoint: Checkpoint | str | Path | None = None,
                  to_condition: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  to_concat: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  monitor: Callable[[nn.Module], dict] | None = None,
                  monitor_every: int | Collection[int] = 0) -> dict:
    """Train a denoiser on the latents of a frozen first stage: the one training path of every diffusion model.

    The images are encoded once, keeping the posterior's mean and std; every step then draws fresh latents
    z_0 = scale_factor * (mean + std * eps) (paper Sec. 3.2 and Appendix G: diffusion on scaled samples of
    q(z | x)), replaces a fraction ``recipe.p_uncond`` of the conditions by the null condition (condition
    dropout, for classifier-free guidance) and minimises :func:`diffusion_loss` with the recipe's prediction and
    weighting, through :func:`train` with the recipe's learning-rate schedule, EMA and checkpoints.

    Args:
        model: a :class:`~ldm_core.unet.Denoiser`; conditional when its ``conditioner`` is set.
        first_stage: the frozen autoencoder (or :class:`~ldm_core.autoencoder.PixelSpace`), on the model's device.
        x: images (N, C, H, W) in [-1, 1].
        y: what the condition is made from, (N, ...), batched with the images (labels, digit pairs).
        recipe: a :class:`~ldm_core.recipes.DiffusionRecipe` (steps, batch size, optimiser, EMA, schedule, seed).
        to_condition: ``to_condition(y_batch, generator)`` -> the conditioner's input (default: y itself), for
            example captions drawn for digit pairs.
        to_concat: ``to_concat(x_batch, generator)`` -> the spatial condition (B, concat_channels, h, w) of a UNet
            with ``concat_channels``, made from the batch's images in [-1, 1] (a masked image's latent and the mask,
            a low-resolution image); it is not dropped with the condition.
        monitor, monitor_every: see :func:`train` (the study of :mod:`ldm_core.bench` measures along a run).

    Returns:
        :func:`train`'s history.
    """
    device = next(model.parameters()).device
    with torch.no_grad():
        posterior = [first_stage.encode(chunk.to(device)) for chunk in x.split(500)]
    mean, std = torch.cat([p.mean for p in posterior]), torch.cat([p.std for p in posterior])  # (N, c, h, w)
    generator = torch.Generator(device).manual_seed(recipe.seed)
    images = (x.to(device),) if to_concat is not None else ()
    batches = Batches(mean, std, y.to(device), *images, batch_size=recipe.batch_size, seed=recipe.seed)
    alpha_bar = recipe.alpha_bar().to(device)
    scale = first_stage.scale_factor

    def loss_fn(step: int) -> torch.Tensor:
        mean_b, std_b, y_b, *x_b = batches(step)
        z0 = scale * (mean_b + std_b * randn_like(mean_b, generator))
        cond = None
        if model.conditioner is not None:
            cond = to_condition(y_b, generator) if to_condition is not None else y_b
            cond = condition_dropout(cond, model.conditioner.null(len(cond), device), recipe.p_uncond, generator)
        concat = to_concat(x_b[0], generator) if to_concat is not None else None
        return diffusion_loss(model, z0, alpha_bar, cond, generator, recipe.prediction, recipe.min_snr_gamma, concat,
                              t_sampling=recipe.t_sampling)

    return train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc=desc, ema_decay=recipe.ema_decay,
                 ema_warmup=recipe.ema_warmup, warmup_steps=recipe.warmup_steps, lr_decay=recipe.lr_decay,
                 generator=generator, checkpoint=checkpoint, monitor=monitor, monitor_every=monitor_every)

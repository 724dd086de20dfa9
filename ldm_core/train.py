"""The losses the book minimises and the one training loop every model goes through."""

from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from .autoencoder import Autoencoder
from .schedules import q_sample, randn_like


def random_batches(*tensors: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
    """Endless minibatches: a fresh random permutation every epoch, drawn from ``generator``.

    Args:
        tensors: tensors with the same first dimension N (on the generator's device).
        batch_size: 1 <= batch_size <= N; a last, incomplete batch of an epoch is dropped.

    Yields:
        tuples of tensors of first dimension ``batch_size``.
    """
    n = tensors[0].shape[0]
    if not 1 <= batch_size <= n or any(x.shape[0] != n for x in tensors):
        raise ValueError(f"need 1 <= batch_size <= N and equal first dimensions, got batch_size={batch_size}, "
                         f"shapes {[tuple(x.shape) for x in tensors]}")
    while True:
        order = torch.randperm(n, generator=generator, device=generator.device)
        for i in range(0, n - batch_size + 1, batch_size):
            index = order[i:i + batch_size]
            yield tuple(x[index] for x in tensors)


def autoencoder_loss(autoencoder: Autoencoder, x: torch.Tensor, kl_weight: float,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """L1 reconstruction plus a slight KL penalty, both summed per image and averaged over the batch.

    loss = mean_b [ sum_pixels |x - D(z)| + kl_weight * KL(q(z | x) || N(0, I)) ],  z ~ q(z | x).
    This is the reduction of the reference code, so ``kl_weight`` = 1e-6 means what it means in the paper
    (Sec. 3.1: "a slight KL-penalty"); with per-pixel means instead, the same number would weigh the KL
    H * W * C times more.

    Args:
        x: images (B, C, H, W) in [-1, 1].

    Returns:
        (loss, logs) with logs = dict(l1=mean absolute error per pixel, kl=mean KL per image).
    """
    x_hat, posterior = autoencoder(x, generator)
    rec = (x - x_hat).abs().flatten(1).sum(1)  # (B,)
    kl = posterior.kl()  # (B,)
    loss = (rec + kl_weight * kl).mean()
    return loss, {"l1": rec.detach().mean().item() / x[0].numel(), "kl": kl.detach().mean().item()}


def diffusion_loss(model: nn.Module, z0: torch.Tensor, alpha_bar: torch.Tensor, cond=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The LDM objective (paper Eq. 2; Eq. 1 of DDPM's simplified loss):
    E_{z0, eps ~ N(0, I), t ~ U{0..T-1}} || eps - eps_theta(z_t, t, cond) ||^2, averaged per element.

    Args:
        model: ``model(z_t, t, cond) -> eps_hat``.
        z0: clean (scaled) latents or images (B, ...).
        alpha_bar: (T,) schedule.
        cond: condition passed to the model (labels after condition dropout, or None).
        generator: randomness of t and eps.

    Returns:
        scalar loss.
    """
    B, T = z0.shape[0], alpha_bar.shape[0]
    t = torch.randint(0, T, (B,), generator=generator, device=generator.device if generator else z0.device).to(z0.device)
    eps = randn_like(z0, generator)
    z_t = q_sample(z0, t, eps, alpha_bar)
    return (model(z_t, t, cond) - eps).pow(2).mean()


def train(model: nn.Module, loss_fn: Callable[[], torch.Tensor | tuple[torch.Tensor, dict]], *, steps: int,
          lr: float, desc: str, grad_clip: float | None = 1.0) -> dict:
    """The one training loop: Adam(W), gradient clipping, a progress bar, a loss history.

    Args:
        model: the module whose parameters are trained (set to train mode, then back to eval mode).
        loss_fn: called once per step with no arguments (it draws its own batch); returns the loss, or
            (loss, logs) where logs is a dict of floats shown on the progress bar.
        steps: optimiser steps, >= 1.
        lr: learning rate of AdamW (weight decay 0).
        desc: label of the progress bar.
        grad_clip: max global gradient norm, or None.

    Returns:
        dict(loss=[float per step], seconds=wall time).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    with tqdm(range(steps), desc=desc, mininterval=2.0) as bar:
        for step in bar:
            out = loss_fn()
            loss, logs = out if isinstance(out, tuple) else (out, {})
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", **{k: f"{v:.3g}" for k, v in logs.items()})
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start}

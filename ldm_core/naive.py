"""A naive latent diffusion, as many first attempts build it, and the switches that repair it (appendix A).

The pipeline reproduced is that of a widely shared notebook ("ReproLDM-2022"), on the book's 32x32 digits in [-1, 1]:

- :class:`NaiveVAE`: two strided convolutions, flattened, two linear heads for the mean and log-variance of a
  16-dimensional latent; the decoder mirrors it. Its loss, :func:`naive_vae_loss` with ``reduction="mean"``, is
  ``F.mse_loss(x_hat, x)`` plus the KL *averaged* over the 16 dimensions, where a VAE's bound sums both.
- :class:`MLPDenoiser`: a 16-128-128-16 MLP with ReLUs that, in the notebook, never sees t
  (``time_conditional=False``).
- :func:`naive_sample`: 50 DDIM-like steps t = 980, 960, ..., 0 whose last step lands on alpha_bar_0 = 1 - beta_1
  instead of 1 (``last_alpha_bar="alpha_bar_0"``), with no clipping.

Each switch is one of the appendix's repairs, so the table it prints changes one thing a row. The book's own
models (:mod:`ldm_core.autoencoder`, :mod:`ldm_core.unet`, :mod:`ldm_core.samplers`) are the end of that road.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_finite, check_images, check_int
from .schedules import alpha_bar_from_betas, linear_beta_schedule, predict_x0_from_eps, randn_like
from .train import Batches, diffusion_loss, train
from .unet import timestep_embedding

REDUCTIONS = ("mean", "sum")
LAST_ALPHA_BARS = ("alpha_bar_0", "one")


class NaiveVAE(nn.Module):
    """The notebook's VAE with a flat latent of ``latent_dim`` numbers per 32x32 image.

    Encoder: Conv(1->32, 4, 2, 1)-ReLU, Conv(32->64, 4, 2, 1)-ReLU, flatten (4,096), Linear(4096 -> latent_dim)
    heads for mu and log-variance. Decoder: Linear(latent_dim -> 4096), view (64, 8, 8), ConvT(64->32, 4, 2, 1)-ReLU,
    ConvT(32->1, 4, 2, 1)-Tanh.
    """

    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                     nn.Flatten())
        self.to_mu, self.to_logvar = nn.Linear(4096, latent_dim), nn.Linear(4096, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 4096), nn.Unflatten(1, (64, 8, 8)),
                                     nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, latent_dim), of images x (B, 1, 32, 32) in [-1, 1].

        Raises:
            ValueError: if x is not a batch of 1-channel 32x32 images.
        """
        x = check_images("x", x, 1)
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"x must be (B, 1, 32, 32), got {tuple(x.shape)}")
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 32, 32) in [-1, 1] (tanh) from latents z (B, latent_dim)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z)


def naive_vae_loss(vae: NaiveVAE, x: torch.Tensor, generator: torch.Generator | None = None,
                   reduction: str = "mean", kl_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The VAE's loss on a batch x (B, 1, 32, 32) in [-1, 1], with a reparameterised sample z = mu + sigma eps.

    - ``reduction="mean"`` (the notebook): F.mse_loss(x_hat, x), a mean over every pixel, plus ``kl_weight`` times
      the KL to N(0, I) averaged over the latent's dimensions and the batch.
    - ``reduction="sum"``: the squared error summed over each image's pixels plus ``kl_weight`` times the KL
      summed over the dimensions, both averaged over the batch: with weight 1, the negative ELBO of a Gaussian
      decoder of variance 1/2, up to a constant (Kingma & Welling 2014).

    KL(N(mu, sigma^2) || N(0, 1)) = -1/2 (1 + log sigma^2 - mu^2 - sigma^2) per dimension.

    Returns:
        (loss, dict(reconstruction, kl)) with the two terms as floats, in the reduction's units, unweighted.

    Raises:
        ValueError: for an unknown reduction or a negative weight.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    kl_weight = check_finite("kl_weight", kl_weight, 0.0)
    mu, logvar = vae.encode(x)
    z = mu + (0.5 * logvar).exp() * randn_like(mu, generator)
    x_hat = vae.decode(z)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())  # (B, latent_dim)
    if reduction == "mean":
        reconstruction, kl = F.mse_loss(x_hat, x), kl.mean()
    else:
        reconstruction, kl = (x_hat - x).pow(2).flatten(1).sum(1).mean(), kl.sum(1).mean()
    return reconstruction + kl_weight * kl, {"reconstruction": reconstruction.item(), "kl": kl.item()}


class MLPDenoiser(nn.Module):
    """An MLP noise predictor over flat latents: Linear(dim -> hidden)-ReLU-Linear(hidden -> hidden)-ReLU-
    Linear(hidden -> dim), the notebook's with dim = 16, hidden = 128.

    With ``time_conditional=False`` (the notebook) it ignores t; with True, a sinusoidal embedding of t
    (:func:`~ldm_core.unet.timestep_embedding`, width ``hidden``) through Linear-SiLU-Linear is added to both hidden
    layers, as a UNet's ResBlocks add it to their features.

    Call: ``model(z_t, t, cond=None)`` with z_t (B, dim), t (B,) int64 -> eps (B, dim): a sampler's model.
    """

    def __init__(self, dim: int = 16, hidden: int = 128, time_conditional: bool = False):
        super().__init__()
        self.dim, self.hidden = check_int("dim", dim, 1), check_int("hidden", hidden, 2)
        self.time_conditional = bool(time_conditional)
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, dim)])
        self.time_embed = (nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * hidden))
                           if time_conditional else None)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if z_t.ndim != 2 or z_t.shape[1] != self.dim:
            raise ValueError(f"z_t must be (B, {self.dim}), got {tuple(z_t.shape)}")
        h = z_t
        shifts = (self.time_embed(timestep_embedding(t, self.hidden)).chunk(2, dim=1) if self.time_conditional
                  else (0, 0))
        for layer, shift in zip(self.layers[:2], shifts):
            h = F.relu(layer(h) + shift)
        return self.layers[2](h)


@torch.no_grad()
def naive_sample(model: nn.Module, noise: torch.Tensor, alpha_bar: torch.Tensor, stride: int = 20,
                 last_alpha_bar: str = "alpha_bar_0") -> torch.Tensor:
    """The notebook's sampler: from z = noise, for t = T - stride, T - 2 stride, ..., 0 (50 steps for T = 1000,
    stride 20), x0_hat = (z - sqrt(1 - a_t) eps) / sqrt(a_t) and z = sqrt(a') x0_hat + sqrt(1 - a') eps, with
    a' = alpha_bar[max(t - stride, 0)]: deterministic DDIM (Song et al. 2021, Eq. 12, eta = 0).

    ``last_alpha_bar="alpha_bar_0"`` is the notebook's: its last step (t = 0) takes a' = alpha_bar_0 = 1 - beta_1,
    so it returns sqrt(a') x0_hat + sqrt(1 - a') eps, not x0_hat. ``"one"`` takes a' = 1 after t = 0, as
    :func:`~ldm_core.samplers.ddim_sample` does, and returns x0_hat.

    Args:
        model: ``model(z_t, t, None) -> eps``.
        noise: (B, ...) the starting z.
        alpha_bar: (T,) cumulative products.
        stride: 1 <= stride < T.

    Returns:
        samples, shape of ``noise``.
    """
    T = len(alpha_bar)
    stride = check_int("stride", stride, 1, T - 1)
    if last_alpha_bar not in LAST_ALPHA_BARS:
        raise ValueError(f"last_alpha_bar must be one of {LAST_ALPHA_BARS}, got {last_alpha_bar!r}")
    z = noise
    for t in range(T - stride, -1, -stride):
        t_batch = torch.full((z.shape[0],), t, dtype=torch.int64, device=z.device)
        eps = model(z, t_batch, None)
        x0_hat = predict_x0_from_eps(z, t_batch, eps, alpha_bar)
        a_prev = 1.0 if (t == 0 and last_alpha_bar == "one") else float(alpha_bar[max(t - stride, 0)])
        z = a_prev**0.5 * x0_hat + (1 - a_prev) ** 0.5 * eps
    return z


def latent_statistics(mu: torch.Tensor, std: torch.Tensor, threshold: float = 0.01) -> dict[str, float]:
    """How much a VAE's posterior says about its input, from its means and standard deviations (N, D) of N images.

    Returns:
        dict(mu_spread: std of mu across the images, averaged over dimensions (0: every image has the same
        posterior); posterior_std: mean of sigma (1 with a KL-collapsed posterior); active_units: how many
        dimensions have Var_x[mu] > threshold (Burda et al. 2016)).
    """
    spread = mu.std(dim=0)
    return {"mu_spread": spread.mean().item(), "posterior_std": std.mean().item(),
            "active_units": int((spread.pow(2) > threshold).sum())}


# ------------------------------------------------------------------------------------ the notebook's training

NOTEBOOK_EPOCHS = {"vae": 5, "denoiser": 10}  # the reproduction's; the repaired runs take the budget table's
NOTEBOOK_LR, NOTEBOOK_BATCH = 2e-4, 128  # Adam (AdamW with weight decay 0 is Adam), no gradient clipping


def naive_alpha_bar() -> torch.Tensor:
    """The notebook's schedule: DDPM's linear betas from 1e-4 to 0.02 over T = 1000 steps, as alpha_bar (1000,)."""
    return alpha_bar_from_betas(linear_beta_schedule(1000, 1e-4, 0.02))


def fit_vae(x: torch.Tensor, epochs: int, reduction: str = "mean", kl_weight: float = 1.0,
            seed: int = 0) -> tuple[NaiveVAE, dict]:
    """A :class:`NaiveVAE` trained on images x (N, 1, 32, 32) in [-1, 1] as the notebook trains it (Adam 2e-4,
    batch 128, ``epochs`` passes over x, the last incomplete batch of each dropped), with :func:`naive_vae_loss`'s
    ``reduction`` and ``kl_weight``; initial weights and noise from ``seed``, on the CPU.

    Returns:
        (the VAE in eval mode, :func:`~ldm_core.train.train`'s history).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = NaiveVAE()
    batches, generator = Batches(x.cpu(), batch_size=NOTEBOOK_BATCH, seed=seed), torch.Generator().manual_seed(seed)
    history = train(vae, lambda step: naive_vae_loss(vae, batches(step)[0], generator, reduction, kl_weight),
                    steps=check_int("epochs", epochs, 1) * batches.per_epoch, lr=NOTEBOOK_LR, grad_clip=None,
                    desc=f"VAE ({reduction}, KL weight {kl_weight:g})", generator=generator)
    return vae, history


def fit_denoiser(mu: torch.Tensor, std: torch.Tensor, alpha_bar: torch.Tensor, epochs: int,
                 time_conditional: bool, seed: int = 0, hidden: int = 128) -> tuple[MLPDenoiser, dict]:
    """An :class:`MLPDenoiser` trained with L_simple (:func:`~ldm_core.train.diffusion_loss`, eps, uniform) on z0 = mu + std * noise, a fresh posterior
    sample of each training latent in every batch (the notebook's reparameterised encoder samples), with the
    notebook's optimiser, batch and ``epochs``; ``hidden`` units (the notebook's 128); on the CPU.

    Args:
        mu, std: (N, D) posterior means and standard deviations of the training images.

    Returns:
        (the denoiser in eval mode, :func:`~ldm_core.train.train`'s history).
    """
    if mu.ndim != 2 or mu.shape != std.shape:
        raise ValueError(f"mu and std must be (N, D) of one shape, got {tuple(mu.shape)} and {tuple(std.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPDenoiser(mu.shape[1], hidden, time_conditional)
    batches = Batches(mu.cpu(), std.cpu(), batch_size=NOTEBOOK_BATCH, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)

    def loss(step: int) -> torch.Tensor:
        m, s = batches(step)
        return diffusion_loss(model, m + s * randn_like(m, generator), alpha_bar, generator=generator)  # L_simple

    history = train(model, loss, steps=check_int("epochs", epochs, 1) * batches.per_epoch, lr=NOTEBOOK_LR,
                    grad_clip=None, desc=f"MLP denoiser ({'with' if time_conditional else 'without'} t)",
                    generator=generator)
    return model, history

"""The latent diffusion model as a whole: the frozen autoencoder, the denoiser and the schedule.

Paper Sec. 3.2: diffusion runs on z = scale_factor * E(x); a sample z_0 from the reverse process is decoded by
x = D(z_0 / scale_factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .autoencoder import Autoencoder
from .checks import check_finite, check_images, check_int
from .samplers import classifier_free_guidance, ddim_sample, ddpm_sample, make_timesteps
from .schedules import eps_from_v, rng_device
from .unet import Denoiser

SAMPLERS = ("ddpm", "ddim")


@dataclass
class LatentDiffusion:
    autoencoder: Autoencoder  # frozen first stage; its scale_factor buffer maps E(x) to unit scale
    denoiser: Denoiser  # eps_theta(z_t, t, y) or v_theta(z_t, t, y), as `prediction` says
    alpha_bar: torch.Tensor  # (T,) float64 schedule the denoiser was trained with
    image_size: int | tuple[int, int] = 32  # H = W, or (H, W), of the images, in pixels
    # what the denoiser outputs, "eps" or "v" (its recipe's): no default, so a v model is never sampled as eps
    prediction: str = field(kw_only=True)

    def __post_init__(self):
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, cond=None, concat: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's noise prediction eps_theta(z_t, t, cond, concat), converted from v for a v-prediction
        model (eps = sqrt(1 - alpha_bar_t) z_t + sqrt(alpha_bar_t) v). Shape of z_t."""
        out = self.denoiser(z_t, t, cond) if concat is None else self.denoiser(z_t, t, cond, concat)
        return out if self.prediction == "eps" else eps_from_v(z_t, t, out, self.alpha_bar)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of the latents: h = H / f, w = W / f."""
        config = self.autoencoder.config
        height, width = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return (config.latent_channels, height // config.f, width // config.f)

    @property
    def T(self) -> int:
        return self.alpha_bar.shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> scaled latents z_0 = scale_factor * mode(q(z | x)), (B, c, H/f, W/f).

        Raises:
            TypeError, ValueError: if x is not a float image batch with the autoencoder's channels in [-1, 1].
        """
        check_images("x", x, self.autoencoder.config.in_channels)
        return self.autoencoder.scale_factor * self.autoencoder.encode(x).mode()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images D(z / scale_factor) (B, C, h*f, w*f), roughly in [-1, 1]."""
        return self.autoencoder.decode(z / self.autoencoder.scale_factor)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None = None, n: int | None = None, *, sampler: str = "ddim",
               steps: int = 50, eta: float = 0.0, guidance_scale: float = 1.0,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               concat: torch.Tensor | None = None, known: tuple[torch.Tensor, torch.Tensor] | None = None,
               resample: int = 1, callback=None) -> torch.Tensor:
        """Draw images: noise z_T -> sampler -> z_0 -> decoder.

        Args:
            labels: the condition of a conditional denoiser, batch first: (B,) int64 class labels, or (B, L) caption
                tokens for a text-conditional one (None for an unconditional denoiser).
            n: number of samples for an unconditional denoiser.
            sampler: ``"ddpm"`` (ancestral) or ``"ddim"``.
            steps: number of sampler steps, in [1, T], spaced by ``make_timesteps(T, steps)``.
            eta: DDIM's eta (ignored by ``"ddpm"``).
            guidance_scale: classifier-free guidance s; 1 is plain conditional sampling.
            generator: source of all randomness (a CPU generator gives the same samples on any device).
            noise: the starting latents z_T (B, c, h, w); drawn from ``generator`` when None.
            concat: the spatial condition of a UNet with ``concat_channels`` (B, concat_channels, h, w), at the
                latent's resolution; it is the same in guidance's conditional and unconditional predictions.
            known: (z0_known, keep), scaled latents (B, c, h, w) and a mask that broadcasts to them (1 = known), for
                inpainting without training: passed to the sampler (chapter 7's "blended" baseline).
            resample: RePaint's U >= 1, passed to the sampler with ``known`` (chapter 7's resampling baseline).
            callback: passed to the sampler.

        Returns:
            images (B, C, H, W), roughly in [-1, 1], on the CPU.

        Raises:
            TypeError: for labels that are not a tensor, or steps, n or resample that are not integers.
            ValueError: for an unknown sampler, labels/n that do not match the denoiser, the null label (ask for
                unconditional samples with guidance_scale=0), steps outside [1, T], resample below 1 (or above 1
                without known), eta outside [0, 1], a guidance scale that is negative, NaN or infinite, noise of the
                wrong shape, a concat that is missing, unexpected or of the wrong shape, or a known pair of the
                wrong shapes.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        check_int("steps", steps, 1, self.T)
        check_finite("eta", eta, 0.0, 1.0)
        check_finite("guidance_scale", guidance_scale, low=0.0)
        if check_int("resample", resample, 1) > 1 and known is None:
            raise ValueError("resample > 1 is RePaint's resampling of a known region: give known as well")
        conditional = self.denoiser.conditioner is not None
        if conditional == (labels is None) or (labels is None) == (n is None):
            raise ValueError("give labels for a conditional denoiser, or n for an unconditional one")
        if conditional:
            if not isinstance(labels, torch.Tensor):
                raise TypeError(f"labels must be a tensor (int64 class labels (B,) or caption tokens (B, L)), "
                                f"got {type(labels).__name__}")
            null_label = getattr(self.denoiser.conditioner, "null_label", None)
            if null_label is not None and bool((labels == null_label).any()):
                raise ValueError(f"labels hold the null label {null_label}, which means 'no condition' in training; "
                                 f"for unconditional samples use guidance_scale=0 with any labels")
        batch = len(labels) if conditional else check_int("n", n, 1)
        if noise is None:
            noise = torch.randn((batch, *self.latent_shape), generator=generator,
                                device=rng_device(generator, self.device))
        elif noise.shape != (batch, *self.latent_shape):
            raise ValueError(f"noise must be (B, c, h, w) = {(batch, *self.latent_shape)}, got {tuple(noise.shape)}")
        noise = noise.to(self.device)
        model, cond = self.eps, None
        expected = (batch, self.denoiser.unet.config.concat_channels, *self.latent_shape[1:])
        if (concat is None) != (expected[1] == 0) or (concat is not None and tuple(concat.shape) != expected):
            raise ValueError(f"concat must be (B, concat_channels, h, w) = {expected} for this denoiser (None when it "
                             f"has 0 concat_channels), got {None if concat is None else tuple(concat.shape)}")
        if known is not None and (len(known) != 2 or tuple(known[0].shape) != (batch, *self.latent_shape) or
                                  torch.broadcast_shapes(known[1].shape, known[0].shape) != known[0].shape):
            raise ValueError(f"known must be (z0_known, keep): latents {(batch, *self.latent_shape)} and a mask that "
                             f"broadcasts to them")
        if concat is not None:  # guidance stacks [z_t; z_t]: the spatial condition is stacked with it
            concat = concat.to(self.device)
            model = lambda z_t, t, c: self.eps(z_t, t, c, torch.cat([concat] * (len(z_t) // batch)))
        if conditional:
            cond = labels.to(self.device)
            if guidance_scale != 1.0:
                model = classifier_free_guidance(model, guidance_scale,
                                                 lambda B: self.denoiser.conditioner.null(B, self.device))
        timesteps = make_timesteps(self.T, steps)
        if sampler == "ddpm":
            z0 = ddpm_sample(model, noise, self.alpha_bar, timesteps, cond, generator=generator, callback=callback,
                             known=known, resample=resample)
        else:
            z0 = ddim_sample(model, noise, self.alpha_bar, timesteps, cond, eta=eta, generator=generator,
                             callback=callback, known=known, resample=resample)
        return self.decode(z0).cpu()

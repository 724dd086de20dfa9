"""The first stage: a convolutional autoencoder with a spatial latent, KL- or VQ-regularised.

Paper Sec. 3.1 ("Perceptual Image Compression"): an encoder E maps an image x of shape (B, C, H, W) to a
latent z = E(x) of shape (B, c, H/f, W/f) with downsampling factor f = 2^m, and a decoder D maps it back,
x_hat = D(z). Either a slight KL penalty towards N(0, I) keeps the latent's scale in check ("KL-reg."), or a
vector quantisation layer snaps every latent vector to the nearest of a learned codebook ("VQ-reg.", van den
Oord et al. 2017), absorbed into the decoder.

Symbols (see the notation page): ``x`` pixels in [-1, 1]; ``z`` latent; ``f`` downsampling factor;
``c`` = ``latent_channels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 1  # C, image channels
    channels: int = 16  # width of the first level; level i has channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one entry per level; f = 2 ** (len(channel_mult) - 1)
    latent_channels: int = 4  # c, channels of z
    groups: int = 8  # GroupNorm groups; must divide every level's width
    regularizer: str = "kl"  # "kl": diagonal Gaussian posterior; "vq": vector quantisation
    num_codes: int = 256  # VQ codebook size K (ignored for "kl")
    commitment: float = 0.25  # VQ commitment weight beta (van den Oord et al. 2017, Eq. 3)

    @property
    def f(self) -> int:
        """Downsampling factor: each level after the first halves height and width."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def tiny(cls) -> "AutoencoderConfig":
        """About 30k parameters, for tests."""
        return cls(channels=8, channel_mult=(1, 2, 2), latent_channels=2, groups=4)

    def __post_init__(self):
        widths = [self.channels * m for m in self.channel_mult]
        if not self.channel_mult:
            raise ValueError("channel_mult must have at least one level")
        if self.regularizer not in ("kl", "vq"):
            raise ValueError(f"regularizer must be 'kl' or 'vq', got {self.regularizer!r}")
        bad = [w for w in widths if w % self.groups]
        if bad:
            raise ValueError(f"groups={self.groups} must divide every level width {widths}; it does not divide {bad}")


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1-projected) skip. (B, C_in, h, w) -> (B, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))), one Gaussian per latent element.

    Args:
        moments: (B, 2c, h, w), the encoder's output: mean, then log-variance, along channels.
            The log-variance is clamped to [-30, 20] (as in the reference code) so exp() stays finite.
        deterministic: a point mass at the mean (std 0), as the reference code's ``deterministic=True``; used for
            the identity first stage of pixel-space diffusion (:class:`PixelSpace`).
    """

    def __init__(self, moments: torch.Tensor, deterministic: bool = False):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.zeros_like(self.mean) if deterministic else torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick). (B, c, h, w)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, the mean. (B, c, h, w)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)) summed over latent elements: 0.5 * sum(mean^2 + var - 1 - logvar). (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))

    def regularization(self) -> torch.Tensor:
        """The regulariser of the training loss: the KL, (B,)."""
        return self.kl()


class Quantized:
    """The output of :class:`VectorQuantizer`, with the posterior's interface: ``sample()`` and ``mode()`` both
    return the quantised latent z_q (B, c, h, w), which carries straight-through gradients to the encoder."""

    def __init__(self, z_q: torch.Tensor, loss: torch.Tensor, indices: torch.Tensor):
        self.z_q, self.loss, self.indices = z_q, loss, indices  # (B, c, h, w), (B,), (B, h, w) int64

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z_q

    def mode(self) -> torch.Tensor:
        return self.z_q

    def regularization(self) -> torch.Tensor:
        """The codebook and commitment losses, (B,)."""
        return self.loss


class VectorQuantizer(nn.Module):
    """Snap every latent vector to its nearest codebook entry (van den Oord et al. 2017, Sec. 3.1).

    z_q = e_k with k = argmin_j ||z - e_j||. The loss per image is
    ||sg[z] - z_q||^2 (moves the codes) + beta ||z - sg[z_q]||^2 (commits the encoder), summed over elements;
    the gradient of the decoder's input is copied to the encoder's output (straight-through estimator,
    z + sg[z_q - z]).

    Args:
        num_codes: codebook size K.
        dim: c, the latent channels.
        commitment: beta.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25):
        super().__init__()
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / num_codes, 1 / num_codes)
        self.commitment = commitment

    def forward(self, z: torch.Tensor) -> Quantized:
        """z (B, c, h, w) -> :class:`Quantized`."""
        B, c, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, c)
        codes = self.codebook.weight  # (K, c)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)  # (B*h*w, K)
        indices = distances.argmin(1)
        z_q = codes[indices].view(B, height, width, c).permute(0, 3, 1, 2)  # (B, c, h, w)
        loss = ((z.detach() - z_q).pow(2) + self.commitment * (z - z_q.detach()).pow(2)).flatten(1).sum(1)
        z_q = z + (z_q - z).detach()  # straight-through: forward z_q, backward identity
        return Quantized(z_q, loss, indices.view(B, height, width))


def codebook_usage(indices: torch.Tensor, num_codes: int) -> tuple[float, int]:
    """(perplexity, dead codes) of code indices of any shape: perplexity = exp(entropy of the code frequencies),
    between 1 (one code used) and num_codes (all used equally); dead codes are those never used."""
    counts = torch.bincount(indices.flatten(), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), int((counts == 0).sum())


class Autoencoder(nn.Module):
    """KL- or VQ-regularised autoencoder: ``encode`` x (B, C, H, W) -> q(z | x) over (B, c, H/f, W/f); ``decode`` back.

    ``scale_factor`` (a buffer, 1.0 until set) is 1 / std of the training latents, computed from data by
    :func:`latent_scale_factor`; diffusion runs on ``scale_factor * z``.

    Raises:
        ValueError: from :meth:`encode` if the input is not (B, C, H, W) with H and W divisible by f.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        widths = [config.channels * m for m in config.channel_mult]
        g = config.groups
        down: list[nn.Module] = [nn.Conv2d(config.in_channels, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            down.append(ResBlock(widths[max(i - 1, 0)], width, g))
            if i < len(widths) - 1:
                down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))  # halve height and width
        moments = 2 * config.latent_channels if config.regularizer == "kl" else config.latent_channels
        down += [nn.GroupNorm(g, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], moments, 3, padding=1)]
        self.encoder = nn.Sequential(*down)

        up: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1)]
        for i in reversed(range(len(widths))):
            up.append(ResBlock(widths[min(i + 1, len(widths) - 1)], widths[i], g))
            if i > 0:
                up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i], widths[i], 3, padding=1)]
        up += [nn.GroupNorm(g, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], config.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*up)
        self.quantizer = (VectorQuantizer(config.num_codes, config.latent_channels, config.commitment)
                          if config.regularizer == "vq" else None)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | Quantized:
        """q(z | x) for images x (B, C, H, W) in [-1, 1]: a :class:`DiagonalGaussian` (KL) or a
        :class:`Quantized` latent (VQ); ``mode()`` and ``sample()`` are (B, c, H/f, W/f) either way."""
        f, C = self.config.f, self.config.in_channels
        if x.dim() != 4 or x.shape[1] != C or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x must be (B, {C}, H, W) with H and W divisible by f={f}, got {tuple(x.shape)}")
        h = self.encoder(x)
        return DiagonalGaussian(h) if self.quantizer is None else self.quantizer(h)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the adaptive weight of the adversarial loss is measured."""
        return self.decoder[-1].weight

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat = D(z) for latents z (B, c, h, w) (unscaled); returns (B, C, h*f, w*f), roughly in [-1, 1]."""
        c = self.config.latent_channels
        if z.dim() != 4 or z.shape[1] != c:
            raise ValueError(f"z must be (B, {c}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """D(mode of q(z | x)) for images x (B, C, H, W) in [-1, 1], in batches, without gradients; returns
        (B, C, H, W) on x's device, clamped to [-1, 1] (the image range)."""
        device = self.scale_factor.device
        return torch.cat([self.decode(self.encode(chunk.to(device)).mode()).clamp(-1, 1).to(x.device)
                          for chunk in x.split(batch_size)])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruct x through a posterior sample. Returns (x_hat (B, C, H, W), posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


@torch.no_grad()
def latent_scale_factor(autoencoder: Autoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """1 / std of latents z ~ q(z | x) over images x, one number over all elements (as the reference code
    computes it; the paper, Sec. 4.3.2 and Appendix G, speaks of the "component-wise standard deviation"), so
    that scale_factor * z has unit variance. Taught in chapter 1.

    Args:
        autoencoder: a trained :class:`Autoencoder`.
        x: images (N, C, H, W) in [-1, 1], N >= 2 (the training split).
        generator: randomness of the posterior samples.

    Returns:
        a positive float.

    Raises:
        ValueError: if fewer than two images are given or the latents have no spread (std 0).
    """
    if len(x) < 2:
        raise ValueError(f"need at least 2 images to estimate a std, got {len(x)}")
    device = autoencoder.scale_factor.device
    z = torch.cat([autoencoder.encode(chunk.to(device)).sample(generator) for chunk in x.split(500)])
    std = float(z.flatten().std())
    if not std > 0:
        raise ValueError(f"the latents have std {std}: no scale factor can give them unit variance")
    return 1.0 / std


class PixelSpace(nn.Module):
    """The identity "first stage": diffusion directly on pixels (the paper's LDM-1, f = 1, Sec. 4.1), with the
    interface of :class:`Autoencoder` so that one pipeline and one training recipe serve both spaces.

    ``encode`` returns a point mass at x (a deterministic :class:`DiagonalGaussian`), ``decode`` returns z, and
    ``scale_factor`` is 1: pixels in [-1, 1] need no rescaling.
    """

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.config = AutoencoderConfig(in_channels=in_channels, channel_mult=(1,), latent_channels=in_channels)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) -> a point mass at x."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        return DiagonalGaussian(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The identity: z is already an image."""
        return z

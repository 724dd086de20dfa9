"""Normalising flows for appendix B: NICE, RealNVP and Glow, small and exact, on the 28x28 pixels of a digit.

A flow is an invertible map f from images x to latents z = f(x) with a tractable Jacobian, and a standard normal
prior on z, so that the change of variables gives the exact log-likelihood

    log p(x) = log N(f(x); 0, I) + log |det df/dx|.

Every layer here maps x (B, C, H, W) to (y, log|det|) with log|det| of shape (B,), and has an exact ``inverse``:

- :class:`Coupling`: y = m x + (1 - m) (x exp(s(m x)) + t(m x)) for a binary mask m (NICE's *additive* coupling
  with s = 0, Dinh et al. 2015; RealNVP's *affine* coupling, Dinh et al. 2017), log|det| = sum (1 - m) s.
- :class:`Scale`: a learned per-element scale exp(s) (NICE's final diagonal scaling layer).
- :class:`ActNorm`: a per-channel affine map initialised from the first batch to zero mean and unit variance
  (Glow, Kingma & Dhariwal 2018).
- :class:`Invertible1x1Conv`: a learned channel mixing W (Glow), log|det| = H W log|det W|.
- :class:`Squeeze`: (C, H, W) -> (4C, H/2, W/2), a reshaping (log|det| = 0), RealNVP's and Glow's multi-scale step.

The digits are the 784 real pixels (the book's padding of 2 on each side removed: a constant border has no
density), dequantised uniformly: u = (v + noise) / 256 for the 8-bit value v, noise ~ U[0, 1) (Theis et al.
2016), so that the discrete data's bits per dimension are bounded by -log2 p(u) / D + 8 (:func:`bits_per_dim`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .checks import check_images, check_int


def digits_to_flow_space(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Book images (B, 1, 32, 32) in [-1, 1] -> dequantised pixels u - 1/2 (B, 1, 28, 28) in [-1/2, 1/2).

    The 8-bit value v = round((x + 1) * 127.5) of each of the 784 real pixels gets uniform noise in [0, 1):
    u = (v + noise) / 256. With ``generator=None`` the noise is 1/2 (the bin's centre: for sampling displays).
    """
    x = check_images("x", x, 1)
    if x.shape[-2:] != (32, 32):
        raise ValueError(f"x must be (B, 1, 32, 32) book digits, got {tuple(x.shape)}")
    v = ((x[..., 2:30, 2:30] + 1) * 127.5).round()
    noise = (torch.rand(v.shape, generator=generator, device=v.device) if generator is not None
             else torch.full_like(v, 0.5))
    return (v + noise) / 256 - 0.5


def flow_space_to_digits(y: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`digits_to_flow_space` at the bins' centres: y (B, 1, 28, 28) around [-1/2, 1/2] ->
    8-bit value v = 256 (y + 1/2) - 1/2 -> book images (B, 1, 32, 32) in [-1, 1] (clamped), padded with -1."""
    x = (((y + 0.5) * 256 - 0.5) / 127.5 - 1).clamp(-1, 1)
    return nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


def checkerboard(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """RealNVP's spatial mask (C, H, W): 1 where (i + j + parity) is even."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j + parity) % 2 == 0).float().expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """A mask (C, H, W) that keeps the first half of the channels (parity 0) or the second (parity 1)."""
    keep = (torch.arange(channels) < channels // 2) != bool(parity)
    return keep.float()[:, None, None].expand(channels, height, width).clone()


class Coupling(nn.Module):
    """A coupling layer: the masked part of x passes unchanged and conditions a map of the rest.

    y = m x + (1 - m) (x exp(s) + t) with (s, t) = net(m x), log|det| = sum over elements of (1 - m) s.
    ``affine=False`` is NICE's additive coupling (s = 0, volume preserving); True is RealNVP's affine coupling,
    with s = scale * tanh(raw s) kept bounded for stability. ``net`` maps (B, C, H, W) to (B, 2C, H, W) (affine)
    or (B, C, H, W) (additive); its last layer starts at zero, so the layer starts as the identity.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, affine: bool):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net, self.affine = net, bool(affine)
        self.log_scale_limit = nn.Parameter(torch.ones(1)) if affine else None

    def _s_t(self, x_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x_kept)
        if not self.affine:
            return torch.zeros_like(out), out
        raw_s, t = out.chunk(2, dim=1)
        return self.log_scale_limit * torch.tanh(raw_s), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask
        s, t = self._s_t(m * x)
        s, t = (1 - m) * s, (1 - m) * t
        return m * x + (1 - m) * (x * s.exp() + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        m = self.mask
        s, t = self._s_t(m * y)  # m y = m x: the kept part is unchanged
        return m * y + (1 - m) * ((y - t) * (-s).exp())


class Scale(nn.Module):
    """NICE's diagonal scaling: y = x exp(s) with one learned s per element (C, H, W), log|det| = sum s."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp()


class ActNorm(nn.Module):
    """Glow's activation normalisation: y = (x + b) exp(s) per channel, b and s set on the first batch seen in
    training so that y has zero mean and unit variance per channel; log|det| = H W sum s."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialised:
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.log_scale.copy_(-x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6).log())
                self.initialised.fill_(True)
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x + self.bias) * self.log_scale.exp(), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp() - self.bias


class Invertible1x1Conv(nn.Module):
    """Glow's invertible 1x1 convolution: y = W x at every position, W (C, C) initialised to a random rotation;
    log|det| = H W log|det W|."""

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=torch.Generator().manual_seed(seed)))
        self.weight = nn.Parameter(q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.shape[2] * x.shape[3] * torch.linalg.slogdet(self.weight)[1]
        return torch.einsum("ij,bjhw->bihw", self.weight, x), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.weight), y)


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h}x{w}")
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, c4, h, w = y.shape
        return y.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)


class _Flatten(nn.Module):
    """(B, 1, 28, 28) <-> (B, 784, 1, 1), so that NICE's MLPs are 1x1 convolutions."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.reshape(x.shape[0], -1, 1, 1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], 1, 28, 28)


class Flow(nn.Module):
    """A stack of invertible layers with a standard normal prior on their output.

    Args:
        layers: modules with ``forward(x) -> (y, logdet (B,))`` and ``inverse(y) -> x``.
        shape: the shape (C, H, W) of one input.
    """

    def __init__(self, layers: list[nn.Module], shape: tuple[int, int, int]):
        super().__init__()
        self.layers, self.shape = nn.ModuleList(layers), tuple(shape)
        z_shape = torch.zeros(1, *shape)
        for layer in self.layers:  # the latent's shape, for sampling
            if isinstance(layer, (Squeeze, _Flatten)):
                z_shape = layer(z_shape)[0]
        self.z_shape = tuple(z_shape.shape[1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (z, log|det dz/dx| (B,))."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must be (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density (nats) of x under the flow: log N(f(x); 0, I) + log|det|, (B,)."""
        z, logdet = self(x)
        prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
        return prior + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n samples x = f^-1(z), z ~ N(0, temperature^2 I), (n, C, H, W)."""
        n = check_int("n", n, 1)
        device = next(self.parameters()).device
        z = torch.randn(n, *self.z_shape, generator=generator, device=device) * temperature
        return self.inverse(z)


def bits_per_dim(flow: Flow, y: torch.Tensor) -> float:
    """Bits per dimension of dequantised 8-bit data y (:func:`digits_to_flow_space`): the mean over the batch of
    (-log p(y) / D + log 256) / log 2, an upper bound on the discrete data's code length per pixel (D = C H W)."""
    d = y[0].numel()
    with torch.no_grad():
        nll = -flow.log_prob(y).mean().item() / d
    return (nll + math.log(256)) / math.log(2)


# --------------------------------------------------------------------------------------------------- the models

def _conv_net(in_channels: int, out_channels: int, hidden: int, kernel: int) -> nn.Sequential:
    """The networks inside couplings: conv-ReLU-conv-ReLU-conv, the last initialised to zero (identity start)."""
    last = nn.Conv2d(hidden, out_channels, kernel, padding=kernel // 2)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_channels, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


def nice(width: int = 32, couplings: int = 4) -> Flow:
    """NICE (Dinh et al. 2015) on the 784 pixels as one vector: ``couplings`` additive couplings whose
    networks are MLPs of 8 ``width`` hidden units (1x1 convolutions on a (784, 1, 1) view) alternating over odd and
    even pixels, then a diagonal scaling. An actnorm over the whole image comes first (one bias and scale, as
    RealNVP's and Glow's per channel): a standardisation of the input, which NICE did before training. Input
    (B, 1, 28, 28)."""
    d = 784
    layers: list[nn.Module] = [ActNorm(1), _Flatten()]
    for k in range(couplings):
        keep = (torch.arange(d) % 2 == k % 2).float()[:, None, None]
        layers.append(Coupling(keep, _conv_net(d, d, 8 * width, 1), affine=False))
    layers.append(Scale((d, 1, 1)))
    return Flow(layers, (1, 28, 28))


def realnvp(width: int = 32, couplings: int = 3) -> Flow:
    """RealNVP (Dinh et al. 2017), one scale: ``couplings`` affine couplings with alternating checkerboard masks at
    28x28, a squeeze to (4, 14, 14), then ``couplings`` with alternating channel masks; each coupling is followed by
    an actnorm, standing in for RealNVP's batch normalisation of the coupling outputs (Glow introduced
    actnorm as that layer's replacement). Input (B, 1, 28, 28)."""
    layers: list[nn.Module] = []
    for k in range(couplings):
        layers += [Coupling(checkerboard(1, 28, 28, k % 2), _conv_net(1, 2, width, 3), affine=True), ActNorm(1)]
    layers.append(Squeeze())
    for k in range(couplings):
        layers += [Coupling(channel_mask(4, 14, 14, k % 2), _conv_net(4, 8, width, 3), affine=True), ActNorm(4)]
    return Flow(layers, (1, 28, 28))


def glow(width: int = 32, steps: int = 4) -> Flow:
    """Glow (Kingma & Dhariwal 2018), one level: a squeeze to (4, 14, 14), then ``steps`` flow steps of actnorm,
    invertible 1x1 convolution and affine coupling over half the channels. Input (B, 1, 28, 28)."""
    layers: list[nn.Module] = [Squeeze()]
    for k in range(steps):
        layers += [ActNorm(4), Invertible1x1Conv(4, seed=k),
                   Coupling(channel_mask(4, 14, 14, 0), _conv_net(4, 8, width, 3), affine=True)]
    return Flow(layers, (1, 28, 28))


BUILDERS = {"nice": nice, "realnvp": realnvp, "glow": glow}  # the keys are recipes.FLOW_KINDS

"""The time-conditional UNet eps_theta(z_t, t, context) of the LDM (paper Sec. 3.2-3.3, Eq. 2 and 3).

Residual blocks receive the timestep through a sinusoidal embedding (Vaswani et al. 2017; DDPM Appendix B);
every ResBlock at the lowest resolution, on the way down and up, and the middle carry a
:class:`~ldm_core.attention.SpatialTransformer` (self-attention, and cross-attention to ``context`` when
``d_context`` is set).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import SpatialTransformer
from .checks import check_int


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # channels of z_t (the autoencoder's latent_channels; 1 for pixel-space MNIST)
    channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2)  # one entry per resolution level; each level after the first halves h, w
    num_res_blocks: int = 1  # ResBlocks per level on the way down (one more on the way up)
    heads: int = 4  # attention heads in the SpatialTransformers
    d_context: int | None = None  # width of the context tokens; None: no cross-attention (unconditional)
    groups: int = 8  # GroupNorm groups; must divide every level width
    # channels of a spatial condition concatenated to z_t at the input (paper Sec. 3.3, "concat" in the reference
    # code): the first convolution reads in_channels + concat_channels; the output keeps in_channels
    concat_channels: int = 0

    @classmethod
    def tiny(cls, in_channels: int = 4, d_context: int | None = None) -> "UNetConfig":
        """A small UNet for tests: two levels of width 16 and 32."""
        return cls(in_channels=in_channels, channels=16, channel_mult=(1, 2), heads=2, d_context=d_context, groups=4)

    def __post_init__(self):
        widths = [self.channels * m for m in self.channel_mult]
        if not widths:
            raise ValueError("channel_mult must have at least one level")
        bad = [w for w in widths if w % self.groups]
        if bad:
            raise ValueError(f"groups={self.groups} must divide every level width {widths}; it does not divide {bad}")
        bad = [w for w in widths if w % self.heads]
        if bad:
            raise ValueError(f"heads={self.heads} must divide every level width {widths}; it does not divide {bad}")
        check_int("concat_channels", self.concat_channels, 0)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5), in the [cos, sin] layout of the
    LDM code (``openaimodel.timestep_embedding``); DDPM's own code orders them [sin, cos].

    emb[:, i] = cos(t * w_i) for i < dim/2 and sin(t * w_i) for the rest, with w_i = max_period^(-i / (dim/2)).

    Args:
        t: (B,) timesteps (int or float).
        dim: embedding width, even.

    Returns:
        (B, dim) float32.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ResBlock(nn.Module):
    """Residual block with time injection: h = conv(SiLU(GN(x))) + W emb; out = skip(x) + conv(SiLU(GN(h))).

    (B, C_in, h, w), emb (B, d_emb) -> (B, C_out, h, w). The last conv is zero-initialised, so a new block is
    the identity (or its 1x1 skip).
    """

    def __init__(self, in_channels: int, out_channels: int, d_emb: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(d_emb, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_channels), nn.SiLU(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]  # (B, C_out, h, w)
        return self.skip(x) + self.out_layers(h)


class UNet(nn.Module):
    """eps_theta(z_t, t, context): predicts the noise in z_t (paper Eq. 1-2; Eq. 3 with context), or v, as its
    recipe's ``prediction`` says (the architecture is the same; see :meth:`~ldm_core.pipeline.LatentDiffusion.eps`).

    Args:
        config: :class:`UNetConfig`.

    Raises:
        ValueError: in ``forward``, if z_t is not (B, in_channels, h, w) with h and w divisible by
            2^(levels - 1), if t is not (B,), or if the context is missing, unexpected or of the wrong width.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        widths = [c.channels * m for m in c.channel_mult]
        d_emb = 4 * c.channels
        self.time_embed = nn.Sequential(nn.Linear(c.channels, d_emb), nn.SiLU(), nn.Linear(d_emb, d_emb))
        self.conv_in = nn.Conv2d(c.in_channels + c.concat_channels, widths[0], 3, padding=1)
        lowest = len(widths) - 1

        def transformer(width: int) -> SpatialTransformer:
            return SpatialTransformer(width, c.d_context, c.heads, c.groups)

        self.down, skip_widths, width = nn.ModuleList(), [widths[0]], widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                block = nn.ModuleList([ResBlock(width, level_width, d_emb, c.groups)])
                if level == lowest:
                    block.append(transformer(level_width))
                self.down.append(block)
                width = level_width
                skip_widths.append(width)
            if level != lowest:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]))
                skip_widths.append(width)

        self.middle = nn.ModuleList([ResBlock(width, width, d_emb, c.groups), transformer(width),
                                     ResBlock(width, width, d_emb, c.groups)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(c.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(width + skip_widths.pop(), widths[level], d_emb, c.groups)])
                width = widths[level]
                if level == lowest:
                    block.append(transformer(width))
                if level != 0 and i == c.num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(width, width, 3, padding=1))
                self.up.append(block)

        self.out = nn.Sequential(nn.GroupNorm(c.groups, width), nn.SiLU(), nn.Conv2d(width, c.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _run(self, block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None):
        for layer in block:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        """z_t (B, in_channels, h, w), t (B,) int64 in [0, T-1], context (B, M, d_context), concat
        (B, concat_channels, h, w) -> eps_hat like z_t."""
        c = self.config
        div = 2 ** (len(c.channel_mult) - 1)
        if z_t.dim() != 4 or z_t.shape[1] != c.in_channels or z_t.shape[2] % div or z_t.shape[3] % div:
            raise ValueError(f"z_t must be (B, {c.in_channels}, h, w) with h and w divisible by {div}, "
                             f"got {tuple(z_t.shape)}")
        if t.shape != (z_t.shape[0],):
            raise ValueError(f"t must be ({z_t.shape[0]},), got {tuple(t.shape)}")
        if c.d_context is None and context is not None:
            raise ValueError("this UNet is unconditional (d_context=None) but got a context")
        if c.d_context is not None and (context is None or context.dim() != 3 or context.shape[0] != z_t.shape[0]
                                        or context.shape[2] != c.d_context):
            raise ValueError(f"context must be ({z_t.shape[0]}, M, {c.d_context}), got "
                             f"{None if context is None else tuple(context.shape)}")
        if (concat is None) != (c.concat_channels == 0) or (
                concat is not None and concat.shape != (z_t.shape[0], c.concat_channels, *z_t.shape[2:])):
            raise ValueError(f"concat must be (B, {c.concat_channels}, h, w) = "
                             f"{(z_t.shape[0], c.concat_channels, *z_t.shape[2:])} for this UNet (None when 0 "
                             f"channels), got {None if concat is None else tuple(concat.shape)}")
        emb = self.time_embed(timestep_embedding(t, c.channels).to(z_t.dtype))  # (B, 4 * channels)
        h = self.conv_in(z_t if concat is None else torch.cat([z_t, concat], dim=1))
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, context)
            skips.append(h)
        h = self._run(self.middle, h, emb, context)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


class Denoiser(nn.Module):
    """The trainable part of an LDM: the UNet and, for conditional models, the conditioner tau_theta.

    ``forward(z_t, t, y, concat)`` = ``unet(z_t, t, conditioner(y), concat)``: the conditioner is trained jointly
    with the UNet (paper Eq. 3). With ``conditioner=None`` the model is not conditioned through cross-attention and
    ``y`` must be None; ``concat``, a spatial condition at the latent's resolution, goes to the UNet's input as it
    is (the reference code's identity tau_theta for concatenation).
    """

    def __init__(self, unet: UNet, conditioner: nn.Module | None = None):
        super().__init__()
        if (conditioner is None) != (unet.config.d_context is None):
            raise ValueError("a UNet with d_context needs a conditioner, and one without must have none")
        self.unet, self.conditioner = unet, conditioner

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y=None, concat: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioner is None and y is not None:
            raise ValueError("this Denoiser is unconditional; y must be None")
        context = None if self.conditioner is None else self.conditioner(y)  # (B, M, d_context)
        return self.unet(z_t, t, context, concat)


def widen_input(unet: UNet, extra_channels: int) -> UNet:
    """A copy of ``unet`` whose first convolution reads ``extra_channels`` more concatenated channels, their
    weights zero: at the start it computes exactly what ``unet`` computes, whatever the new channels hold, and
    training then learns to use them. Stable Diffusion's inpainting model was started from its text-to-image model
    this way (5 new input channels: the masked image's latent and the mask).

    Args:
        unet: a trained UNet (not changed).
        extra_channels: >= 1 new input channels, appended after the existing ones.

    Returns:
        a new UNet with ``concat_channels`` increased by extra_channels, with unet's device, dtype and train/eval
        mode (no random numbers are drawn).

    Raises:
        TypeError, ValueError: if extra_channels is not an integer >= 1.
    """
    check_int("extra_channels", extra_channels, 1)
    wide = copy.deepcopy(unet)
    wide.config = dataclasses.replace(unet.config, concat_channels=unet.config.concat_channels + extra_channels)
    old = unet.conv_in  # weight (out, in, 3, 3)
    wide.conv_in = nn.utils.skip_init(nn.Conv2d, old.in_channels + extra_channels, old.out_channels, 3, padding=1,
                                      device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        wide.conv_in.weight.zero_()[:, :old.in_channels] = old.weight
        wide.conv_in.bias.copy_(old.bias)
    return wide

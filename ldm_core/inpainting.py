"""Masks for inpainting, and how a mask reaches the latent grid (chapter 7; paper Sec. 4.5).

A mask is a float tensor (B, 1, H, W) of 0 and 1, where **1 marks the hole**, the pixels to be generated, and 0
the known pixels, as in LaMa (Suvorov et al. 2022), whose protocol the paper's inpainting experiments follow
(paper Sec. 4.5). The inpainting model sees the masked image (holes set to 0,
the middle of [-1, 1]) through the autoencoder, and the mask itself on the latent grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_int
from .schedules import rng_device

MASK_KINDS = ("strokes", "boxes", "half", "whole")


def random_masks(n: int, kind: str, size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hole masks in the spirit of LaMa's training masks (random thick strokes and boxes; Suvorov et al. 2022),
    drawn for the book's 32x32 digits. Sizes below are for size 32 and scale with ``size``:

    - ``"strokes"``: 1 to 4 polylines of 1 to 4 segments, each up to 3 to 12 pixels long (shorter where it meets
      the border) and 1 to 4 pixels thick;
    - ``"boxes"``: 1 to 3 axis-aligned rectangles, sides 4 to 16 pixels;
    - ``"half"``: the left, right, top or bottom half;
    - ``"whole"``: every pixel (inpainting becomes generation).

    Args:
        n: number of masks, >= 1.
        kind: one of :data:`MASK_KINDS`.
        size: H = W of the masks, >= 8.
        generator: the source of randomness (CPU); None uses torch's global one.

    Returns:
        float32 (n, 1, size, size), 1 in the hole and 0 elsewhere, on the CPU.

    Raises:
        TypeError, ValueError: for an n or size that is not an integer in range, or an unknown kind.
    """
    check_int("n", n, 1)
    check_int("size", size, 8)
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    scale = size / 32

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    def integer(low: int, high: int) -> int:  # low..high inclusive
        return int(torch.randint(low, high + 1, (), generator=generator))

    masks = torch.zeros(n, 1, size, size)
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for mask in masks[:, 0]:
        if kind == "whole":
            mask.fill_(1)
        elif kind == "half":
            side = integer(0, 3)
            half = size // 2
            (mask[:, :half], mask[:, half:], mask[:half], mask[half:])[side].fill_(1)
        elif kind == "boxes":
            for _ in range(integer(1, 3)):
                h, w = (max(1, round(uniform(4, 16) * scale)) for _ in range(2))
                top, left = integer(0, size - h), integer(0, size - w)
                mask[top:top + h, left:left + w] = 1
        else:  # strokes: a polyline, every point within half the width of a segment is in the hole
            for _ in range(integer(1, 4)):
                y, x = uniform(0, size), uniform(0, size)
                width = uniform(1, 4) * scale
                for _ in range(integer(1, 4)):
                    angle, length = uniform(0, 2 * math.pi), uniform(3, 12) * scale
                    y_end = min(max(y + length * math.sin(angle), 0.0), float(size))
                    x_end = min(max(x + length * math.cos(angle), 0.0), float(size))
                    mask[_segment_distance(rows, cols, (y, x), (y_end, x_end)) <= max(width / 2, 0.5)] = 1
                    y, x = y_end, x_end
    return masks


def _segment_distance(rows: torch.Tensor, cols: torch.Tensor, start: tuple, end: tuple) -> torch.Tensor:
    """Distance of each pixel centre (rows, cols) to the segment from start to end, (y, x) in pixels."""
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx
    along = ((rows - y0) * dy + (cols - x0) * dx) / length2 if length2 > 0 else torch.zeros_like(rows)
    along = along.clamp(0, 1)
    return ((rows - (y0 + along * dy)) ** 2 + (cols - (x0 + along * dx)) ** 2).sqrt()


def latent_mask(mask: torch.Tensor, f: int) -> torch.Tensor:
    """The mask on the latent grid of an autoencoder with downsampling factor f: a latent cell is in the hole if
    any of its f x f pixels is (max-pooling). Nearest sampling (``mask[..., ::f, ::f]``) would read one pixel of
    each cell, and a stroke thinner than f pixels could vanish from the latent mask while the decoder still has to
    fill it.

    Args:
        mask: (B, 1, H, W) of 0 and 1 (1: hole), H and W divisible by f.
        f: the downsampling factor, >= 1.

    Returns:
        (B, 1, H / f, W / f) of 0 and 1, the dtype of mask.

    Raises:
        ValueError: if mask is not a float (B, 1, H, W) with H and W divisible by f.
    """
    check_int("f", f, 1)
    if not mask.is_floating_point():
        raise ValueError(f"mask must be a float tensor of 0 and 1, got {mask.dtype}")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] % f or mask.shape[3] % f:
        raise ValueError(f"mask must be (B, 1, H, W) with H and W divisible by f = {f}, got {tuple(mask.shape)}")
    return F.max_pool2d(mask, f)


def masked_image(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The known pixels of x, the hole set to 0 (the middle of [-1, 1]): x * (1 - mask). x (B, C, H, W), mask
    (B, 1, H, W)."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask must be (B, 1, H, W) = {(x.shape[0], 1, *x.shape[2:])}, got {tuple(mask.shape)}")
    return x * (1 - mask)


def hole_fraction(mask: torch.Tensor) -> torch.Tensor:
    """The fraction of each mask's pixels in the hole, (B,) in [0, 1]."""
    return mask.flatten(1).mean(1)


def inpainting_condition(autoencoder: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the inpainting UNet reads beside z_t: the scaled latent of the masked image and the latent mask,
    concatenated, (B, c + 1, H / f, W / f) (paper Sec. 4.5; the reference code's ``concat`` conditioning, as in
    Stable Diffusion's inpainting model). The same function makes it for training and for sampling.

    Args:
        autoencoder: the frozen first stage (its ``scale_factor`` set).
        x: images (B, C, H, W) in [-1, 1]; only their known pixels are read.
        mask: float (B, 1, H, W), 1 in the hole.

    Returns:
        (B, c + 1, H / f, W / f): c channels of unit-scale latents, then the latent mask of 0 and 1.

    Raises:
        ValueError: if the mask does not match x or its size is not divisible by f.
    """
    with torch.no_grad():
        z_known = autoencoder.scale_factor * autoencoder.encode(masked_image(x, mask)).mode()
    return torch.cat([z_known, latent_mask(mask, autoencoder.config.f).to(z_known.dtype)], dim=1)


def draw_masks(bank: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n masks drawn with replacement from a bank (B, 1, H, W) made once by :func:`random_masks` (drawing masks
    one by one at every training step would cost more than the step). On the bank's device."""
    index = torch.randint(len(bank), (n,), generator=generator, device=rng_device(generator, bank.device))
    return bank[index.to(bank.device)]


def mask_bank(n: int, mix: dict[str, float], size: int = 32, seed: int = 0) -> torch.Tensor:
    """n masks of the kinds in ``mix`` ({kind: fraction}, fractions summing to 1), shuffled: the training masks of
    the inpainting model. (n, 1, size, size) on the CPU.

    Raises:
        ValueError: for an unknown kind, or fractions that are negative or do not sum to 1.
    """
    check_int("n", n, 1)
    if any(kind not in MASK_KINDS for kind in mix) or any(p < 0 for p in mix.values()) or \
            abs(sum(mix.values()) - 1) > 1e-6:
        raise ValueError(f"mix must map kinds of {MASK_KINDS} to fractions summing to 1, got {mix}")
    generator = torch.Generator().manual_seed(seed)
    shares = [n * p for p in mix.values()]
    counts = [math.floor(share) for share in shares]  # then the largest remainders get the rest
    for i in sorted(range(len(counts)), key=lambda i: shares[i] - counts[i], reverse=True)[:n - sum(counts)]:
        counts[i] += 1
    masks = torch.cat([random_masks(k, kind, size, generator) for kind, k in zip(mix, counts) if k > 0])
    return masks[torch.randperm(n, generator=generator)]


def inpaint(ldm, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, **sample_kwargs) -> dict:
    """Fill the holes of x with a class-conditional LDM, decode, and paste the known pixels back.

    Two kinds of model, told apart by their UNet:

    - an inpainting model (:func:`ldm_core.pretrained.inpainting_diffusion`, a UNet with ``concat_channels``):
      it reads :func:`inpainting_condition` beside z_t, the paper's way (Sec. 4.5);
    - a model that never saw a mask (chapter 4's): training-free, "blended" latents, the known latent cells (no
      pixel of theirs in the hole) replaced at every step by the masked image's latent noised to t
      (:func:`~ldm_core.samplers.ddim_sample`'s ``known``); with ``resample=U`` in ``sample_kwargs``, RePaint's
      resampling on top (Lugmayr et al. 2022).

    Args:
        ldm: a :class:`~ldm_core.pipeline.LatentDiffusion` with a class-conditional denoiser.
        x: images (B, C, H, W) in [-1, 1]; mask: (B, 1, H, W), 1 in the hole.
        labels: class labels (B,) int64; with ``guidance_scale=0`` the labels are ignored and the completion is
            unconditional: the known pixels alone say which digit it is.
        sample_kwargs: passed to ``ldm.sample`` (steps, guidance_scale, generator, noise, resample, ...).

    Returns:
        dict(x=the completions (B, C, H, W) on the CPU, known pixels pasted back; raw=the decoded samples before the
        paste, clamped to [-1, 1]; seam=(B,) mean absolute error of raw on the known pixels, in [0, 2]: what the
        paste hides).

    Raises:
        ValueError: if the mask does not match x, or as ``ldm.sample``.
    """
    device = ldm.device
    x_dev, mask_dev = x.to(device), mask.to(device)
    if ldm.denoiser.unet.config.concat_channels:
        raw = ldm.sample(labels, concat=inpainting_condition(ldm.autoencoder, x_dev, mask_dev), **sample_kwargs)
    else:
        keep = 1 - latent_mask(mask_dev, ldm.autoencoder.config.f)
        raw = ldm.sample(labels, known=(ldm.encode(masked_image(x_dev, mask_dev)), keep), **sample_kwargs)
    raw = raw.clamp(-1, 1)
    x, mask = x.cpu(), mask.cpu()
    known = 1 - mask
    seam = ((raw - x).abs() * known).flatten(1).sum(1) / (known.flatten(1).sum(1) * x.shape[1]).clamp(min=1)
    return dict(x=mask * raw + known * x, raw=raw, seam=seam)

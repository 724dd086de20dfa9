"""Multi-head attention from scratch and the SpatialTransformer block.

Vaswani et al. 2017, Eq. 1: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V. In the LDM (paper Eq. 3) the
queries come from the UNet's flattened features phi_i(z_t) and, in cross-attention, the keys and values come
from the conditioning tokens ``context`` = tau_theta(y), so every pixel of the feature map can look up what the
condition says.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


# query-key pairs per head from which an Attention calls torch's fused kernel (unless its weights are kept): the pixel
# UNet's 16x16 = 256 tokens (65,536 pairs) train 1.5x and sample 1.7x faster with it on 2 CPU cores; the latent
# UNets' 4x4 = 16 tokens and the captions' 8 words gain nothing, and keep the written-out form
FUSED_MIN_PAIRS = 4096


@contextmanager
def explicit_attention():
    """Every :class:`Attention` computes softmax(Q K^T / sqrt(d)) V as written while the block is open.

    Outside it, an attention of at least :data:`FUSED_MIN_PAIRS` query-key pairs whose weights are not kept
    (``keep_weights``) calls torch's fused ``scaled_dot_product_attention``: the same function
    (tests/test_attention.py), without storing the (B, heads, N, M) weights. Open it where the matrix products must
    be seen: torch's FLOP counter does not count the fused kernel on a CPU (:func:`ldm_core.train.training_flops`).
    """
    global FUSED_MIN_PAIRS
    before, FUSED_MIN_PAIRS = FUSED_MIN_PAIRS, math.inf
    try:
        yield
    finally:
        FUSED_MIN_PAIRS = before


class Attention(nn.Module):
    """Multi-head scaled dot-product attention; self-attention when ``context`` is None, else cross-attention.

    Args:
        d_query: width of the queries' input x.
        d_context: width of the context tokens (None: self-attention only, the context is x itself).
        heads: number of heads; ``d_query`` must be divisible by it (each head has d = d_query / heads).

    Raises:
        ValueError: at construction if ``d_query`` is not divisible by ``heads``; in ``forward`` if x or
            context have the wrong shape.
    """

    def __init__(self, d_query: int, d_context: int | None = None, heads: int = 4):
        super().__init__()
        if d_query % heads:
            raise ValueError(f"d_query={d_query} must be divisible by heads={heads}")
        self.heads, self.d_head = heads, d_query // heads
        self.d_query, self.d_context = d_query, d_context or d_query
        self.to_q = nn.Linear(d_query, d_query, bias=False)
        self.to_k = nn.Linear(self.d_context, d_query, bias=False)
        self.to_v = nn.Linear(self.d_context, d_query, bias=False)
        self.to_out = nn.Linear(d_query, d_query)
        self.last_weights: torch.Tensor | None = None  # (B, heads, N, M), kept when keep_weights is True
        self.keep_weights = False

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, d_query), context (B, M, d_context) or None -> (B, N, d_query). Taught in chapter 4."""
        if x.dim() != 3 or x.shape[-1] != self.d_query:
            raise ValueError(f"x must be (B, N, {self.d_query}), got {tuple(x.shape)}")
        context = x if context is None else context
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.d_context:
            raise ValueError(f"context must be ({x.shape[0]}, M, {self.d_context}), got {tuple(context.shape)}")
        B, N, _ = x.shape
        M = context.shape[1]
        q = self.to_q(x).view(B, N, self.heads, self.d_head).transpose(1, 2)  # (B, heads, N, d)
        k = self.to_k(context).view(B, M, self.heads, self.d_head).transpose(1, 2)  # (B, heads, M, d)
        v = self.to_v(context).view(B, M, self.heads, self.d_head).transpose(1, 2)  # (B, heads, M, d)
        if self.keep_weights or N * M < FUSED_MIN_PAIRS:
            # softmax(Q K^T / sqrt(d)) V
            weights = torch.softmax(q @ k.transpose(-2, -1) / self.d_head**0.5, dim=-1)  # (B, heads, N, M)
            if self.keep_weights:
                self.last_weights = weights.detach()
            out = weights @ v  # (B, heads, N, d)
        else:  # the same, in torch's fused kernel, which never stores the (N, M) weights (FUSED_MIN_PAIRS)
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, N, self.d_query))  # (B, N, heads * d) -> (B, N, d_query)


def position_encoding_2d(height: int, width: int, channels: int) -> torch.Tensor:
    """Fixed sinusoidal encoding of each position (row, column) of an h x w map, (h * w, channels), row-major:
    half the channels encode the row and half the column, each as cos and sin of the index at geometrically
    spaced frequencies 10000^(-k / (channels / 4)) (Vaswani et al. 2017, Sec. 3.5, once per axis). Values in
    [-1, 1]; works for any h and w, so the network stays fully convolutional. ``channels`` must be divisible by 4."""
    if channels % 4:
        raise ValueError(f"channels must be divisible by 4 for a 2-D sinusoidal encoding, got {channels}")
    quarter = channels // 4
    frequencies = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(quarter) / quarter)  # (channels/4,)

    def encode(index: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, channels / 2)
        angles = index[:, None].float() * frequencies[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)

    rows = torch.arange(height).repeat_interleave(width)
    columns = torch.arange(width).repeat(height)
    return torch.cat([encode(rows), encode(columns)], dim=1)


class TransformerBlock(nn.Module):
    """A pre-LayerNorm transformer block on tokens (Vaswani et al. 2017; reference code ``BasicTransformerBlock``):
    self-attention, then cross-attention to ``context`` when ``d_context`` is set, then a feed-forward layer
    (width 4x, GELU), each with a residual connection. The one block of the book: the UNet's
    :class:`SpatialTransformer` runs it on the feature map's positions, and tau_theta for text
    (:class:`~ldm_core.conditioning.TextEncoder`) on a caption's words.

    Args:
        width: width of the tokens.
        d_context: width of the context tokens; None for self-attention only.
        heads: attention heads; must divide ``width``.

    ``forward(tokens, context=None)``: (B, N, width), context (B, M, d_context) -> (B, N, width).

    Raises:
        ValueError: in ``forward`` if the context is missing, unexpected or of the wrong shape.
    """

    def __init__(self, width: int, d_context: int | None, heads: int):
        super().__init__()
        self.d_context = d_context
        self.norm1, self.self_attention = nn.LayerNorm(width), Attention(width, None, heads)
        if d_context is not None:
            self.norm2, self.cross_attention = nn.LayerNorm(width), Attention(width, d_context, heads)
        self.norm3 = nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is None) != (self.d_context is None):
            raise ValueError(f"this block expects context (B, M, {self.d_context}), got "
                             f"{None if context is None else tuple(context.shape)}")
        tokens = tokens + self.self_attention(self.norm1(tokens))
        if context is not None:
            tokens = tokens + self.cross_attention(self.norm2(tokens), context)
        return tokens + self.feed_forward(self.norm3(tokens))


class SpatialTransformer(nn.Module):
    """The LDM's transformer block on a feature map (paper Sec. 3.3, Fig. 3; reference code ``SpatialTransformer``).

    GroupNorm -> 1x1 projection in -> flatten to tokens, + a fixed 2-D position encoding -> a
    :class:`TransformerBlock` (self-attention -> cross-attention to ``context`` -> feed-forward, each pre-LayerNorm,
    residual) -> 1x1 projection out (zero-initialised) -> + input. Taught in chapter 4.

    The position encoding (:func:`position_encoding_2d`) is this book's addition: the reference code has none, and
    its deep UNet learns where a feature is from the borders that zero padding reveals. The book's UNet is shallow,
    and without it a token cannot tell the left half of a canvas from the right, so a caption like "3 left of 7"
    could not be followed (chapter 6).

    Args:
        channels: C of the feature map.
        d_context: width of the context tokens; None for a block with self-attention only.
        heads: attention heads.
        groups: GroupNorm groups; must divide ``channels``.

    Raises:
        ValueError: if ``groups`` does not divide ``channels``; in ``forward`` if the context is missing,
            unexpected or of the wrong shape.
    """

    def __init__(self, channels: int, d_context: int | None, heads: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels}")
        if channels % 4:
            raise ValueError(f"channels={channels} must be divisible by 4 (the 2-D position encoding)")
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.d_context = d_context
        self.block = TransformerBlock(channels, d_context, heads)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)  # the block starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, h, w), context (B, M, d_context) -> (B, C, h, w)."""
        B, C, height, width = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = tokens + position_encoding_2d(height, width, C).to(tokens)
        tokens = self.block(tokens, context)  # self-attention, cross-attention, feed-forward
        out = tokens.transpose(1, 2).reshape(B, C, height, width)  # (B, C, h, w)
        return x + self.proj_out(out)


@contextmanager
def capture_cross_attention(model: nn.Module):
    """Record the cross-attention weights of every :class:`SpatialTransformer` in ``model`` while open.

    Yields a list that receives, at every call of each block, its weights as a CPU tensor (B, heads, h, w, M):
    for each position (y, x) of that block's h x w feature map, how much it attends to each of the M context
    tokens (a softmax over M: each map sums to 1 over tokens). Use it around sampling to see where each word of a
    caption lands; with classifier-free guidance the batch holds the conditional half first.
    """
    maps: list[torch.Tensor] = []
    blocks = [m for m in model.modules() if isinstance(m, SpatialTransformer) and m.d_context is not None]

    def record(block: SpatialTransformer, args, output):
        B, _, height, width = args[0].shape
        weights = block.block.cross_attention.last_weights  # (B, heads, h*w, M)
        maps.append(weights.view(B, weights.shape[1], height, width, weights.shape[-1]).cpu())

    hooks = [block.register_forward_hook(record) for block in blocks]
    for block in blocks:
        block.block.cross_attention.keep_weights = True
    try:
        yield maps
    finally:
        for hook in hooks:
            hook.remove()
        for block in blocks:
            block.block.cross_attention.keep_weights, block.block.cross_attention.last_weights = False, None

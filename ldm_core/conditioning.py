"""Conditioners tau_theta: they turn a condition y into context tokens (B, M, d_context) for cross-attention.

Paper Eq. 3: the UNet attends to tau_theta(y). For class labels, tau_theta is a learned embedding and M = 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .schedules import rng_device


class ClassEmbedder(nn.Module):
    """A class label as one context token: y (B,) int64 in [0, num_classes] -> (B, 1, d_context).

    The extra index ``null_label`` = ``num_classes`` is the null condition: "no label". Training replaces a
    fraction of labels by it (condition dropout), and classifier-free guidance uses it for the unconditional
    prediction (Ho & Salimans 2022), so the same learned token serves both.

    Raises:
        ValueError: if y is not a 1-D integer tensor of labels in [0, num_classes].
    """

    def __init__(self, num_classes: int, d_context: int):
        super().__init__()
        self.num_classes, self.d_context = num_classes, d_context
        self.null_label = num_classes
        self.embedding = nn.Embedding(num_classes + 1, d_context)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 1 or y.dtype != torch.int64:
            raise ValueError(f"y must be int64 labels of shape (B,), got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (y.min() < 0 or y.max() > self.null_label):
            raise ValueError(f"labels must lie in [0, {self.null_label}] ({self.null_label} = null), "
                             f"got [{int(y.min())}, {int(y.max())}]")
        return self.embedding(y).unsqueeze(1)  # (B, 1, d_context)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The null condition's labels: (batch_size,) filled with ``null_label``."""
        return torch.full((batch_size,), self.null_label, dtype=torch.int64, device=device)

    def drop(self, y: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Condition dropout: each label replaced by the null label with probability p. (B,) -> (B,)."""
        keep = (torch.rand(y.shape, generator=generator, device=rng_device(generator, y.device)) >= p).to(y.device)
        return torch.where(keep, y, self.null(len(y), y.device))

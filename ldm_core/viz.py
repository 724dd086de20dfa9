"""Figures: image grids and loss curves (matplotlib, torchvision's ``make_grid``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from .data import to_unit_range


def image_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile images x (B, C, H, W) in [-1, 1] into one (H', W', 3) float array in [0, 1], ``nrow`` per row."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    grid = make_grid(to_unit_range(x.detach().float().cpu()), nrow=nrow, padding=padding, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()  # (H', W', 3)


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 0.5):
    """Show images x (B, C, H, W) in [-1, 1] as a grid; returns the matplotlib Axes."""
    grid = image_grid(x, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * grid.shape[1] / 16, scale * grid.shape[0] / 16))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def moving_average(values, window: int) -> np.ndarray:
    """Mean over the last ``window`` values at each point (fewer at the start); same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumsum[1:] - cumsum[np.arange(1, len(values) + 1) - counts]) / counts


def plot_loss(losses, title: str = "training loss", window: int = 50, ax=None, log: bool = True):
    """The per-step loss (faint) and its moving average over ``window`` steps; returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.3, lw=0.8, label="per step")
    ax.plot(moving_average(losses, window), lw=1.5, label=f"mean of last {window}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return ax

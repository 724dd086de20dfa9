"""Checks of what the public entry points are given, each with an error that names what was expected.

The public entry points check their arguments with these, where they enter: a wrong argument fails at once with
a message that says which argument, what it must be and what it was, never deep inside torch and never as a
silent wrong result (a NaN guidance scale, a step count of 2.5, images in [0, 255] where [-1, 1] is meant).
"""

from __future__ import annotations

import math
import numbers

import torch


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool, not a float such as 50.0) in [low, high].

    Raises:
        TypeError: if it is not an integer.
        ValueError: if it lies outside [low, high] (either bound None: unbounded).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_range(low, high)}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer{_range(low, high)}, got {value}")
    return value


def check_finite(name: str, value, low: float | None = None, high: float | None = None,
                 open_low: bool = False) -> float:
    """``value`` as a float, if it is a finite real number in [low, high] ((low, high] with ``open_low``).

    Raises:
        TypeError: if it is not a real number.
        ValueError: if it is NaN, infinite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number{_range(low, high, open_low)}, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    below = low is not None and (value <= low if open_low else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number{_range(low, high, open_low)}, got {value}")
    return value


def check_images(name: str, x, channels: int | None = None, tolerance: float = 0.5) -> torch.Tensor:
    """``x`` if it is a floating-point image batch (B, C, H, W), C = ``channels`` if given, with values in
    [-1, 1] up to ``tolerance`` (decoded images overshoot a little; [0, 255] images, or NaNs, do not pass).

    Raises:
        TypeError: if it is not a floating-point tensor (uint8 images: ``x.float() / 127.5 - 1``).
        ValueError: for another shape, or values outside [-1 - tolerance, 1 + tolerance].
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor of images in [-1, 1], got {kind}"
                        " (uint8 images in [0, 255] map to [-1, 1] by x.float() / 127.5 - 1)")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{name} must be images (B, {channels if channels is not None else 'C'}, H, W), "
                         f"got shape {tuple(x.shape)}")
    if x.numel():
        low, high = float(x.min()), float(x.max())
        if not (-1 - tolerance <= low and high <= 1 + tolerance):  # NaN fails both
            raise ValueError(f"{name} must lie in [-1, 1] (the book's image range), got values in [{low:.3g}, "
                             f"{high:.3g}]; images in [0, 1] map to [-1, 1] by 2 x - 1")
    return x


def _range(low, high, open_low: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if open_low else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if open_low else '['}{low}, {high}]"

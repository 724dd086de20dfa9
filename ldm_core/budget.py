"""Compute budgets and device choice.

One switch, the environment variable ``LDM_BUDGET``, chooses sizes and step counts for every chapter:

- ``smoke``: tests and nbval; tiny models, a few steps, each chapter well under a minute on 2 CPU cores.
- ``book``: the default and the HTML build; results worth looking at in about 5 minutes a chapter on 2 CPU cores.
- ``full``: a GPU; the default when ``LDM_BUDGET`` is unset and CUDA is available.

The budget changes sizes, step counts, sample counts and the thresholds of the chapters' checks, all read from one
table (:data:`ldm_core.recipes.BUDGET_TABLE`), never the code path.
"""

from __future__ import annotations

import os

import torch

BUDGETS = ("smoke", "book", "full")


def get_budget() -> str:
    """The active budget name.

    Returns:
        ``LDM_BUDGET`` if it is set; otherwise ``"full"`` when CUDA is available, else ``"book"``.

    Raises:
        ValueError: if ``LDM_BUDGET`` is set to anything but one of :data:`BUDGETS`.
    """
    name = os.environ.get("LDM_BUDGET", "").strip().lower()
    if not name:
        return "full" if torch.cuda.is_available() else "book"
    if name not in BUDGETS:
        raise ValueError(f"LDM_BUDGET must be one of {BUDGETS}, got {name!r}")
    return name


def get_device() -> torch.device:
    """CUDA if present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

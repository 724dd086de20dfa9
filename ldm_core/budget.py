"""Compute budgets and device choice.

One switch, the environment variable ``LDM_BUDGET``, chooses sizes and step counts for every chapter:

- ``smoke``: tests and nbval; tiny models, a few steps, each chapter well under a minute on 2 CPU cores.
- ``book``: the default, on a CPU or a GPU, and the HTML build; results worth looking at within 5 minutes a
  chapter (chapter 6 within 8) on 2 CPU cores, faster on a GPU.
- ``full``: larger models for a GPU, opt-in only (``LDM_BUDGET=full``): its recipes have not been timed on a GPU
  yet, so CUDA alone does not select it.

The budget changes sizes, step counts, sample counts and the thresholds of the chapters' checks, all read from one
table (:data:`ldm_core.recipes.BUDGET_TABLE`), never the code path.
"""

from __future__ import annotations

import os

import torch

BUDGETS = ("smoke", "book", "full")


def get_budget() -> str:
    """The active budget name: ``LDM_BUDGET`` if it is set, else ``"book"`` (on any device).

    Raises:
        ValueError: if ``LDM_BUDGET`` is set to anything but one of :data:`BUDGETS`.
    """
    name = os.environ.get("LDM_BUDGET", "").strip().lower()
    if not name:
        return "book"
    if name not in BUDGETS:
        raise ValueError(f"LDM_BUDGET must be one of {BUDGETS}, got {name!r}")
    return name


def budget_reason() -> str:
    """One line for a chapter's first output: the budget, the device, and why this budget."""
    name, device = get_budget(), get_device()
    why = ("set by LDM_BUDGET" if os.environ.get("LDM_BUDGET", "").strip() else
           "the default; LDM_BUDGET=full opts in to the larger, not yet GPU-timed recipes" if device.type == "cuda"
           else "the default; LDM_BUDGET=smoke runs every code path in seconds")
    return f"budget: {name} ({why}), device: {device}"


def get_device() -> torch.device:
    """CUDA if present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""The artifact cache: trained models shared between chapters.

A chapter asks, say, for "the f=4 autoencoder at this budget" (:mod:`ldm_core.pretrained`): :func:`load_or_train`
loads it from the cache if it is there and trains it with its recipe if not. The cache lives in ``LDM_CACHE``
(default ``$XDG_CACHE_HOME/ldm_core`` or ``~/.cache/ldm_core``); each file's name is a hash of the kind, the recipe
and the package version, so a changed recipe never loads a stale model. Files are written atomically (temporary
file, then rename) and loaded with ``weights_only=True``; a file that fails to load is retrained, not trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import __version__
from .budget import get_device


@dataclass
class Artifact:
    """A trained model and how it came to be."""

    model: nn.Module
    recipe: object
    history: dict = field(default_factory=dict)  # what training recorded: loss per step, seconds, ...
    from_cache: bool = False  # True when loaded, False when trained in this call


def cache_dir() -> Path:
    """``LDM_CACHE``, else ``$XDG_CACHE_HOME/ldm_core``, else ``~/.cache/ldm_core``."""
    if os.environ.get("LDM_CACHE"):
        return Path(os.environ["LDM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ldm_core"


def cache_path(kind: str, recipe) -> Path:
    """Where the artifact of ``kind`` trained with ``recipe`` lives: the name hashes recipe and version."""
    description = json.dumps({"kind": kind, "recipe": dataclasses.asdict(recipe), "version": __version__},
                             sort_keys=True)
    digest = hashlib.sha256(description.encode()).hexdigest()[:16]
    return cache_dir() / f"{kind}-{digest}.pt"


def save_atomic(payload: dict, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_or_train(kind: str, recipe, build: Callable[[], nn.Module],
                  fit: Callable[[nn.Module, Path], dict], device: torch.device | None = None) -> Artifact:
    """Load the artifact (kind, recipe) from the cache, or build it, ``fit`` it and cache it.

    Args:
        kind: a name like ``"autoencoder"``.
        recipe: a frozen dataclass; it and the package version key the cache.
        build: returns a fresh, untrained model.
        fit: ``fit(model, checkpoint)`` trains the model in place (on ``device``), checkpointing to the given
            path so that an interrupted run resumes, and returns its history (a dict of plain values).
        device: where the model lives; default :func:`get_device`.

    Returns:
        The :class:`Artifact`, its model in eval mode on ``device``.
    """
    device = device or get_device()
    path = cache_path(kind, recipe)
    model = build().to(device)
    if path.exists():
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(payload["state_dict"])
            return Artifact(model.eval(), recipe, payload["history"], from_cache=True)
        except Exception as error:  # a corrupt or foreign file: retrain rather than trust it
            warnings.warn(f"ignoring unreadable cache file {path} ({error!r}); retraining")
            model = build().to(device)
    history = fit(model, path.with_suffix(".partial.pt"))
    save_atomic({"state_dict": model.state_dict(), "history": history}, path)
    return Artifact(model.eval(), recipe, history, from_cache=False)

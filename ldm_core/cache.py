"""The artifact cache: trained models shared between chapters.

A chapter asks, say, for "the f=4 autoencoder at this budget" (:mod:`ldm_core.pretrained`): :func:`load_or_train`
loads it from the cache if it is there and trains it with its recipe if not. The cache lives in ``LDM_CACHE``
(default ``$XDG_CACHE_HOME/ldm_core`` or ``~/.cache/ldm_core``); each file's name is a hash of what made it (the
kind, the recipe and the package version, :func:`made_by`), and the file carries that description too, so that a
file copied or renamed from another recipe is recognised as foreign.

Nothing is lost and nothing is trusted blindly:

- files are written atomically (a temporary file, then a rename); the temporary file of a write that was killed
  is removed by the next write to that folder (:func:`remove_orphans`);
- files are loaded with ``weights_only=True``; a file that cannot be read, or that another recipe made, is set
  aside (renamed ``*.set-aside-N.pt``, named in a warning) and the model is trained again;
- training checkpoints to ``<name>.partial.pt`` (:func:`ldm_core.train.train`), which is removed only after the
  cache file is written: if that write fails, the next call resumes from the finished checkpoint;
- the cache folder is checked for writability before any training starts (:func:`check_writable`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
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


@dataclass(frozen=True)
class Checkpoint:
    """Where :func:`~ldm_core.train.train` checkpoints, and what the run is (``made_by``, recorded in the file and
    checked on resume, so a checkpoint of another run is never resumed)."""

    path: Path
    made_by: str = ""


def cache_dir() -> Path:
    """``LDM_CACHE``, else ``$XDG_CACHE_HOME/ldm_core``, else ``~/.cache/ldm_core``."""
    if os.environ.get("LDM_CACHE"):
        return Path(os.environ["LDM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ldm_core"


def made_by(kind: str, recipe) -> str:
    """What makes an artifact, as one JSON string: its kind, its recipe (a dataclass) and the package version.

    Raises:
        TypeError: if ``recipe`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(recipe) or isinstance(recipe, type):
        raise TypeError(f"recipe must be a dataclass instance (ldm_core.recipes), got {type(recipe).__name__}")
    return json.dumps({"kind": kind, "recipe": dataclasses.asdict(recipe), "version": __version__}, sort_keys=True)


def cache_path(kind: str, recipe) -> Path:
    """Where the artifact of ``kind`` trained with ``recipe`` lives: the name hashes :func:`made_by`."""
    digest = hashlib.sha256(made_by(kind, recipe).encode()).hexdigest()[:16]
    return cache_dir() / f"{kind}-{digest}.pt"


def check_writable(folder: Path, what: str = "the artifact cache (LDM_CACHE)") -> None:
    """Create ``folder`` if needed and write and remove a file in it, before any work that must be saved there.

    Raises:
        OSError: naming the folder and ``what`` it is for, if it is not a folder this process can write (a file,
            no permission, a read-only file system).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"{what} {folder} must be a folder this process can write: {error}") from error


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
# save_atomic's temporary files: <target>.<host>.pid<PID>.<random>.tmp
_TEMPORARY = re.compile(r"^(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.pid(?P<pid>\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the temporary files that :func:`save_atomic` left in ``folder`` when its process was killed
    mid-write. Their names carry the writer's host and process id: only files of this host whose writer is no longer
    running are removed (a cache shared between machines keeps the others; on Windows, where probing a process id
    is not harmless, none are removed). Returns them."""
    removed = []
    for path in folder.glob("*.tmp") if folder.is_dir() and os.name != "nt" else ():
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _HOST and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_atomic(payload: dict, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a reader never sees half a file. Orphaned
    temporary files of killed writes in that folder are removed first (:func:`remove_orphans`)."""
    _write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` as :func:`save_atomic` writes a payload."""
    _write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{_HOST}.pid{os.getpid()}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def set_aside(path: Path, why: str) -> Path:
    """Rename a ``.pt`` file that must not be used to ``<name>.set-aside-N.pt`` (nothing is deleted) and warn,
    naming both paths and why. Returns the new path."""
    n = 1
    while (aside := path.with_name(f"{path.name.removesuffix('.pt')}.set-aside-{n}.pt")).exists():
        n += 1
    os.replace(path, aside)
    warnings.warn(f"{path}: {why}; set aside as {aside.name}, starting afresh", stacklevel=3)
    return aside


def load_checked(path: Path, device: torch.device | str, accept: Callable[[object], bool], foreign: str):
    """The payload at ``path`` (``torch.load(..., weights_only=True)``) if the file is there, loads and
    ``accept(payload)`` is true; else None. A file that cannot be loaded (or whose ``accept`` raises) or that
    ``accept`` refuses (the reason: ``foreign``) is set aside (:func:`set_aside`, after :func:`check_writable`):
    neither trusted nor lost.

    Raises:
        OSError: if such a file has to be set aside in a folder that cannot be written.
    """
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        if accept(payload):
            return payload
        problem = foreign
    except Exception as error:  # a truncated or corrupt file: start afresh rather than fail every call
        problem = f"cannot be loaded ({type(error).__name__}: {str(error)[:200]})"
    check_writable(path.parent)  # before renaming anything in it
    set_aside(path, problem)
    return None


def load_or_train(kind: str, recipe, build: Callable[[], nn.Module],
                  fit: Callable[[nn.Module, Checkpoint], dict], device: torch.device | None = None) -> Artifact:
    """Load the artifact (kind, recipe) from the cache, or build it, ``fit`` it and cache it.

    Args:
        kind: a name like ``"autoencoder"``.
        recipe: a frozen dataclass; it and the package version key the cache (:func:`made_by`).
        build: returns a fresh, untrained model.
        fit: ``fit(model, checkpoint)`` trains the model in place (on ``device``), passing the :class:`Checkpoint`
            to :func:`~ldm_core.train.train` so that an interrupted run resumes, and returns its history (a dict
            of plain values).
        device: where the model lives; default :func:`get_device`.

    Returns:
        The :class:`Artifact`, its model in eval mode on ``device``.

    Raises:
        OSError: if the cache folder cannot be written (checked before training).
    """
    device = device or get_device()
    path, description = cache_path(kind, recipe), made_by(kind, recipe)
    model = build().to(device)
    checkpoint = Checkpoint(path.with_name(f"{path.name.removesuffix('.pt')}.partial.pt"), description)

    def accept(payload) -> bool:  # made by this recipe and version, and its weights fit the model
        if not isinstance(payload, dict) or payload.get("made_by") != description:
            return False
        model.load_state_dict(payload["state_dict"])
        return True

    existed = path.exists()
    payload = load_checked(path, device, accept, "this file was made by another recipe or version, not by the one "
                                                 "asked for")
    if payload is not None:
        checkpoint.path.unlink(missing_ok=True)  # a finished run's, if its removal was interrupted
        return Artifact(model.eval(), recipe, payload["history"], from_cache=True)
    if existed:  # set aside: its load_state_dict may have failed half-way
        model = build().to(device)
    check_writable(path.parent)
    history = fit(model, checkpoint)
    save_atomic({"state_dict": model.state_dict(), "history": history, "made_by": description}, path)
    checkpoint.path.unlink(missing_ok=True)  # only now: until the cache file exists, the finished run is there
    return Artifact(model.eval(), recipe, history, from_cache=False)

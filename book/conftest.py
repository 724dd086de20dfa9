"""nbval runs each chapter in its own kernel; give each kernel a fresh, empty artifact cache.

This makes `make test` show what the book promises: every chapter runs alone, in a fresh kernel, with an empty
cache, training whatever it needs.
"""

import os
import shutil
import tempfile

import pytest

_caches: dict = {}  # notebook path -> its cache folder


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before a chapter's first cell (its kernel starts then), point LDM_CACHE at a new empty folder."""
    path = str(getattr(item, "path", ""))
    if path.endswith(".ipynb") and path not in _caches:
        _caches[path] = tempfile.mkdtemp(prefix="ldm-cache-")
        os.environ["LDM_CACHE"] = _caches[path]


def pytest_sessionfinish(session):
    """Delete the chapters' caches; with LDM_SMOKE_CACHE set (by `make test`), first gather the models they trained
    there, for the book build that follows."""
    keep = os.environ.get("LDM_SMOKE_CACHE")
    for folder in _caches.values():
        if keep:
            os.makedirs(keep, exist_ok=True)
            for name in os.listdir(folder):
                if name.endswith(".pt") and not name.endswith(".partial.pt"):
                    shutil.copy2(os.path.join(folder, name), os.path.join(keep, name))
        shutil.rmtree(folder, ignore_errors=True)

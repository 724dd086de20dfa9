"""nbval runs each chapter in its own kernel; give each kernel a fresh, empty artifact cache.

This makes `make test` show what the book promises: every chapter runs alone, in a fresh kernel, with an empty
cache, training whatever it needs. With ``LDM_SMOKE_EXECUTED`` set (by `make test`), each chapter is also written
there with the outputs its cells produced under nbval, so that the smoke book is built from this one execution
rather than a second one.
"""

import os
import shutil
import tempfile

import nbformat
import nbval.kernel
import pytest

_start_new_kernel = nbval.kernel.start_new_kernel


def _start_new_kernel_again_if_it_fails(*args, **kwargs):
    """nbval's kernel start, tried a second time when a kernel does not answer in time: two kernels started at
    once (`make test` runs two chapters at a time) can collide on the TCP ports jupyter_client picks for them."""
    try:
        return _start_new_kernel(*args, **kwargs)
    except RuntimeError:
        return _start_new_kernel(*args, **kwargs)


nbval.kernel.start_new_kernel = _start_new_kernel_again_if_it_fails

_caches: dict = {}  # notebook path -> its cache folder
_notebooks: dict = {}  # notebook path -> nbval's notebook object, its cells' outputs replaced by this run's


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before a chapter's first cell (its kernel starts then), point LDM_CACHE at a new empty folder."""
    path = str(getattr(item, "path", ""))
    if path.endswith(".ipynb") and path not in _caches:
        _caches[path] = tempfile.mkdtemp(prefix="ldm-cache-")
        os.environ["LDM_CACHE"] = _caches[path]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """After a cell ran, keep what it output in the notebook (nbval's ``test_outputs``: streams, displays, errors)."""
    yield
    outputs = getattr(item, "test_outputs", None)
    if call.when == "call" and outputs is not None and hasattr(item, "cell"):
        item.cell.outputs = [output for output in outputs]
        _notebooks[str(item.path)] = item.parent.nb


def pytest_sessionfinish(session):
    """Delete the chapters' caches; with LDM_SMOKE_CACHE set (by `make test`), first gather the models they trained
    there, and with LDM_SMOKE_EXECUTED set, write the executed chapters there."""
    keep = os.environ.get("LDM_SMOKE_CACHE")
    for folder in _caches.values():
        if keep:
            os.makedirs(keep, exist_ok=True)
            for name in os.listdir(folder):
                if name.endswith(".pt") and not name.endswith(".partial.pt"):  # two workers may copy one model:
                    tmp = os.path.join(keep, f".{name}.{os.getpid()}.tmp")  # each copy lands whole (atomic rename)
                    shutil.copy2(os.path.join(folder, name), tmp)
                    os.replace(tmp, os.path.join(keep, name))
        shutil.rmtree(folder, ignore_errors=True)
    executed = os.environ.get("LDM_SMOKE_EXECUTED")
    if executed and session.testsfailed == 0:
        os.makedirs(executed, exist_ok=True)
        for path, notebook in _notebooks.items():
            nbformat.write(notebook, os.path.join(executed, os.path.basename(path)))

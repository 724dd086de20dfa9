"""Every live slider still works after its chapter has run to the end, as a reader in Jupyter or Colab would move it.

The HTML book cannot show this (its frames were rendered when the cell ran): a slider callback that reads a global
which a later cell rebinds breaks only live. Each chapter with a slider is executed completely in a fresh kernel
at the smoke budget, then one more cell calls every live slider's function at its minimum, middle and maximum
(:func:`ldm_core.viz.exercise_live_sliders`).
"""

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parents[1] / "book"
WITH_SLIDERS = [p for p in sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
                if any("slider(" in "".join(c["source"]) for c in json.loads(p.read_text())["cells"]
                       if c["cell_type"] == "code")]
CHECK = """from ldm_core.viz import LIVE_SLIDERS, exercise_live_sliders
calls = exercise_live_sliders()
assert LIVE_SLIDERS and calls == 3 * len(LIVE_SLIDERS), (calls, len(LIVE_SLIDERS))
print(f"{len(LIVE_SLIDERS)} live sliders, {calls} calls after the whole chapter ran")"""


def test_there_are_chapters_with_sliders():
    assert {p.stem for p in WITH_SLIDERS} >= {"02_ldm_objective", "04_sampling", "05_text_to_image"}


@pytest.mark.parametrize("path", WITH_SLIDERS, ids=lambda p: p.stem)
def test_every_live_slider_works_after_the_whole_chapter_ran(path, tmp_path, monkeypatch):
    # `make test` sets LDM_SMOKE_CACHE to the models its nbval run trained: start from a copy, so that this test
    # measures the sliders rather than training again (alone, the chapter trains what it needs)
    if os.environ.get("LDM_SMOKE_CACHE"):
        shutil.copytree(os.environ["LDM_SMOKE_CACHE"], os.environ["LDM_CACHE"], dirs_exist_ok=True)
    monkeypatch.delenv("LDM_STATIC_HTML", raising=False)  # live widgets, as in Jupyter
    monkeypatch.setenv("TQDM_DISABLE", "1")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute()
    assert "live sliders" in "".join(o.get("text", "") for o in notebook.cells[-1].outputs)

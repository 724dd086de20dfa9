"""Every slider still works after its chapter has run to the end, as a reader in Jupyter or Colab would move it.

The HTML book cannot show this (its frames were rendered when the cell ran): a slider callback that reads a global
which a later cell rebinds breaks only live. So each chapter with a slider ends its Checks by calling every
slider's function at its minimum, middle and maximum (:func:`ldm_core.viz.exercise_live_sliders`), where that
assertion bites whether the sliders are live widgets or pre-rendered players (``LDM_STATIC_HTML=1``, as under
nbval in `make test` and in `make book`).
"""

import json
from pathlib import Path

import pytest

from ldm_core import viz

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
CALL = "assert exercise_live_sliders() == 3 * len(LIVE_SLIDERS)"


def _code(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


WITH_SLIDERS = [p for p in CHAPTERS if any("slider(" in cell for cell in _code(p))]


def test_there_are_chapters_with_sliders():
    assert {p.stem for p in WITH_SLIDERS} >= {"02_ldm_objective", "05_sampling", "06_text_to_image", "07_inpainting",
                                                 "08_super_resolution"}


@pytest.mark.parametrize("path", WITH_SLIDERS, ids=lambda p: p.stem)
def test_a_chapter_with_sliders_moves_them_after_everything_else(path):
    cells = _code(path)
    last_slider = max(i for i, cell in enumerate(cells) if "slider(" in cell)
    calls = [i for i, cell in enumerate(cells) if CALL in cell]
    assert calls and calls[-1] > last_slider, f"{path.name}: the Checks must end with `{CALL}`"


@pytest.mark.parametrize("static", [False, True], ids=["live", "pre-rendered"])
def test_exercise_live_sliders_catches_a_callback_that_reads_a_rebound_global(monkeypatch, static):
    if static:
        monkeypatch.setenv("LDM_STATIC_HTML", "1")
    else:
        monkeypatch.delenv("LDM_STATIC_HTML", raising=False)
    monkeypatch.setattr(viz, "LIVE_SLIDERS", [])
    scale = {"value": 1.0}
    viz.slider(lambda k: [[k * scale["value"]]], k=[0.0, 0.5, 1.0])
    assert viz.exercise_live_sliders() == 3
    scale.clear()  # a later cell rebinds what the callback reads
    with pytest.raises(KeyError):
        viz.exercise_live_sliders()

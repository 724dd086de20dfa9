"""The chapters themselves: committed without outputs, each with a figure and asserted claims."""

import json
from pathlib import Path

import pytest
import yaml

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
APPENDICES = sorted(BOOK.glob("appendix_*.ipynb"))  # taught like chapters: the same structure
TAUGHT = CHAPTERS + APPENDICES
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def test_the_chapters_are_numbered_from_one_without_gaps():
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert len(numbers) >= 5 and numbers == list(range(1, len(numbers) + 1)), CHAPTERS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have stored outputs; clear them before committing"


@pytest.mark.parametrize("path", TAUGHT, ids=lambda p: p.stem)
def test_chapter_has_summary_exercises_figures_and_checks(path):
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "## Summary" in text and "## Exercises" in text
    assert "assert " in code, "every chapter checks its claims"
    assert "plt." in code or "show_images(" in code, "every chapter draws at least one figure"


@pytest.mark.parametrize("path", TAUGHT, ids=lambda p: p.stem)
def test_first_code_cell_installs_the_package_from_the_configured_repository(path):
    """The Colab path: the repository URL is set once, in _config.yml; each chapter's install cell uses it."""
    repository = yaml.safe_load((BOOK.parent / "_config.yml").read_text())["repository"]
    cells = json.loads(path.read_text())["cells"]
    first = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    assert 'find_spec("ldm_core") is None' in first, "install only where the package is missing"
    assert f'"ldm_core @ git+{repository["url"]}@{repository["branch"]}"' in first
    command = first.split("subprocess.run([", 1)[1].split("]", 1)[0]
    assert "--editable" not in command and "torch" not in command, \
        "a non-editable install of ldm_core alone, so that Colab keeps its own torch"
    assert "ldm_core.__version__" in first

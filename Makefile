# Two commands (see README): `make book` builds the HTML book, `make test` runs the tests.
# Both create the virtual environment .venv on first use and reinstall when requirements change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))

.PHONY: book test clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $(STAMP)

# Executes every chapter at LDM_BUDGET (default: book on a CPU, full on a GPU) while building.
# -W turns warnings (a chapter that raises is one) into errors; --keep-going reports them all first.
# Progress bars are for live sessions: the HTML shows the one summary line each training run prints.
# Sliders become self-contained JavaScript players with pre-rendered frames (LDM_STATIC_HTML=1, ldm_core.viz).
book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	TQDM_DISABLE=1 LDM_STATIC_HTML=1 $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going

# Unit tests and every notebook cell under nbval, at the smoke budget; each chapter gets an empty cache
# (book/conftest.py), so each shows it runs alone.
test: $(STAMP)
	LDM_BUDGET=smoke $(BIN)/python -m pytest tests --nbval-lax $(NOTEBOOKS)

clean:
	rm -rf _build

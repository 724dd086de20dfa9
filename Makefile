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

# Executes every chapter at LDM_BUDGET (default: book, on any device; full is opt-in) while building.
# -W turns warnings (a chapter that raises is one) into errors; --keep-going reports them all first.
# Progress bars are for live sessions: the HTML shows the one summary line each training run prints.
# Sliders become self-contained JavaScript players with pre-rendered frames (LDM_STATIC_HTML=1, ldm_core.viz).
book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	TQDM_DISABLE=1 LDM_STATIC_HTML=1 $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going

# The browser test drives Debian's Chromium (no browser download): installed here with apt when missing (needs root
# or sudo); elsewhere install a Chromium yourself and run `make test CHROMIUM=/path/to/chromium`.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
SMOKE := _build/smoke

$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)
	test -x $(CHROMIUM)

# Everything at the smoke budget, in three steps:
# 1. every notebook cell under nbval (two chapters at a time, one thread each), each chapter in a fresh kernel with
#    an empty cache (book/conftest.py), so each shows it runs alone; the models they train are gathered in
#    $(SMOKE)/cache and the executed chapters, with their outputs, in $(SMOKE)/executed;
# 2. the book, built from those executed chapters (the sources copied to $(SMOKE)/src, execution off: one execution
#    of every chapter, not two) as `make book` builds it (warnings are errors, sliders pre-rendered);
# 3. the unit tests, the benchmark's tests (from a copy of those models, one test per part of the benchmark) and the
#    browser test over every page of that build (tests/browser), two at a time with one thread each.
SMOKE_ENV := LDM_BUDGET=smoke LDM_SMOKE_CACHE=$(CURDIR)/$(SMOKE)/cache TQDM_DISABLE=1 LDM_STATIC_HTML=1
test: $(STAMP) $(CHROMIUM)
	rm -rf $(SMOKE)
	$(SMOKE_ENV) LDM_SMOKE_EXECUTED=$(CURDIR)/$(SMOKE)/executed OMP_NUM_THREADS=1 \
		$(BIN)/python -m pytest --nbval-lax --nbval-kernel-startup-timeout 120 -n 2 --dist loadscope --durations=15 \
		$(NOTEBOOKS)
	test $$(ls $(SMOKE)/executed/*.ipynb | wc -l) -eq $(words $(NOTEBOOKS))
	mkdir -p $(SMOKE)/src && cp -r _config.yml _toc.yml book $(SMOKE)/src/ && cp $(SMOKE)/executed/*.ipynb $(SMOKE)/src/book/
	sed -i 's/^  execute_notebooks: force .*/  execute_notebooks: "off"  # make test: executed under nbval/' $(SMOKE)/src/_config.yml
	grep -q 'execute_notebooks: "off"' $(SMOKE)/src/_config.yml
	$(SMOKE_ENV) $(BIN)/jupyter-book build $(SMOKE)/src --warningiserror --nitpick --keep-going
	$(SMOKE_ENV) LDM_BOOK_HTML=$(CURDIR)/$(SMOKE)/src/_build/html LDM_CHROMIUM=$(CHROMIUM) \
		OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n 2 --durations=15

clean:
	rm -rf _build

# foreman: every target that needs the virtualenv creates it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo run stub fuzz bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check foreman tests scripts
	$(BIN)/ruff format --check foreman tests scripts
	$(BIN)/flake8-async --disable=ASYNC124,ASYNC127,ASYNC9 --startable-in-context-manager=run,serve $$(find foreman -name "*.py")
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix foreman tests scripts
	$(BIN)/ruff format foreman tests scripts

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

run: $(STAMP)
	$(BIN)/foreman serve

stub: $(STAMP)
	$(BIN)/foreman stub

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q tests/property

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

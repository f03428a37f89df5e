# medsec developer commands. Each target creates .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ./demo-data

.PHONY: run test lint bench format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/medsec demo --data-dir $(DATA)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

CSAF_NODE := tests/advisories/node

# Tests run in parallel, one worker per core, at most TEST_WORKERS_MAX (each holds databases and servers).
TEST_WORKERS     ?= auto
TEST_WORKERS_MAX ?= 4

test: lint $(CSAF_NODE)/node_modules/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses $(TEST_WORKERS_MAX) --traceability-gate $(PYTEST_ARGS)

# The BSI CSAF validator (npm) for the advisory tests; skipped with a reason when npm is missing.
$(CSAF_NODE)/node_modules/.installed: $(CSAF_NODE)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(CSAF_NODE) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "note: npm not found; the CSAF validator-lib test will be skipped"; fi

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine: `make run` serves the dashboard, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
# Test processes: one per core by default; each takes whole files (module fixtures stay shared).
PYTEST_WORKERS ?= auto

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this spec is the CPU build; a loose spec would pull a CUDA build.
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" -e '.[test,hf,tl,lightning]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/phaseboard up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -ra --durations=15 -n $(PYTEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache tests/browser/artifacts

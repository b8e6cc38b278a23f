# Two targets a new user needs: `make export` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# PyTorch as pip resolves this pin: from PyPI on Linux x86_64 the CUDA build; for the CPU build,
# install it into .venv from https://download.pytorch.org/whl/cpu first (README, Quickstart).
TORCH ?= torch==2.13.0
ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup export test test-all lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,serve,batch]"
	touch $@

export: setup
	$(BIN)/explain-export $(ARGS)

test: setup
	$(BIN)/python -m pytest -m "not slow"

test-all: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) explainer .pytest_cache .ruff_cache

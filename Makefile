# make lab   : create .venv if missing, install rnnlab with its dev extras, run the lab handout's experiment
# make test  : the same set-up, then lint (ruff) and the tests (pytest, slow ones included)
# The development environment is pinned by constraints.txt (torch 2.13.0, CPU build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where a local wheel folder exists (this lab's machines keep the CPU torch wheel there), pip looks in it too.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -c constraints.txt

.PHONY: lab test lint figures bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	touch $@

lab: $(VENV)/.installed
	$(BIN)/rnnlab lab

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

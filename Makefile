# make lab   : create .venv if missing, install rnnlab with its dev extras (and compile its time loop, cached
#              in ~/.cache/rnnlab; without g++ the Python loop is used), run the lab handout's experiment
# make test  : the same set-up, then lint (ruff) and the tests (pytest, slow ones included)
# make figures : regenerate docs/figures and docs/questions.md (the handout's questions 5 and 6, measured)
# make notebook : open notebooks/lab.ipynb in JupyterLab (installed into .venv on first use, not by make test)
# The development environment is pinned by constraints.txt (torch 2.13.0, CPU build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where a local wheel folder exists (this lab's machines keep the CPU torch wheel there), pip looks in it too.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -c constraints.txt

.PHONY: lab test lint figures bench clean notebook notebook-strip

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# compileall: an editable install is not byte-compiled, and where PYTHONDONTWRITEBYTECODE is set (these
# machines) every command would compile rnnlab's sources again (~25 ms of the lab's start-up)
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	$(BIN)/python -m compileall -q src/rnnlab
	$(BIN)/python -c "import sys, rnnlab.engine as e; sys.exit(e.main())"  # compile the manual BPTT's time loop once (cached), or say why not
	touch $@

lab: $(VENV)/.installed
	$(BIN)/rnnlab lab

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# JupyterLab is not a dev extra (the tests run the notebook with nbclient alone); the pins keep it from
# moving anything the tests use. The server's root is the repository, so the notebook's links work.
notebook: $(VENV)/.installed
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(PIP_INSTALL) 'jupyterlab>=4.2,<5'
	$(BIN)/jupyter lab --ServerApp.root_dir=. notebooks/lab.ipynb

# Clear the notebook's outputs, execution counts and run timings before committing (tests/test_notebook.py
# refuses outputs and counts).
notebook-strip: $(VENV)/.installed
	$(BIN)/python -c "import nbformat; p = 'notebooks/lab.ipynb'; nb = nbformat.read(p, 4); \
	[c.update(outputs=[], execution_count=None) for c in nb.cells if c.cell_type == 'code']; \
	[c.metadata.pop('execution', None) for c in nb.cells]; nb.metadata.language_info = {'name': 'python'}; \
	nbformat.write(nb, p)"

# Every figure under docs/figures and docs/questions.md, which quotes their numbers (a few minutes).
figures: $(VENV)/.installed
	$(BIN)/python docs/make_figures.py

bench: $(VENV)/.installed
	$(BIN)/rnnlab bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

"""The lab notebook, notebooks/lab.ipynb: stored without outputs, and run top to bottom on the CPU.

The notebook runs in a Jupyter kernel started from this interpreter (the project's .venv, where rnnlab is
installed), through a kernel spec written here with that interpreter's path, so a `python3` kernel spec in
the user's or the system's Jupyter folders cannot stand in for it. Jupyter's and IPython's user folders
point at temporary ones (no user profile, start-up file or config changes the run) and the kernel works
in a temporary folder, so the run writes nothing into the repository or the home folder.
"""

from __future__ import annotations

import ast
import os
import sys

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.conftest import REPO, SHARED_DATA
from tests.test_source_scan import violations

NOTEBOOK = REPO / "notebooks" / "lab.ipynb"
CELL_TIMEOUT = 120  # seconds per cell; the whole notebook takes about 10 s on a 2-core CPU


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(cell) -> str:
    """Everything a cell printed (stdout and stderr)."""
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def execute(nb, tmp_path, monkeypatch, data):
    """Run `nb` in place (outputs are filled in) in a fresh kernel of this interpreter, in tmp_path/work."""
    kernels = tmp_path / "jupyter" / "kernels"
    write_kernel_spec(kernels / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    for var, folder in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                        ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")]:
        monkeypatch.setenv(var, str(tmp_path / "jupyter" / folder))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel then draws inline: figures are PNG outputs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RNNLAB_DATA", str(data))  # where the notebook's real-data tour looks

    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    assert km.kernel_spec.argv[0] == sys.executable, km.kernel_spec.argv
    work = tmp_path / "work"
    work.mkdir()
    NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=60,
                   resources={"metadata": {"path": str(work)}}).execute()
    return work


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [c.get("id", i) for i, c in enumerate(code_cells(nb)) if c.outputs or c.execution_count is not None]
    assert dirty == [], (f"{NOTEBOOK.name} is stored with outputs in cells {dirty}; clear them before committing "
                         "(`make notebook-strip`, or in Jupyter: Edit > Clear Outputs of All Cells, then save)")
    assert nb.metadata.kernelspec.name == "python3"


def test_notebook_never_uses_torch_optim_or_torch_nn_recurrent_layers():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    found = {c.get("id", i): violations(c.source) for i, c in enumerate(code_cells(nb))}
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_solves_the_lab(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = execute(nb, tmp_path, monkeypatch, SHARED_DATA)
    cells = {c.id: c for c in code_cells(nb)}

    # the handout's log: every 50 epochs, the loss falling to about the handout's 0.0100
    epochs = [line for line in text_of(cells["step3"]).splitlines() if line.startswith("Epoch [")]
    assert len(epochs) == 6 and epochs[0].startswith("Epoch [50/300] - Loss: ")
    assert float(epochs[-1].rsplit(" ", 1)[1]) < 0.02
    # the figures are shown inline, and written under the kernel's folder (never into the repository)
    figures = [c.id for c in code_cells(nb) if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert {"step4", "tour1", "tour3"} <= set(figures)
    assert (work / "runs" / "notebook" / "loss_curve.png").is_file()
    assert "Sentence: ['The', 'movie', 'is', 'bad'] → Prediction: 0" in text_of(cells["step5"])
    # the hand-written loop of step 3 is rnnlab's run_lab, up to float rounding
    gap = text_of(cells["tour1"]).split("run_lab's: ", 1)[1].split()[0]
    assert float(gap) < 1e-5, gap
    # the explain tour: a table per sentence, ending on the lab's answers ('good bad' ends on 'bad')
    explained = text_of(cells["tour3"])
    for line in ("'The movie is bad' -> 0", "'The movie is good' -> 1", "'The movie is good bad' -> 0"):
        assert line in explained
    if SHARED_DATA.is_dir():
        assert "test accuracy" in text_of(cells["tour2"])
    else:
        assert "No data at" in text_of(cells["tour2"])

    # the final cell: the handout's test predictions, as its value
    final = code_cells(nb)[-1]
    results = [o for o in final.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, final.outputs
    predictions = ast.literal_eval(results[0].data["text/plain"])
    assert predictions == {"The movie is bad": 0, "The movie is good": 1}


@pytest.mark.slow
def test_real_data_tour_without_the_data_says_where_to_get_it(tmp_path, monkeypatch):
    """A fresh clone has no ../shared/data: the tour's real-data cell explains instead of failing."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if c.get("id") in ("imports", "tour2")]
    assert len(nb.cells) == 2
    execute(nb, tmp_path, monkeypatch, tmp_path / "no-data-here")
    out = text_of(nb.cells[1])
    assert "No data at" in out and "RNNLAB_DATA" in out and "archive.ics.uci.edu" in out

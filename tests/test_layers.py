"""The package's three layers, held by its imports (issue 14 item 7).

    maths     cells, recurrent, gemm, engine, model, optim, choices, errors: they import nothing
              of the other two layers, so a student can read the equations without the plumbing
    plumbing  config, data, checkpoint, distributed, train, evaluate, lm, rundir, cli, bench
    studies   lab, explain, gradflow, memory, gradcheck, report, plots: they look inside a model

The layers stay flat modules of one package (`rnnlab.cells`, not `rnnlab.maths.cells`): moving them
into subpackages would change every import path users, the notebook and the docs have, for a split
that this test already keeps honest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlab"
MATHS = {"cells", "recurrent", "gemm", "engine", "model", "optim", "choices", "errors"}
STUDIES = {"lab", "explain", "gradflow", "memory", "gradcheck", "report", "plots"}
PLUMBING = {p.stem for p in SRC.glob("*.py")} - MATHS - STUDIES - {"__init__", "__main__"}


def rnnlab_imports(module: str, top_only: bool = False, source: str | None = None) -> set[str]:
    """The rnnlab modules `module` (or `source`) imports, at its top or (unless top_only) in functions too."""
    tree = ast.parse(source if source is not None else (SRC / f"{module}.py").read_text())
    found = set()
    for node in (tree.body if top_only else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnlab"):
            if node.module == "rnnlab":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rnnlab.")}
    return found - {module}


def test_every_import_form_is_seen():
    forms = "from rnnlab import plots, report\nimport rnnlab.lab\nfrom rnnlab.explain import trace\n" \
            "def f():\n    from rnnlab import memory\n"
    assert rnnlab_imports("probe", source=forms) == {"plots", "report", "lab", "explain", "memory"}
    assert rnnlab_imports("probe", top_only=True, source=forms) == {"plots", "report", "lab", "explain"}


def test_the_layers_cover_every_module():
    assert PLUMBING == {"config", "data", "checkpoint", "distributed", "train", "evaluate", "lm", "rundir", "cli",
                        "bench"}, "a new module: put it in one of the three layers"


@pytest.mark.parametrize("module", sorted(MATHS))
def test_the_maths_imports_only_the_maths(module):
    outside = rnnlab_imports(module) - MATHS
    assert not outside, f"rnnlab.{module} imports {sorted(outside)}, which are not maths"


@pytest.mark.parametrize("module", sorted(PLUMBING - {"cli"}))
def test_the_plumbing_imports_no_study_at_its_top(module):
    """train and lm may draw (plots) and write a report when asked, inside the function that does it;
    at import time the plumbing needs none of the studies."""
    top = rnnlab_imports(module, top_only=True)
    assert not top & STUDIES, f"rnnlab.{module} imports {sorted(top & STUDIES)} at its top"


def test_no_two_studies_import_each_other():
    for a in STUDIES:
        for b in rnnlab_imports(a) & STUDIES:
            assert a not in rnnlab_imports(b), f"rnnlab.{a} and rnnlab.{b} import each other"

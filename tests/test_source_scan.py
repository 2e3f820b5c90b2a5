"""The library computes with its own cells and optimisers: no nn.RNN/LSTM/GRU or torch.optim.

The scan reads the code itself (Python's `ast`), so docstrings and comments may name these classes.
torch.nn's recurrent classes may be used only to convert weights to and from them (`from_torch`,
`to_torch`); torch.optim, nn.Linear and nn.Embedding nowhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlab"
RECURRENT = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
NEVER = {"Linear", "Embedding", "RNNBase"}
CONVERTERS = {"from_torch", "to_torch"}  # weight conversion only
# `rnnlab bench` times rnnlab against torch.nn + torch.optim: they are its baseline, run beside rnnlab and
# never used for rnnlab's own results, so that one module may use them (it ships so that `rnnlab bench`
# works from `pip install`, issue 12 item 8).
BASELINE_ONLY = {"bench.py"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def violations(source: str) -> list[str]:
    bad = []

    def visit(node: ast.AST, in_converter: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_converter = in_converter or node.name in CONVERTERS
        if isinstance(node, ast.Import):
            bad.extend(f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("torch.optim"))
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            module = node.module or ""
            if module.startswith("torch.optim") or (module == "torch" and "optim" in names):
                bad.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
            if module == "torch.nn" and set(names) & (RECURRENT | NEVER):
                bad.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            parts = name.split(".")
            if name.startswith("torch.optim"):
                bad.append(f"{node.lineno}: {name}")
            elif len(parts) >= 2 and parts[-2] == "nn" and (parts[-1] in NEVER or
                                                            (parts[-1] in RECURRENT and not in_converter)):
                bad.append(f"{node.lineno}: {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, in_converter)

    visit(ast.parse(source), False)
    return bad


def test_library_never_computes_with_torch_nn_recurrent_layers_or_torch_optim():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 5
    found = {str(f.relative_to(SRC)): violations(f.read_text()) for f in files}
    assert violations((SRC / "bench.py").read_text()), "bench.py no longer needs its exception: remove it"
    assert {k: v for k, v in found.items() if v and k not in BASELINE_ONLY} == {}


def test_the_scan_catches_what_it_should():
    assert violations("import torch.optim as optim\n")
    assert violations("from torch import optim\n")
    assert violations("from torch.optim import SGD\n")
    assert violations("x = torch.nn.LSTM(3, 4)\n")
    assert violations("def f():\n    return nn.GRUCell(3, 4)\n")
    assert violations("def f(p):\n    opt = torch.optim.SGD(p, lr=0.1)\n")
    assert violations("def to_torch(self):\n    return torch.nn.Linear(3, 4)\n")
    assert violations("from torch.nn import LSTM\n")
    assert not violations("def to_torch(self):\n    m = torch.nn.LSTM(3, 4)\n")
    assert not violations("from rnnlab.optim import SGD\n")  # our own optimisers
    assert not violations('"""We never use nn.LSTM or torch.optim here."""\n# nor nn.RNN\n')

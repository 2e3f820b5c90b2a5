"""`rnnlab gradcheck`: the hand-written BPTT against autograd and against finite differences.

For one small classifier in float64 (embedding -> cell -> last state -> logits -> cross-entropy, with
padded sequences of different lengths), each parameter's gradient is computed three ways:

    manual     backward="manual": the hand-derived BPTT of recurrent.py / cells.py
    autograd   backward="autograd": loss.backward() through the same forward
    numeric    central differences, (L(p + eps) - L(p - eps)) / (2 eps) for every entry, eps = 1e-6

and the largest relative error is reported per parameter as max|a - b| / max|b| (a norm-wise ratio,
which stays meaningful when some entries are zero). The check fails past `TOLERANCE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnlab.model import Classifier

TOLERANCE = {"autograd": 1e-10, "numeric": 1e-6}  # float64: round-off vs O(eps^2) truncation + round-off/eps
EPS = 1e-6


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    vs_autograd: float
    vs_numeric: float


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check(cell: str = "rnn", *, B: int = 3, T: int = 7, V: int = 11, D: int = 4, H: int = 5, C: int = 3,
          seed: int = 0, engine: str | None = None) -> list[Row]:
    """`engine` runs the hand BPTT's time loop (rnnlab.engine: 'python', 'compiled', 'auto'; None: RNNLAB_ENGINE)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full-length sequence, the others padded
    labels = torch.randint(0, C, (B,), generator=g)
    model = Classifier(V, H, C, cell=cell, embed_dim=D, seed=seed, dtype=torch.float64, engine=engine)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(ids, lengths), labels)

    grads = {}
    for backward in ("manual", "autograd"):
        model.backward = backward
        for p in model.parameters():
            p.grad = None
        loss().backward()
        grads[backward] = {n: p.grad.clone() for n, p in model.named_parameters().items()}

    rows = []
    with torch.no_grad():
        for name, p in model.named_parameters().items():
            numeric = torch.empty_like(p)
            flat, num = p.view(-1), numeric.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + EPS
                up = loss().item()
                flat[i] = keep - EPS
                down = loss().item()
                flat[i] = keep
                num[i] = (up - down) / (2 * EPS)
            manual = grads["manual"][name]
            rows.append(Row(name, tuple(p.shape), _rel(manual, grads["autograd"][name]), _rel(manual, numeric)))
    return rows


def report(cell: str, log=print, **kw) -> bool:
    """Print the table for one cell; True when every error is within tolerance."""
    rows = check(cell, **kw)
    log(f"gradcheck {cell}: float64, hand BPTT (manual) vs autograd and vs central differences (eps {EPS:g})")
    log(f"{'param':8} {'shape':>10}  {'vs autograd':>12}  {'vs numeric':>12}")
    for r in rows:
        log(f"{r.name:8} {str(r.shape):>10}  {r.vs_autograd:12.2e}  {r.vs_numeric:12.2e}")
    worst_a = max(r.vs_autograd for r in rows)
    worst_n = max(r.vs_numeric for r in rows)
    ok = worst_a <= TOLERANCE["autograd"] and worst_n <= TOLERANCE["numeric"]
    log(f"{'largest':8} {'':>10}  {worst_a:12.2e}  {worst_n:12.2e}   "
        f"(tolerance {TOLERANCE['autograd']:g} / {TOLERANCE['numeric']:g}): {'OK' if ok else 'FAILED'}")
    return ok

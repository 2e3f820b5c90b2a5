"""Each cell's plain `reference_backward` against autograd, and the fast path (backward="manual") against it.

Both comparisons in float64, per tensor, relative to its scale: max|ours - ref| <= 1e-12 * max(1, max|ref|).
(The three computations sum the same products in different orders; float64 round-off over these tiny
sizes is about 1e-15 of the scale, so 1e-12 leaves room for rounding but not for a wrong term.)
Random shapes, padded batches, a given s_0, bias on and off, tanh and relu, the GRU's b_hn; weights
U(-0.8, 0.8), wider than the default init, so that no gate is close to linear.

Also: the memory formulas in the cells' docstrings, counted on the buffers themselves.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab import engine
from rnnlab.cells import make_cell
from rnnlab.recurrent import _mask, manual_forward, unroll

TOL = 1e-12
F64 = torch.float64


def assert_close(ours, ref, what):
    err, scale = float((ours - ref).abs().max()), max(1.0, float(ref.abs().max()))
    assert err <= TOL * scale, f"{what}: max difference {err:.3g} > {TOL:g} x scale {scale:.3g}"


def setup(kind, B, T, E, H, bias, padded, phi, seed):
    g = torch.Generator().manual_seed(seed)
    cell = make_cell(kind, E, H, phi=phi, bias=bias, dtype=F64, generator=g)
    with torch.no_grad():
        for p in cell.parameters():
            if p is not None:
                p.copy_((torch.rand(p.shape, generator=g, dtype=F64) - 0.5) * 1.6)
    x = torch.randn(T, B, E, generator=g, dtype=F64)  # time-major
    s0 = tuple(torch.randn(B, H, generator=g, dtype=F64) for _ in range(cell.n_states))
    lengths = torch.randint(1, T + 1, (B,), generator=g) if padded else None
    d_out = torch.randn(T, B, H, generator=g, dtype=F64)  # the loss: sum(d_out * outputs) + sum(d_final * final)
    d_final = tuple(torch.randn(B, H, generator=g, dtype=F64) for _ in range(cell.n_states))
    return cell, x, s0, lengths, d_out, d_final


def unroll_grads(cell, x, s0, lengths, d_out, d_final, backward):
    """dL/d(params), dL/dx, dL/ds_0 of L = sum(d_out * outputs) + sum(d_final * final state), by `unroll`.
    backward: 'autograd', or 'manual:python' / 'manual:compiled' (the fast path on each engine)."""
    backward, _, engine = backward.partition(":")
    x_leaf, s0_leaf = x.clone().requires_grad_(), [s.clone().requires_grad_() for s in s0]
    out, final = unroll(cell, x_leaf, s0_leaf, lengths, backward=backward, batch_first=False, engine=engine or None)
    loss = (out * d_out).sum() + sum((f * d).sum() for f, d in zip(final, d_final))
    names = [n for n, p in zip(cell.param_names, cell.parameters()) if p is not None]
    grads = torch.autograd.grad(loss, [getattr(cell, n) for n in names] + [x_leaf, *s0_leaf])
    return dict(zip(names, grads[: len(names)])), grads[len(names)], grads[len(names) + 1 :]


def reference_grads(cell, x, s0, lengths, d_out, d_final):
    T, B = x.shape[:2]
    mask = _mask(lengths, T, B, x.device)
    with torch.no_grad():
        buf = manual_forward(cell, x, s0, mask)  # s_0..s_T (padded rows keep s_{t-1})
    states = (buf.h,) if cell.n_states == 1 else (buf.h, buf.c)
    return cell.reference_backward(x, states, d_out, d_final, mask)


def check(kind, B, T, E, H, bias, padded, phi, seed):
    cell, x, s0, lengths, d_out, d_final = setup(kind, B, T, E, H, bias, padded, phi, seed)
    ref, dx_ref, ds0_ref = reference_grads(cell, x, s0, lengths, d_out, d_final)
    assert set(ref) == set(cell.param_names)
    for n, p in zip(cell.param_names, cell.parameters()):
        assert (ref[n] is None) == (p is None), f"d{n} must be None exactly when {n} is off"
    # reference vs autograd, and the fast path vs reference on each engine (rnnlab.engine) built here
    for backward in ("autograd", "manual:python", *(["manual:compiled"] if engine.available() else [])):
        got, dx, ds0 = unroll_grads(cell, x, s0, lengths, d_out, d_final, backward)
        for n, g in got.items():
            assert_close(g, ref[n], f"{backward}: d{n}")
        assert_close(dx, dx_ref, f"{backward}: dx")
        for a, b in zip(ds0, ds0_ref):
            assert_close(a, b, f"{backward}: ds_0")


shapes = dict(B=st.integers(1, 6), T=st.integers(1, 9), E=st.integers(1, 6), H=st.integers(1, 12),
              bias=st.booleans(), padded=st.booleans(), seed=st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=15, deadline=None)
@given(**shapes)
def test_reference_backward_equals_autograd_and_the_fast_path(kind, B, T, E, H, bias, padded, seed):
    check(kind, B, T, E, H, bias, padded, "tanh", seed)


@settings(max_examples=10, deadline=None)
@given(**shapes)
def test_relu_rnn_reference_backward(B, T, E, H, bias, padded, seed):
    check("rnn", B, T, E, H, bias, padded, "relu", seed)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_reference_backward_catches_a_wrong_fast_path(kind, monkeypatch):
    """The comparison is sharp enough to see a 1e-9 error in one step's backward of the fast path."""
    cls = type(make_cell(kind, 1, 1))
    original = cls.backward_t

    def off_by_a_bit(self, t, dh, buf):
        original(self, t, dh, buf)
        if t == 0:
            buf.dp_t[t].mul_(1 + 1e-9)  # dp_0 feeds dU, db and dx_1

    monkeypatch.setattr(cls, "backward_t", off_by_a_bit)
    with pytest.raises(AssertionError, match="manual"):
        check(kind, 3, 4, 2, 5, True, False, "tanh", 0)


def _numbers(tensors) -> int:
    """Numbers held by distinct storages among `tensors` (views of one storage count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() // t.element_size()
                for t in tensors if isinstance(t, torch.Tensor)}
    return sum(storages.values())


# the formulas of the cells' docstrings: (written by the forward, kept for the backward), in numbers
FORMULAS = {
    "rnn": lambda T, B, H, G: ((T + 1) * B * H, (G + 1) * T * B * H + B * H),
    "lstm": lambda T, B, H, G: ((G + 3) * T * B * H + 2 * B * H, (G + 3) * T * B * H + B * H),
    "gru": lambda T, B, H, G: ((2 * G + 4) * T * B * H + B * H, (G + 3) * T * B * H + B * H),
}


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("T, B, E, H", [(1, 1, 1, 1), (7, 3, 4, 5)])
def test_memory_formulas_in_the_docstrings(kind, T, B, E, H):
    cell, x, s0, _, _, _ = setup(kind, B, T, E, H, True, False, "tanh", 1)
    written, kept = FORMULAS[kind](T, B, H, cell.n_gates)
    assert "Memory of the fast path" in type(cell).__doc__
    with torch.no_grad():
        buf = manual_forward(cell, x, s0)
        assert _numbers(vars(buf).values()) == written
        cell.local_derivatives(buf)
        assert _numbers(getattr(buf, n) for n in cell.saved) == kept

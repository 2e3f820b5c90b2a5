"""RNN, LSTM and GRU against torch.nn, both backward paths, masks, and finite differences.

Tolerances: 1e-10 in float64, element by element (absolute and relative); 1e-5 in float32, relative
to each tensor's scale: max|ours - torch| <= 1e-5 * max(1, max|torch|). (A float32 gradient entry is
a sum of T * B products whose rounding errors scale with the products, not with the sum; an entry
that cancels to a small number can differ by 1e-5 relative to itself and be right.)
Biases are random and non-zero: zero biases would hide bias-gradient bugs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.recurrent import Recurrent, from_torch, retain_buffers, unroll
from tests.conftest import require_compiled

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# the backward paths: autograd, and the hand BPTT with its time loop run by each engine (rnnlab.engine)
BACKWARDS = ["autograd", "manual:python", "manual:compiled"]


def split(backward: str) -> tuple[str, str | None]:
    """'manual:compiled' -> ('manual', 'compiled'); skips (fails under CI) where the compiled loop is missing."""
    backward, _, engine = backward.partition(":")
    if engine == "compiled":
        require_compiled()
    return backward, engine or None


def assert_close(ours, ref, dtype, what=""):
    if dtype == torch.float64:
        torch.testing.assert_close(ours, ref, rtol=TOL[dtype], atol=TOL[dtype], msg=lambda m: f"{what}: {m}")
        return
    err, scale = float((ours - ref).abs().max()), max(1.0, float(ref.abs().max()))
    assert err <= TOL[dtype] * scale, f"{what}: max difference {err:.3g} > {TOL[dtype]:g} x scale {scale:.3g}"


def torch_module(kind, E, H, *, bias, batch_first, dtype, seed, phi="tanh"):
    kw = dict(bias=bias, batch_first=batch_first, dtype=dtype)
    m = torch.nn.RNN(E, H, nonlinearity=phi, **kw) if kind == "rnn" else TORCH[kind](E, H, **kw)
    g = torch.Generator().manual_seed(seed)
    # float64: U(-0.8, 0.8), wider than torch's init, to stress the maths; float32: torch's own scale
    # U(-1/sqrt(H), 1/sqrt(H)), because with wide weights the backward recursion through T steps
    # amplifies float32 rounding (seen: 1.8e-5 relative in dx at T=12, H=15), which is not a bug.
    width = 1.6 if dtype == torch.float64 else 2 / H**0.5
    with torch.no_grad():
        for p in m.parameters():  # never zero: zero biases would hide bias-gradient bugs
            p.copy_((torch.rand(p.shape, generator=g, dtype=dtype) - 0.5) * width)
    return m


def torch_forward(m, x, h0, lengths):
    """nn.RNN/LSTM/GRU with packed sequences (so padded steps are skipped); outputs zero-padded."""
    if lengths is None:
        return m(x, h0)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=m.batch_first, enforce_sorted=False)
    out, state = m(packed, h0)
    T = x.shape[1] if m.batch_first else x.shape[0]
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    return out, state


def run_both(layer, m, kind, x, h0, lengths, r_out, r_state):
    """rnnlab's `layer` and torch's `m` on the same input, initial state and loss (random weights r_out on
    every output, r_state on the final state(s)), each from fresh leaves: (outputs, final states, dx, dh0) of
    each (dh0 None without h0), after backward has filled the parameters' gradients."""

    def run(forward, h0_leaf):
        x_leaf = x.clone().requires_grad_()
        hx = None if h0_leaf is None else (h0_leaf[0] if kind != "lstm" else tuple(h0_leaf))
        out, state = forward(x_leaf, hx)
        states = state if kind == "lstm" else (state,)
        loss = (out * r_out).sum() + sum((s * r).sum() for s, r in zip(states, r_state))
        loss.backward()
        dh0 = None if h0_leaf is None else [h.grad for h in h0_leaf]
        return out.detach(), [s.detach() for s in states], x_leaf.grad, dh0

    h0_ours = None if h0 is None else [h.clone().requires_grad_() for h in h0]
    h0_ref = None if h0 is None else [h.clone().requires_grad_() for h in h0]
    return (run(lambda xx, hx: layer(xx, hx, lengths=lengths), h0_ours),
            run(lambda xx, hx: torch_forward(m, xx, hx, lengths), h0_ref))


def torch_grads(m, kind, H):
    """torch's gradients in rnnlab's layout: W, U, b (b_ih + b_hh merged), b_hn for the GRU."""
    g = {"W": m.weight_hh_l0.grad, "U": m.weight_ih_l0.grad}
    if m.bias:
        g["b"] = m.bias_ih_l0.grad
        if kind == "gru":
            g["b_hn"] = m.bias_hh_l0.grad[2 * H :]
            torch.testing.assert_close(m.bias_hh_l0.grad[: 2 * H], m.bias_ih_l0.grad[: 2 * H])
        else:
            torch.testing.assert_close(m.bias_hh_l0.grad, m.bias_ih_l0.grad)
    return g


def compare(kind, B, T, E, H, bias, batch_first, padded, with_h0, backward, dtype, seed, phi="tanh",
            direction="from_torch"):
    g = torch.Generator().manual_seed(seed)
    backward, engine = split(backward)
    m = torch_module(kind, E, H, bias=bias, batch_first=batch_first, dtype=dtype, seed=seed, phi=phi)
    if direction == "from_torch":
        layer = from_torch(m, backward=backward, engine=engine)
    else:  # the other way: an rnnlab layer with its own weights, converted to torch
        layer = Recurrent(kind, E, H, bias=bias, batch_first=batch_first, phi=phi, backward=backward, dtype=dtype,
                          generator=g, engine=engine)
        width = 1.6 if dtype == torch.float64 else 2 / H**0.5  # as in torch_module
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_((torch.rand(p.shape, generator=g, dtype=dtype) - 0.5) * width)
        m = layer.to_torch()
    shape = (B, T, E) if batch_first else (T, B, E)
    x = torch.randn(shape, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if padded else None
    h0 = None
    if with_h0:
        h0 = [torch.randn(1, B, H, generator=g, dtype=dtype) for _ in range(2 if kind == "lstm" else 1)]
    # the same loss on both: random weights on every output and on the final state(s)
    r_out = torch.randn(shape[:2] + (H,), generator=g, dtype=dtype)
    r_state = [torch.randn(1, B, H, generator=g, dtype=dtype) for _ in range(2)]

    (out, states, dx, dh0), (out_ref, states_ref, dx_ref, dh0_ref) = run_both(layer, m, kind, x, h0, lengths,
                                                                                 r_out, r_state)
    assert_close(out, out_ref, dtype, "outputs")
    for s, s_ref in zip(states, states_ref):
        assert_close(s, s_ref, dtype, "final state")
    assert_close(dx, dx_ref, dtype, "dx")
    ours = dict(zip(layer.cell.param_names, layer.cell.parameters()))
    for name, ref in torch_grads(m, kind, H).items():
        assert_close(ours[name].grad, ref, dtype, f"d{name}")
    if h0 is not None:
        for dh, dh_ref in zip(dh0, dh0_ref):
            assert_close(dh, dh_ref, dtype, "dh0")


shapes = dict(B=st.integers(1, 8), T=st.integers(1, 12), E=st.integers(1, 10), H=st.integers(1, 32),
              bias=st.booleans(), batch_first=st.booleans(), padded=st.booleans(), with_h0=st.booleans(),
              seed=st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=20, deadline=None)
@given(**shapes, direction=st.sampled_from(["from_torch", "to_torch"]))
def test_equals_torch_nn_float64(kind, backward, B, T, E, H, bias, batch_first, padded, with_h0, seed, direction):
    compare(kind, B, T, E, H, bias, batch_first, padded, with_h0, backward, torch.float64, seed, direction=direction)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=10, deadline=None)
@given(**shapes)
def test_equals_torch_nn_float32(kind, backward, B, T, E, H, bias, batch_first, padded, with_h0, seed):
    compare(kind, B, T, E, H, bias, batch_first, padded, with_h0, backward, torch.float32, seed)


@pytest.mark.parametrize("backward", BACKWARDS)
@settings(max_examples=10, deadline=None)
@given(**shapes)
def test_relu_rnn_equals_torch_nn(backward, B, T, E, H, bias, batch_first, padded, with_h0, seed):
    compare("rnn", B, T, E, H, bias, batch_first, padded, with_h0, backward, torch.float64, seed, phi="relu")


@pytest.mark.parametrize("engine", ["python", "compiled"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("token_ids", [False, True])
def test_hand_bptt_passes_gradcheck_with_masks(kind, token_ids, engine):
    """The manual backward, run by either engine, against float64 central differences (torch.autograd.gradcheck)."""
    split("manual:" + engine)
    g = torch.Generator().manual_seed(7)
    B, T, E, H = 3, 5, 4, 6
    layer = Recurrent(kind, E, H, backward="manual", dtype=torch.float64, generator=g)
    x = torch.randint(0, E, (B, T), generator=g) if token_ids else torch.randn(B, T, E, generator=g,
                                                                              dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    h0 = [torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(layer.cell.n_states)]
    params = layer.parameters()
    names = [n for n, p in zip(layer.cell.param_names, layer.cell.parameters()) if p is not None]

    def f(x, *tensors):
        states, weights = tensors[: len(h0)], tensors[len(h0) :]
        for n, w in zip(names, weights):
            setattr(layer.cell, n, w)
        with retain_buffers():  # gradcheck backpropagates through the same graph many times
            out, final = unroll(layer.cell, x, states, lengths, backward="manual", engine=engine)
        return (out, *final)

    inputs = ([x] if token_ids else [x.requires_grad_()]) + [h.requires_grad_() for h in h0]
    inputs += [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_padded_batch_equals_each_sequence_alone(kind, backward):
    g = torch.Generator().manual_seed(3)
    B, T, E, H = 4, 7, 3, 5
    layer = Recurrent(kind, E, H, batch_first=True, backward=backward, dtype=torch.float64, generator=g)
    x = torch.randn(B, T, E, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 1, 4, 6])
    r = torch.randn(B, H, generator=g, dtype=torch.float64)

    out, state = layer(x, lengths=lengths)
    h_n = state[0] if kind == "lstm" else state
    (h_n[0] * r).sum().backward()
    batch_grads = [p.grad.clone() for p in layer.parameters()]
    for p in layer.parameters():
        p.grad = None

    for i in range(B):
        L = int(lengths[i])
        out_i, state_i = layer(x[i : i + 1, :L])
        h_i = state_i[0] if kind == "lstm" else state_i
        torch.testing.assert_close(out[i, :L], out_i[0], rtol=1e-12, atol=1e-12)
        assert torch.count_nonzero(out[i, L:]) == 0  # padded steps output zeros
        torch.testing.assert_close(h_n[0, i], h_i[0, 0], rtol=1e-12, atol=1e-12)
        (h_i[0, 0] * r[i]).sum().backward()  # gradients accumulate over the sequences
    for p, gb in zip(layer.parameters(), batch_grads):
        torch.testing.assert_close(p.grad, gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_training_manual_equals_autograd_for_20_steps(kind):
    from rnnlab.model import Classifier
    from rnnlab.optim import SGD

    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 30, (20, 8, 9), generator=g)  # 20 batches of 8 sentences, 9 words
    lengths = torch.randint(1, 10, (20, 8), generator=g)
    labels = torch.randint(0, 3, (20, 8), generator=g)
    histories = {}
    for backward in ("autograd", "manual"):
        model = Classifier(30, 16, 3, cell=kind, embed_dim=12, backward=backward, seed=5)
        opt = SGD(model.parameters(), lr=0.2, momentum=0.5)
        history = []
        for step in range(20):
            loss = torch.nn.functional.cross_entropy(model(ids[step], lengths[step]), labels[step])
            loss.backward()
            opt.step()
            opt.zero_grad()
            history.append(loss.item())
        histories[backward] = history
    assert histories["manual"] == pytest.approx(histories["autograd"], abs=1e-6)
    assert histories["manual"][-1] < histories["manual"][0]  # it did train


def test_from_torch_rejects_what_it_cannot_copy():
    with pytest.raises(ValueError):  # several layers are copied (tests/test_stacked.py); a projection is not
        from_torch(torch.nn.LSTM(3, 4, num_layers=2, proj_size=2))
    with pytest.raises(ValueError):
        from_torch(torch.nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(TypeError):
        from_torch(torch.nn.Linear(3, 4))


def test_unbatched_input_like_torch():
    m = torch_module("lstm", 3, 4, bias=True, batch_first=False, dtype=torch.float64, seed=1)
    layer = from_torch(m)
    x = torch.randn(6, 3, dtype=torch.float64)
    out, (h, c) = layer(x)
    out_ref, (h_ref, c_ref) = m(x)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


def test_gradcheck_command_prints_tables_and_passes():
    from tests.conftest import run_cli

    r = run_cli("gradcheck")
    assert r.returncode == 0, r.stdout + r.stderr
    for cell in ("rnn", "lstm", "gru"):
        assert f"gradcheck {cell}:" in r.stdout
    assert r.stdout.count(": OK") == 3


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    from rnnlab import gradcheck
    from rnnlab.cells import GRUCell

    original = GRUCell.backward_t

    def off_by_a_bit(self, t, dh, buf):
        original(self, t, dh, buf)
        buf.dgh_n[t].mul_(1.001)  # a 0.1% error in what becomes dW_n and db_hn

    monkeypatch.setattr(GRUCell, "backward_t", off_by_a_bit)  # the Python engine's step
    assert gradcheck.report("gru", log=lambda _: None, engine="python") is False
    assert gradcheck.report("lstm", log=lambda _: None, engine="python") is True


def test_manual_backward_twice_needs_retain_buffers():
    layer = Recurrent("lstm", 3, 4, backward="manual", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = layer(x)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_buffers"):
        out.sum().backward()
    with retain_buffers():
        out, _ = layer(x)
    for p in layer.parameters():
        p.grad = None
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in layer.parameters()]
    out.sum().backward()  # accumulates the same gradient again
    for g1, p in zip(first, layer.parameters()):
        torch.testing.assert_close(p.grad, 2 * g1)


@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_changing_a_weight_between_forward_and_backward_is_an_error(backward):
    layer = Recurrent("gru", 3, 4, backward=backward, dtype=torch.float64)
    out, _ = layer(torch.randn(5, 2, 3, dtype=torch.float64))
    with torch.no_grad():
        layer.cell.W.mul_(1.0001)  # e.g. an optimiser step before a (retained) backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_first_order_gradients_with_create_graph_and_int_ids():
    layer = Recurrent("lstm", 6, 4, batch_first=True, backward="manual", dtype=torch.float64)
    ids = torch.randint(0, 6, (3, 5))
    out32, _ = unroll(layer.cell, ids.to(torch.int32), backward="manual")
    out64, _ = unroll(layer.cell, ids, backward="manual")
    torch.testing.assert_close(out32, out64)
    (g,) = torch.autograd.grad(out64.sum(), layer.cell.W, create_graph=True)  # first order works
    assert g.shape == layer.cell.W.shape
    with pytest.raises(ValueError, match="integer token ids"):
        unroll(layer.cell, torch.randn(3, 5), backward="manual")

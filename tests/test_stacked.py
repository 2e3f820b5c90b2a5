"""Stacked layers (torch.nn's num_layers) in `Recurrent`, `from_torch` / `.to_torch()` and `Classifier`.

What they pin down:
- `Recurrent(num_layers=N)` against torch.nn.RNN/LSTM/GRU(num_layers=N), N = 2 and 3, both backward
  paths, masks, random shapes: outputs, final states (N, B, H) and the gradients of x, h_0 and every
  layer's weights. Tolerances as tests/test_cells.py: 1e-10 element by element in float64, 1e-5 of
  each tensor's scale in float32;
- the from_torch / to_torch round trip; dropout between layers exactly where torch.nn puts it (after
  every layer but the top), in training mode only;
- the classifier with layers = 2: equal to embedding -> torch.nn.GRU(num_layers=2) -> linear, its
  parameter names (layer 0's keep the one-layer names), dropout off at evaluation; one tiny epoch of
  `train` whose checkpoint reloads to the same predictions; a checkpoint without `layers` loads as one
  layer; `--layers` on the command line; explain and report show the top layer; gradflow refuses a stack.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab import checkpoint
from rnnlab.cli import main
from rnnlab.config import Config
from rnnlab.data import Vocab
from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.recurrent import Recurrent, dropout, from_torch
from rnnlab.train import train
from tests.test_cells import assert_close, run_both, torch_forward
from tests.test_train import quiet, sentiment_tsv

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_stack(kind, E, H, N, *, bias=True, batch_first=False, dtype=torch.float64, seed=0, dropout=0.0):
    """nn.RNN/LSTM/GRU(num_layers=N) with random non-zero weights (the widths of test_cells.torch_module)."""
    kw = dict(num_layers=N, bias=bias, batch_first=batch_first, dropout=dropout, dtype=dtype)
    m = TORCH[kind](E, H, **kw)
    g = torch.Generator().manual_seed(seed)
    width = 1.6 if dtype == torch.float64 else 2 / H**0.5
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((torch.rand(p.shape, generator=g, dtype=dtype) - 0.5) * width)
    return m


def torch_grads(m, kind, H):
    """torch's gradients in rnnlab's layout, per layer k: {(k, 'W'): ..., (k, 'U'): ..., (k, 'b'), (k, 'b_hn')}."""
    g = {}
    for k in range(m.num_layers):
        g[k, "W"], g[k, "U"] = getattr(m, f"weight_hh_l{k}").grad, getattr(m, f"weight_ih_l{k}").grad
        if m.bias:
            d_ih, d_hh = getattr(m, f"bias_ih_l{k}").grad, getattr(m, f"bias_hh_l{k}").grad
            g[k, "b"] = d_ih
            if kind == "gru":  # b_hr, b_hz add to b_ir, b_iz (the same gradient); b_hn is its own
                g[k, "b_hn"] = d_hh[2 * H :]
                torch.testing.assert_close(d_hh[: 2 * H], d_ih[: 2 * H])
            else:
                torch.testing.assert_close(d_hh, d_ih)
    return g


def compare(kind, N, B, T, E, H, bias, batch_first, padded, with_h0, backward, dtype, seed, direction="from_torch"):
    g = torch.Generator().manual_seed(seed)
    if direction == "from_torch":
        m = torch_stack(kind, E, H, N, bias=bias, batch_first=batch_first, dtype=dtype, seed=seed)
        layer = from_torch(m, backward=backward)
    else:  # an rnnlab stack with its own weights, converted to torch
        layer = Recurrent(kind, E, H, N, bias=bias, batch_first=batch_first, backward=backward, dtype=dtype,
                          generator=g)
        width = 1.6 if dtype == torch.float64 else 2 / H**0.5
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_((torch.rand(p.shape, generator=g, dtype=dtype) - 0.5) * width)
        m = layer.to_torch()
    assert layer.num_layers == m.num_layers == N
    shape = (B, T, E) if batch_first else (T, B, E)
    x = torch.randn(shape, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if padded else None
    n_states = 2 if kind == "lstm" else 1
    h0 = [torch.randn(N, B, H, generator=g, dtype=dtype) for _ in range(n_states)] if with_h0 else None
    # one loss for both: random weights on every output and on every layer's final state(s)
    r_out = torch.randn(shape[:2] + (H,), generator=g, dtype=dtype)
    r_state = [torch.randn(N, B, H, generator=g, dtype=dtype) for _ in range(2)]

    (out, states, dx, dh0), (out_ref, states_ref, dx_ref, dh0_ref) = run_both(layer, m, kind, x, h0, lengths,
                                                                                 r_out, r_state)
    assert_close(out, out_ref, dtype, "outputs")
    for s, s_ref in zip(states, states_ref):
        assert s.shape == (N, B, H)
        assert_close(s, s_ref, dtype, "final states")
    assert_close(dx, dx_ref, dtype, "dx")
    for (k, name), ref in torch_grads(m, kind, H).items():
        assert_close(getattr(layer.cells[k], name).grad, ref, dtype, f"layer {k} d{name}")
    if h0 is not None:
        for dh, dh_ref in zip(dh0, dh0_ref):
            assert_close(dh, dh_ref, dtype, "dh0")


shapes = dict(N=st.integers(2, 3), B=st.integers(1, 6), T=st.integers(1, 8), E=st.integers(1, 7),
              H=st.integers(1, 12), bias=st.booleans(), batch_first=st.booleans(), padded=st.booleans(),
              with_h0=st.booleans(), seed=st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=15, deadline=None)
@given(**shapes, direction=st.sampled_from(["from_torch", "to_torch"]))
def test_stack_equals_torch_nn_float64(kind, backward, N, B, T, E, H, bias, batch_first, padded, with_h0, seed,
                                       direction):
    compare(kind, N, B, T, E, H, bias, batch_first, padded, with_h0, backward, torch.float64, seed, direction)


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=8, deadline=None)
@given(**shapes)
def test_stack_equals_torch_nn_float32(kind, backward, N, B, T, E, H, bias, batch_first, padded, with_h0, seed):
    compare(kind, N, B, T, E, H, bias, batch_first, padded, with_h0, backward, torch.float32, seed)


@pytest.mark.parametrize("N", [2, 3])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_both_n_and_every_cell_with_masks_and_initial_states(kind, N):
    """Both N named by the issue, with padding and h_0, whatever hypothesis draws above."""
    for backward in ("autograd", "manual"):
        compare(kind, N, 4, 6, 3, 5, True, True, True, True, backward, torch.float64, seed=11 * N)


def test_unbatched_stack_like_torch():
    m = torch_stack("lstm", 3, 4, 2, seed=1)
    x = torch.randn(6, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    out, (h, c) = from_torch(m)(x, (h0, c0))
    out_ref, (h_ref, c_ref) = m(x, (h0, c0))
    assert out.shape == (6, 4) and h.shape == c.shape == (2, 4)
    for ours, ref in [(out, out_ref), (h, h_ref), (c, c_ref)]:
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(num_layers, batch, hidden\)"):  # one layer's state for two layers
        from_torch(m)(x.unsqueeze(1), (h0[:1, None], c0[:1, None]))


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_from_torch_to_torch_round_trip(kind):
    g = torch.Generator().manual_seed(5)
    layer = Recurrent(kind, 3, 4, 3, batch_first=True, dropout=0.25, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-1, 1, generator=g)  # b_hn too: not zero
    m = layer.eval().to_torch()
    assert (m.num_layers, m.dropout, m.batch_first, m.training) == (3, 0.25, True, False)
    assert {n for n, _ in m.named_parameters()} == {f"{w}_l{k}" for k in range(3)
                                                    for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    back = from_torch(m)
    assert (back.num_layers, back.dropout, back.batch_first, back.training) == (3, 0.25, True, False)
    for c, c_back in zip(layer.cells, back.cells):
        for name in c.param_names:
            assert torch.equal(getattr(c, name), getattr(c_back, name)), name
    # and a torch module through rnnlab and back computes what it computed
    m = torch_stack(kind, 3, 4, 2, seed=2)
    again = from_torch(m).to_torch()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(again(x)[0], m(x)[0], rtol=1e-12, atol=1e-12)


def test_from_torch_still_refuses_two_directions_and_projections():
    with pytest.raises(ValueError):
        from_torch(torch.nn.GRU(3, 4, num_layers=2, bidirectional=True))
    with pytest.raises(ValueError):
        from_torch(torch.nn.LSTM(3, 4, num_layers=2, proj_size=2))


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("N", [2, 3])
def test_dropout_between_layers_as_torch_nn_and_only_while_training(backward, N):
    """torch.nn applies dropout to each layer's outputs but the top's, in training mode only. Ours draws
    its masks from a generator, so the reference is torch's one-layer modules with the same masks."""
    p, H = 0.4, 5
    m = torch_stack("gru", 3, H, N, dropout=p, seed=3)
    layer = from_torch(m, backward=backward)
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 5, 1])
    m.eval()
    ref_eval = torch_forward(m, x, None, lengths)[0]
    torch.testing.assert_close(layer.eval()(x, lengths=lengths)[0], ref_eval, rtol=1e-10, atol=1e-10)
    # training: layer by layer in torch, dropping the outputs of each layer below the top with our masks
    out, h_n = layer.train()(x, lengths=lengths, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    h = x
    finals = []
    for k in range(N):
        one = torch.nn.GRU(3 if k == 0 else H, H, dtype=torch.float64)
        with torch.no_grad():
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(one, f"{w}_l0").copy_(getattr(m, f"{w}_l{k}"))
        if k > 0:
            h = dropout(h, p, g)
        h, h_k = torch_forward(one, h, None, lengths)
        finals.append(h_k[0])
    torch.testing.assert_close(out, h, rtol=1e-10, atol=1e-10)  # the top layer's outputs are not dropped
    torch.testing.assert_close(h_n, torch.stack(finals), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, ref_eval)  # dropout did act


# -- the classifier ------------------------------------------------------------------------------------
def classifier_names(kind: str, layers: int, embed: bool = True) -> list[str]:
    per_layer = ["W", "U", "b"] + (["b_hn"] if kind == "gru" else [])
    names = per_layer + [f"{n}_l{k}" for k in range(1, layers) for n in per_layer]
    return names + (["E"] if embed else []) + ["W_out", "b_out"]


def test_classifier_parameter_names_keep_the_one_layer_names():
    one = Classifier(30, 8, 3, cell="gru", embed_dim=6, seed=0)
    assert list(one.named_parameters()) == ["W", "U", "b", "b_hn", "E", "W_out", "b_out"]
    three = Classifier(30, 8, 3, cell="lstm", embed_dim=6, layers=3, seed=0)
    assert list(three.named_parameters()) == classifier_names("lstm", 3)
    # exact count: layer 0 4H(D + H + 1), layers 1, 2 4H(2H + 1), E V D, W_out and b_out C(H + 1)
    assert three.num_parameters() == 32 * (6 + 8 + 1) + 2 * 32 * (16 + 1) + 30 * 6 + 3 * 9
    # a stack starts from the same E and layer 0 as one layer with the same seed (they are drawn first)
    two = Classifier(30, 8, 3, cell="gru", embed_dim=6, layers=2, seed=0)
    for name in ["W", "U", "b", "b_hn", "E"]:
        assert torch.equal(two.named_parameters()[name], one.named_parameters()[name]), name


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_two_layer_classifier_equals_torch_nn(kind, backward):
    """logits = W_out s_T + b_out with s_T the top layer's final state: embedding -> torch.nn stack
    (packed) -> linear, and every gradient, to 1e-10 in float64."""
    V, D, H, C, B, T = 17, 4, 6, 3, 5, 7
    model = Classifier(V, H, C, cell=kind, embed_dim=D, layers=2, backward=backward, seed=1, dtype=torch.float64)
    stack = Recurrent(kind, D, H, 2, batch_first=True, dtype=torch.float64)
    stack.cells = model.cells  # the classifier's own cells, in torch.nn's layout
    m = stack.to_torch()
    E = model.E.detach().clone().requires_grad_()
    W_out, b_out = model.W_out.detach().clone().requires_grad_(), model.b_out.detach().clone().requires_grad_()
    g = torch.Generator().manual_seed(2)
    ids, lengths = torch.randint(0, V, (B, T), generator=g), torch.tensor([7, 1, 4, 7, 2])
    y = torch.randint(0, C, (B,), generator=g)

    logits = model(ids, lengths)
    _, h_n = torch_forward(m, torch.nn.functional.embedding(ids, E), None, lengths)
    top = (h_n[0] if kind == "lstm" else h_n)[-1]  # the top layer's h_T
    ref = top @ W_out.t() + b_out
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    torch.nn.functional.cross_entropy(ref, y).backward()
    ref_grads = {"E": E.grad, "W_out": W_out.grad, "b_out": b_out.grad}
    for (k, name), grad in torch_grads(m, kind, H).items():
        ref_grads[name + (f"_l{k}" if k else "")] = grad
    ours = model.named_parameters()
    assert set(ours) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(ours[name].grad, grad, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")


def test_classifier_dropout_between_layers_is_training_only():
    ids = torch.randint(0, 20, (6, 7), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([7, 3, 5, 1, 7, 2])
    results = {}
    for backward in ("autograd", "manual"):
        model = Classifier(20, 8, 3, cell="lstm", embed_dim=5, layers=2, backward=backward, seed=1,
                           dtype=torch.float64)
        x = torch.nn.functional.embedding(ids.t(), model.E)  # (T, B, D)
        stack = Recurrent("lstm", 5, 8, 2, dtype=torch.float64).eval()  # no dropout
        stack.cells = model.cells
        _, (h_n, _) = stack(x, lengths=lengths)
        plain = model(ids, lengths)
        torch.testing.assert_close(plain, model.logits(h_n[-1]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.predict_proba(ids, lengths), torch.softmax(plain, -1))  # evaluation
        dropped = model(ids, lengths, dropout=(0.5, torch.Generator().manual_seed(4)))
        # by hand, one layer at a time: masks on the embeddings, on layer 0's outputs, on s_T, in that order
        g = torch.Generator().manual_seed(4)
        layer0, layer1 = Recurrent("lstm", 5, 8, dtype=torch.float64), Recurrent("lstm", 8, 8, dtype=torch.float64)
        layer0.cells, layer1.cells = model.cells[:1], model.cells[1:]
        out0, _ = layer0(dropout(x, 0.5, g), lengths=lengths)
        _, (h1, _) = layer1(dropout(out0, 0.5, g), lengths=lengths)
        torch.testing.assert_close(dropped, model.logits(dropout(h1[0], 0.5, g)), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(plain, dropped)
        dropped.sum().backward()
        results[backward] = (dropped.detach(), model.cells[1].W.grad.clone(), model.cell.U.grad.clone())
    for ours, ref in zip(results["manual"], results["autograd"]):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_a_two_layer_classifier_trains_and_its_checkpoint_reloads_to_the_same_predictions(tmp_path):
    config = Config(cell="lstm", hidden=8, layers=2, embed_dim=8, dropout=0.2, lr=0.05, batch_size=8, epochs=1,
                    patience=None, seed=3)
    result = train(config, sentiment_tsv(tmp_path), tmp_path / "run", log=quiet, progress=False, plots=False)
    model, saved, vocab, labels, _ = checkpoint.load_model(tmp_path / "run")
    assert saved.layers == 2 and model.layers == 2
    assert list(model.named_parameters()) == classifier_names("lstm", 2)
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
    ids = torch.tensor([vocab.encode("a great film".split()), vocab.encode("the worst film".split())])
    torch.testing.assert_close(model.predict_proba(ids), result.model.predict_proba(ids), rtol=0, atol=0)
    from rnnlab.report import write_report  # its traces are explain's: the top layer's states

    write_report(tmp_path / "run")
    assert "LSTM, H = 8, 2 layers" in (tmp_path / "run" / "report.html").read_text()


def test_a_checkpoint_without_layers_loads_as_one_layer(tmp_path):
    vocab = Vocab.build([["a", "b", "c"]], 1, None)
    config = Config(cell="gru", hidden=4, embed_dim=3)
    model = Classifier(len(vocab), 4, 2, cell="gru", embed_dim=3, seed=0)
    ckpt = checkpoint.make(model, config, vocab, ["neg", "pos"])
    del ckpt["config"]["layers"]  # as written before the field existed
    checkpoint.atomic_save(ckpt, tmp_path / checkpoint.BEST)
    loaded, saved, *_ = checkpoint.load_model(tmp_path)
    assert saved.layers == 1 and loaded.layers == 1
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.predict_proba(ids), model.predict_proba(ids), rtol=0, atol=0)


def test_layers_on_the_command_line(tmp_path, capsys):
    assert Config(layers=2).validate().layers == 2
    with pytest.raises(UserError, match="--layers 0"):
        Config(layers=0).validate()
    data = str(sentiment_tsv(tmp_path))
    assert main(["train", "--data", data, "--out", str(tmp_path / "bad"), "--layers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--layers 0" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--data", data, "--out", str(tmp_path / "run"), "--layers", "2", "--cell", "rnn",
                 "--hidden", "4", "--embed-dim", "4", "--epochs", "1", "--batch-size", "16", "--no-plots"]) == 0
    assert checkpoint.read(tmp_path / "run")["config"]["layers"] == 2


def test_explain_shows_the_top_layer_and_gradflow_refuses_a_stack():
    from rnnlab import gradflow
    from rnnlab.explain import trace

    model = Classifier(10, 4, 2, cell="gru", embed_dim=3, layers=2, seed=0)
    ids = [1, 5, 2, 7]
    tr = trace(model, ids, ["w"] * 4, ["neg", "pos"])
    out, state = model.states(torch.tensor([ids]))
    torch.testing.assert_close(tr.states, out[:, 0], rtol=1e-6, atol=1e-6)  # the top layer's s_1..s_T
    torch.testing.assert_close(tr.probs[-1], model.predict_proba(torch.tensor([ids]))[0], rtol=1e-6, atol=1e-6)
    assert set(tr.gates) == {"r", "z", "n"}
    with pytest.raises(UserError, match="one-layer"):
        gradflow.state_gradients(model, torch.tensor([ids]), torch.tensor([0]))

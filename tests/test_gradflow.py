"""`rnnlab gradflow`: the gradient norms it reports are autograd's, on the same model, in float64."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from rnnlab import gradflow
from rnnlab.recurrent import input_projection
from tests.conftest import run_cli
from tests.test_lab import png_size


def _autograd_states(model, ids):
    """s_1..s_T from the cell's differentiable step, each kept with retain_grad; returns (states, s_T)."""
    x = ids.t() if model.E is None else F.embedding(ids.t(), model.E.detach())
    p = input_projection(model.cell, x)
    state = model.cell.zero_state(ids.shape[0])
    states = []
    for t in range(ids.shape[1]):
        state = model.cell.step(p[t], state)
        state[0].retain_grad()
        states.append(state[0])
    return states


@pytest.mark.parametrize("cell,rho", [("rnn", 0.5), ("rnn", 1.5), ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("seed", [0, 1])
def test_state_gradients_equal_autograds(cell, rho, seed):
    g = torch.Generator().manual_seed(seed)
    B, T, H = (int(v) for v in torch.randint(2, 7, (3,), generator=g))
    model = gradflow.make_model(cell, rho, hidden=H, embed_dim=3, vocab_size=11, seed=seed)
    ids = torch.randint(0, 11, (B, T), generator=g)
    y = torch.randint(0, 2, (B,), generator=g)
    hand, _, _ = gradflow.state_gradients(model, ids, y)  # (T, B, H)
    states = _autograd_states(model, ids)
    F.cross_entropy(model.logits(states[-1]), y).backward()
    auto = torch.stack([s.grad for s in states])
    torch.testing.assert_close(hand, auto, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_final_state_jacobians_equal_autograds(cell):
    B, T, H = 2, 5, 3
    model = gradflow.make_model(cell, 1.0 if cell == "rnn" else None, hidden=H, embed_dim=4, vocab_size=7, seed=3)
    ids = torch.randint(0, 7, (B, T), generator=torch.Generator().manual_seed(3))
    J = gradflow.final_state_jacobians(model, ids)  # (T, B, H, H)
    for b in range(B):
        for i in range(H):
            states = _autograd_states(model, ids[b : b + 1])
            states[-1][0, i].backward()
            for t in range(T):  # row i of ds_T/ds_t
                torch.testing.assert_close(J[t, b, i], states[t].grad[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(J[-1], torch.eye(H, dtype=J.dtype).expand(B, H, H))  # ds_T/ds_T = I


@pytest.mark.parametrize("rho", [0.5, 1.0, 1.5])
def test_spectral_radius_is_set(rho):
    model = gradflow.make_model("rnn", rho, hidden=16, embed_dim=4, vocab_size=5, seed=0)
    assert float(torch.linalg.eigvals(model.cell.W.detach()).abs().max()) == pytest.approx(rho, rel=1e-9)


def test_measure_reports_consistent_figures():
    flow = gradflow.measure("rnn", 0.5, length=30, batch=4, hidden=8, embed_dim=4, vocab_size=20, clip=0.1)
    assert len(flow.dL_ds) == len(flow.ds_T_ds) == 30
    assert flow.ratio == flow.dL_ds[0] / flow.dL_ds[-1]
    assert flow.ratio < 1e-3  # rho = 0.5: at least 0.5 per step before tanh' shrinks it further
    assert flow.ds_T_ds[-1] == pytest.approx(1.0)  # the identity
    assert flow.clipped_norm == pytest.approx(min(flow.grad_norm, 0.1), rel=1e-5)  # clipping bounds the update only


def test_cli_gradflow_prints_ratios_and_writes_plot_and_json(tmp_path):
    r = run_cli("gradflow", "--length", "12", "--hidden", "6", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    names = ["rnn rho=0.5", "rnn rho=1", "rnn rho=1.5", "lstm", "gru"]
    assert all(name in r.stdout for name in names)
    assert f"wrote {tmp_path / 'gradflow.png'}" in r.stdout
    width, height = png_size(tmp_path / "gradflow.png")
    assert width >= 600 and height >= 300
    data = json.loads((tmp_path / "gradflow.json").read_text())
    assert [f["name"] for f in data["flows"]] == names
    assert all(len(f["dL_ds"]) == 12 for f in data["flows"])


def test_cli_gradflow_rejects_a_too_short_sequence(tmp_path):
    r = run_cli("gradflow", "--length", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and "--length >= 2" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--clip", "nan"], "finite --clip > 0"),
    (["--clip", "0"], "finite --clip > 0"),
    (["--hidden", "1024", "--length", "200"], "lower --hidden or --length"),
])
def test_cli_gradflow_rejects_what_it_cannot_run(tmp_path, args, message):
    r = run_cli("gradflow", *args, "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "g").exists()


def test_lstm_flow_also_reports_the_cell_path_and_the_gates():
    flow = gradflow.measure("lstm", length=10, batch=3, hidden=4, embed_dim=3, vocab_size=9)
    assert len(flow.dL_dc) == 10 and set(flow.gate_means) == {"i", "f", "g", "o"}
    assert 0 < flow.gate_means["f"] < 1
    gru = gradflow.measure("gru", length=10, batch=3, hidden=4, embed_dim=3, vocab_size=9)
    assert gru.dL_dc is None and set(gru.gate_means) == {"r", "z", "n"}


def test_run_draws_a_bar_only_when_asked(capsys):
    setups = (("rnn", 1.0), ("gru", None))
    flows = gradflow.run(length=4, hidden=3, embed_dim=2, vocab_size=10, batch=2, setups=setups, progress=True)
    assert "gradflow setups" in capsys.readouterr().err and len(flows) == 2
    gradflow.run(length=4, hidden=3, embed_dim=2, vocab_size=10, batch=2, setups=setups)  # stderr not a terminal
    assert capsys.readouterr().err == ""

"""DropConnect on the recurrent weights (`--weight-drop`, `recurrent.drop_weights`).

What it pins down:
- a stack run with weight_drop = (p, generator) equals torch.nn.RNN/LSTM/GRU(num_layers=N) run (through
  torch.func.functional_call) on weight_hh_l{k} * m_k / (1 - p), the masks m_k drawn from a generator with
  the same seed, one per layer, bottom first: outputs, final states and every layer's weight gradients,
  for autograd and the hand BPTT on both engines, float64, 1e-10 (tests/test_cells.py's tolerance);
- a dropped entry of W gets no gradient at that step; the cell's own W is left untouched;
- the training step draws no weight masks when --weight-drop is 0 (stored numbers stay), and a run with
  --weight-drop trains, resumes to the same weights as an uninterrupted run, and records it in config.json.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.config import Config
from rnnlab.recurrent import from_torch, unroll_layers
from rnnlab.train import masks
from tests.conftest import require_compiled
from tests.test_cells import assert_close
from tests.test_stacked import torch_grads, torch_stack

PATHS = [("autograd", None), ("manual", "python"), ("manual", "compiled")]


@pytest.mark.parametrize(("backward", "engine"), PATHS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=6, deadline=None)
@given(N=st.integers(1, 3), B=st.integers(1, 5), T=st.integers(1, 7), E=st.integers(1, 6), H=st.integers(1, 10),
       p=st.sampled_from([0.1, 0.3, 0.6]), seed=st.integers(0, 2**31 - 1))
def test_weight_drop_equals_torch_nn_on_the_masked_weights(kind, backward, engine, N, B, T, E, H, p, seed):
    if engine == "compiled":
        require_compiled()
    dtype = torch.float64
    m = torch_stack(kind, E, H, N, dtype=dtype, seed=seed)
    layer = from_torch(m, backward=backward, engine=engine)
    W_before = [cell.W.detach().clone() for cell in layer.cells]
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, E, generator=g, dtype=dtype)
    r_out = torch.randn(T, B, H, generator=g, dtype=dtype)
    r_state = torch.randn(B, H, generator=g, dtype=dtype)

    out, finals = unroll_layers(layer.cells, x, None, None, backward, batch_first=False, engine=engine,
                                weight_drop=(p, torch.Generator().manual_seed(seed)))
    ((out * r_out).sum() + (finals[-1][0] * r_state).sum()).backward()

    # the reference: torch.nn on W * m / (1 - p), the same masks drawn in the same order
    same = torch.Generator().manual_seed(seed)
    params = dict(m.named_parameters())
    keep = []
    for k in range(N):
        W = params[f"weight_hh_l{k}"]
        keep.append(torch.rand(W.shape, generator=same, dtype=torch.float32) >= p)
        params[f"weight_hh_l{k}"] = W * keep[k].to(dtype) / (1 - p)
    out_ref, states_ref = torch.func.functional_call(m, params, (x,))
    h_T_ref = (states_ref[0] if kind == "lstm" else states_ref)[-1]
    ((out_ref * r_out).sum() + (h_T_ref * r_state).sum()).backward()

    assert_close(out, out_ref, dtype, "outputs")
    assert_close(finals[-1][0], h_T_ref, dtype, "top layer's final state")
    for (k, name), ref in torch_grads(m, kind, H).items():
        assert_close(getattr(layer.cells[k], name).grad, ref, dtype, f"layer {k} d{name}")
    for k, cell in enumerate(layer.cells):
        assert torch.equal(cell.W.detach(), W_before[k]), "drop_weights must not change the cell's own W"
        assert torch.all(cell.W.grad[~keep[k]] == 0), "a dropped entry of W got a gradient"
        if keep[k].any() and T > 1:
            assert cell.W.grad[keep[k]].abs().sum() > 0, "kept entries of W got no gradient at all"


def test_no_weight_masks_without_weight_drop():
    """--weight-drop 0 draws nothing, so runs made before it existed keep their numbers; with it, the
    dropout masks and the weight masks come from the one step generator."""
    assert masks(Config(), 0, 0) == (None, None)
    drop, weight_drop = masks(Config(dropout=0.2), 0, 0)
    assert drop[0] == 0.2 and weight_drop is None
    drop, weight_drop = masks(Config(dropout=0.2, weight_drop=0.3), 1, 5)
    assert weight_drop[0] == 0.3 and drop[1] is weight_drop[1]
    a, b = masks(Config(weight_drop=0.3), 1, 5)[1][1], masks(Config(weight_drop=0.3), 1, 5)[1][1]
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b)), "the same step, the same masks"
    c = masks(Config(weight_drop=0.3), 1, 6)[1][1]
    assert not torch.equal(torch.rand(8, generator=masks(Config(weight_drop=0.3), 1, 5)[1][1]),
                           torch.rand(8, generator=c)), "the next step draws other masks"


@pytest.mark.parametrize("task", ["classify", "lm"])
def test_the_training_step_uses_it(task, tmp_path, monkeypatch):
    """Each task's training step runs its layers on dropped weights, once per layer and step, and only
    with --weight-drop > 0 (validation never does)."""
    from rnnlab import recurrent
    from tests.test_lm import text_file, tiny
    from tests.test_train import sentiment_tsv
    from tests.test_train import tiny as tiny_classifier

    calls = []
    real = recurrent.drop_weights

    def counted(cell, p, generator):
        calls.append(p)
        return real(cell, p, generator)

    monkeypatch.setattr(recurrent, "drop_weights", counted)
    for p in (0.0, 0.3):
        calls.clear()
        if task == "lm":
            from rnnlab import lm

            result = lm.train_lm(tiny(weight_drop=p, epochs=1), text_file(tmp_path), tmp_path / f"lm{p}", log=print,
                                 plots=False)
        else:
            from rnnlab.train import train

            result = train(tiny_classifier(weight_drop=p, epochs=1, layers=2), sentiment_tsv(tmp_path),
                           tmp_path / f"c{p}", log=print, plots=False, progress=False)
        assert (calls == []) if p == 0 else (len(calls) > 0 and set(calls) == {0.3}), calls
        if p and task == "lm":
            assert len(calls) == 2 * result.history[-1]["step"]  # two layers, every training step


def test_the_flag_trains_a_classifier_and_a_bad_value_is_one_line(tmp_path, capsys):
    """`--weight-drop` reaches config.json and the classifier's training (a stacked GRU, hand BPTT); 1.5 is
    refused in one line, before any run folder is made."""
    import json

    from rnnlab.cli import main
    from tests.test_cli import one_error_line
    from tests.test_train import sentiment_tsv

    data = str(sentiment_tsv(tmp_path))
    assert main(["train", "--data", data, "--weight-drop", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--weight-drop 1.5: use a probability in [0, 1)" in one_error_line(capsys, "train")
    assert not (tmp_path / "bad").exists()
    assert main(["train", "--data", data, "--layers", "2", "--hidden", "8", "--embed-dim", "6", "--epochs", "1",
                 "--weight-drop", "0.25", "--no-plots", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["weight_drop"] == 0.25

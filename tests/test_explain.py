"""`rnnlab explain`: the per-word trace equals the model's own forward, its gates equal the equations,
its last probabilities equal `predict`'s; the PCA is a real one; the CLI draws and reports errors."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab import checkpoint
from rnnlab.config import Config
from rnnlab.data import Vocab, tokenize
from rnnlab.evaluate import predict
from rnnlab.explain import explain_texts, fit_pca, format_trace, trace
from rnnlab.model import Classifier
from tests.conftest import run_cli
from tests.test_lab import png_size

TEXTS = ["the movie is not good", "a bad , bad film", "good"]


def _saved_model(tmp_path, cell: str, hidden: int, embed_dim: int | None, seed: int = 0):
    vocab = Vocab.build([tokenize(t) for t in TEXTS + ["the plot is dull"]])
    config = Config(cell=cell, hidden=hidden, embed_dim=embed_dim, seed=seed)
    model = Classifier(len(vocab), hidden, 3, cell=cell, embed_dim=embed_dim, seed=seed)
    labels = ["neg", "neu", "pos"]
    checkpoint.atomic_save(checkpoint.make(model, config, vocab, labels), tmp_path / checkpoint.BEST)
    return model, vocab, labels


@pytest.mark.parametrize("cell,hidden,embed_dim", [("rnn", 3, None), ("lstm", 5, 4), ("gru", 12, 6)])
def test_trace_ends_where_predict_ends_and_follows_the_models_states(tmp_path, cell, hidden, embed_dim):
    model, vocab, labels = _saved_model(tmp_path, cell, hidden, embed_dim)
    texts = TEXTS + ["an unseen word here"]
    traces = explain_texts(model, vocab, texts, labels, lowercase=True)
    for tr, pred in zip(traces, predict(tmp_path, texts)):
        assert tr.label == pred["label"]
        torch.testing.assert_close(tr.probs[-1], torch.tensor(list(pred["probabilities"].values())),
                                   rtol=0, atol=1e-6)
        ids = torch.tensor([vocab.encode(tr.tokens)])
        outputs, _ = model.states(ids, backward="autograd")  # the autograd forward, step by step
        torch.testing.assert_close(tr.states, outputs[:, 0], rtol=0, atol=1e-6)
        expected = torch.softmax(model.logits(outputs[:, 0]), -1)  # p_t after every word
        torch.testing.assert_close(tr.probs, expected.detach(), rtol=0, atol=1e-6)
    assert traces[-1].known == [False] * 4  # 'an unseen word here': none of it in the vocabulary


def _gates_from_the_equations(model: Classifier, ids: list[int]) -> dict[str, torch.Tensor]:
    """Each gate recomputed from W, U, b with plain torch ops, one step at a time."""
    cell, H = model.cell, model.hidden_size
    dtype = cell.W.dtype
    x = model.E[ids] if model.E is not None else torch.eye(model.vocab_size, dtype=dtype)[ids]  # (T, E)
    h, c = torch.zeros(H, dtype=dtype), torch.zeros(H, dtype=dtype)
    out = {}
    for x_t in x:
        a = cell.U @ x_t + cell.b  # U x_t + b
        gh = cell.W @ h  # W h_{t-1}
        if cell.name == "lstm":
            z = a + gh
            i, f, o = torch.sigmoid(z[:H]), torch.sigmoid(z[H : 2 * H]), torch.sigmoid(z[3 * H :])
            g = torch.tanh(z[2 * H : 3 * H])
            c = f * c + i * g
            h = o * torch.tanh(c)
            step = {"i": i, "f": f, "g": g, "o": o, "c": c}
        else:
            r = torch.sigmoid(a[:H] + gh[:H])
            z = torch.sigmoid(a[H:2 * H] + gh[H:2 * H])
            n = torch.tanh(a[2 * H:] + r * (gh[2 * H:] + cell.b_hn))
            h = (1 - z) * n + z * h
            step = {"r": r, "z": z, "n": n}
        for k, v in step.items():
            out.setdefault(k, []).append(v.detach())
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("cell,embed_dim", [("lstm", None), ("lstm", 4), ("gru", None), ("gru", 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gate_activations_equal_the_equations(cell, embed_dim, seed):
    model = Classifier(9, 4, 2, cell=cell, embed_dim=embed_dim, seed=seed, dtype=torch.float64)
    ids = torch.randint(0, 9, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    tr = trace(model, ids, [str(i) for i in ids], ["a", "b"])
    expected = _gates_from_the_equations(model, ids)
    assert set(tr.gates) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(tr.gates[name], value, rtol=0, atol=1e-12, msg=name)


def test_vanilla_rnn_has_no_gates_and_shows_its_whole_small_state():
    model = Classifier(5, 2, 2, seed=0)
    tr = trace(model, [0, 1, 2], ["The", "movie", "is"], ["0", "1"])
    assert tr.gates == {}
    table = format_trace(tr)
    assert "s[0]" in table and "s[1]" in table and "pc1" not in table
    assert len(table.splitlines()) == 2 + 3  # title, header, one row per word


def test_large_states_are_shown_on_principal_components():
    model = Classifier(20, 16, 2, cell="gru", embed_dim=8, seed=0)
    tr = trace(model, list(range(10)), [f"w{i}" for i in range(10)], ["0", "1"])
    table = format_trace(tr)
    assert "pc1" in table and "pc3" in table and "s[0]" not in table and "mean z" in table


@pytest.mark.parametrize("seed", range(3))
def test_pca_matches_the_eigenvectors_of_the_covariance(seed):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(40, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    pca = fit_pca(S, 3)
    torch.testing.assert_close(pca.components @ pca.components.t(), torch.eye(3, dtype=S.dtype))  # orthonormal
    cov = torch.cov(S.t())
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    for k in range(3):
        v = eigenvectors[:, -1 - k]
        assert abs(float(v @ pca.components[k])) == pytest.approx(1.0, abs=1e-9)  # same direction up to sign
    torch.testing.assert_close(pca.explained, eigenvalues.flip(0)[:3] / eigenvalues.sum())
    z = pca.project(S)
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(3, dtype=S.dtype), rtol=0, atol=1e-10)
    assert (pca.components.gather(1, pca.components.abs().argmax(1, keepdim=True)) > 0).all()  # fixed signs


def test_cli_explain_lab_prints_both_sentences_and_draws(tmp_path):
    r = run_cli("explain", "--lab", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "'The movie is bad' -> 0" in r.stdout and "'The movie is good' -> 1" in r.stdout
    assert f"wrote {tmp_path / 'trajectory.png'}" in r.stdout
    width, height = png_size(tmp_path / "trajectory.png")
    assert width >= 300 and height >= 300
    traces = json.loads((tmp_path / "explain.json").read_text())
    assert [t["label"] for t in traces] == ["0", "1"]
    assert traces[1]["probs"][-1][1] > 0.99  # the lab's p(1) for "good" after 300 epochs


def test_cli_explain_checkpoint_json_and_pca_plot(tmp_path):
    _saved_model(tmp_path, "lstm", 10, 4)
    r = run_cli("explain", "--checkpoint", str(tmp_path), "--json", "--out", str(tmp_path / "x"), *TEXTS[:2])
    assert r.returncode == 0, r.stderr
    traces = json.loads(r.stdout.splitlines()[0])
    assert [t["tokens"] for t in traces] == [tokenize(t) for t in TEXTS[:2]]
    assert set(traces[0]["gates"]) == {"i", "f", "g", "o", "c"}
    png_size(tmp_path / "x" / "trajectory.png")  # H = 10: drawn on principal components


@pytest.mark.parametrize("args,message", [
    (["--lab", "The film"], "unknown word 'film'"),
    (["--checkpoint", "no-such-dir", "good"], "no checkpoint here"),
    (["--checkpoint", "x", "--lab"], "not allowed with argument"),
])
def test_cli_explain_bad_input_is_one_line(tmp_path, args, message):
    r = run_cli("explain", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("hidden,texts", [(1, ["good film", "bad plot"]), (12, ["good"])])
def test_trajectory_with_a_single_direction_still_draws(tmp_path, hidden, texts):
    """H = 1, or a single state: only one principal direction exists; the picture keeps the second axis at 0."""
    _saved_model(tmp_path, "gru", hidden, 4)
    r = run_cli("explain", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"), *texts)
    assert r.returncode == 0, r.stderr
    png_size(tmp_path / "x" / "trajectory.png")


@pytest.mark.parametrize("args,message", [
    (["--lab", ""], "sentence argument 1 is empty"),
    (["--lab", "The movie", "   "], "sentence argument 2 is empty"),
])
def test_cli_explain_empty_sentences_are_one_line_errors(tmp_path, args, message):
    r = run_cli("explain", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["explain", "--lab"], ["gradflow", "--length", "3", "--hidden", "2"],
                                     ["memory", "--steps", "1", "--distances", "1", "--cells", "rnn"],
                                     ["lab", "--epochs", "1"]])
def test_an_out_that_is_a_file_is_a_one_line_error(tmp_path, command):
    (tmp_path / "taken").write_text("not a folder")
    r = run_cli(*command, "--out", str(tmp_path / "taken"), cwd=tmp_path)
    assert r.returncode == 2 and "pass a folder to --out" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"


def _drawn_figure(monkeypatch, model, traces, path, **kw):
    """plot_trajectories' figure, caught at `plots.save` (the PNG is still written)."""
    from rnnlab import plots
    from rnnlab.explain import plot_trajectories

    caught, real_save = [], plots.save
    monkeypatch.setattr(plots, "save", lambda fig, p, show=False: caught.append(fig) or real_save(fig, p, show))
    plot_trajectories(model, traces, path, **kw)
    return caught[0]


@pytest.mark.parametrize("cell,hidden,classes,n_texts,seed", [("rnn", 2, 2, 3, 1), ("gru", 9, 2, 5, 2),
                                                              ("lstm", 6, 3, 2, 3), ("gru", 2, 3, 4, 4)])
def test_each_point_is_coloured_by_the_models_own_prediction(tmp_path, monkeypatch, cell, hidden, classes,
                                                             n_texts, seed):
    """Point t of a sentence is filled with the colour of the class the model predicts for the sentence cut
    after word t (computed here by the model's batch forward, not by the trace), s_0 with b_out's class."""
    from matplotlib.colors import to_rgba

    from rnnlab.plots import PER_PANEL, class_colours

    g = torch.Generator().manual_seed(seed)
    words = ["good", "bad", "dull", "fine", "plot", "film", "not"]
    vocab = Vocab.build([words])
    model = Classifier(len(vocab), hidden, classes, cell=cell, embed_dim=4, seed=seed)
    with torch.no_grad():
        model.W_out.mul_(8.0)  # a confident output layer: the prediction changes along the sentences
    lengths = torch.randint(2, 8, (n_texts,), generator=g).tolist()
    texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (T,), generator=g)) for T in lengths]
    names = [f"class{k}" for k in range(classes)]
    traces = explain_texts(model, vocab, texts, names, lowercase=True)
    fig = _drawn_figure(monkeypatch, model, traces, tmp_path / "t.png")
    points = {c.get_gid(): c for ax in fig.axes for c in ax.collections if (c.get_gid() or "").startswith("sentence")}
    assert len(points) == n_texts
    colours, seen = class_colours(classes), set()
    for i, text in enumerate(texts):
        ids = vocab.encode(tokenize(text))
        with torch.no_grad():
            expected = [int(model.b_out.argmax())] + [
                int(model.predict_proba(torch.tensor([ids[:t]])).argmax()) for t in range(1, len(ids) + 1)]
        fills = points[f"sentence {i}"].get_facecolors()
        assert len(fills) == len(ids) + 1
        for fill, k in zip(fills, expected):
            assert tuple(fill) == to_rgba(colours[k])
        seen.update(expected)
    assert len(seen) >= 2, "pick a seed whose sentences cross the boundary, or the test cannot fail"
    assert len([ax for ax in fig.axes if ax.get_visible()]) == (1 if n_texts <= PER_PANEL else n_texts)


def test_trajectory_key_sits_outside_the_axes_and_says_what_the_line_is(tmp_path, monkeypatch):
    vocab = Vocab.build([tokenize(t) for t in TEXTS])
    for hidden, line in ((10, "restricted to this plane"), (2, "shaded: the class predicted there")):
        model = Classifier(len(vocab), hidden, 2, cell="gru", embed_dim=4, seed=0)
        traces = explain_texts(model, vocab, TEXTS[:2], ["neg", "pos"], lowercase=True)
        fig = _drawn_figure(monkeypatch, model, traces, tmp_path / "t.png")
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
        (ax,) = fig.axes
        legend = ax.get_legend()
        assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # right of the axes
        labels = [t.get_text() for t in legend.get_texts()]
        assert any(line in t for t in labels), labels  # H = 10: a projection's line; H = 2: the model's own
        assert {"the model predicts neg here", "the model predicts pos here"} <= set(labels)

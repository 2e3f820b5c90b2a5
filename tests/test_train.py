"""Tests for rnnlab.train, rnnlab.checkpoint and the train / evaluate / predict commands.

What they pin down, in the order of the file:
- a tiny run end to end (library and CLI): the run folder's files, PNGs, config with its seed, history;
- the metrics against a hand-computed example; evaluate and predict (library and CLI, --json, stdin);
- early stopping, exact resume after an interruption, atomic checkpoint writes, NaN/inf handling;
- the hand BPTT and autograd give the same run;
- "it learns": a GRU solves a word-order task on which a bag-of-words model is provably at chance;
- every kind of bad input through the CLI: exit 2, one line on stderr naming the file, no traceback.

Models are tiny (H 8, D 8, a few epochs) and run on one thread (see tests/conftest.py); the CLI runs, which pay ~2 s
each for importing torch, are started together where several are needed (and marked slow).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import rnnlab.train as rnnlab_train
from rnnlab import checkpoint
from rnnlab.cli import main
from rnnlab.config import Config
from rnnlab.data import Vocab, tokenize
from rnnlab.errors import UserError
from rnnlab.evaluate import confusion_matrix, evaluate, metrics, predict
from rnnlab.optim import Adam
from rnnlab.train import train
from tests.conftest import REPO, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A hand-written sentiment set: each sentence three times, 60 rows, so that the 10% validation and test
# splits hold 3 sentences of each class.
POSITIVE = ["a great film", "i loved the acting", "wonderful and moving", "the plot was good",
            "fine work by the cast", "a delight from start to end", "good fun for everyone",
            "the best movie this year", "funny and warm", "great music and a good story"]
NEGATIVE = ["a bad film", "i hated the acting", "boring and slow", "the plot was awful",
            "poor work by the cast", "a mess from start to end", "dull fun for nobody",
            "the worst movie this year", "neither funny nor warm", "awful music and a bad story"]
STEPS_PER_EPOCH = 6  # 48 training sentences in batches of 8


def quiet(*_):
    pass


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path


def sentiment_tsv(folder: Path) -> Path:
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    return write_tsv(folder / "reviews.tsv", rows * 3)


def tiny(**overrides) -> Config:
    """A model of a few hundred parameters that trains in well under a second."""
    base = dict(cell="gru", hidden=8, embed_dim=8, lr=0.05, batch_size=8, epochs=2, patience=None, seed=3)
    return Config(**{**base, **overrides})


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and len(data) > 1000, f"{path} holds no picture"


def weights(path: Path, name: str = checkpoint.BEST) -> dict[str, torch.Tensor]:
    return checkpoint.read(path, name)["weights"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def run_cli_bytes(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """run_cli with raw bytes on stdin (run_cli's text mode cannot send bytes that are not UTF-8)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "rnnlab", *args], input=stdin, capture_output=True, env=env,
                       timeout=600)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def run_clis(*calls: tuple[list[str], str | bytes | None]) -> list[subprocess.CompletedProcess]:
    """Several `rnnlab` commands (arguments, stdin) at once, as each waits ~2 s for torch to import;
    the results in the same order."""

    def one(call):
        args, stdin = call
        return run_cli_bytes(*args, stdin=stdin) if isinstance(stdin, bytes) else run_cli(*args, stdin=stdin)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, calls))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run, shared by the evaluate / predict tests (which only read it)."""
    folder = tmp_path_factory.mktemp("run")
    return train(tiny(), sentiment_tsv(folder), folder / "run", log=quiet, progress=False)


# -- a run end to end -----------------------------------------------------------------------------------
def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    logs = []
    result = train(tiny(epochs=3), sentiment_tsv(tmp_path), tmp_path / "run", log=logs.append, progress=True)
    out = tmp_path / "run"
    assert result.out_dir == out and not result.stopped_early
    for name in ["config.json", "history.csv", "metrics.json", "loss.png", "accuracy.png", "confusion.png",
                 checkpoint.BEST, checkpoint.LAST]:
        assert (out / name) in result.files and (out / name).stat().st_size > 0, name
    for name in ["loss.png", "accuracy.png", "confusion.png"]:
        assert_png(out / name)
    assert json.loads((out / "config.json").read_text()) == tiny(epochs=3).to_dict()  # the seed (3) included
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([r["val_loss"] for r in result.history])
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    # one plain line per epoch in the log; the tqdm bar went to stderr
    assert sum(line.startswith("epoch ") for line in logs) == 3
    assert "epoch 1/3" in capsys.readouterr().err
    # the test split was scored with the best weights, which are model.pt's
    assert result.test["n"] == 6 and 0 <= result.test["accuracy"] <= 1
    assert json.loads((out / "metrics.json").read_text())["confusion"] == result.test["confusion"]
    assert_same_weights(result.model.state_dict(), weights(out))
    best_epoch = min(result.history, key=lambda r: r["val_loss"])["epoch"]
    assert checkpoint.read(out)["progress"]["epoch"] == best_epoch
    assert checkpoint.read(out, checkpoint.LAST)["progress"]["epoch"] == 3


@pytest.mark.slow
def test_cli_train_builds_the_same_config_and_run_as_the_library(tmp_path):
    data = sentiment_tsv(tmp_path)
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "cli"), "--cell", "gru", "--hidden", "8",
                "--embed-dim", "8", "--lr", "0.05", "--batch-size", "8", "--epochs", "2", "--patience", "0",
                "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # not a terminal: no progress bar, plain lines on stdout
    assert [line[:9] for line in r.stdout.splitlines() if line.startswith("epoch")] == ["epoch   1", "epoch   2"]
    assert "test accuracy" in r.stdout
    cli = tmp_path / "cli"
    assert json.loads((cli / "config.json").read_text()) == tiny().to_dict()
    for name in ["loss.png", "accuracy.png", "confusion.png"]:
        assert_png(cli / name)
    library = train(tiny(), data, tmp_path / "lib", log=quiet, plots=False)
    with open(cli / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row, expected in zip(rows, library.history):
        for key in ["train_loss", "train_acc", "val_loss", "val_acc"]:
            assert float(row[key]) == pytest.approx(expected[key], rel=1e-6)


# -- metrics --------------------------------------------------------------------------------------------
def test_metrics_match_a_hand_computed_example():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 0, 2, 2, 1]
    m = metrics(y_true, y_pred, ["a", "b", "c", "d"])  # "d" is neither present nor predicted
    assert m["confusion"] == [[2, 1, 0, 0],  # rows: true class, columns: predicted
                              [1, 1, 0, 0],
                              [0, 1, 2, 0],
                              [0, 0, 0, 0]]
    assert confusion_matrix(y_true, y_pred, 4) == m["confusion"]
    assert m["accuracy"] == pytest.approx(5 / 8) and m["n"] == 8
    expected = {  # precision = tp / predicted, recall = tp / actual, F1 = 2 P R / (P + R)
        "a": (2 / 3, 2 / 3, 2 / 3, 3),
        "b": (1 / 3, 1 / 2, 2 / 5, 2),
        "c": (1.0, 2 / 3, 4 / 5, 3),
        "d": (0.0, 0.0, 0.0, 0),
    }
    for name, (p, r, f1, support) in expected.items():
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p, r, f1)), name
        assert c["support"] == support


# -- evaluate and predict -------------------------------------------------------------------------------
def test_evaluate_reports_metrics_and_the_unknown_word_rate(run, tmp_path):
    data = write_tsv(tmp_path / "eval.tsv", [("a great film", "pos"),  # 0 of 3 words unknown
                                             ("zorblax great", "pos"),  # 1 of 2
                                             ("qwerty uiop", "neg")])  # 2 of 2
    m = evaluate(run.out_dir, data)
    assert m["unknown_rate"] == pytest.approx(3 / 7)
    assert m["n"] == 3 and m["label_names"] == ["neg", "pos"]
    assert sum(map(sum, m["confusion"])) == 3
    assert set(m["per_class"]) == {"neg", "pos"}
    # the same model whether the checkpoint is given as the folder or as its model.pt
    assert evaluate(run.out_dir / checkpoint.BEST, data) == m
    # and its accuracy is predict's labels compared with the file's
    labels = [p["label"] for p in predict(run.out_dir, ["a great film", "zorblax great", "qwerty uiop"])]
    assert m["accuracy"] == pytest.approx(sum(a == b for a, b in zip(labels, ["pos", "pos", "neg"])) / 3)


def test_evaluate_rejects_a_label_the_model_does_not_know(run, tmp_path):
    data = write_tsv(tmp_path / "eval.tsv", [("a great film", "pos"), ("so so", "meh"), ("bad", "neg")])
    with pytest.raises(UserError, match=r"eval\.tsv:2: label 'meh' is not one of the known labels"):
        evaluate(run.out_dir, data)


def test_predict_gives_a_label_probabilities_and_unknown_words(run):
    results = predict(run.out_dir, ["a great film", "a bad film", "zorblax the film"])
    for r in results:
        assert r["label"] in ("neg", "pos") and r["label"] == ["neg", "pos"][r["class"]]
        assert set(r["probabilities"]) == {"neg", "pos"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    assert [r["unknown_words"] for r in results] == [[], [], ["zorblax"]]
    [alone] = predict(run.out_dir / checkpoint.BEST, ["a great film"])  # the file, and a batch of one
    assert alone["label"] == results[0]["label"]
    assert alone["probabilities"] == pytest.approx(results[0]["probabilities"], abs=1e-6)


@pytest.mark.slow
def test_cli_evaluate_and_predict(run, tmp_path):
    data = write_tsv(tmp_path / "eval.tsv", [("a great film", "pos"), ("zorblax bad", "neg")])
    folder, file = str(run.out_dir), str(run.out_dir / checkpoint.BEST)
    as_json, as_text, predicted, from_stdin = run_clis(
        (["evaluate", "--checkpoint", folder, "--data", str(data), "--json"], None),
        (["evaluate", "--checkpoint", file, "--data", str(data)], None),
        (["predict", "--checkpoint", folder, "--json", "a great film", "zorblax film"], None),
        (["predict", "--checkpoint", file], "a great film\n\na bad film\n"),
    )
    for r in (as_json, as_text, predicted, from_stdin):
        assert r.returncode == 0 and r.stderr == "", r.stderr
    m, expected = json.loads(as_json.stdout), evaluate(run.out_dir, data)
    assert m["confusion"] == expected["confusion"] and m["label_names"] == ["neg", "pos"]
    assert m["accuracy"] == pytest.approx(expected["accuracy"]) and m["unknown_rate"] == pytest.approx(1 / 5)
    assert m["per_class"].keys() == expected["per_class"].keys()
    assert f"accuracy {m['accuracy']:.4f}" in as_text.stdout and "unknown words 20.0%" in as_text.stdout
    table = [line.split() for line in as_text.stdout.splitlines()]
    for c, name in enumerate(["neg", "pos"]):  # a row of metrics and a row of the confusion matrix, by name
        per_class = m["per_class"][name]
        assert [name, *(f"{per_class[k]:.4f}" for k in ("precision", "recall", "f1")), str(per_class["support"])] \
            in table
        assert [name, *map(str, m["confusion"][c])] == table[c - 2]
    assert table[-3] == ["neg", "pos"]  # the confusion matrix's header
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [d["text"] for d in lines] == ["a great film", "zorblax film"]
    assert lines[1]["unknown_words"] == ["zorblax"]
    for d in lines:
        assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    rows = from_stdin.stdout.splitlines()  # label, probabilities, text; the blank line keeps its place
    assert [row.split("\t")[2] for row in rows] == ["a great film", "", "a bad film"]
    assert rows[1].startswith("-\terror: line 2: blank line")
    rows = [rows[0], rows[2]]
    assert all(row.split("\t")[0] in ("neg", "pos") and "p(neg) = " in row and "p(pos) = " in row for row in rows)


# -- early stopping -------------------------------------------------------------------------------------
def test_early_stopping_keeps_the_best_epoch_and_a_resume_stays_stopped(tmp_path, monkeypatch):
    """The validation loss is made to fall for two epochs and then rise; patience 2 stops after epoch 4."""
    fake_val_losses = [0.9, 0.8, 0.85, 0.95]
    seen = []  # the weights at each validation
    real_evaluate = rnnlab_train.evaluate_ids

    def rising(model, ids, labels, names):
        m = real_evaluate(model, ids, labels, names)
        if len(seen) < len(fake_val_losses):  # later calls score the test split: left alone
            m["loss"] = fake_val_losses[len(seen)]
            seen.append(model.state_dict())
        return m

    monkeypatch.setattr(rnnlab_train, "evaluate_ids", rising)
    logs = []
    data, out = sentiment_tsv(tmp_path), tmp_path / "run"
    result = train(tiny(epochs=20, patience=2), data, out, log=logs.append, plots=False)
    assert result.stopped_early and len(result.history) == 4
    assert [r["val_loss"] for r in result.history] == fake_val_losses
    assert any(line.startswith("early stop") for line in logs)
    assert_same_weights(weights(out), seen[1])  # model.pt: epoch 2, the lowest validation loss
    assert_same_weights(result.model.state_dict(), seen[1])
    assert_same_weights(weights(out, checkpoint.LAST), seen[3])

    monkeypatch.undo()  # resuming a run that stopped early trains no further epoch
    resumed = train(tiny(epochs=20, patience=2), data, out, resume=True, log=quiet, plots=False)
    assert resumed.stopped_early and len(resumed.history) == 4
    assert_same_weights(weights(out, checkpoint.LAST), seen[3])


def test_empty_validation_split_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no validation examples; pass --val"):
        train(tiny(val_frac=0.0), sentiment_tsv(tmp_path), tmp_path / "run", log=quiet)


# -- resume ---------------------------------------------------------------------------------------------
RESUMED = tiny(epochs=3, optimizer="adam", lr=0.02, dropout=0.3)  # Adam moments and dropout masks must survive too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A of the resume tests: the same data and settings, trained without a stop."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    return train(RESUMED, sentiment_tsv(folder), folder / "a", log=quiet, plots=False)


def _assert_same_run(a: Path, b: Path, history_a: list[dict], history_b: list[dict]) -> None:
    assert_same_weights(weights(a, checkpoint.LAST), weights(b, checkpoint.LAST))
    assert_same_weights(weights(a), weights(b))
    opt_a = checkpoint.read(a, checkpoint.LAST)["optimizer"]
    opt_b = checkpoint.read(b, checkpoint.LAST)["optimizer"]
    assert opt_a["step_count"] == opt_b["step_count"] == 3 * STEPS_PER_EPOCH
    for sa, sb in zip(opt_a["state"], opt_b["state"]):  # Adam's t, m and v of each parameter
        assert sa.keys() == sb.keys() == {"t", "m", "v"}
        assert sa["t"] == sb["t"] and torch.equal(sa["m"], sb["m"]) and torch.equal(sa["v"], sb["v"])
    assert without_seconds(history_a) == without_seconds(history_b)


def test_resume_after_an_interrupt_ends_with_the_same_weights(tmp_path, monkeypatch, uninterrupted):
    data, config, a = sentiment_tsv(tmp_path), RESUMED, uninterrupted

    # run b: a KeyboardInterrupt in the 9th step (epoch 2, after 2 of its 6 steps), before the update
    real_clip, calls = rnnlab_train.clip_grad_norm, []

    def interrupt_at_step_9(params, max_norm):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_clip(params, max_norm)

    monkeypatch.setattr(rnnlab_train, "clip_grad_norm", interrupt_at_step_9)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        train(config, data, tmp_path / "b", log=logs.append, plots=False)
    progress = checkpoint.read(tmp_path / "b", checkpoint.LAST)["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 2)
    assert any("continue with --resume" in line for line in logs)

    monkeypatch.undo()
    b = train(config, data, tmp_path / "b", resume=True, log=quiet, plots=False)
    _assert_same_run(a.out_dir, tmp_path / "b", a.history, b.history)
    assert b.test == a.test


@pytest.mark.parametrize("presses, saved_at", [(1, (1, 3)),  # held: the 9th step is finished and counted
                                               (2, (1, 0))])  # forced: nothing saved, last.pt of epoch 1 stays
def test_ctrl_c_during_an_update_still_resumes_exactly(tmp_path, monkeypatch, uninterrupted, presses, saved_at):
    """A real SIGINT arriving just after the optimiser changed the weights, before the step was counted,
    must not save a checkpoint that would redo that step on resume."""
    data, config, a = sentiment_tsv(tmp_path), RESUMED, uninterrupted
    real_make = rnnlab_train.make_optimizer

    def make_and_press_ctrl_c(*args, **kwargs):
        optimizer = real_make(*args, **kwargs)
        real_step = optimizer.step

        def step():
            real_step()
            if optimizer.step_count == 9:
                for _ in range(presses):
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered while the step is unfinished

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(rnnlab_train, "make_optimizer", make_and_press_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(config, data, tmp_path / "b", log=quiet, plots=False)
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C is given back as it was
    progress = checkpoint.read(tmp_path / "b", checkpoint.LAST)["progress"]
    assert (progress["epoch"], progress["step"]) == saved_at

    monkeypatch.undo()
    b = train(config, data, tmp_path / "b", resume=True, log=quiet, plots=False)
    _assert_same_run(a.out_dir, tmp_path / "b", a.history, b.history)


def test_resume_with_other_settings_or_nothing_to_resume_is_a_user_error(run):
    before = {p.name: p.read_bytes() for p in run.out_dir.iterdir()}
    data = Path(run.out_dir).parent / "reviews.tsv"
    with pytest.raises(UserError, match=r"last\.pt: cannot resume with different settings \(hidden, lr\)"):
        train(tiny(hidden=16, lr=0.1), data, run.out_dir, resume=True, log=quiet)
    assert {p.name: p.read_bytes() for p in run.out_dir.iterdir()} == before  # nothing touched
    with pytest.raises(UserError, match=r"last\.pt: nothing to resume"):
        train(tiny(), data, run.out_dir.parent / "no-such-run", resume=True, log=quiet)


# -- checkpoints ----------------------------------------------------------------------------------------
def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(run, tmp_path, monkeypatch):
    path = tmp_path / checkpoint.BEST
    path.write_bytes((run.out_dir / checkpoint.BEST).read_bytes())
    good = path.read_bytes()
    real_save = torch.save

    def save_half_then_crash(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half of the bytes are on disk ...
        raise OSError(28, "No space left on device")  # ... when the disk fills up

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_crash)
    ckpt = checkpoint.read(path)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.atomic_save({**ckpt, "progress": {"epoch": 99}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert checkpoint.load_model(path)[4]["progress"] == ckpt["progress"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.BEST]  # no temporary file left


def test_checkpoint_round_trip_holds_only_plain_data(run, tmp_path):
    saved = checkpoint.atomic_save(checkpoint.read(run.out_dir), tmp_path / "copy.pt")
    model, config, vocab, label_names, ckpt = checkpoint.load_model(saved)
    assert (ckpt["format"], ckpt["version"]) == (checkpoint.FORMAT, checkpoint.VERSION)
    assert config == tiny() and label_names == ["neg", "pos"] and isinstance(vocab, Vocab)
    assert_same_weights(model.state_dict(), run.model.state_dict())


# -- NaN and inf ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("poison, message", [("before clipping", "the gradient norm became nan at epoch 2, step 6"),
                                             ("after clipping", "the validation loss became nan after epoch 2")])
def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, poison, message):
    """NaN gradients in the last step of epoch 2: the run stops, and model.pt and last.pt are still those
    of epoch 1 (what an uninterrupted 1-epoch run writes)."""
    data = sentiment_tsv(tmp_path)
    train(tiny(epochs=1), data, tmp_path / "one-epoch", log=quiet, plots=False)
    real_clip, calls = rnnlab_train.clip_grad_norm, []

    def nan_gradients_at_step_12(params, max_norm):
        calls.append(1)
        if len(calls) == 2 * STEPS_PER_EPOCH and poison == "before clipping":
            params[0].grad.fill_(float("nan"))
        norm = real_clip(params, max_norm)
        if len(calls) == 2 * STEPS_PER_EPOCH and poison == "after clipping":  # the clip sees a finite norm
            params[0].grad.fill_(float("nan"))
        return norm

    monkeypatch.setattr(rnnlab_train, "clip_grad_norm", nan_gradients_at_step_12)
    with pytest.raises(UserError, match=message) as error:
        train(tiny(epochs=3), data, tmp_path / "run", log=quiet, plots=False)
    assert "lower --lr" in str(error.value) and "--clip" in str(error.value)
    for name in (checkpoint.BEST, checkpoint.LAST):
        kept = weights(tmp_path / "run", name)
        assert all(torch.isfinite(w).all() for w in kept.values())
        assert_same_weights(kept, weights(tmp_path / "one-epoch", checkpoint.LAST))


# -- hand BPTT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_manual_and_autograd_backward_give_the_same_run(tmp_path, cell):
    data = sentiment_tsv(tmp_path)
    runs = [train(tiny(cell=cell, backward=b), data, tmp_path / b, log=quiet, plots=False)
            for b in ("autograd", "manual")]
    auto, manual = (without_seconds(r.history) for r in runs)
    for row_a, row_m in zip(auto, manual):
        assert row_m == pytest.approx(row_a, rel=1e-6, abs=1e-6)


# -- it learns ------------------------------------------------------------------------------------------
FILLERS = ["the", "movie", "was", "really", "quite", "plot", "acting", "and", "so", "very"]


def negation_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences of fillers with one sentiment word and one "not": right before the word it negates it
    ("so not good movie": neg), anywhere after the word it does not ("so good movie not": pos).

    Whether "not" negates is drawn independently of the words, so every multiset of words comes with
    either label with probability 1/2: no function of the word counts can beat chance (50%).
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLERS) for _ in range(rng.randint(2, 5))]
        sentiment = rng.choice(["good", "bad"])
        k = rng.randint(0, len(words))
        words.insert(k, sentiment)
        negated = rng.random() < 0.5
        words.insert(k if negated else rng.randint(k + 1, len(words)), "not")
        positive = (sentiment == "good") != negated
        rows.append((" ".join(words), "pos" if positive else "neg"))
    return rows


def bag_of_words_accuracy(train_rows, test_rows, label_of) -> float:
    """Logistic regression on word counts, p(y | x) = softmax(x W + b), full-batch Adam; test accuracy."""
    vocab = Vocab.build(tokenize(t) for t, _ in train_rows)

    def counts(rows):  # (N, V) word counts
        x = torch.zeros(len(rows), len(vocab))
        for i, (text, _) in enumerate(rows):
            for j in vocab.encode(tokenize(text)):
                x[i, j] += 1
        return x, torch.tensor([label_of(text, label) for text, label in rows])

    (x, y), (x_test, y_test) = counts(train_rows), counts(test_rows)
    g = torch.Generator().manual_seed(0)
    W = (0.01 * torch.randn(len(vocab), 2, generator=g)).requires_grad_()
    b = torch.zeros(2, requires_grad=True)
    optimizer = Adam([W, b], lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x @ W + b, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        return ((x_test @ W + b).argmax(1) == y_test).float().mean().item()


def test_a_gru_learns_word_order_that_a_bag_of_words_cannot(tmp_path):
    train_rows, val_rows, test_rows = negation_rows(800, 1), negation_rows(200, 2), negation_rows(400, 3)
    files = [write_tsv(tmp_path / f"{name}.tsv", rows)
             for name, rows in [("train", train_rows), ("val", val_rows), ("test", test_rows)]]
    config = tiny(hidden=16, optimizer="adam", lr=0.02, batch_size=32, epochs=3)
    result = train(config, files[0], tmp_path / "run", val_data=files[1], test_data=files[2], log=quiet, plots=False)
    assert result.test["accuracy"] >= 0.9

    # the same counts predict the sentiment word perfectly well, so the regression itself works ...
    word = bag_of_words_accuracy(train_rows, test_rows, lambda text, _: int("good" in text.split()))
    assert word >= 0.95
    # ... but the label, which depends on where "not" stands, stays at chance
    order = bag_of_words_accuracy(train_rows, test_rows, lambda _, label: int(label == "pos"))
    assert order <= 0.6


# -- bad input through the CLI --------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


BAD_INPUTS = ["malformed row", "empty text", "not utf-8", "empty file", "one class", "nan loss", "unknown label",
              "truncated checkpoint", "other version", "pickle running code", "torch.save running code",
              "stdin not utf-8"]


@pytest.fixture(scope="module")
def bad_input_results(run, tmp_path_factory):
    """name -> (completed CLI run, the path its message must name, a phrase of the message), and the marker
    file that unpickled code would create. The runs are started together."""
    d = tmp_path_factory.mktemp("bad")
    good_ckpt = run.out_dir / checkpoint.BEST
    marker = d / "MARKER"

    def file(name: str, content: str | bytes) -> Path:
        path = d / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    truncated = file("truncated.pt", good_ckpt.read_bytes()[: good_ckpt.stat().st_size // 2])
    other_version = d / "v99.pt"
    torch.save({**checkpoint.read(good_ckpt), "version": 99}, other_version)
    raw_pickle = file("raw-pickle.pt", pickle.dumps({"format": "rnnlab", "version": 1, "x": _RunsCode(marker)}))
    torch_pickle = d / "torch-pickle.pt"
    torch.save({"format": "rnnlab", "version": 1, "weights": _RunsCode(marker)}, torch_pickle)

    def train_on(path: Path, *extra: str) -> list[str]:
        return ["train", "--data", str(path), "--out", str(d / f"run-{path.stem}"), "--hidden", "8", "--embed-dim",
                "8", "--epochs", "1", "--no-plots", *extra]

    def predict_with(path: Path) -> list[str]:
        return ["predict", "--checkpoint", str(path), "a great film"]

    cases = {  # name -> (arguments, the path the message must name, a phrase of the message)
        "malformed row": (train_on(file("malformed.tsv", "good film\tpos\nbad film neg\nok\tpos\n")),
                          "malformed.tsv:2:", "expected 2 columns"),
        "empty text": (train_on(file("empty-text.tsv", "good film\tpos\n  \tneg\n")), "empty-text.tsv:2:",
                       "empty text"),
        "not utf-8": (train_on(file("latin1.tsv", "café noir\tpos\nbad\tneg\n".encode("latin-1"))),
                      "latin1.tsv:1:", "not valid utf-8"),
        "empty file": (train_on(file("empty.tsv", "")), "empty.tsv", "the file is empty"),
        "one class": (train_on(file("one-class.tsv", "good film\tpos\ngreat film\tpos\n")), "one-class.tsv",
                      "a classifier needs at least 2"),
        "nan loss": (train_on(sentiment_tsv(d), "--cell", "rnn", "--phi", "relu", "--optimizer", "sgd", "--lr",
                              "1e6", "--clip", "0", "--batch-size", "8"), "run-reviews", "lower --lr"),
        "unknown label": (["evaluate", "--checkpoint", str(run.out_dir), "--data",
                           str(file("eval.tsv", "good film\tpos\nso so\tmeh\n"))], "eval.tsv:2:", "label 'meh'"),
        "truncated checkpoint": (predict_with(truncated), "truncated.pt", "truncated or corrupt checkpoint"),
        "other version": (predict_with(other_version), "v99.pt", "format version 99"),
        "pickle running code": (predict_with(raw_pickle), "raw-pickle.pt", "corrupt checkpoint"),
        "torch.save running code": (predict_with(torch_pickle), "torch-pickle.pt", "refusing to load"),
        "stdin not utf-8": (["predict", "--checkpoint", str(run.out_dir)], "<stdin>:2:", "not valid UTF-8"),
    }
    stdin = {"stdin not utf-8": "good film\ncafé\n".encode("latin-1")}
    assert set(cases) == set(BAD_INPUTS)
    done = run_clis(*[(args, stdin.get(name)) for name, (args, _, _) in cases.items()])
    return {name: (r, *cases[name][1:]) for name, r in zip(cases, done)}, marker


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file_and_exit_2(bad_input_results, name):
    results, marker = bad_input_results
    r, where, phrase = results[name]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"rnnlab {r.args[3]}: error: ")  # args: python -m rnnlab COMMAND ...
    assert where in lines[0] and phrase.lower() in lines[0].lower(), lines[0]
    assert not marker.exists()  # no checkpoint ran its code


@pytest.mark.parametrize("case", ["missing checkpoint", "not a checkpoint", "class without training examples",
                                  "empty sentence", "sentence not utf-8", "no sentence on stdin",
                                  "resume with other settings"])
def test_more_bad_input_through_main(run, tmp_path, capsys, monkeypatch, case):
    """Cases beyond the issue's list, through the CLI's `main` in this process (no torch import to wait for)."""
    write_tsv(tmp_path / "only-neg_labelled.txt", [("bad film", "0"), ("awful film", "0")])
    write_tsv(tmp_path / "val_labelled.txt", [("good", "1"), ("bad", "0")])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n  \n")))
    args, where, phrase = {
        "missing checkpoint": (["predict", "--checkpoint", str(tmp_path / "no-run"), "hi"], "no-run",
                               "no checkpoint here"),
        "not a checkpoint": (["predict", "--checkpoint", str(tmp_path / "val_labelled.txt"), "hi"], "val_labelled.txt",
                             "truncated or corrupt checkpoint"),
        "class without training examples": (
            ["train", "--data", str(tmp_path / "only-neg_labelled.txt"), "--val", str(tmp_path / "val_labelled.txt"),
             "--out", str(tmp_path / "run")], "only-neg_labelled.txt", "class 'positive' has no training examples"),
        "empty sentence": (["predict", "--checkpoint", str(run.out_dir), "a great film", " "], "argument 2",
                           "is empty"),
        "sentence not utf-8": (["predict", "--checkpoint", str(run.out_dir), "caf\udce9"],  # the byte 0xe9 in argv
                               "argument 1", "is not valid UTF-8"),
        "no sentence on stdin": (["predict", "--checkpoint", str(run.out_dir)], "<stdin>", "no text on stdin"),
        "resume with other settings": (["train", "--data", str(run.out_dir.parent / "reviews.tsv"), "--out",
                                        str(run.out_dir), "--resume", "--hidden", "9"], "last.pt",
                                       "cannot resume with different settings (hidden)"),
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"rnnlab {args[0]}: error: ")
    assert where in err[0] and phrase in err[0], err[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_malicious_pickle_would_really_run_code(tmp_path):
    """The control for the checkpoint cases above: an ordinary unpickling does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()


def test_training_into_a_run_folder_with_a_checkpoint_is_refused(tmp_path):
    data = sentiment_tsv(tmp_path)
    train(tiny(epochs=1), data, tmp_path / "run", log=quiet, plots=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.suffix == ".pt"}
    with pytest.raises(UserError, match="already holds a checkpoint; continue it with --resume"):
        train(tiny(epochs=1, seed=9), data, tmp_path / "run", log=quiet, plots=False)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.suffix == ".pt"}
    assert after == before  # nothing the user had is lost

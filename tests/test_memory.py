"""`rnnlab memory`: the task generator, a short run that learns, and the command's files and errors."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab import memory
from rnnlab.errors import UserError
from rnnlab.memory import MemoryConfig, make_task, sweep, train_one
from tests.conftest import run_cli
from tests.test_lab import png_size


def test_make_task_is_deterministic_and_independent_of_global_rng():
    a = make_task(64, 7, 12, 4, seed=3)
    torch.manual_seed(1234)  # disturbing the global generator must not change the task
    torch.rand(100)
    b = make_task(64, 7, 12, 4, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = make_task(64, 7, 12, 4, seed=4)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("n,distance,vocab_size,num_classes", [(500, 5, 12, 4), (300, 1, 3, 2), (50, 100, 20, 10)])
def test_make_task_labels_are_the_first_token_and_distractors_are_never_signals(n, distance, vocab_size, num_classes):
    ids, labels = make_task(n, distance, vocab_size, num_classes, seed=0)
    assert ids.shape == (n, distance + 1) and labels.shape == (n,)
    assert ids.dtype == torch.int64 and labels.dtype == torch.int64
    assert torch.equal(labels, ids[:, 0])  # the label is the signal token's index
    assert int(labels.min()) >= 0 and int(labels.max()) < num_classes
    assert int(ids[:, 1:].min()) >= num_classes and int(ids[:, 1:].max()) < vocab_size  # disjoint ranges
    if n >= 300:  # every class and every distractor token turns up
        assert set(labels.tolist()) == set(range(num_classes))
        assert set(ids[:, 1:].flatten().tolist()) == set(range(num_classes, vocab_size))


@pytest.mark.parametrize("kwargs", [dict(distance=0), dict(vocab_size=4), dict(num_classes=1), dict(n=0)])
def test_make_task_rejects_impossible_tasks(kwargs):
    args = dict(n=10, distance=5, vocab_size=12, num_classes=4, seed=0) | kwargs
    with pytest.raises(UserError):
        make_task(**args)


def test_a_gru_learns_to_remember_over_five_distractors():
    row = train_one("gru", 5, MemoryConfig(steps=150, seed=0))
    assert row["accuracy"] >= 0.95  # chance is 0.25
    assert row["final_train_loss"] < 0.2


def test_the_optimiser_is_part_of_the_budget():
    sgd = train_one("rnn", 3, MemoryConfig(steps=20, optimizer="sgd", lr=0.1, n_test=50))
    again = train_one("rnn", 3, MemoryConfig(steps=20, optimizer="sgd", lr=0.1, n_test=50))
    adam = train_one("rnn", 3, MemoryConfig(steps=20, optimizer="adam", lr=0.1, n_test=50))
    assert sgd["final_train_loss"] == again["final_train_loss"]  # a budget is repeatable to the bit ...
    assert sgd["final_train_loss"] != adam["final_train_loss"]  # ... so the difference is the optimiser's


def test_several_seeds_are_averaged_and_each_is_the_single_seed_run():
    config = MemoryConfig(steps=10, hidden=4, n_test=40, seed=5, seeds=2)
    (row,) = sweep(["rnn"], [3], config, log=lambda _: None)
    singles = [train_one("rnn", 3, MemoryConfig(steps=10, hidden=4, n_test=40, seed=s))["accuracy"] for s in (5, 6)]
    assert row["seeds"] == [5, 6] and row["accuracies"] == singles
    assert row["accuracy"] == pytest.approx(sum(singles) / 2)


def test_table_has_one_row_per_cell_and_one_column_per_distance():
    rows = [{"cell": c, "distance": d, "accuracy": a} for c, d, a in
            [("rnn", 5, 1.0), ("rnn", 50, 0.25), ("gru", 5, 1.0), ("gru", 50, 0.5)]]
    lines = memory.table(rows).splitlines()
    assert lines[0].split() == ["cell", "D=5", "D=50"]
    assert lines[1].split() == ["rnn", "1.000", "0.250"]
    assert lines[2].split() == ["gru", "1.000", "0.500"]


def test_cli_memory_prints_the_table_and_writes_a_png_and_json(tmp_path):
    out = tmp_path / "mem"
    r = run_cli("memory", "--cells", "rnn", "gru", "--distances", "2", "4", "--steps", "5", "--hidden", "4",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'memory.png'}" in r.stdout.splitlines()
    assert f"wrote {out / 'memory.json'}" in r.stdout.splitlines()
    assert any(line.split() == ["cell", "D=2", "D=4"] for line in r.stdout.splitlines())
    width, height = png_size(out / "memory.png")
    assert width >= 300 and height >= 200
    data = json.loads((out / "memory.json").read_text())
    assert [(row["cell"], row["distance"]) for row in data["rows"]] == [("rnn", 2), ("gru", 2), ("rnn", 4), ("gru", 4)]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in data["rows"])
    assert data["chance"] == pytest.approx(1 / data["config"]["num_classes"])
    assert data["config"]["steps"] == 5 and data["config"]["hidden"] == 4


@pytest.mark.parametrize("flags,words", [
    (["--distances", "0"], "distance 0"),
    (["--distances", "5", "-3"], "distance -3"),
    (["--steps", "0"], "--steps 0"),
    (["--hidden", "0"], "--hidden 0"),
    (["--lr", "-1"], "--lr -1"),
    (["--seeds", "0"], "--seeds 0"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--cells", "transformer"], "invalid choice"),
    (["--distances", "five"], "invalid int value"),
])
def test_cli_memory_bad_flags_are_one_line_errors(tmp_path, flags, words):
    r = run_cli("memory", *flags, "--out", str(tmp_path / "mem"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "mem").exists()


@pytest.mark.slow
def test_default_budget_is_deterministic_and_the_gru_holds_twenty_distractors():
    a = train_one("gru", 20, MemoryConfig())
    torch.manual_seed(99)
    b = train_one("gru", 20, MemoryConfig())
    assert a["accuracy"] == b["accuracy"] and a["final_train_loss"] == b["final_train_loss"]  # bit for bit
    assert a["accuracy"] >= 0.95


def test_a_sweep_gives_the_same_rows_every_time_and_a_bar_only_when_asked(capsys):
    """No run times in the rows (make figures stores them: a rerun must change nothing); the progress bar
    goes to stderr when asked, and not at all when stderr is not a terminal (as under pytest)."""
    config = MemoryConfig(steps=5, hidden=4, n_test=20, seeds=2)
    lines = []
    first = sweep(["rnn", "gru"], [2], config, log=lines.append, progress=True)
    bar = capsys.readouterr().err
    assert "memory runs" in bar and "0/4" in bar  # the bar counts the 2 cells x 2 seeds
    assert len(lines) == 4  # one line per run, written above the bar
    assert sweep(["rnn", "gru"], [2], config, log=lambda _: None) == first
    assert capsys.readouterr().err == ""
    assert not any("second" in key for row in first for key in row)

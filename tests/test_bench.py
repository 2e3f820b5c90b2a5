"""The benchmark runs at a tiny size so it cannot rot: its equality checks run, its timings are not asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train  # noqa: E402

REQUIRED = {"cell", "hidden", "backward", "tokens_per_s", "baseline_tokens_per_s", "ratio", "pct_of_limit",
            "peak_mem_mb"}


def test_tiny_benchmark_checks_the_maths_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = bench_train.main(["--tiny", "--json", str(out)])
    assert {(r.cell, r.backward) for r in rows} == {(c, b) for c in ("rnn", "lstm", "gru")
                                                    for b in ("manual", "autograd", "best")}
    data = json.loads(out.read_text())
    assert len(data) == 9 and all(REQUIRED <= set(row) for row in data)
    for row in data:
        assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"])
    best = [r for r in data if r["backward"] == "best"]
    for b in best:
        same = [r["ratio"] for r in data if r["cell"] == b["cell"] and r["backward"] != "best"]
        assert b["ratio"] == max(same)
    assert "ratio" in capsys.readouterr().out


def test_the_maths_check_catches_a_mismatch(monkeypatch):
    """If rnnlab computed something else, the benchmark must refuse to time it."""
    w = bench_train.Workload("gru", 8, batch=3, length=4, vocab=20)
    original = bench_train.build_rnnlab

    def wrong(*args, **kw):
        model, step = original(*args, **kw)
        with __import__("torch").no_grad():
            model.W_out *= 1.1  # (not a shift of b_out: cross-entropy ignores equal shifts)
        return model, step

    monkeypatch.setattr(bench_train, "build_rnnlab", wrong)
    with pytest.raises(AssertionError):
        bench_train.check_same_maths(w, __import__("torch").device("cpu"))


def test_peak_memory_sees_the_step():
    """The measured peak grows with the batch: it sees the step's tensors."""
    cpu = __import__("torch").device("cpu")
    for variant in ("torch", "manual"):
        small = bench_train.peak_memory(bench_train.Workload("gru", 16, batch=4, length=8, vocab=50), variant, cpu)
        large = bench_train.peak_memory(bench_train.Workload("gru", 16, batch=64, length=8, vocab=50), variant, cpu)
        assert 0 < small < large


def test_rnnlab_bench_runs_the_benchmark_from_a_checkout():
    from tests.conftest import REPO, run_cli

    r = run_cli("bench", "--tiny", "--cells", "rnn", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "ratio" in r.stdout and "rnn" in r.stdout
    r = run_cli("lab", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr

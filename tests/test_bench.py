"""The benchmark runs at a tiny size so it cannot rot: its equality checks run, its timings are not asserted."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab import bench, engine
from tests.conftest import REPO, run_cli

REQUIRED = {"cell", "hidden", "backward", "engine", "tokens_per_s", "baseline_tokens_per_s", "ratio", "pct_of_limit",
            "peak_mem_mb"}


def test_tiny_benchmark_checks_the_maths_and_writes_json(tmp_path, capsys):
    rows = bench.main(["--tiny", "--json", "bench.json", "--out", str(tmp_path)])  # a bare name lands in --out
    variants = {("manual", "python"), ("autograd", "python")}
    if engine.available():
        variants.add(("manual", "compiled"))
    names = ("rnn", "lstm", "gru", "lm-lstmx2")
    assert {(r.cell, r.backward, r.engine) for r in rows if r.backward != "best"} == {
        (c, b, e) for c in names for b, e in variants}
    data = json.loads((tmp_path / "bench.json").read_text())
    assert len(data) == len(names) * (len(variants) + 1) and all(REQUIRED <= set(row) for row in data)
    for row in data:
        assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0 and row["limit_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"])
    for b in [r for r in data if r["backward"] == "best"]:  # the headline is the fastest rnnlab path
        same = [r for r in data if r["cell"] == b["cell"] and r["backward"] != "best"]
        fastest = max(same, key=lambda r: r["ratio"])
        assert (b["ratio"], b["engine"]) == (fastest["ratio"], fastest["engine"])
    assert "ratio" in capsys.readouterr().out


@pytest.mark.parametrize("shape", [(7, 5, 3), (64, 40, 96)])
def test_every_kernel_of_the_matmul_limit_makes_the_product(shape):
    """The limit is the fastest of these kernels per shape: each must compute a @ b (float32, 1e-5)."""
    a, b, kernels = bench.product_kernels(*shape, torch.device("cpu"))
    assert "torch.mm" in kernels and ("micro, padded b" in kernels) == engine.available()
    for name, f in kernels.items():
        torch.testing.assert_close(f(), a @ b, rtol=1e-5, atol=1e-5, msg=name)
    # the micro-GEMM's are timed in C++ (no Python call per product), each way the engine makes a product
    micro = {n for n in kernels if n.startswith("micro")}
    assert micro == ({"micro", "micro, one pass", "micro, padded b", "micro, padded b, one pass"}
                     if engine.available() else set())
    for name in micro:
        assert kernels[name].loop is not None
        assert 0 < bench._product_seconds(kernels[name], *shape, torch.device("cpu")) < 1


@pytest.mark.skipif(not engine.available(), reason="the compiled engine did not build here")
@pytest.mark.parametrize("blocked", [True, False])
def test_time_mm_makes_the_product_it_times(blocked):
    """time_mm(a, b, blocked, reps) -> (seconds per product, a @ b): float64, 1e-12 against torch, random shapes
    (one-pass: every row at once, as each time step; blocked: as mm), b in padded rows or not."""
    g = torch.Generator().manual_seed(int(blocked))
    for _ in range(4):
        M, K, N = (int(v) for v in torch.randint(1, 300, (3,), generator=g))
        a, b = torch.randn(M, K, generator=g, dtype=torch.float64), torch.randn(K, N, generator=g, dtype=torch.float64)
        for operand in (b, torch.empty(K, N + 8, dtype=torch.float64)[:, :N].copy_(b)):
            seconds, c = engine.load().time_mm(a, operand, blocked, 3)
            torch.testing.assert_close(c, a @ b, rtol=1e-12, atol=1e-12)
            assert seconds > 0
    with pytest.raises(RuntimeError, match="reps > 0"):
        engine.load().time_mm(a, b, blocked, 0)


def test_matmul_limit_times_every_product_of_the_step_with_its_count():
    w = bench.Workload("gru", 8, batch=3, length=4, vocab=11)
    limit = bench.MatmulLimit(w, torch.device("cpu"), repeats=1)
    assert {(shape, n) for shape, n, _, _ in limit.chosen} == set(bench.products(w).items())
    assert all(name in bench.product_kernels(*shape, torch.device("cpu"))[2] for shape, _, name, _ in limit.chosen)
    assert 0 < limit.seconds() < float("inf")


def test_json_paths():
    assert bench.json_path("b.json", "runs/bench").as_posix() == "runs/bench/b.json"
    assert bench.json_path("docs/figures/b.json", "runs/bench").as_posix() == "docs/figures/b.json"
    assert bench.json_path("/tmp/b.json", "runs/bench").as_posix() == "/tmp/b.json"


def test_the_maths_check_catches_a_mismatch(monkeypatch):
    """If rnnlab computed something else, the benchmark must refuse to time it."""
    w = bench.Workload("gru", 8, batch=3, length=4, vocab=20)
    original = bench.build_rnnlab

    def wrong(*args, **kw):
        params, loss_of, step = original(*args, **kw)
        with torch.no_grad():
            params["W_out"] *= 1.1  # (not a shift of b_out: cross-entropy ignores equal shifts)
        return params, loss_of, step

    monkeypatch.setattr(bench, "build_rnnlab", wrong)
    with pytest.raises(AssertionError):
        bench.check_same_maths(w, torch.device("cpu"))


def test_products_count_every_matmul_of_a_step():
    w = bench.Workload("lstm", 8, batch=3, length=5, vocab=20)
    p = bench.products(w)
    assert p[(3, 8, 32)] == 5 and p[(3, 32, 8)] == 5  # per step: forward, backward
    assert p[(15, 8, 32)] == 1 and p[(32, 15, 8)] == 2 and p[(15, 32, 8)] == 1  # projection; dW, dU; dx
    lm = bench.products(bench.Workload("lstm", 8, batch=3, length=5, vocab=20, layers=2, lm=True))
    assert lm[(3, 8, 32)] == 10 and lm[(15, 8, 20)] == 1 and lm[(20, 15, 8)] == 1


def test_peak_memory_sees_the_step():
    """The measured peak grows with the batch: it sees the step's tensors."""
    cpu = torch.device("cpu")
    for variant in ("torch", "manual:python"):
        small = bench.peak_memory(bench.Workload("gru", 16, batch=4, length=8, vocab=50), variant, cpu)
        large = bench.peak_memory(bench.Workload("gru", 16, batch=64, length=8, vocab=50), variant, cpu)
        assert 0 < small < large


def test_rnnlab_bench_runs_and_explains_itself(tmp_path):
    r = run_cli("bench", "--tiny", "--cells", "rnn", "--no-lm-workload", cwd=tmp_path)  # from anywhere
    assert r.returncode == 0, r.stderr
    assert "ratio" in r.stdout and "rnn" in r.stdout
    assert "bench:" not in r.stdout and "bench:" not in r.stderr  # no progress bar when stdout is not a terminal
    assert list(tmp_path.iterdir()) == []  # wrote nothing without --json
    r = run_cli("bench", "--help", cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("usage: rnnlab bench")
    options = [a for a in bench.add_arguments(__import__("argparse").ArgumentParser())._actions if a.option_strings]
    assert all(a.help for a in options)
    for a in options:
        assert a.option_strings[0] in r.stdout
    r = run_cli("lab", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_readme_speed_table_is_the_stored_benchmark_output():
    """README's table is `markdown_table` of docs/figures/bench.json, written by the command the README quotes."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    stored = json.loads((REPO / "docs" / "figures" / "bench.json").read_text())
    start, end = "<!-- bench table: docs/figures/bench.json -->\n", "<!-- end bench table -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == bench.markdown_table(stored), "rerun the command in README's Speed section and paste the table"
    assert "`rnnlab bench --threads 1 --json docs/figures/bench.json`" in readme
    assert {r["cell"] for r in stored} == {"rnn", "lstm", "gru", "lm-lstmx2"}
    assert {r["engine"] for r in stored if r["backward"] == "manual"} == {"python", "compiled"}


def test_readme_limit_sentences_are_the_stored_runs():
    """The README's sentences on the matmul limit at H = 512 quote the best rows of docs/figures/bench.json
    and of the second run it cites, benchmarks/results/bench_h512.json (written by the command it gives)."""
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())

    def pct(path):
        rows = json.loads((REPO / path).read_text())
        return {r["cell"]: r["pct_of_limit"] for r in rows if r["backward"] == "best" and r["hidden"] == 512}

    p = pct("docs/figures/bench.json")
    assert (f"at H = 512 the best path reaches {p['rnn']:.1f}% of the matmul limit for the RNN, "
            f"{p['lstm']:.1f}% for the LSTM and {p['gru']:.1f}% for the GRU") in readme
    p = pct("benchmarks/results/bench_h512.json")
    assert ("`rnnlab bench --threads 1 --hidden 512 --no-lm-workload --no-memory --json "
            f"benchmarks/results/bench_h512.json`, gave {p['rnn']:.1f}% for the RNN, {p['lstm']:.1f}% for the LSTM "
            f"and {p['gru']:.1f}% for the GRU") in readme


@pytest.mark.slow
def test_the_startup_benchmark_times_its_three_commands(tmp_path):
    """benchmarks/bench_startup.py runs `import torch` (with and without gc.freeze()) and `rnnlab lab` as fresh
    processes (no bound on the times)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_startup", REPO / "benchmarks" / "bench_startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    out = tmp_path / "startup.json"
    r = startup.main(["--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert set(r["median"]) == {"import torch", "import torch; gc.freeze()", "rnnlab lab"}
    assert all(t > 0 for t in r["median"].values())
    assert r["ratio"] == pytest.approx(r["median"]["rnnlab lab"] / r["median"]["import torch"])
    assert r["ratio_same_exit"] == pytest.approx(r["median"]["rnnlab lab"] / r["median"]["import torch; gc.freeze()"])


def test_readme_startup_sentence_is_the_stored_run():
    """The README's start-up sentence is benchmarks/bench_startup.py's, from its stored results."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_startup", REPO / "benchmarks" / "bench_startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    stored = json.loads((REPO / "benchmarks" / "results" / "bench_startup.json").read_text())
    assert startup.readme_sentence(stored) in (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_two_thread_ratios_are_the_stored_run():
    """The README's two-thread sentence quotes benchmarks/results/bench_threads2.json, written by the command
    it gives."""
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    rows = json.loads((REPO / "benchmarks" / "results" / "bench_threads2.json").read_text())
    best = {r["cell"]: r["ratio"] for r in rows if r["backward"] == "best"}
    command = "--threads 2 --cells lstm --hidden 32 --no-memory --lm --json benchmarks/results/bench_threads2.json"
    assert command in readme
    assert f"LSTM at H = 32 {best['lstm']:.2f}x, the `lm-lstmx2` row {best['lm-lstmx2']:.2f}x" in readme
    assert f"(`lm-lstm2`: embedding 64, dropout, Adam) {best['lm-lstm2']:.2f}x" in readme


def test_lm_row_without_a_source_checkout_is_refused_before_anything_is_timed(tmp_path, monkeypatch):
    """`--lm` needs benchmarks/bench_lm.py; an installed package without it says so in one line, first."""
    from rnnlab.errors import UserError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "a" / "b" / "bench.py"))  # no benchmarks/ two up
    monkeypatch.setattr(bench, "bench", lambda *a, **k: pytest.fail("timed a workload before refusing --lm"))
    with pytest.raises(UserError, match="source checkout"):
        bench.main(["--tiny", "--lm"])


def test_the_routing_benchmark_times_both_routes_and_puts_the_bound_back(monkeypatch, capsys):
    """benchmarks/bench_routing.py at a tiny size: one row per workload, both routes timed, and
    recurrent.MICRO_MAX_MACS as it was afterwards (no bound on the times)."""
    import importlib.util

    from rnnlab import recurrent
    from tests.conftest import require_compiled

    require_compiled()
    spec = importlib.util.spec_from_file_location("bench_routing", REPO / "benchmarks" / "bench_routing.py")
    routing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routing)
    monkeypatch.setattr(routing, "WORKLOADS", {"lstm 8": bench.Workload("lstm", 8, batch=3, length=4, vocab=20),
                                               "lm 8": bench.Workload("lstm", 8, batch=2, length=5, vocab=11,
                                                                      layers=2, lm=True)})
    bound = recurrent.MICRO_MAX_MACS
    routing.main(["--rounds", "1"])
    assert recurrent.MICRO_MAX_MACS == bound
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[:2] for r in rows] == [["lstm", "8"], ["lm", "8"]]
    for r in rows:
        micro, library, ratio = map(float, r[2:])
        assert micro > 0 and library > 0  # printed to 0.01 ms; the ratio is of the unrounded times
        assert (library - 0.005) / (micro + 0.005) - 0.0005 <= ratio <= (library + 0.005) / (micro - 0.005) + 0.0005


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not engine.available(), reason="bench_gap.py times the compiled engine's ops")
def test_the_gap_benchmark_splits_the_step_into_the_engines_ops_and_the_rest(capsys):
    """benchmarks/bench_gap.py at H = 8, two rounds: the wrapped ops are seen (the products, the loops and the
    embedding's gradient take time: each op reaches the engine through `engines.load()`), less than the
    whole step; the wrapper is gone afterwards; past MICRO_MAX_MACS it refuses (those products leave the
    engine). No bound on the times."""
    gap = _load_benchmark("bench_gap")
    (r,) = gap.main(["--cells", "gru", "--hidden", "8", "--rounds", "2"])
    assert r["products_ms"] > 0 and r["loops_ms"] > 0 and r["embedding_grad_ms"] > 0
    assert r["products_ms"] + r["loops_ms"] < r["step_ms"] and r["limit_products_ms"] > 0 and r["limit_loops_ms"] > 0
    _check_gap_row(r)
    assert not isinstance(engine.load(), gap._Timed)  # the wrapper is gone after
    assert "ceiling" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="MICRO_MAX_MACS"):
        gap.gap("lstm", 1024, 1)


def _check_gap_row(r: dict) -> None:
    """A bench_gap row's columns add up: step = products + loops + rest, limit = its two shares, and the
    percentages are the limit over the step and over limit + rest (to their one printed decimal)."""
    assert r["step_ms"] == pytest.approx(r["products_ms"] + r["loops_ms"] + r["rest_ms"], rel=1e-9)
    assert r["limit_ms"] == pytest.approx(r["limit_products_ms"] + r["limit_loops_ms"], rel=1e-9)
    assert r["pct_of_limit"] == pytest.approx(100 * r["limit_ms"] / r["step_ms"], abs=0.051)
    assert r["ceiling_pct"] == pytest.approx(100 * r["limit_ms"] / (r["limit_ms"] + r["rest_ms"]), abs=0.051)


def test_readme_gap_table_is_the_stored_run():
    """README's table of where the step's time goes is bench_gap.py's, from its stored rows, with the command."""
    gap = _load_benchmark("bench_gap")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    stored = json.loads((REPO / "benchmarks" / "results" / "bench_gap.json").read_text())
    start, end = "<!-- gap table: benchmarks/results/bench_gap.json -->\n", "<!-- end gap table -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0] == gap.markdown_table(stored)
    for r in stored:
        _check_gap_row(r)
    assert "`python benchmarks/bench_gap.py --json benchmarks/results/bench_gap.json`" in readme

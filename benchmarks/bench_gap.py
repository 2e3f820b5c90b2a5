"""Where a training step's time goes beyond the matmul limit, on the compiled engine (issue 15).

`rnnlab bench` reports each step as a share of its matmul limit: the step's matrix products alone, each
distinct shape timed in a tight loop (`rnnlab.bench.MatmulLimit`). This splits the step of one workload
(`rnnlab.bench.Workload`: classifier, batch 64, 32 steps, vocabulary 5,000, SGD) into

    products   the engine's all-steps products, timed inside the step: the input projection and dx (`mm`),
               the weight gradients (`mm_tn`, `mm_tn2`); with what those ops do besides the product: U^T's
               copy into padded rows, the result's allocation, the bias sums
    loops      the engine's time loops, timed inside the step (`*_forward`, `*_backward`): each step's
               product and its point-wise pass, and W's copy into padded rows once a loop
    rest       everything else in the step: the embedding's lookup and its V x H gradient
               (`embedding_backward`, also shown alone: dE), the classifier and the loss, the SGD update of
               every parameter (E's V x H included), autograd and Python

against the limit's share of each (its all-steps shapes, and its per-step shapes times T). Then

    ceiling = limit / (limit + rest)

is the share of the limit the step would reach if every product and time loop ran as fast inside it as
the limit's tight loops do (point-wise passes free), with `rest` as measured: no change to the products
can take the step past it. Each op is timed by wrapping the engine's ops (one perf_counter pair per call,
~10 calls a step); the step, its ops and the limit are timed in each of `--rounds` interleaved rounds
(each after one untimed step) and each column's median taken, as `rnnlab bench` does; rest and the limit
are then the differences and sums of those medians, so that the columns add up. One thread. H up to 512:
beyond MICRO_MAX_MACS the products leave the engine's ops and would be counted as rest.

Usage: python benchmarks/bench_gap.py [--cells rnn lstm gru] [--hidden 512] [--rounds 7] [--json out.json]
       python benchmarks/bench_gap.py --readme benchmarks/results/bench_gap.json   (the README's table)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from rnnlab import bench
from rnnlab import engine as engines
from rnnlab.recurrent import _micro_fits

PRODUCTS = ("mm", "mm_tn", "mm_tn2")
LOOPS = tuple(f"{c}_{way}" for c in ("rnn", "lstm", "gru") for way in ("forward", "backward"))


class _Timed:
    """The engine's ops, each call timed into `seconds[name]`."""

    def __init__(self, ops, seconds: dict):
        self._ops, self._seconds = ops, seconds

    def __getattr__(self, name):
        op = getattr(self._ops, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = op(*args, **kwargs)
            self._seconds[name] += time.perf_counter() - t0
            return out

        return timed


@contextlib.contextmanager
def _ops_timed(seconds: dict):
    """Within: every `engines.load()` (recurrent.py calls it for each op) returns the timed ops."""
    load = engines.load
    timed = _Timed(load(), seconds)
    engines.load = lambda: timed
    try:
        yield
    finally:
        engines.load = load


def gap(cell: str, hidden: int, rounds: int) -> dict:
    w = bench.Workload(cell, hidden)
    if not all(_micro_fits(*shape) for shape in bench.products(w)):  # those go to rnnlab.gemm, not the engine's ops
        raise SystemExit(f"bench_gap.py: at H = {hidden} some products of the {cell} step are past "
                         f"MICRO_MAX_MACS and leave the engine, so they would be counted as rest; take H <= 512")
    device = torch.device("cpu")
    modules, _ = bench.build_torch(w, device)
    _, _, step = bench.build_rnnlab(w, modules, "manual:compiled", device)
    limit = bench.MatmulLimit(w, device)
    per_step = {(w.batch, w.hidden, bench.GATES[cell] * w.hidden), (w.batch, bench.GATES[cell] * w.hidden, w.hidden)}
    steps = max(10, int(60 * (32 / hidden) ** 2))  # at least `rnnlab bench`'s 10 a round; more where steps are short
    bench.time_steps(step, w, device, 3)  # warm-up, as `rnnlab bench`'s
    rows = defaultdict(list)
    for _ in range(rounds):
        step(*bench.batch(w, device))  # untimed and unwrapped: the first step after the limit's loops is cold
        seconds = defaultdict(float)
        with _ops_timed(seconds):
            rows["step"].append(bench.time_steps(step, w, device, steps, warm=0))
        rows["products"].append(sum(seconds[n] for n in PRODUCTS) / steps)
        rows["loops"].append(sum(seconds[n] for n in LOOPS) / steps)
        rows["embedding_grad"].append(seconds["embedding_backward"] / steps)
        shares = limit.shares()
        rows["limit_loops"].append(sum(s for shape, s in shares.items() if shape in per_step))
        rows["limit_products"].append(sum(s for shape, s in shares.items() if shape not in per_step))
    ms = {k: 1000 * statistics.median(v) for k, v in rows.items()}  # each column its median over the rounds;
    ms["rest"] = ms["step"] - ms["products"] - ms["loops"]  # then the sums, so that the columns add up
    ms["limit"] = ms["limit_products"] + ms["limit_loops"]
    return {"cell": cell, "hidden": hidden, "rounds": rounds, "steps_per_round": steps,
            **{f"{k}_ms": v for k, v in ms.items()},
            "pct_of_limit": round(100 * ms["limit"] / ms["step"], 1),
            "ceiling_pct": round(100 * ms["limit"] / (ms["limit"] + ms["rest"]), 1)}


def print_rows(rows: list[dict], file=None) -> None:
    print(f"{'cell':5} {'H':>4} {'step ms':>8} {'limit':>7} {'% limit':>8} | {'products: in step':>17} {'limit':>7} | "
          f"{'loops: in step':>14} {'limit':>7} | {'rest ms':>7} {'share':>6} {'(dE ms)':>7} | {'ceiling':>7}",
          file=file)
    for r in rows:
        print(f"{r['cell']:5} {r['hidden']:4d} {r['step_ms']:8.2f} {r['limit_ms']:7.2f} {r['pct_of_limit']:7.1f}% | "
              f"{r['products_ms']:17.2f} {r['limit_products_ms']:7.2f} | {r['loops_ms']:14.2f} "
              f"{r['limit_loops_ms']:7.2f} | {r['rest_ms']:7.2f} {100 * r['rest_ms'] / r['step_ms']:5.1f}% "
              f"{r['embedding_grad_ms']:7.2f} | "
              f"{r['ceiling_pct']:6.1f}%", file=file)


def markdown_table(rows: list[dict]) -> str:
    """The README's table, every figure from the stored rows (`--json`)."""
    lines = ["| cell | H | step ms | matmul limit ms | % of limit | all-steps products: in step / limit (ms) | "
             "time loops: in step / limit (ms) | rest ms (share of step; of it dE) | ceiling |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['hidden']} | {r['step_ms']:.2f} | {r['limit_ms']:.2f} | "
                     f"{r['pct_of_limit']:.1f}% | {r['products_ms']:.2f} / {r['limit_products_ms']:.2f} | "
                     f"{r['loops_ms']:.2f} / {r['limit_loops_ms']:.2f} | {r['rest_ms']:.2f} "
                     f"({100 * r['rest_ms'] / r['step_ms']:.1f}%; {r['embedding_grad_ms']:.2f}) | "
                     f"{r['ceiling_pct']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"], choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", nargs="+", type=int, default=[512])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians reported (default 7)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--readme", metavar="JSON", help="print the README's table from stored rows, and stop")
    args = p.parse_args(argv)
    if args.readme:
        rows = json.loads(Path(args.readme).read_text())
        print(markdown_table(rows), end="")
        return rows
    torch.set_num_threads(1)
    if not engines.available():
        sys.exit("bench_gap.py: the compiled engine did not build here; it times that engine's ops")
    rows = [gap(c, H, args.rounds) for H in args.hidden for c in args.cells]
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""Whole training steps with the compiled engine's all-steps products on its micro-GEMM or on the libraries.

`recurrent.MICRO_MAX_MACS` routes the products over all T*B rows of the compiled engine (the input
projection x U^T + b, dx = dp U, the weight gradients dp^T s and dp^T x): up to it they are the micro-GEMM's
(csrc/loop.cpp), above it `rnnlab.gemm`'s (oneDNN where it works, with its layout conversions; torch's BLAS
for products below gemm.MIN_MACS). A product
timed alone (`bench_step_gemm.py --all-steps`) does not show what it costs inside a step, where it shares
the caches with the rest, so this times `rnnlab bench`'s own training step (the compiled engine, float32)
with the bound as it is ("micro") and at 0 ("library": every all-steps product to the libraries), in
interleaved rounds, and prints the median ms per step of each and library / micro (> 1: the micro-GEMM's
step is faster). The step products are the micro-GEMM's either way.

Usage: python benchmarks/bench_routing.py [--threads 1] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnlab import bench, recurrent

WORKLOADS = {  # name: Workload; the LM row is `rnnlab bench --lm`'s lm-lstmx2
    "rnn 128": bench.Workload("rnn", 128), "rnn 512": bench.Workload("rnn", 512),
    "lstm 128": bench.Workload("lstm", 128), "lstm 512": bench.Workload("lstm", 512),
    "gru 128": bench.Workload("gru", 128), "gru 512": bench.Workload("gru", 512),
    "lm-lstmx2 256": bench.Workload("lstm", 256, batch=64, length=100, vocab=65, layers=2, lm=True),
}


def step_ms(step, ids, y, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step(ids, y)
    return (time.perf_counter() - start) / n * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the median is reported")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bound = recurrent.MICRO_MAX_MACS
    print(f"ms per training step, compiled engine, float32, {args.threads} thread(s), median of {args.rounds} "
          f"rounds; micro: MICRO_MAX_MACS = 2^{bound.bit_length() - 1}, library: 0")
    print(f"{'workload':14} {'micro':>9} {'library':>9} {'library/micro':>14}")
    device = torch.device("cpu")
    for name, w in WORKLOADS.items():
        modules, _ = bench.build_torch(w, device)
        _, _, step = bench.build_rnnlab(w, modules, "manual:compiled", device)
        ids, y = bench.batch(w, device)
        n = max(2, min(100, int(4e8 // (w.batch * w.length * w.hidden * w.hidden * 4 * w.layers))))  # ~0.2 s a block
        times: dict[int, list[float]] = {bound: [], 0: []}
        try:
            for r in range(args.rounds + 1):  # round 0 warms up
                for b in times:
                    recurrent.MICRO_MAX_MACS = b
                    ms = step_ms(step, ids, y, n)
                    if r:
                        times[b].append(ms)
        finally:
            recurrent.MICRO_MAX_MACS = bound
        micro, library = statistics.median(times[bound]), statistics.median(times[0])
        print(f"{name:14} {micro:9.2f} {library:9.2f} {library / micro:14.3f}", flush=True)


if __name__ == "__main__":
    main()

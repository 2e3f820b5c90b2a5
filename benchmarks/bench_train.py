"""Training throughput of rnnlab against torch.nn + torch.optim at the same maths, in one run.

The step timed is a whole training step: embedding lookup, the recurrent layer over T steps, the
classifier on the last state, cross-entropy, backward, SGD update. The baseline is

    nn.Embedding(V, H) -> nn.RNN / nn.LSTM / nn.GRU (H, H) -> nn.Linear(H, C) -> torch.optim.SGD

and rnnlab's `Classifier(V, H, C, embed_dim=H)` gets the same weights (through `from_torch`) and the
same batches; the first losses of both must agree before anything is timed. Each variant is warmed
up, then timed over `--steps` steps, `--repeats` times, interleaved; the median is reported.

Also printed per row:
- peak memory of a training step (MB): the most memory the step's tensors take at once, above what
  was allocated before it (the profiler's memory timeline on the CPU, max_memory_allocated on CUDA;
  `--no-memory` skips it);
- the matmul-bound limit: the tokens/s the step would reach if it did nothing but its GEMMs, timed
  at the step's own shapes in this run with the fastest product available (`rnnlab.gemm.linear`),
  and the percent of it that rnnlab reaches.

The language model of issue 13 (2 layers of LSTM 256, embedding 64, seq-len 100, batch 64, vocabulary
65, dropout 0.2, Adam; a whole truncated-BPTT step on Tiny Shakespeare) is its own row with `--lm`,
cell "lm-lstm2", timed by benchmarks/bench_lm.py's `throughput` (no matmul limit or memory for it).

Usage: python benchmarks/bench_train.py [--cells rnn lstm gru] [--hidden 32 128 512] [--lm] [--json out.json]
       python benchmarks/bench_train.py --tiny        (seconds; what the test suite runs)
Ratios > 1 mean rnnlab is faster. Timings vary with the machine's load: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rnnlab.gemm import linear
from rnnlab.model import Classifier
from rnnlab.optim import SGD
from rnnlab.recurrent import from_torch

TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass
class Workload:
    cell: str
    hidden: int
    batch: int = 64
    length: int = 32
    vocab: int = 5000
    classes: int = 2
    lr: float = 0.05
    seed: int = 0


@dataclass
class Row:
    cell: str
    hidden: int
    backward: str  # 'manual', 'autograd' or 'best' (the headline: the faster of the two)
    tokens_per_s: float
    baseline_tokens_per_s: float
    ratio: float
    pct_of_limit: float
    limit_tokens_per_s: float
    peak_mem_mb: float | None
    baseline_peak_mem_mb: float | None
    step_ms: float
    baseline_step_ms: float


# -- the two implementations ---------------------------------------------------------------------------
def build_torch(w: Workload, device):
    torch.manual_seed(w.seed)
    H = w.hidden
    emb = torch.nn.Embedding(w.vocab, H).to(device)
    rnn = TORCH_CELLS[w.cell](H, H, batch_first=True).to(device)
    head = torch.nn.Linear(H, w.classes).to(device)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=w.lr)

    def step(ids, y):
        _, h_n = rnn(emb(ids))
        h_n = h_n[0] if w.cell == "lstm" else h_n
        loss = F.cross_entropy(head(h_n[0]), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss

    return (emb, rnn, head), step


def build_rnnlab(w: Workload, modules, backward: str, device):
    emb, rnn, head = modules
    model = Classifier(w.vocab, w.hidden, w.classes, cell=w.cell, embed_dim=w.hidden, backward=backward, seed=0,
                       device=device)
    layer = from_torch(rnn)  # torch's gate order and biases, converted once
    with torch.no_grad():
        model.E.copy_(emb.weight)
        for name, p in zip(layer.cell.param_names, layer.cell.parameters()):
            getattr(model.cell, name).copy_(p)
        model.W_out.copy_(head.weight)
        model.b_out.copy_(head.bias)
    opt = SGD(model.parameters(), lr=w.lr)

    def step(ids, y):
        loss = F.cross_entropy(model(ids), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, step


def batch(w: Workload, device, k: int = 0):
    g = torch.Generator().manual_seed(w.seed + 1000 + k)
    ids = torch.randint(0, w.vocab, (w.batch, w.length), generator=g).to(device)
    y = torch.randint(0, w.classes, (w.batch,), generator=g).to(device)
    return ids, y


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, w: Workload, device, steps: int) -> float:
    """Seconds per step, averaged over `steps` consecutive steps."""
    data = [batch(w, device, k) for k in range(4)]
    _sync(device)
    t0 = time.perf_counter()
    for k in range(steps):
        step(*data[k % 4])
    _sync(device)
    return (time.perf_counter() - t0) / steps


def check_same_maths(w: Workload, device) -> None:
    """Before timing: the same loss and the same gradients from torch.nn and from both rnnlab paths.

    (One step, not several: torch keeps two bias vectors that both receive the gradient, so after an
    SGD update its effective bias has moved twice as far as rnnlab's single b. The cost is the same.)
    """
    (emb, rnn, head), _ = build_torch(w, device)
    ids, y = batch(w, device)
    _, h_n = rnn(emb(ids))
    ref = F.cross_entropy(head((h_n[0] if w.cell == "lstm" else h_n)[0]), y)
    ref.backward()
    ref_grads = {"E": emb.weight.grad, "W": rnn.weight_hh_l0.grad, "U": rnn.weight_ih_l0.grad,
                 "b": rnn.bias_ih_l0.grad, "W_out": head.weight.grad, "b_out": head.bias.grad}
    for backward in ("manual", "autograd"):
        model, _ = build_rnnlab(w, (emb, rnn, head), backward, device)
        loss = F.cross_entropy(model(ids), y)
        loss.backward()
        assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), f"{w.cell} {backward}: loss"
        for name, g in ref_grads.items():
            got = model.named_parameters()[name].grad
            torch.testing.assert_close(got, g, rtol=1e-4, atol=1e-5, msg=f"{w.cell} H={w.hidden} {backward} d{name}")


# -- the matmul-bound limit ----------------------------------------------------------------------------
def gemm_seconds(w: Workload, device, repeats: int = 5) -> float:
    """Time of the step's matrix products alone, at the same shapes, with the fastest product this
    torch offers here (`rnnlab.gemm.linear`: oneDNN for large float32 CPU products, else torch's).

    Per time step: forward s W^T (B,H)x(H,GH); backward dgh W (B,GH)x(GH,H). Once per batch: the
    input projection (BT,H)x(H,GH), dW (GH,BT)x(BT,H), dU (GH,BT)x(BT,H), dx (BT,GH)x(GH,H).
    """
    B, T, H, GH = w.batch, w.length, w.hidden, GATES[w.cell] * w.hidden
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    s, W, W_T, dgh = r(B, H), r(GH, H), r(H, GH), r(B, GH)
    X, dP = r(B * T, H), r(B * T, GH)
    products = [(s, W), (dgh, W_T)] * T + [(X, W), (dP.t(), X.t()), (dP.t(), X.t()), (dP, W_T)]

    @torch.no_grad()
    def once():
        for a, b in products:
            linear(a, b)

    once()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        once()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- peak memory of one step ---------------------------------------------------------------------------
@contextlib.contextmanager
def _native_output_silenced():
    """The profiler's native library logs each start and stop on the process's stdout/stderr: hide them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)

def peak_memory(w: Workload, variant: str, device) -> float:
    """MB allocated at the peak of one training step, above what was allocated before it (weights,
    gradients from the warm-up step). CPU: the profiler's memory timeline, which sees every tensor
    allocation; CUDA: torch.cuda.max_memory_allocated."""
    modules, torch_step = build_torch(w, device)
    step = torch_step if variant == "torch" else build_rnnlab(w, modules, variant, device)[1]
    ids, y = batch(w, device)
    step(ids, y)  # warm-up: gradients exist, one-time workspaces are made
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(ids, y)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _native_output_silenced(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step(ids, y)
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        _, sizes = json.load(open(path))
    totals = [sum(s) for s in sizes]
    return (max(totals) - totals[0]) / 2**20


# -- one workload ------------------------------------------------------------------------------------------
def bench(w: Workload, device, steps: int, repeats: int, warmup: int, memory: bool) -> list[Row]:
    check_same_maths(w, device)
    modules, torch_step = build_torch(w, device)
    variants = {"torch": torch_step}
    variants.update({b: build_rnnlab(w, modules, b, device)[1] for b in ("manual", "autograd")})
    for step in variants.values():
        time_steps(step, w, device, warmup)
    times = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so a burst of load hits every variant alike
        for k, step in variants.items():
            times[k].append(time_steps(step, w, device, steps))
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens = w.batch * w.length
    limit = tokens / gemm_seconds(w, device)
    mem = {k: peak_memory(w, k, device) if memory else None for k in variants}
    rows = []
    for b in ("manual", "autograd"):
        rows.append(Row(w.cell, w.hidden, b, tokens / median[b], tokens / median["torch"], median["torch"] / median[b],
                        100 * (tokens / median[b]) / limit, limit, mem[b], mem["torch"], 1000 * median[b],
                        1000 * median["torch"]))
    best = max(rows, key=lambda r: r.ratio)
    rows.append(Row(**{**asdict(best), "backward": "best"}))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'cell':5} {'H':>4} {'backward':>9} {'tokens/s':>10} {'torch.nn':>10} {'ratio':>6} {'% limit':>8} "
          f"{'ms/step':>8} {'peak MB':>8} {'torch MB':>8}")
    for r in rows:
        mem = f"{'-':>8} {'-':>8}"
        if r.peak_mem_mb is not None and r.baseline_peak_mem_mb is not None:
            mem = f"{r.peak_mem_mb:8.1f} {r.baseline_peak_mem_mb:8.1f}"
        print(f"{r.cell:5} {r.hidden:4d} {r.backward:>9} {r.tokens_per_s:10.0f} {r.baseline_tokens_per_s:10.0f} "
              f"{r.ratio:6.2f} {r.pct_of_limit:7.1f}% {r.step_ms:8.2f} {mem}")


def lm_row(steps: int, repeats: int, tiny: bool) -> Row:
    """The language model's training step (bench_lm.py's workload and timing) as a row of this table."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_lm

    w = bench_lm.TINY if tiny else bench_lm.Workload()
    config = bench_lm.config_for(w)
    vocab, ids, _, _ = bench_lm.lm.load_splits(config, bench_lm.SHAKESPEARE)
    r = bench_lm.throughput(w, ids[: 40 * w.batch * w.seq_len], len(vocab), steps, repeats)
    tokens = w.batch * w.seq_len
    return Row("lm-lstm2", w.hidden, "manual", r["rnnlab_tokens_per_s"], r["torch_tokens_per_s"], r["ratio"],
               float("nan"), float("nan"), None, None, 1000 * tokens / r["rnnlab_tokens_per_s"],
               1000 * tokens / r["torch_tokens_per_s"])


def main(argv=None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"], choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 128, 512])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, one repeat: checks the benchmark runs")
    p.add_argument("--lm", action="store_true", help="add the Shakespeare language model's row (bench_lm.py)")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.tiny:
        args.hidden, args.batch, args.length, args.vocab = [8], 4, 5, 50
        args.steps, args.repeats, args.warmup, args.memory = 2, 1, 1, False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; batch {args.batch}, "
          f"length {args.length}, vocab {args.vocab}; median of {args.repeats} x {args.steps} steps")
    rows = []
    for cell in args.cells:
        for H in args.hidden:
            w = Workload(cell, H, args.batch, args.length, args.vocab)
            rows += bench(w, device, args.steps, args.repeats, args.warmup, args.memory)
            best = rows[-1]
            print(f"  {cell} H={H}: ratio {best.ratio:.2f} ({best.backward}), {best.pct_of_limit:.0f}% of limit",
                  flush=True)
    if args.lm:
        rows.append(lm_row(args.steps, args.repeats, args.tiny))
    print()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()

"""`rnnlab bench`: training throughput of rnnlab against torch.nn + torch.optim at the same maths, in one run.

This module is the one place in the library that runs torch.nn's recurrent layers and torch.optim:
they are the baseline being timed against, never used to compute rnnlab's results
(tests/test_source_scan.py allows exactly this module).

The step timed is a whole training step: embedding lookup, the recurrent layer over T steps, the
classifier on the last state, cross-entropy, backward, SGD update. The baseline is

    nn.Embedding(V, H) -> nn.RNN / nn.LSTM / nn.GRU (H, H) -> nn.Linear(H, C) -> torch.optim.SGD

and rnnlab's `Classifier(V, H, C, embed_dim=H)` gets the same weights (through `from_torch`) and the
same batches; the first losses and gradients of every variant must agree before anything is timed.
The language-model row (`--lm`, on by default) is a character model: embedding 65 -> 2 stacked LSTM
layers of 256 (`rnnlab.recurrent.unroll_layers`) -> an output layer at every step, seq-len 100,
batch 64, against nn.LSTM(num_layers=2). rnnlab's variants: backward="manual" with each engine
(`rnnlab.engine`: the Python time loop and the compiled one) and backward="autograd". Each variant
is warmed up, then timed over `--steps` steps, `--repeats` times, interleaved; the median is reported.

Also printed per row:
- peak memory of a training step (MB): the most memory the step's tensors take at once, above what
  was allocated before it (the profiler's memory timeline on the CPU, max_memory_allocated on CUDA;
  `--no-memory` skips it);
- the matmul-bound limit: the tokens/s the step would reach if it did nothing but its matrix
  products. Each distinct product shape is timed in a tight loop with the fastest product available
  here (torch's BLAS, oneDNN or the compiled engine's micro-GEMM, whichever is fastest for that shape,
  operands laid out as each likes best; the micro-GEMM's loop runs in C++, so none of its products pays
  for a call from Python), times how often a training step uses it; `% limit` is the share of it a variant reaches
  (benchmarks/bench_gap.py shows where the rest of a step's time goes). The kernel for each shape is
  chosen once; the limit is then timed in every round beside the variants and its median taken, as
  theirs (`MatmulLimit`).

Examples:
    rnnlab bench                                  (every cell at H = 32, 128, 512, and the LM row)
    rnnlab bench --cells lstm --hidden 128 --json bench.json     (JSON into --out, runs/bench/)
    rnnlab bench --tiny                           (seconds; what the test suite runs)
Ratios > 1 mean rnnlab is faster; the headline ratio is rnnlab's fastest path. Timings vary with the
machine's load: compare ratios from one run.
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
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import engine as engines
from rnnlab.cells import make_cell
from rnnlab.gemm import _onednn_works
from rnnlab.model import Classifier
from rnnlab.optim import SGD
from rnnlab.recurrent import embedding, from_torch, unroll_layers

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
    layers: int = 1  # stacked recurrent layers
    lm: bool = False  # a language model: logits at every step (classes = vocab), else a classifier on s_T

    @property
    def name(self) -> str:
        return f"lm-{self.cell}x{self.layers}" if self.lm else self.cell


@dataclass
class Row:
    cell: str  # 'rnn', 'lstm', 'gru', or 'lm-lstmx2' for the language-model row
    hidden: int
    backward: str  # 'manual', 'autograd' or 'best' (the headline: the fastest rnnlab path)
    engine: str  # who ran the manual time loop: 'python' or 'compiled' (autograd rows: 'python')
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
    out = w.vocab if w.lm else w.classes
    emb = torch.nn.Embedding(w.vocab, H).to(device)
    rnn = TORCH_CELLS[w.cell](H, H, num_layers=w.layers, batch_first=True).to(device)
    head = torch.nn.Linear(H, out).to(device)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=w.lr)

    def loss_of(ids, y):
        outputs, h_n = rnn(emb(ids))
        if w.lm:  # logits at every step, targets = the next characters
            return F.cross_entropy(head(outputs).reshape(-1, out), y.reshape(-1))
        h_n = h_n[0] if w.cell == "lstm" else h_n
        return F.cross_entropy(head(h_n[-1]), y)

    def step(ids, y):
        loss = loss_of(ids, y)
        opt.zero_grad()  # torch.optim's default, set_to_none=True, as rnnlab's SGD
        loss.backward()
        opt.step()
        return loss

    return (emb, rnn, head, loss_of), step


def _variant(name: str) -> tuple[str, str]:
    """'manual:compiled' -> ('manual', 'compiled'); 'autograd' -> ('autograd', 'python')."""
    backward, _, engine = name.partition(":")
    return backward, engine or "python"


def build_rnnlab(w: Workload, modules, variant: str, device):
    """rnnlab's model for the workload with torch's weights; returns (parameters by name, loss_of, step)."""
    emb, rnn, head, _ = modules
    backward, engine = _variant(variant)
    if not w.lm:
        model = Classifier(w.vocab, w.hidden, w.classes, cell=w.cell, embed_dim=w.hidden, backward=backward, seed=0,
                           device=device, engine=engine)
        layer = from_torch(rnn)  # torch's gate order and biases, converted once
        with torch.no_grad():
            model.E.copy_(emb.weight)
            for name, p in zip(layer.cell.param_names, layer.cell.parameters()):
                getattr(model.cell, name).copy_(p)
            model.W_out.copy_(head.weight)
            model.b_out.copy_(head.bias)
        params = model.named_parameters()

        def loss_of(ids, y):
            return F.cross_entropy(model(ids), y)
    else:  # E -> stacked cells -> W_out s_t + b_out at every step
        H, L = w.hidden, w.layers
        cells = [make_cell(w.cell, H, H, device=device) for _ in range(L)]
        E, W_out, b_out = (emb.weight.detach().clone().requires_grad_(), head.weight.detach().clone().requires_grad_(),
                           head.bias.detach().clone().requires_grad_())
        with torch.no_grad():
            for k, cell in enumerate(cells):
                cell.W.copy_(getattr(rnn, f"weight_hh_l{k}"))
                cell.U.copy_(getattr(rnn, f"weight_ih_l{k}"))
                cell.b.copy_(getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}"))
        params = {"E": E, "W_out": W_out, "b_out": b_out}
        for k, cell in enumerate(cells):
            params.update({f"{n}{k}": p for n, p in zip(cell.param_names, cell.parameters()) if p is not None})

        def loss_of(ids, y):
            x = embedding(ids.t(), E, backward, engine)  # (T, B, H), time-major
            out, _ = unroll_layers(cells, x, backward=backward, batch_first=False, engine=engine)  # (T, B, H)
            logits = torch.addmm(b_out, out.reshape(-1, H), W_out.t())  # W_out s_t + b_out, every step
            return F.cross_entropy(logits, y.t().reshape(-1))

    opt = SGD(list(params.values()), lr=w.lr)

    def step(ids, y):
        loss = loss_of(ids, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return params, loss_of, step


def batch(w: Workload, device, k: int = 0):
    g = torch.Generator().manual_seed(w.seed + 1000 + k)
    ids = torch.randint(0, w.vocab, (w.batch, w.length), generator=g).to(device)
    if w.lm:
        y = torch.randint(0, w.vocab, (w.batch, w.length), generator=g).to(device)
    else:
        y = torch.randint(0, w.classes, (w.batch,), generator=g).to(device)
    return ids, y


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, w: Workload, device, steps: int, warm: int = 1) -> float:
    """Seconds per step, averaged over `steps` consecutive steps, after `warm` untimed ones: in interleaved
    rounds a variant's first step follows another variant's and finds the caches full of its tensors (at
    H = 512 that first step made 10-step blocks read 4-5% slower than 30-step ones, for torch.nn and rnnlab
    alike; scratch timings), where a training run's steps follow each other."""
    data = [batch(w, device, k) for k in range(4)]
    for k in range(warm):
        step(*data[k % 4])
    _sync(device)
    t0 = time.perf_counter()
    for k in range(steps):
        step(*data[k % 4])
    _sync(device)
    return (time.perf_counter() - t0) / steps


def variants_here(device) -> list[str]:
    """rnnlab's paths: the hand BPTT on each engine that runs here, and autograd."""
    compiled = device.type == "cpu" and engines.available()
    return ["manual:python", *(["manual:compiled"] if compiled else []), "autograd"]


def check_same_maths(w: Workload, device) -> None:
    """Before timing: the same loss and the same gradients from torch.nn and from every rnnlab path.

    (One step, not several: torch keeps two bias vectors that both receive the gradient, so after an
    SGD update its effective bias has moved twice as far as rnnlab's single b. The cost is the same.)
    """
    modules, _ = build_torch(w, device)
    emb, rnn, head, torch_loss = modules
    ids, y = batch(w, device)
    ref = torch_loss(ids, y)
    ref.backward()
    ref_grads = {"E": emb.weight.grad, "W_out": head.weight.grad, "b_out": head.bias.grad}
    for k in range(w.layers):
        suffix = str(k) if w.lm else ""
        ref_grads.update({"W" + suffix: getattr(rnn, f"weight_hh_l{k}").grad,
                          "U" + suffix: getattr(rnn, f"weight_ih_l{k}").grad,
                          "b" + suffix: getattr(rnn, f"bias_ih_l{k}").grad})
    for variant in variants_here(device):
        params, loss_of, _ = build_rnnlab(w, modules, variant, device)
        loss = loss_of(ids, y)
        loss.backward()
        assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), f"{w.name} {variant}: loss"
        for name, g in ref_grads.items():
            torch.testing.assert_close(params[name].grad, g, rtol=1e-4, atol=1e-5,
                                       msg=f"{w.name} H={w.hidden} {variant} d{name}")


# -- the matmul-bound limit ----------------------------------------------------------------------------
def products(w: Workload) -> dict[tuple[int, int, int], int]:
    """The matrix products of one training step, {(M, K, N): how many}, for (M, K) x (K, N).

    Per recurrent layer and time step: forward s W^T (B,H)x(H,GH); backward dgh W (B,GH)x(GH,H).
    Once per layer: the input projection (BT,H)x(H,GH), dW and dU (GH,BT)x(BT,H), dx (BT,GH)x(GH,H)
    (dx feeds the embedding's gradient, or the layer below). The LM's output layer: logits
    (BT,H)x(H,V), dW_out (V,BT)x(BT,H), ds (BT,V)x(V,H)."""
    B, T, H, GH, BT = w.batch, w.length, w.hidden, GATES[w.cell] * w.hidden, w.batch * w.length
    count: dict[tuple[int, int, int], int] = {}

    def add(shape, n=1):
        count[shape] = count.get(shape, 0) + n

    for _ in range(w.layers):
        add((B, H, GH), T)
        add((B, GH, H), T)
        add((BT, H, GH))
        add((GH, BT, H), 2)
        add((BT, GH, H))
    if w.lm:
        V = w.vocab
        add((BT, H, V))
        add((V, BT, H))
        add((BT, V, H))
    return count


class Kernel:
    """One way to make a product a @ b: `kernel()` (its `call`) makes it once from Python; `loop`, where
    given, times `reps` of them made one after another in C++ (seconds per product), which
    `_product_seconds` then prefers."""

    def __init__(self, call, loop=None):
        self.call, self.loop = call, loop

    def __call__(self) -> torch.Tensor:
        return self.call()


def product_kernels(M: int, K: int, N: int, device) -> tuple[torch.Tensor, torch.Tensor, dict[str, Kernel]]:
    """Random float32 operands a (M, K), b (K, N), and the ways to make a @ b here, {name: Kernel}: torch's
    BLAS, oneDNN, and the compiled engine's micro-GEMM where it built: cache-blocked as `mm` makes the all-steps
    products, or in one pass as each time step makes its product, on b as it is and on b in rows one vector
    longer, as the engine lays its weights out (padded_rows). The micro-GEMM's are timed in loops in C++
    (`time_mm`): at the step's small products a call from Python costs more than the product (64 x 32 x 32:
    ~0.6 us against ~3; scratch timings). torch's and oneDNN's are timed from Python: at those sizes they
    lose anyway, by more than the call (benchmarks/bench_step_gemm.py times them from C++)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(M, K, generator=g).to(device), torch.randn(K, N, generator=g).to(device)
    b_rows = b.t().contiguous()  # (N, K): oneDNN's weight layout
    kernels = {"torch.mm": Kernel(lambda: torch.mm(a, b))}
    if device.type == "cpu" and _onednn_works():
        kernels["oneDNN"] = Kernel(lambda: torch.ops.mkldnn._linear_pointwise(a, b_rows, None, "none", [], ""))
    if device.type == "cpu" and engines.available():  # csrc/loop.cpp
        ops = engines.load()
        b_padded = torch.empty(K, N + 16)[:, :N].copy_(b)
        for name, operand in (("micro", b), ("micro, padded b", b_padded)):
            for way, blocked in (("", True), (", one pass", False)):  # time_mm -> (seconds per product, a @ b)
                kernels[name + way] = Kernel(lambda bb=operand, bl=blocked: ops.time_mm(a, bb, bl, 1)[1],
                                             lambda reps, bb=operand, bl=blocked: ops.time_mm(a, bb, bl, reps)[0])
    return a, b, kernels


def _product_seconds(f: Kernel, M: int, K: int, N: int, device) -> float:
    """Seconds for one call of the product f, timed in a tight loop (~2e9 multiply-adds, ~15 ms here, and
    3 to 2000 calls; in C++ where f has a loop) after one untimed call that brings its operands into the
    caches. (Windows of ~2e7, a few calls of a step's product, read 15-45% slow when timed right after a round
    of training steps.)"""
    reps = max(3, min(2000, int(2e9 // max(1, M * K * N)) + 1))
    if f.loop is not None:
        return f.loop(reps)
    with torch.no_grad():
        f()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        _sync(device)
    return (time.perf_counter() - t0) / reps


class MatmulLimit:
    """The step's matrix products alone, each distinct shape made by the fastest kernel here.

    The kernel for each shape is chosen once (the least of `repeats` tight-loop timings of each); then
    `seconds()` times the chosen kernels once more, each shape once, times its count. `bench` calls it
    in every round, beside the variants, so the limit and the steps are timed in the same moments of
    the machine's load and clock, and summarised by the same median."""

    def __init__(self, w: Workload, device, repeats: int = 3):
        self.device = device
        self.chosen = []  # (shape, how many per step, kernel name, kernel)
        for shape, n in products(w).items():
            best, best_name = float("inf"), None
            kernels = product_kernels(*shape, device)[2]
            for name, f in kernels.items():
                t = min(_product_seconds(f, *shape, device) for _ in range(repeats))
                if t < best:
                    best, best_name = t, name
            self.chosen.append((shape, n, best_name, kernels[best_name]))

    def shares(self) -> dict[tuple[int, int, int], float]:
        """Each shape's part of the limit, timed now: {(M, K, N): its count x seconds per product}."""
        return {shape: n * _product_seconds(f, *shape, self.device) for shape, n, _, f in self.chosen}

    def seconds(self) -> float:
        return sum(self.shares().values())


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
    """MB allocated at the peak of one training step, above what was allocated before it (weights; both
    optimisers set the gradients to None after each step, so a step's peak includes its gradients).
    CPU: the profiler's memory timeline, which sees every tensor allocation; CUDA:
    torch.cuda.max_memory_allocated."""
    modules, torch_step = build_torch(w, device)
    step = torch_step if variant == "torch" else build_rnnlab(w, modules, variant, device)[2]
    ids, y = batch(w, device)
    step(ids, y)  # warm-up: one-time workspaces are made
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
def bench(w: Workload, device, steps: int, repeats: int, warmup: int, memory: bool, progress=None) -> list[Row]:
    check_same_maths(w, device)
    modules, torch_step = build_torch(w, device)
    variants = {"torch": torch_step}
    variants.update({v: build_rnnlab(w, modules, v, device)[2] for v in variants_here(device)})
    for step in variants.values():
        time_steps(step, w, device, warmup)
    matmul = MatmulLimit(w, device)
    times = {k: [] for k in variants}
    limits = []
    for _ in range(repeats):  # interleaved, so a burst of load hits every variant, and the limit, alike
        for k, step in variants.items():
            times[k].append(time_steps(step, w, device, steps))
        limits.append(matmul.seconds())
        if progress is not None:
            progress.update(1)
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens = w.batch * w.length
    limit = tokens / statistics.median(limits)
    mem = {k: peak_memory(w, k, device) if memory else None for k in variants}
    rows = []
    for v in variants:
        if v == "torch":
            continue
        backward, engine = _variant(v)
        rows.append(Row(w.name, w.hidden, backward, engine, tokens / median[v], tokens / median["torch"],
                        median["torch"] / median[v], 100 * (tokens / median[v]) / limit, limit, mem[v], mem["torch"],
                        1000 * median[v], 1000 * median["torch"]))
    best = max(rows, key=lambda r: r.ratio)
    rows.append(Row(**{**asdict(best), "backward": "best"}))
    return rows


def print_table(rows: list[Row], file=None) -> None:
    print(f"{'cell':9} {'H':>4} {'backward':>9} {'engine':>8} {'tokens/s':>10} {'torch.nn':>10} {'ratio':>6} "
          f"{'% limit':>8} {'ms/step':>8} {'peak MB':>8} {'torch MB':>8}", file=file)
    for r in rows:
        mem = f"{'-':>8} {'-':>8}"
        if r.peak_mem_mb is not None and r.baseline_peak_mem_mb is not None:
            mem = f"{r.peak_mem_mb:8.1f} {r.baseline_peak_mem_mb:8.1f}"
        print(f"{r.cell:9} {r.hidden:4d} {r.backward:>9} {r.engine:>8} {r.tokens_per_s:10.0f} "
              f"{r.baseline_tokens_per_s:10.0f} {r.ratio:6.2f} {r.pct_of_limit:7.1f}% {r.step_ms:8.2f} {mem}",
              file=file)


def bench_lm_folder() -> Path:
    """The source checkout's benchmarks/ folder, which holds bench_lm.py (`--lm`); a one-line error without it."""
    from rnnlab.errors import UserError

    folder = next((f for f in (Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks")
                   if (f / "bench_lm.py").is_file()), None)
    if folder is None:
        raise UserError("--lm times benchmarks/bench_lm.py: run it from a source checkout of rnnlab")
    return folder


def lm_rows(steps: int, repeats: int, tiny: bool) -> list[Row]:
    """The Shakespeare language model's training step (benchmarks/bench_lm.py's workload and timing, which
    needs a source checkout) as a row of this table, and its `best` copy; no matmul limit or memory."""
    sys.path.insert(0, str(bench_lm_folder()))
    import bench_lm

    w = bench_lm.TINY if tiny else bench_lm.Workload()
    config = bench_lm.config_for(w)
    vocab, ids, _, _ = bench_lm.lm.load_splits(config, bench_lm.SHAKESPEARE)
    r = bench_lm.throughput(w, ids[: 40 * w.batch * w.seq_len], len(vocab), steps, repeats)
    tokens = w.batch * w.seq_len
    engine = engines.resolve(None, torch.zeros(1))  # bench_lm's model takes the default engine
    row = Row("lm-lstm2", w.hidden, "manual", engine, r["rnnlab_tokens_per_s"], r["torch_tokens_per_s"], r["ratio"],
              float("nan"), float("nan"), None, None, 1000 * tokens / r["rnnlab_tokens_per_s"],
              1000 * tokens / r["torch_tokens_per_s"])
    return [row, Row(**{**asdict(row), "backward": "best"})]


def markdown_table(rows: list[dict]) -> str:
    """The README's speed table from stored rows (`--json`): per workload, each rnnlab path's ratio to torch.nn."""
    lines = ["| workload | H | torch.nn tokens/s | compiled (manual) | python (manual) | autograd | best | "
             "% of matmul limit (best) | peak MB: best / torch.nn |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["cell"], r["hidden"]) for r in rows))
    for cell, H in keys:
        mine = [r for r in rows if (r["cell"], r["hidden"]) == (cell, H)]
        ratio = {(r["backward"], r["engine"]): f"{r['ratio']:.2f}" for r in mine if r["backward"] != "best"}
        best = next(r for r in mine if r["backward"] == "best")
        mem = "-"
        if best["peak_mem_mb"] is not None and best["baseline_peak_mem_mb"] is not None:
            mem = f"{best['peak_mem_mb']:.1f} / {best['baseline_peak_mem_mb']:.1f}"
        order = (("manual", "compiled"), ("manual", "python"), ("autograd", "python"))
        paths = " | ".join(ratio.get(k, "-") for k in order)
        lines.append(f"| {cell} | {H} | {best['baseline_tokens_per_s']:,.0f} | {paths} | **{best['ratio']:.2f}** "
                     f"({best['engine']}) | {best['pct_of_limit']:.0f}% | {mem} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"], choices=["rnn", "lstm", "gru"],
                   help="cells to time (default: rnn lstm gru)")
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 128, 512], help="hidden sizes H (default: 32 128 512)")
    p.add_argument("--batch", type=int, default=64, help="sentences per step (default 64)")
    p.add_argument("--length", type=int, default=32, help="time steps per sentence (default 32)")
    p.add_argument("--vocab", type=int, default=5000, help="vocabulary size (default 5000)")
    p.add_argument("--no-lm-workload", dest="lm_workload", action="store_false",
                   help="skip the language-model workload row, lm-lstmx2 (2 x LSTM 256, vocabulary 65, seq-len "
                        "100, batch 64, SGD, random characters)")
    p.add_argument("--lm", action="store_true",
                   help="also the Shakespeare language model's own training step as row lm-lstm2 (embedding 64, "
                        "dropout, Adam; benchmarks/bench_lm.py of a source checkout)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant, interleaved (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, one repeat: checks the benchmark runs")
    p.add_argument("--out", default="runs/bench", help="folder for --json given a bare file name (default runs/bench)")
    p.add_argument("--json", help="also write the rows as JSON: a bare name goes into --out, a path is used as is")
    return p


def json_path(name: str, out: str) -> Path:
    """A bare file name lands in the output folder (not the current directory, e.g. a repository's root)."""
    path = Path(name)
    return path if path.parent != Path(".") or path.is_absolute() else Path(out) / path


def main(argv=None) -> list[Row]:
    p = add_arguments(argparse.ArgumentParser(prog="rnnlab bench", description=__doc__.split("\n")[0]))
    return run(p.parse_args(argv))


def run(args) -> list[Row]:
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    from rnnlab.config import check_device

    device = torch.device(check_device(args.device))  # a one-line UserError for a device this torch lacks
    if args.lm:
        bench_lm_folder()  # without a source checkout, say so before timing anything
    if args.tiny:
        args.hidden, args.batch, args.length, args.vocab = [8], 4, 5, 50
        args.steps, args.repeats, args.warmup, args.memory = 2, 1, 1, False
    workloads = [Workload(cell, H, args.batch, args.length, args.vocab) for cell in args.cells for H in args.hidden]
    if args.lm_workload:
        size = dict(batch=3, length=6, hidden=8) if args.tiny else dict(batch=64, length=100, hidden=256)
        workloads.append(Workload("lstm", vocab=65, layers=2, lm=True, **size))
    variants = variants_here(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; batch {args.batch}, "
          f"length {args.length}, vocab {args.vocab}; median of {args.repeats} x {args.steps} steps; "
          f"rnnlab variants: {', '.join(variants)}")
    if "manual:compiled" not in variants and device.type == "cpu":
        print(f"  (no compiled engine here: {engines._state.get('error', 'not built')})")
    rows = []
    with tqdm(total=len(workloads) * args.repeats, desc="bench", unit="repeat", disable=not sys.stdout.isatty(),
              leave=False) as progress:
        for w in workloads:
            rows += bench(w, device, args.steps, args.repeats, args.warmup, args.memory, progress)
            best = rows[-1]
            progress.write(f"  {w.name} H={w.hidden}: ratio {best.ratio:.2f} ({best.engine}), "
                           f"{best.pct_of_limit:.0f}% of limit", file=sys.stdout)
    if args.lm:
        rows += lm_rows(args.steps, args.repeats, args.tiny)
    print()
    print_table(rows)
    if args.json:
        path = json_path(args.json, args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()

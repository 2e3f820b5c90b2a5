"""Microseconds per call of the compiled loop's per-step product, for each way C++ can make it (issue 15).

Each time step of csrc/loop.cpp makes one product y = x @ w^T with x (B, K) and w (N, K): forward
W s_{t-1} (K = H, N = G*H) and backward W^T dp (K = G*H, N = H), G = 1 / 4 / 3 gate blocks for the
RNN / LSTM / GRU, B = 64. Timed here, in a tight loop from C++ (no Python per call), one thread:

    mm_out    at::mm_out(y, x, w^T)                  ATen's dispatcher -> MKL sgemm (loop.cpp's ATEN path)
    onednn    mkldnn::_linear_pointwise, boxed call  oneDNN, weight reordered once (loop.cpp's ONEDNN path);
                                                     returns a new tensor each call
    sgemm     sgemm_ called directly                 MKL, no dispatcher; Fortran API, column-major
    packed    sgemm_compute_ on a packed w           MKL's packed GEMM: w packed once (pack_us, the cost
                                                     per sequence), then reused at every call
    ..+       the same with y += (beta = 1 / add_ / addmm_), the GRU backward's and masks' form

and float64: at::mm_out against dgemm_ (MKL exports no packed dgemm). Every method's result is checked
against torch's float64 product before it is timed. Rounds interleave the methods (one block of each
per round, so a change of load hits all of them) and the median round is reported.

A tight loop flatters oneDNN: its ~9 us per call buys more there than inside the loop, where each product
meets a point-wise pass between calls and oneDNN writes a fresh tensor each step. So `--unroll` times the
thing itself: one compiled layer's forward + backward (B = 64, T = 32) with the product forced to each path,
the loop's own micro-GEMM (csrc/loop.cpp, "micro") included; recurrent._step_path, which picks the
micro-GEMM at every size, is decided from that table and from whole training steps.

Usage: python benchmarks/bench_step_gemm.py [--rounds 7] [--block-ms 20] [--hidden 32 128 512] [--unroll]
       python benchmarks/bench_step_gemm.py --all-steps [--threads 2]   (the products over all steps)
The MKL symbols are looked up in torch's own libtorch_cpu (weak symbols; a method whose symbol is missing
prints "-"). Left out: threads (the compiled loop's products run at torch's thread count; measured at 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

CELLS = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks G
METHODS = ["mm_out", "onednn", "sgemm", "packed", "dnn_mm"]

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <chrono>
#include <vector>

extern "C" {  // MKL's Fortran BLAS as libtorch_cpu exports it: LP64 ints, every argument by pointer
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
size_t sgemm_pack_get_size_(const char*, const int*, const int*, const int*) __attribute__((weak));
void sgemm_pack_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                 const int*, float*) __attribute__((weak));
void sgemm_compute_(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                    const float*, const int*, const float*, float*, const int*) __attribute__((weak));
}
namespace at::native {  // oneDNN's matmul into a given tensor: result = beta result + alpha mat1 @ mat2 (exported)
__attribute__((weak)) void mkldnn_matmul(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);
}

namespace {
using at::Tensor;
using clk = std::chrono::steady_clock;

bool has(int64_t method, bool f64) {
  if (method == 2) return f64 ? dgemm_ != nullptr : sgemm_ != nullptr;
  if (method == 3) return !f64 && sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_;
  if (method == 4) return !f64 && at::native::mkldnn_matmul != nullptr;
  return true;
}

// reps calls of y (+)= x @ w^T by one method; returns {seconds per call, seconds of the one-off preparation, y}
std::vector<Tensor> run(int64_t method, Tensor xs, Tensor w, Tensor y, int64_t reps, bool acc) {
  const bool f64 = xs.scalar_type() == at::kDouble;
  Tensor x = xs[0];
  TORCH_CHECK(has(method, f64), "method not available");
  const int B = x.size(0), K = x.size(1), N = w.size(0);
  Tensor w_t = w.t();
  auto t0 = clk::now();
  Tensor wd, packed;
  static auto reorder = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  static auto linear = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  if (method == 1) {
    std::vector<c10::IValue> s{w, c10::IValue()};
    reorder.callBoxed(&s);
    wd = s[0].toTensor();
  }
  // column-major view: y^T (N, B) = w (N, K) x^T (K, B); w's row-major storage is w^T column-major -> 'T'
  const float one = 1, beta = acc ? 1 : 0;
  const double one_d = 1, beta_d = acc ? 1 : 0;
  if (method == 3) {
    const size_t bytes = sgemm_pack_get_size_("A", &N, &B, &K);
    packed = at::empty({int64_t(bytes / sizeof(float)) + 1}, x.options());
    sgemm_pack_("A", "T", &N, &B, &K, &one, w.data_ptr<float>(), &K, packed.data_ptr<float>());
  }
  const double prep = std::chrono::duration<double>(clk::now() - t0).count();
  t0 = clk::now();
  for (int64_t r = 0; r < reps; ++r) {
    x = xs[r % xs.size(0)];  // step t reads s_{t-1}: a new row block of one (T, B, K) buffer, as in loop.cpp
    if (method == 0) {
      if (acc) y.addmm_(x, w_t); else at::mm_out(y, x, w_t);
    } else if (method == 1) {
      std::vector<c10::IValue> s{x, wd, c10::IValue(), std::string("none"),
                                 c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      linear.callBoxed(&s);
      if (acc) y.add_(s[0].toTensor()); else if (r == reps - 1) y.copy_(s[0].toTensor());
    } else if (method == 2) {
      if (f64) dgemm_("T", "N", &N, &B, &K, &one_d, w.data_ptr<double>(), &K, x.data_ptr<double>(), &K, &beta_d,
                      y.data_ptr<double>(), &N);
      else sgemm_("T", "N", &N, &B, &K, &one, w.data_ptr<float>(), &K, x.data_ptr<float>(), &K, &beta,
                  y.data_ptr<float>(), &N);
    } else if (method == 4) {
      at::native::mkldnn_matmul(x, w_t, y, beta, 1);
    } else {
      sgemm_compute_("P", "N", &N, &B, &K, packed.data_ptr<float>(), &K, x.data_ptr<float>(), &K, &beta,
                     y.data_ptr<float>(), &N);
    }
  }
  const double per = std::chrono::duration<double>(clk::now() - t0).count() / reps;
  auto opts = at::TensorOptions().dtype(at::kDouble);
  return {at::full({}, per, opts), at::full({}, prep, opts), y};
}
}  // namespace

TORCH_LIBRARY(step_gemm, m) {
  m.def("has(int method, bool f64) -> bool", &has);
  m.def("run(int method, Tensor xs, Tensor w, Tensor(a!) y, int reps, bool acc) -> Tensor[]", &run);
}
"""


def build():
    from torch.utils import cpp_extension

    folder = tempfile.mkdtemp(prefix="step_gemm-")
    print("compiling the timing kernel (about a minute) ...", file=sys.stderr, flush=True)
    cpp_extension.load_inline("step_gemm", cpp_sources=[SOURCE], extra_cflags=["-O2"], build_directory=folder,
                              is_python_module=False, verbose=False)
    return torch.ops.step_gemm


def shapes(hidden: list[int]):
    """(cell, H, direction, K, N) of each per-step product; B = 64 rows."""
    for cell, G in CELLS.items():
        for H in hidden:
            yield cell, H, "fwd", H, G * H
            if G > 1:  # for G = 1 the backward's shape is the forward's
                yield cell, H, "bwd", G * H, H


def measure(ops, K: int, N: int, dtype, acc: bool, rounds: int, block_s: float, B: int = 64, T: int = 32):
    """Median seconds per call of each available method, and the packed method's one-off packing time."""
    g = torch.Generator().manual_seed(K * 7 + N)
    xs = torch.randn(T, B, K, generator=g, dtype=dtype)  # the inputs of T steps, used in turn
    x, w = xs[0], torch.randn(N, K, generator=g, dtype=dtype) / K ** 0.5
    y0 = torch.randn(B, N, generator=g, dtype=dtype)
    want = (y0.double() if acc else 0) + x.double() @ w.double().t()
    f64 = dtype == torch.float64
    methods = [i for i, _ in enumerate(METHODS) if ops.has(i, f64) and not (f64 and i in (1, 3, 4))]
    reps = {}
    for i in methods:  # check the maths, then size a block to ~block_s
        y = y0.clone()
        per, _, y = ops.run(i, xs, w, y, 1, acc)
        tol = 1e-12 if f64 else 1e-4
        assert torch.allclose(y.double(), want, rtol=tol, atol=tol), (METHODS[i], K, N, acc)
        per = ops.run(i, xs, w, y0.clone(), 20, acc)[0].item()
        reps[i] = max(5, int(block_s / per))
    times: dict[int, list[float]] = {i: [] for i in methods}
    prep: list[float] = []
    for _ in range(rounds):
        for i in methods:
            per, p, _ = ops.run(i, xs, w, y0.clone(), reps[i], acc)
            times[i].append(per.item())
            if i == 3:
                prep.append(p.item())
    out = {METHODS[i]: statistics.median(v) for i, v in times.items()}
    return out, (statistics.median(prep) if prep else None)


def unroll_table(hidden: list[int], rounds: int, steps: int = 5) -> None:
    """ms per forward + backward of one compiled layer (B = 64, T = 32, input size H, float32), with the
    step's product forced to each path of csrc/loop.cpp in turn (interleaved rounds, median)."""
    from rnnlab import recurrent
    from rnnlab.cells import make_cell

    names = {recurrent.STEP_ATEN: "aten", recurrent.STEP_BLAS: "blas", recurrent.STEP_ONEDNN: "onednn",
             recurrent.STEP_MICRO: "micro"}
    chosen = recurrent._step_path
    print("\nms per forward + backward of one layer, compiled loop, B = 64, T = 32, float32 (ratio: aten / path); "
          "'rule' is the path rnnlab chooses")
    print(f"{'cell':5} {'H':>4} " + " ".join(f"{n:>14}" for n in names.values()) + f" {'rule':>7}")
    try:
        for cell_name in CELLS:
            for H in hidden:
                g = torch.Generator().manual_seed(H)
                cell = make_cell(cell_name, H, H, generator=g)
                x = torch.randn(64, 32, H, generator=g)
                rule = names[chosen(cell, 64)]
                times: dict[int, list[float]] = {p: [] for p in names}
                for r in range(rounds + 1):  # round 0 warms up
                    for p in names:
                        recurrent._step_path = lambda c, B, p=p: p
                        start = time.perf_counter()
                        for _ in range(steps):
                            out, _ = recurrent.unroll(cell, x, backward="manual", engine="compiled")
                            out.sum().backward()
                        if r:
                            times[p].append((time.perf_counter() - start) / steps)
                med = {p: statistics.median(v) for p, v in times.items()}
                base = med[recurrent.STEP_ATEN]
                print(f"{cell_name:5} {H:4} " + " ".join(f"{med[p] * 1e3:7.3f} ({base / med[p]:4.2f})" for p in names)
                      + f" {rule:>7}", flush=True)
    finally:
        recurrent._step_path = chosen


ALL_STEPS = [  # (name, M = B*T rows, K, N) of x U^T + b and dx = dp U; (name, rows, G*H, H) of dp^T s
    ("mm", "lstm 128 x U^T", 2048, 128, 512), ("mm", "lstm 128 dp U", 2048, 512, 128),
    ("mm", "lstm 512 x U^T", 2048, 512, 2048), ("mm", "lstm 512 dp U", 2048, 2048, 512),
    ("mm_tn", "lstm 128 dp^T s", 2048, 512, 128), ("mm_tn", "rnn 512 dp^T s", 2048, 512, 512),
    ("mm_tn", "gru 512 dp^T x", 2048, 1536, 512), ("mm_tn", "lstm 512 dp^T s", 2048, 2048, 512),
    ("mm_tn", "LM lstm 256 dp^T s", 6400, 1024, 256), ("mm_tn", "lstm 640 dp^T s", 3200, 2560, 640),
]


def all_steps_table(rounds: int) -> None:
    """ms per all-steps product, float32, at torch's thread count: the compiled engine's micro-GEMM
    (torch.ops.rnnlab_loop.mm / mm_tn) against the library path rnnlab.gemm takes (linear: oneDNN or
    BLAS; weight_grads: oneDNN's backward-weights kernel with its conversions). Median of interleaved rounds.
    recurrent.MICRO_MAX_MACS is set from this and from whole training steps."""
    from rnnlab import engine, gemm

    ops = engine.load()
    print(f"\nms per all-steps product, float32, {torch.get_num_threads()} thread(s), median of {rounds} rounds")
    print(f"{'product':20} {'M':>5} {'K':>5} {'N':>5} {'micro':>8} {'library':>8} {'ratio':>6}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for kind, name, rows, k, n in ALL_STEPS:
            a, bias = torch.randn(rows, k, generator=g), torch.randn(n, generator=g)
            if kind == "mm" and "U^T" in name:  # x U^T + b, U (n, k) as the cell holds it: mm copies U^T into
                U = torch.randn(n, k, generator=g)  # padded rows (recurrent.compiled_input_projection)
                fs = (lambda a=a, U=U, bias=bias: ops.mm(a, U.t(), bias),
                      lambda a=a, U=U, bias=bias: gemm.linear(a, U, bias))
            elif kind == "mm":  # dx = dp U, U (k, n), read as it is (recurrent._ManualBPTT.backward)
                U = torch.randn(k, n, generator=g)
                fs = (lambda a=a, U=U: ops.mm(a, U, None), lambda a=a, U=U: gemm.linear(a, U.t().contiguous()))
            else:  # a^T @ b: dp (rows, k)^T @ s (rows, n), a weight gradient
                b = torch.randn(rows, n, generator=g)
                fs = (lambda a=a, b=b: ops.mm_tn(a, b), lambda a=a, b=b: gemm.weight_grads(a, [b]))
            reps = max(3, int(2e9 / (rows * k * n)))  # ~15 ms per timing (~2e8: a few calls, first-call effects)
            times: list[list[float]] = [[], []]
            for r in range(rounds + 1):  # round 0 warms up
                for i, f in enumerate(fs):
                    start = time.perf_counter()
                    for _ in range(reps):
                        f()
                    if r:
                        times[i].append((time.perf_counter() - start) / reps)
            micro, library = (statistics.median(t) * 1e3 for t in times)
            m, kk = (rows, k) if kind == "mm" else (k, rows)
            print(f"{name:20} {m:5} {kk:5} {n:5} {micro:8.2f} {library:8.2f} {library / micro:6.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    ap.add_argument("--block-ms", type=float, default=20.0, help="time of one method's block in a round")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unroll", action="store_true",
                    help="instead: time a whole compiled layer (forward + backward) with each path forced")
    ap.add_argument("--all-steps", action="store_true",
                    help="instead: the products over all steps (input projection, dx, weight gradients), "
                         "micro-GEMM against the libraries")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.all_steps:
        all_steps_table(args.rounds)
        return 0
    if args.unroll:
        unroll_table(args.hidden, args.rounds)
        return 0
    ops = build()
    block = args.block_ms / 1000
    print(f"us per call, B = 64, {args.threads} thread(s), median of {args.rounds} interleaved rounds; "
          "ratios are mm_out's time / the method's (> 1: faster than mm_out)")
    for acc in (False, True):
        print(f"\nfloat32, y {'+=' if acc else '='} x @ w^T")
        print(f"{'cell':5} {'H':>4} {'dir':4} {'K':>5} {'N':>5} " + " ".join(f"{m:>14}" for m in METHODS)
              + f" {'pack_us':>8}")
        for cell, H, d, K, N in shapes(args.hidden):
            t, pack = measure(ops, K, N, torch.float32, acc, args.rounds, block)
            cols = []
            for m in METHODS:
                cols.append(f"{t[m] * 1e6:7.2f} ({t['mm_out'] / t[m]:4.2f})" if m in t else f"{'-':>14}")
            print(f"{cell:5} {H:4} {d:4} {K:5} {N:5} " + " ".join(cols)
                  + f" {pack * 1e6 if pack is not None else float('nan'):8.2f}", flush=True)
    print("\nfloat64, y = x @ w^T")
    print(f"{'cell':5} {'H':>4} {'dir':4} {'K':>5} {'N':>5} {'mm_out':>14} {'dgemm':>14}")
    for cell, H, d, K, N in shapes(args.hidden):
        t, _ = measure(ops, K, N, torch.float64, False, args.rounds, block)
        dg = f"{t['sgemm'] * 1e6:7.2f} ({t['mm_out'] / t['sgemm']:4.2f})" if "sgemm" in t else f"{'-':>14}"
        print(f"{cell:5} {H:4} {d:4} {K:5} {N:5} {t['mm_out'] * 1e6:14.2f} {dg}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`linear(x, weight)` = x @ weight^T for the manual BPTT: torch's BLAS, or oneDNN where that is faster.

On a CPU, `torch.mm` calls the BLAS torch was built with (Intel MKL in the PyPI wheels). On CPUs
where MKL takes a generic code path (measured here: AMD EPYC, 2 cores, about 190 GFLOP/s) oneDNN,
the library torch.nn.LSTM itself runs on for the CPU, multiplies float32 matrices about twice as fast
(about 370 GFLOP/s) but costs about 10 us more per call, and copies transposed operands. So `linear`
uses oneDNN for float32 CPU products of at least MIN_MACS multiply-adds (MIN_MACS_STRIDED when an
operand is a transposed view) and torch's own matmul otherwise (small products, float64, GPUs).
Same maths, different rounding: results agree to float32 round-off.

oneDNN is reached through `torch.ops.mkldnn._linear_pointwise`, the op torch's own compiler emits
for CPU linear layers; it is checked once against torch.mm when first needed, and set RNNLAB_ONEDNN=0
to turn it off. The autograd path never uses this: it is plain torch ops, as in the lab handout.
"""

from __future__ import annotations

import os

import torch

MIN_MACS = 1 << 22  # below ~4M multiply-adds the call overhead outweighs the faster kernel (measured in a
# training step: the vanilla RNN at H = 32, whose products are 2^21, is 8% faster without oneDNN)
# oneDNN copies a transposed (non-contiguous) operand first. The weight gradients dU = dp^T x and
# dW = dgh^T s are such products (a reduction over all T*B rows); measured here, MKL's strided product
# beats copy + oneDNN for them up to ~2^24 multiply-adds (H = 64 with G = 3 gates: 286 us vs 250 us),
# and loses from 2^25 on (H = 128, G = 1: 279 us vs 336 us).
MIN_MACS_STRIDED = 1 << 25

_onednn_ok: bool | None = None  # decided on first use
_onednn_bw_ok: bool | None = None  # the backward-weights op of weight_grad, decided on first use


def _onednn_works() -> bool:
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = False
        if os.environ.get("RNNLAB_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available():
            try:
                g = torch.Generator().manual_seed(0)
                x, w = torch.randn(64, 96, generator=g), torch.randn(80, 96, generator=g)
                got = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                _onednn_ok = bool(torch.allclose(got, x @ w.t(), rtol=1e-4, atol=1e-4))
            except (AttributeError, RuntimeError):
                _onednn_ok = False
    return _onednn_ok


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    strided = not (x.is_contiguous() and weight.is_contiguous())
    big = x.shape[0] * x.shape[1] * weight.shape[0] >= (MIN_MACS_STRIDED if strided else MIN_MACS)
    return (big and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and _onednn_works())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) for 2-D x (M, K) and weight (N, K), any strides (transposed views are fine)."""
    if _use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


def _onednn_bw_works() -> bool:
    """Whether oneDNN's backward-weights op runs here and agrees with torch.mm (checked once)."""
    global _onednn_bw_ok
    if _onednn_bw_ok is None:
        _onednn_bw_ok = False
        if _onednn_works():
            try:
                g = torch.Generator().manual_seed(0)
                dy, x = torch.randn(96, 80, generator=g), torch.randn(96, 64, generator=g)
                dw, db = _onednn_weight_grad(dy, x)
                _onednn_bw_ok = bool(torch.allclose(dw, dy.t() @ x, rtol=1e-4, atol=1e-4)
                                     and torch.allclose(db, dy.sum(0), rtol=1e-4, atol=1e-4))
            except (AttributeError, RuntimeError):
                _onednn_bw_ok = False
    return _onednn_bw_ok


def _onednn_weight_grads(dy: torch.Tensor, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    # oneDNN's inner-product backward-weights primitive (what nn.Linear's oneDNN path runs) reads dy and x
    # as they are, row-major: the reduction over their rows needs no transposed copy, and it sums dy's
    # rows in the same pass. Its operands must be oneDNN tensors: a plain copy each, dy's made once.
    dy_dnn = dy.to_mkldnn()
    dws, db = [], None
    for x in xs:
        dw, b = torch.ops.aten.mkldnn_linear_backward_weights(dy_dnn, x.to_mkldnn(), _EMPTY, db is None)
        dws.append(dw.to_dense())
        db = b.to_dense() if db is None else db
    return dws, db


def _onednn_weight_grad(dy: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (dw,), db = _onednn_weight_grads(dy, [x])
    return dw, db


_EMPTY = torch.empty(0)  # the op's unused `weight` argument


def weight_grads(dy: torch.Tensor, xs: list[torch.Tensor], bias: bool = False):
    """[dy^T @ x for x in xs] = [sum_r dy_r x_r^T, ...], and sum_r dy_r (bias=True; else None): weight (and
    bias) gradients from output gradients dy (M, N) and inputs x (M, K), M rows each (all steps of all
    sequences), e.g. the recurrent layer's dW = dp^T s and dU = dp^T x from the same dp.

    Float32 CPU products of at least MIN_MACS_STRIDED go to oneDNN's backward-weights kernel, which reads both
    operands row-major, where `linear(dy.t(), x.t())` would copy both transposed first (measured here,
    B*T = 2048, 4 gates: 17% faster at H = 128, 20% at H = 512; 36% for the language
    model's 6400 rows at H = 256), and converts dy for it once for all xs. Only where dy is at least
    twice as wide as x (a gated cell's G*H gate columns against H): for the vanilla RNN, dy as wide as
    x, it measured no faster here (H = 128 and 512), and its converted copy of dy would lift the
    step's peak memory above torch.nn's. Below MIN_MACS_STRIDED (H = 32 here) its conversions cost what
    it saves: the GRU's step at H = 32 ran ~5% faster on torch's strided matmul. Else torch's matmul.
    """
    def onednn(x: torch.Tensor) -> bool:
        return (dy.shape[0] * dy.shape[1] * x.shape[1] >= MIN_MACS_STRIDED and dy.shape[1] >= 2 * x.shape[1]
                and dy.dtype == x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous())

    if (xs and dy.device.type == "cpu" and dy.is_contiguous() and not torch.is_grad_enabled()
            and all(onednn(x) for x in xs) and _onednn_bw_works()):
        dws, db = _onednn_weight_grads(dy, xs)
        return dws, (db if bias else None)
    return [linear(dy.t(), x.t()) for x in xs], (dy.sum(dim=0) if bias else None)


def weight_grad(dy: torch.Tensor, x: torch.Tensor, bias: bool = False):
    """dy^T @ x, or (dy^T @ x, sum_r dy_r) with bias=True: `weight_grads` for one input."""
    (dw,), db = weight_grads(dy, [x], bias)
    return (dw, db) if bias else dw


def accumulator(weight: torch.Tensor, rows: int):
    """A function (out, x) -> out += x @ weight^T, in place, for x of `rows` rows; the choice of
    product is made once here, not at every time step."""
    if _use_onednn(weight.new_empty(rows, weight.shape[1]), weight):
        return lambda out, x: out.add_(torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""))
    weight_t = weight.t()
    return lambda out, x: out.addmm_(x, weight_t)


def multiplier(weight: torch.Tensor, rows: int):
    """A function (out, x) -> x @ weight^T for x of `rows` rows: written into the preallocated `out`
    for small products; large products return a new tensor (oneDNN's op cannot write into `out`, and
    a copy would cost more). Use the result."""
    if _use_onednn(weight.new_empty(rows, weight.shape[1]), weight):
        return lambda out, x: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    weight_t = weight.t()
    return lambda out, x: torch.mm(x, weight_t, out=out)

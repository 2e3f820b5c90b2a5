"""The fast matrix product used by the manual BPTT equals torch's, and the cells use it correctly."""

from __future__ import annotations

import pytest
import torch

from rnnlab import gemm


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_equals_matmul_above_the_threshold(transposed, with_bias):
    g = torch.Generator().manual_seed(0)
    M, K, N = 512, 256, 256  # 2^25 multiply-adds: above both thresholds, so oneDNN where it works
    assert M * K * N >= max(gemm.MIN_MACS, gemm.MIN_MACS_STRIDED)
    x = torch.randn(K, M, generator=g).t() if transposed else torch.randn(M, K, generator=g)
    w = torch.randn(K, N, generator=g).t() if transposed else torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if with_bias else None
    with torch.no_grad():
        got = gemm.linear(x, w, b)
    ref = x.double() @ w.double().t() + (b.double() if with_bias else 0)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def test_transposed_operands_need_a_larger_product_for_onednn():
    x, w = torch.randn(2048, 64), torch.randn(96, 64)  # 12.6M multiply-adds, between the two thresholds
    with torch.no_grad():
        contiguous = gemm._use_onednn(x, w)
        strided = gemm._use_onednn(x.t().contiguous().t(), w)
    assert not strided  # a copy first would cost more than MKL's strided product
    assert contiguous == gemm._onednn_works()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [3, 2200])  # below and above MIN_MACS_STRIDED (N = 192, K = 80: 33.8M at 2200)
def test_weight_grad_equals_the_sum_over_rows(rows, dtype):
    g = torch.Generator().manual_seed(2)
    dy, x = torch.randn(rows, 192, generator=g, dtype=dtype), torch.randn(rows, 80, generator=g, dtype=dtype)
    assert (rows * 192 * 80 >= gemm.MIN_MACS_STRIDED) == (rows == 2200)
    with torch.no_grad():
        dw = gemm.weight_grad(dy, x)
        dw_b, db = gemm.weight_grad(dy, x, bias=True)
    ref = dy.double().t() @ x.double()  # sum_r dy_r x_r^T
    tol = dict(rtol=1e-4, atol=2e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)  # 2200-term sums
    for got in (dw, dw_b):
        assert got.shape == (192, 80) and got.dtype == dtype and got.is_contiguous()
        torch.testing.assert_close(got.double(), ref, **tol)
    torch.testing.assert_close(db.double(), dy.double().sum(0), **tol)


@pytest.mark.parametrize("bias", [False, True])
def test_weight_grads_of_several_inputs_share_dy(bias):
    """dW = dp^T s and dU = dp^T x from one dp (converted for oneDNN once), against float64."""
    g = torch.Generator().manual_seed(3)
    dy, s, x = (torch.randn(2400, n, generator=g) for n in (192, 80, 88))  # both above MIN_MACS_STRIDED
    with torch.no_grad():
        (dw, du), db = gemm.weight_grads(dy, [s, x], bias=bias)
    for got, inp in ((dw, s), (du, x)):
        torch.testing.assert_close(got.double(), dy.double().t() @ inp.double(), rtol=1e-4, atol=2e-3)
    if bias:  # float32 sums of 2400 terms of size ~1: round-off ~1e-4
        torch.testing.assert_close(db.double(), dy.double().sum(0), rtol=1e-4, atol=2e-3)
    else:
        assert db is None


def test_weight_grad_takes_onednn_where_it_works(monkeypatch):
    """The float32 backward-weights kernel is checked once; where oneDNN works here, so does it, and it
    runs for a wide dy (gates) only: a dy as wide as x (the vanilla RNN) keeps torch's matmul."""
    assert gemm._onednn_bw_works() == gemm._onednn_works()
    calls = []
    real = gemm._onednn_weight_grads
    monkeypatch.setattr(gemm, "_onednn_weight_grads", lambda dy, xs: calls.append(dy.shape) or real(dy, xs))
    with torch.no_grad():
        gemm.weight_grad(torch.randn(2200, 192), torch.randn(2200, 80))
        gemm.weight_grad(torch.randn(2200, 192), torch.randn(2200, 192))  # as wide: not oneDNN
        gemm.weight_grad(torch.randn(700, 192), torch.randn(700, 80))  # below MIN_MACS_STRIDED: not oneDNN
    assert calls == ([(2200, 192)] if gemm._onednn_works() else [])


@pytest.mark.parametrize("M", [2, 64])  # below and above the threshold
def test_accumulator_and_multiplier(M):
    g = torch.Generator().manual_seed(1)
    x, w, c = torch.randn(M, 512, generator=g), torch.randn(256, 512, generator=g), torch.randn(M, 256, generator=g)
    with torch.no_grad():
        add_wx, wx = gemm.accumulator(w, M), gemm.multiplier(w, M)
        out = c.clone()
        assert add_wx(out, x) is out  # in place
        torch.testing.assert_close(out, c + x @ w.t(), rtol=1e-5, atol=1e-4)
        buf = torch.empty(M, 256)
        r = wx(buf, x)
        torch.testing.assert_close(r, x @ w.t(), rtol=1e-5, atol=1e-4)
        if not gemm._use_onednn(x, w):
            assert r.data_ptr() == buf.data_ptr()  # small products are written into the buffer


def test_small_float64_and_grad_mode_use_torch_matmul():
    x, w = torch.randn(512, 512, dtype=torch.float64), torch.randn(512, 512, dtype=torch.float64)
    assert not gemm._use_onednn(x, w)  # float64: never
    x32, w32 = x.float(), w.float()
    with torch.enable_grad():
        assert not gemm._use_onednn(x32, w32)  # oneDNN's op has no autograd: only under no_grad
    assert not gemm._use_onednn(x32[:2, :2], w32[:2, :2])  # tiny: call overhead dominates


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_manual_bptt_at_a_size_that_uses_the_fast_product_matches_autograd(kind, padded, monkeypatch):
    """B=64 and H=128 (256 for the RNN, so its step product passes the threshold too): outputs, final
    states and every gradient of the manual path equal the autograd path's to float32 round-off."""
    from rnnlab.recurrent import Recurrent

    calls = []
    original = gemm._use_onednn
    monkeypatch.setattr(gemm, "_use_onednn", lambda x, w: calls.append(original(x, w)) or calls[-1])
    H = 256 if kind == "rnn" else 128
    g = torch.Generator().manual_seed(0)
    layer = Recurrent(kind, 64, H, batch_first=True, generator=g, engine="python")  # the compiled engine: test_engine
    x = torch.randn(64, 12, 64, generator=g)
    lengths = torch.randint(1, 13, (64,), generator=g) if padded else None
    h0 = tuple(torch.randn(1, 64, H, generator=g) for _ in range(layer.cell.n_states))
    r_out = torch.randn(64, 12, H, generator=g)
    r_state = [torch.randn(1, 64, H, generator=g) for _ in h0]
    results = {}
    for backward in ("autograd", "manual"):
        layer.backward = backward
        for p in layer.parameters():
            p.grad = None
        xx, hh = x.clone().requires_grad_(), tuple(h.clone().requires_grad_() for h in h0)
        out, state = layer(xx, hh if kind == "lstm" else hh[0], lengths=lengths)
        states = state if kind == "lstm" else (state,)
        loss = (out * r_out).sum() + sum((s * r).sum() for s, r in zip(states, r_state))
        loss.backward()
        results[backward] = [out, *states, xx.grad, *(h.grad for h in hh), *(p.grad for p in layer.parameters())]
    for got, ref in zip(results["manual"], results["autograd"]):
        got, ref = got.detach(), ref.detach()
        err, scale = float((got - ref).abs().max()), max(1.0, float(ref.abs().max()))
        assert err <= 1e-5 * scale, f"{err} vs scale {scale}"
    if gemm._onednn_works():
        assert any(calls), "the fast product was never used at this size"

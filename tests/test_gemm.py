"""The fast matrix product used by the manual BPTT equals torch's, and the cells use it correctly."""

from __future__ import annotations

import pytest
import torch

from rnnlab import gemm


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_equals_matmul_above_the_threshold(transposed, with_bias):
    g = torch.Generator().manual_seed(0)
    M, K, N = 256, 128, 96  # 3.1M multiply-adds: above MIN_MACS, so oneDNN where it works
    assert M * K * N >= gemm.MIN_MACS
    x = torch.randn(K, M, generator=g).t() if transposed else torch.randn(M, K, generator=g)
    w = torch.randn(K, N, generator=g).t() if transposed else torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if with_bias else None
    with torch.no_grad():
        got = gemm.linear(x, w, b)
    ref = x.double() @ w.double().t() + (b.double() if with_bias else 0)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


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


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_manual_bptt_at_a_size_that_uses_the_fast_product_matches_torch(kind, monkeypatch):
    """B=64, H=128 (above the threshold): outputs and gradients equal torch.nn's to float32 round-off."""
    from rnnlab.recurrent import from_torch

    calls = []
    original = gemm._use_onednn
    monkeypatch.setattr(gemm, "_use_onednn", lambda x, w: calls.append(original(x, w)) or calls[-1])
    torch.manual_seed(0)
    m = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](128, 128, batch_first=True)
    layer = from_torch(m, backward="manual")
    x = torch.randn(64, 12, 128)
    lengths = torch.randint(1, 13, (64,))
    out, _ = layer(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = m(packed)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(ref, batch_first=True, total_length=12)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    (ref * r).sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    for name, ref_grad in (("W", m.weight_hh_l0.grad), ("U", m.weight_ih_l0.grad)):
        got = getattr(layer.cell, name).grad
        assert float((got - ref_grad).abs().max()) <= 1e-5 * max(1.0, float(ref_grad.abs().max())), name
    if gemm._onednn_works():
        assert any(calls), "the fast product was never used at this size"

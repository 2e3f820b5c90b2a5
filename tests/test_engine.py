"""The compiled time loop (engine="compiled") against the Python hand BPTT it was written from.

Tolerance: float64, 1e-12 relative to each tensor's scale (max|compiled - python| <= 1e-12 max|python|),
on outputs, final states and every gradient (W, U, b, b_hn, the initial states, dx); the two differ
only in rounding (SLEEF's exp/tanh, the order of a few products). float32: 1e-5 of the scale.
Random shapes (seeded loops), padded batches, token ids and vectors, bias off, relu, stacked layers.
The comparisons with torch.nn and torch.autograd.gradcheck run on both engines in tests/test_cells.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from rnnlab import engine as engines
from rnnlab import gemm
from rnnlab.cells import make_cell
from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.recurrent import retain_buffers, unroll, unroll_layers
from tests.conftest import require_compiled


@pytest.fixture
def compiled():
    require_compiled()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def run(kind, engine, *, T, B, E, H, ids, padded, bias, phi, seed, dtype=torch.float64, layers=1):
    """Outputs, final states and every gradient of one random loss, with the given engine."""
    g = torch.Generator().manual_seed(seed)
    cells = [make_cell(kind, E if l == 0 else H, H, phi=phi, bias=bias, generator=g, dtype=dtype)
             for l in range(layers)]
    if ids:
        x = torch.randint(0, E, (B, T), generator=g)
    else:
        x = torch.randn(B, T, E, generator=g, dtype=dtype).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=g) if padded else None
    states = [tuple(torch.randn(B, H, generator=g, dtype=dtype).requires_grad_() for _ in range(c.n_states))
              for c in cells]
    out, finals = unroll_layers(cells, x, states, lengths, backward="manual", engine=engine)
    r_out = torch.randn(out.shape, generator=g, dtype=dtype)
    loss = (out * r_out).sum()
    for final in finals:
        loss = loss + sum((s * torch.randn(s.shape, generator=g, dtype=dtype)).sum() for s in final)
    loss.backward()
    got = {"out": out.detach()}
    for l, (cell, final, state) in enumerate(zip(cells, finals, states)):
        got.update({f"final{l}.{k}": s.detach() for k, s in enumerate(final)})
        got.update({f"d{n}{l}": p.grad for n, p in zip(cell.param_names, cell.parameters()) if p is not None})
        got.update({f"ds0{l}.{k}": s.grad for k, s in enumerate(state)})
    if not ids:
        got["dx"] = x.grad
    return got


def check_same(kind, tol=1e-12, **kw):
    ref, got = run(kind, "python", **kw), run(kind, "compiled", **kw)
    assert set(ref) == set(got)
    for name in ref:
        assert ref[name] is not None and got[name] is not None, name
        err = rel_err(got[name], ref[name])
        assert err <= tol, f"{kind} {kw}: {name} differs by {err:.3g} (relative to its scale) > {tol:g}"


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_equals_python_float64_random_shapes(compiled, kind):
    g = torch.Generator().manual_seed({"rnn": 1, "lstm": 2, "gru": 3}[kind])
    for case in range(24):
        T, B, E, H = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 9), (1, 7), (1, 6), (1, 40)))
        phi = "relu" if kind == "rnn" and case % 3 == 2 else "tanh"
        check_same(kind, T=T, B=B, E=E, H=H, ids=case % 2 == 1, padded=case % 4 < 2, bias=case % 5 != 4, phi=phi,
                   seed=case)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_equals_python_stacked_layers(compiled, kind):
    for seed, (layers, ids, padded) in enumerate([(2, True, True), (3, False, False), (2, False, True)]):
        check_same(kind, T=6, B=4, E=5, H=7, ids=ids, padded=padded, bias=seed != 1, phi="tanh", seed=seed,
                   layers=layers)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_equals_python_float32_at_vector_widths(compiled, kind):
    """H = 16, 33 and 64 cover whole vectors and a partial last vector (AVX2: 8 floats, AVX512: 16)."""
    for seed, H in enumerate((16, 33, 64)):
        check_same(kind, tol=1e-5, T=9, B=5, E=6, H=H, ids=False, padded=True, bias=True, phi="tanh", seed=seed,
                   dtype=torch.float32)


def test_backward_twice_with_retain_buffers(compiled):
    """The compiled backward writes dp over its saved gates, like the Python one: retain_buffers keeps them."""
    cell = make_cell("gru", 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    with retain_buffers():
        out, _ = unroll(cell, x, backward="manual", engine="compiled")
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in cell.parameters()]
    out.sum().backward()
    for g1, p in zip(first, cell.parameters()):
        torch.testing.assert_close(p.grad, 2 * g1, rtol=1e-14, atol=0)
    out, _ = unroll(cell, x, backward="manual", engine="compiled")
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_buffers"):
        out.sum().backward()


def test_auto_falls_back_to_python_with_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(engines, "_state", {"error": "g++ not found"})
    w = torch.zeros(1)
    assert engines.resolve("auto", w) == "python"
    assert engines.resolve(None, w) == "python"  # RNNLAB_ENGINE unset or auto in this test run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "g++ not found" in err and "Python time loop" in err
    with pytest.raises(RuntimeError, match="g.. not found"):
        engines.resolve("compiled", w)
    assert engines.resolve("python", w) == "python"


def test_cuda_and_other_dtypes_take_the_python_loop(compiled):
    assert engines.resolve("auto", torch.zeros(1, device="meta")) == "python"  # not a CPU tensor
    assert engines.resolve("compiled", torch.zeros(1, device="meta")) == "python"
    assert engines.resolve("auto", torch.zeros(1, dtype=torch.bfloat16)) == "python"
    with pytest.raises(ValueError, match="float32 and float64"):
        engines.resolve("compiled", torch.zeros(1, dtype=torch.bfloat16))
    assert engines.resolve("auto", torch.zeros(1)) == "compiled"


def test_engine_setting_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.resolve("fast", torch.zeros(1))
    monkeypatch.setenv("RNNLAB_ENGINE", "fast")
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.resolve(None, torch.zeros(1))
    with pytest.raises(UserError, match="--engine fast"):
        Config(engine="fast").validate()
    assert Config().to_dict()["engine"] == "auto"  # written into each run's config.json


def test_train_takes_engine_from_flag_or_environment(monkeypatch):
    from rnnlab.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "x.tsv", "--engine", "python"])
    assert args.engine == "python"
    assert build_parser().parse_args(["train", "--data", "x.tsv"]).engine is None  # then RNNLAB_ENGINE, else auto


def test_compiled_loop_built_under_ci():
    """CI must build the compiled loop (make test does, on first use): a silent fallback would leave it untested."""
    if os.environ.get("CI") != "true":
        pytest.skip("checked only under CI=true; elsewhere engine='auto' may fall back to Python")
    assert engines.available(), f"the compiled time loop did not build: {engines._state.get('error')}"


def test_a_run_records_its_engine_and_resumes_on_another(compiled, tmp_path):
    """config.json says which engine was asked for; resuming on the other one is allowed (same maths)."""
    import json

    from rnnlab.train import train
    from tests.test_train import quiet, sentiment_tsv, tiny

    data, out = sentiment_tsv(tmp_path), tmp_path / "run"
    train(tiny(epochs=1, engine="python"), data, out, log=quiet, plots=False)
    assert json.loads((out / "config.json").read_text())["engine"] == "python"
    resumed = train(tiny(epochs=1, engine="compiled"), data, out, resume=True, log=quiet, plots=False)
    assert len(resumed.history) == 1  # nothing left to train, but not refused
    with pytest.raises(UserError, match="different settings"):  # a real change still is
        train(tiny(epochs=1, engine="compiled", hidden=9), data, out, resume=True, log=quiet, plots=False)


@pytest.mark.parametrize("kind,H", [("rnn", 256), ("lstm", 128), ("gru", 128), ("gru", 160)])
def test_compiled_equals_python_float32_through_onednn(compiled, kind, H):
    """Sizes where each step's product goes to oneDNN (rnnlab.gemm's rule for the compiled loop:
    B H G H >= MIN_MACS_STEP = 2^21 multiply-adds; the GRU at H = 128 is 3 * 2^20), with the weight
    reordered once for it."""
    from rnnlab.gemm import _onednn_works
    from rnnlab.recurrent import STEP_ONEDNN, _step_path

    assert (_step_path(make_cell(kind, 8, H), 64) == STEP_ONEDNN) == _onednn_works()  # reaches oneDNN where it works
    check_same(kind, tol=1e-5, T=3, B=64, E=8, H=H, ids=False, padded=True, bias=True, phi="tanh", seed=5,
               dtype=torch.float32)


def test_the_step_product_calls_mkl_directly_where_torch_has_it(compiled):
    """Small products go to MKL's sgemm_/dgemm_, found in torch's own library (no dispatcher per step);
    oneDNN takes float32 from 2^21 multiply-adds on. PyPI's x86 torch is built on MKL and exports them."""
    from rnnlab.recurrent import STEP_ATEN, STEP_BLAS, STEP_ONEDNN, _has_blas, _step_path

    assert _has_blas(False) == _has_blas(True) == torch.backends.mkl.is_available()
    direct = STEP_BLAS if torch.backends.mkl.is_available() else STEP_ATEN
    for dtype in (torch.float32, torch.float64):
        assert _step_path(make_cell("lstm", 8, 32, dtype=dtype), 64) == direct  # 2^18 multiply-adds
        assert _step_path(make_cell("rnn", 8, 128, dtype=dtype), 64) == direct  # 2^20: oneDNN measured slower
    big = _step_path(make_cell("gru", 8, 128, dtype=torch.float32), 64)  # 3 * 2^20
    assert big == (STEP_ONEDNN if gemm._onednn_works() else direct)
    assert _step_path(make_cell("gru", 8, 128, dtype=torch.float64), 64) == direct  # oneDNN: float32 only


@pytest.mark.parametrize("path", ["aten", "blas", "onednn"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_every_step_product_path_equals_python(compiled, monkeypatch, kind, path):
    """Each way the loop can make a step's product, forced at a small size: ATen's mm (the fallback where
    torch exports no MKL gemm), MKL directly (float64 to 1e-12; y += x W^T on padded batches and in the
    GRU's backward), oneDNN (float32)."""
    from rnnlab import recurrent

    code = {"aten": recurrent.STEP_ATEN, "blas": recurrent.STEP_BLAS, "onednn": recurrent.STEP_ONEDNN}[path]
    if path == "blas" and not recurrent._has_blas(True):
        pytest.skip("this torch exports no MKL gemm: the loop runs on ATen's mm, tested above")
    if path == "onednn" and not gemm._onednn_works():
        pytest.skip("oneDNN does not work here: the loop never chooses it")
    monkeypatch.setattr(recurrent, "_step_path", lambda cell, B: code)
    dtypes = [torch.float32] if path == "onednn" else [torch.float64, torch.float32]
    for seed, dtype in enumerate(dtypes):
        check_same(kind, tol=1e-12 if dtype == torch.float64 else 1e-5, T=5, B=6, E=4, H=19, ids=False,
                   padded=True, bias=True, phi="tanh", seed=seed, dtype=dtype)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_a_transposed_final_state_gradient_reaches_the_loop_as_rows(compiled, kind):
    """A loss on s_T.t() sends back a gradient with transposed strides; the C++ loop reads rows of B x H,
    so it must get a contiguous copy (it once read the transposed storage: errors of order 10)."""
    B, H, T, E = 3, 5, 4, 2  # B != H: a stride mix-up cannot cancel out
    grads = {}
    for engine in ("python", "compiled"):
        g = torch.Generator().manual_seed(7)
        cell = make_cell(kind, E, H, generator=g, dtype=torch.float64)
        x = torch.randn(B, T, E, generator=g, dtype=torch.float64)
        R = torch.randn(H, B, generator=g, dtype=torch.float64)
        _, final = unroll(cell, x, None, None, "manual", engine=engine)
        loss = sum((s.t() * R).sum() for s in final)  # d loss / d s_T = R^T, as a transposed view
        loss.backward()
        grads[engine] = [p.grad for p in cell.parameters() if p is not None]
    for got, ref in zip(grads["compiled"], grads["python"]):
        assert rel_err(got, ref) <= 1e-12


def test_a_lock_left_by_a_killed_build_never_hangs(monkeypatch, tmp_path):
    """torch's builder waits without end while its `lock` file exists: a fresh lock means another process
    is building (this one runs the Python loop, with the notice); an old one was left by a killed build."""
    import time
    from types import SimpleNamespace

    loaded = []
    ops = SimpleNamespace(load_library=loaded.append)  # this process has the real loop loaded: a stand-in
    monkeypatch.setattr(engines, "torch", SimpleNamespace(ops=ops))
    monkeypatch.setattr(engines, "cache_dir", lambda: tmp_path)
    (tmp_path / "lock").touch()
    (tmp_path / "rnnlab_loop.so").touch()
    with pytest.raises(RuntimeError, match="another process is compiling the time loop now"):
        engines._build()
    assert loaded == []  # not loaded while another process may be writing it
    old = time.time() - engines.STALE_LOCK_S - 60
    os.utime(tmp_path / "lock", (old, old))
    ops.rnnlab_loop = SimpleNamespace()  # what load_library would register
    engines._build()  # the stale lock is removed and the built library loaded
    assert loaded == [str(tmp_path / "rnnlab_loop.so")] and not (tmp_path / "lock").exists()

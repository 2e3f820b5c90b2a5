"""The compiled time loop (engine="compiled") against the Python hand BPTT it was written from.

Tolerance: float64, 1e-12 relative to each tensor's scale (max|compiled - python| <= 1e-12 max|python|),
on outputs, final states and every gradient (W, U, b, b_hn, the initial states, dx); the two differ
only in rounding (SLEEF's exp/tanh, the order of a few products). float32: 1e-5 of the scale.
Random shapes (seeded loops), padded batches, token ids and vectors, bias off, relu, stacked layers.
The comparisons with torch.nn and torch.autograd.gradcheck run on both engines in tests/test_cells.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from rnnlab import engine as engines
from rnnlab import gemm
from rnnlab.cells import make_cell
from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.recurrent import embedding, retain_buffers, unroll, unroll_layers
from tests.conftest import require_compiled


@pytest.fixture
def compiled():
    require_compiled()


@contextlib.contextmanager
def threads(n: int):
    """torch.set_num_threads(n) inside the block, the previous count restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_equals_python_where_the_weights_rows_are_padded(compiled, kind, dtype):
    """H = 128: every step product's B (W^T forward, W backward) has rows a multiple of 512 bytes long and more
    than 32 KB in all, so the loop reads a copy with padded rows (padded_rows in csrc/loop.cpp)."""
    check_same(kind, tol=1e-12 if dtype == torch.float64 else 1e-5, T=3, B=3, E=5, H=128, ids=False, padded=True,
               bias=True, phi="tanh", seed=7, dtype=dtype)


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


@pytest.mark.parametrize("kind,H", [("rnn", 256), ("lstm", 128), ("gru", 160), ("lstm", 512)])
def test_compiled_equals_python_float32_at_training_sizes(compiled, kind, H):
    """B = 64 at training sizes: the micro-GEMM over many panels of columns and a partial one (GRU 160:
    G*H = 480), its B in padded rows (RNN 256, LSTM 128 and 512), and the split of large products."""
    with threads(2):  # products of >= 2^22 multiply-adds are split over the threads
        check_same(kind, tol=1e-5, T=3, B=64, E=8, H=H, ids=False, padded=True, bias=True, phi="tanh", seed=5,
                   dtype=torch.float32)


def test_compiled_takes_inputs_whose_features_are_not_adjacent(compiled):
    """x permuted from (E, T, B): its (T*B, E) reshape is a view whose columns are T*B apart."""
    g = torch.Generator().manual_seed(11)
    grads = {}
    for engine in ("python", "compiled"):
        cell = make_cell("lstm", 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        z = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
        x = z.permute(1, 2, 0)  # (T, B, E), time-major
        out, _ = unroll(cell, x, backward="manual", batch_first=False, engine=engine)
        (out * torch.randn(out.shape, generator=g.manual_seed(3), dtype=torch.float64)).sum().backward()
        grads[engine] = [out.detach(), z.grad, *(p.grad for p in cell.parameters())]
    for a, b in zip(grads["compiled"], grads["python"]):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_all_steps_products_through_the_libraries_above_micro_max_macs(compiled, monkeypatch, kind):
    """Input projections, dx and weight gradients of more than MICRO_MAX_MACS multiply-adds go to rnnlab.gemm
    (oneDNN / torch's BLAS) instead of the micro-GEMM: forced here at a small size."""
    from rnnlab import recurrent

    monkeypatch.setattr(recurrent, "MICRO_MAX_MACS", 0)
    for seed, dtype in enumerate((torch.float64, torch.float32)):
        check_same(kind, tol=1e-12 if dtype == torch.float64 else 1e-5, T=5, B=6, E=4, H=19, ids=False,
                   padded=True, bias=True, phi="tanh", seed=seed, dtype=dtype)


def test_the_step_product_is_the_micro_gemm_and_mkl_is_found_for_the_comparison(compiled):
    """The loop makes every step's product with its micro-GEMM (the other paths are for bench_step_gemm's
    comparison, tested below); MKL's sgemm_/dgemm_ are found in torch's own library where it is built on MKL,
    as PyPI's x86 torch is."""
    from rnnlab.recurrent import STEP_MICRO, _has_blas, _step_path

    assert _step_path(make_cell("lstm", 8, 512), 64) == STEP_MICRO
    assert _has_blas(False) == _has_blas(True) == torch.backends.mkl.is_available()


@pytest.mark.parametrize("path", ["aten", "blas", "onednn", "micro"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_every_step_product_path_equals_python(compiled, monkeypatch, kind, path):
    """Each way the loop can make a step's product, forced at a small size: its micro-GEMM, ATen's mm,
    MKL directly (float64 to 1e-12; y += x W^T on padded batches and in the GRU's backward), oneDNN
    (float32)."""
    from rnnlab import recurrent

    code = {"aten": recurrent.STEP_ATEN, "blas": recurrent.STEP_BLAS, "onednn": recurrent.STEP_ONEDNN,
            "micro": recurrent.STEP_MICRO}[path]
    if path == "blas" and not recurrent._has_blas(True):
        pytest.skip("this torch exports no MKL gemm: the loop runs on ATen's mm, tested above")
    if path == "onednn" and not gemm._onednn_works():
        pytest.skip("oneDNN does not work here")
    monkeypatch.setattr(recurrent, "_step_path", lambda cell, B: code)
    dtypes = [torch.float32] if path == "onednn" else [torch.float64, torch.float32]
    for seed, dtype in enumerate(dtypes):
        check_same(kind, tol=1e-12 if dtype == torch.float64 else 1e-5, T=5, B=6, E=4, H=19, ids=False,
                   padded=True, bias=True, phi="tanh", seed=seed, dtype=dtype)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_micro_gemm_equals_torch_mm(compiled, dtype, n_threads):
    """The micro-GEMM's two entry points against torch.mm: a @ b (+ bias) and a^T @ b, random shapes that
    cover whole and partial vectors and panels, row tiles and their remainders, operands with rows further
    apart than their width (column slices) or columns not adjacent, blocks of C's rows and columns and of the
    summed k, empty dimensions, and, with 2 threads, the split of large products.
    float64 to 1e-12 of each product's scale; float32 to 1e-5."""
    ops = engines.load()
    g = torch.Generator().manual_seed(n_threads)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    with threads(n_threads):
        shapes = [tuple(int(torch.randint(1, 70, (1,), generator=g)) for _ in range(3)) for _ in range(12)]
        # (300, 160, 130): 2^22.6 multiply-adds, split over threads, in 2 blocks of C's rows (256 each);
        # (40, 24, 3000): a sum over 3000 rows in 12 blocks of 256; (70, 300, 500): 2 blocks of C's columns,
        # each a thread's, and 2 of k (the bias added in the first only); (200, 100, 3000) and (300, 70, 1000):
        # >= 2^24, so mm_tn copies A^T's k-blocks (whole and partial, of 256 rows and fewer) into padded rows;
        # (100, 300, 600): the same for two blocks of C's columns (in one band of rows on one thread, as two
        # blocks on two); (300, 300, 200): two bands of rows, each across two blocks of columns
        shapes += [(1, 1, 1), (64, 128, 32), (300, 160, 130), (40, 24, 3000), (200, 100, 3000), (70, 300, 500),
                   (300, 70, 1000), (100, 300, 600), (300, 300, 200)]
        for M, N, K in shapes:
            a = torch.randn(M, K + 3, generator=g, dtype=dtype)[:, 1 : K + 1]  # rows K + 3 apart
            b = torch.randn(K, N + 4, generator=g, dtype=dtype)[:, 2 : N + 2]  # rows N + 4 apart
            bias = torch.randn(N, generator=g, dtype=dtype)
            kept = bias.clone()
            for got, want in ((ops.mm(a, b, None), a @ b), (ops.mm(a, b, bias), a @ b + bias),
                              (ops.mm_tn(a.t().contiguous(), b), a @ b)):
                assert got.shape == want.shape
                assert rel_err(got, want) <= tol, (M, N, K)
            assert torch.equal(bias, kept)  # the bias is read, never written (M = 1 once aliased it)
            at = torch.randn(K, M + 5, generator=g, dtype=dtype)[:, 2 : M + 2]  # a^T with rows M + 5 apart
            assert rel_err(ops.mm_tn(at, b), at.t() @ b) <= tol, (M, N, K)
            # into rows 1..M of a larger matrix (the GRU's dW in two row blocks), with the column sums of at
            # (db = sum_t dp_t) added up in the same pass; the rows around are left alone
            out, sums = torch.full((M + 2, N), 7.0, dtype=dtype), torch.full((M,), 7.0, dtype=dtype)
            assert ops.mm_tn(at, b, out[1 : M + 1], sums).data_ptr() == out[1].data_ptr()
            assert rel_err(out[1 : M + 1], at.t() @ b) <= tol and rel_err(sums, at.sum(0)) <= tol, (M, N, K)
            assert (out[0] == 7).all() and (out[-1] == 7).all()
            # mm_tn2: a^T b and a^T b2 from one pass over a (dW and dU from dp), b2 of another width
            b2 = torch.randn(K, N + 20, generator=g, dtype=dtype)[:, 3:]
            c, c2 = ops.mm_tn2(at, b, b2, sums)
            assert rel_err(c, at.t() @ b) <= tol and rel_err(c2, at.t() @ b2) <= tol, (M, N, K)
            assert rel_err(sums, at.sum(0)) <= tol
        # columns not adjacent (permuted features): copied first, not refused; mm's b (here U^T, 1 KB rows) into
        # padded rows
        a, b = torch.randn(9, 7, generator=g, dtype=dtype).t(), torch.randn(5, 9, generator=g, dtype=dtype).t()
        assert rel_err(ops.mm(a, b, None), a @ b) <= tol and rel_err(ops.mm_tn(b, b), b.t() @ b) <= tol
        a, U = torch.randn(70, 40, generator=g, dtype=dtype), torch.randn(1024 // a.element_size(), 40, generator=g,
                                                                          dtype=dtype)
        assert rel_err(ops.mm(a, U.t(), None), a @ U.t()) <= tol
        # empty sums are zeros; empty results are empty (no division by a zero size)
        for M, N, K in ((3, 4, 0), (0, 4, 5), (3, 0, 5), (0, 0, 0)):
            a, b, bias = torch.randn(M, K, dtype=dtype), torch.randn(K, N, dtype=dtype), torch.randn(N, dtype=dtype)
            assert torch.equal(ops.mm(a, b, None), torch.zeros(M, N, dtype=dtype))
            assert torch.equal(ops.mm(a, b, bias), bias.expand(M, N))
            at, bt = torch.randn(K, M, dtype=dtype), torch.randn(K, N, dtype=dtype)  # a sum over K rows
            assert torch.equal(ops.mm_tn(at, bt), torch.zeros(M, N, dtype=dtype) if K == 0 else at.t() @ bt)
            sums = torch.full((M,), 7.0, dtype=dtype)  # N = 0 leaves no block of C to add them up beside
            ops.mm_tn(at, bt, None, sums)
            torch.testing.assert_close(sums, at.sum(0), rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", range(4))
def test_the_embeddings_gradient_equals_torchs_and_gradcheck(compiled, seed):
    """embedding(..., backward="manual") on the compiled engine: E's gradient (the engine's embedding_backward)
    equals torch's dense embedding backward (float64, 1e-12; ids repeated, int64 and int32, transposed (T, B)
    views) and passes gradcheck; the autograd path and the Python engine keep torch's own backward."""
    g = torch.Generator().manual_seed(seed)
    V, D = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
    B, T = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
    ids = torch.randint(0, V, (B, T), generator=g).t()  # (T, B), not contiguous, as the models pass them
    E = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    want = torch.autograd.grad((torch.nn.functional.embedding(ids, E) * r).sum(), E)[0]
    for i in (ids, ids.int()):
        x = embedding(i, E, "manual", "compiled")
        assert x.grad_fn.name() == "_EmbeddingBackward" and torch.equal(x, E.detach()[ids])
        assert rel_err(torch.autograd.grad((x * r).sum(), E)[0], want) <= 1e-12
    for backward, engine in (("autograd", "compiled"), ("manual", "python")):
        assert embedding(ids, E, backward, engine).grad_fn.name() == "EmbeddingBackward0"
    assert torch.autograd.gradcheck(lambda e: embedding(ids, e, "manual", "compiled"), (E,))
    with pytest.raises(RuntimeError, match="outside"):  # a bad id is refused, never written past dE
        engines.load().embedding_backward(r, ids + V, V)
    with pytest.raises(RuntimeError, match="ids.shape"):  # gradients for fewer (or more) positions than ids
        engines.load().embedding_backward(r[:, :-1] if B > 1 else r[:-1], ids, V)
    g1 = torch.autograd.grad((embedding(ids, E, "manual", "compiled") ** 2).sum(), E, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="once_differentiable"):  # a second derivative: refused, not lost
        g1.sum().backward()


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


def test_the_loops_float32_tanh_is_within_7_ulp_of_the_exact_tanh(compiled):
    """The compiled loop's float32 tanh is a rational approximation (csrc/loop.cpp, Eigen's): against tanh
    in float64, rounded, over 4M points of [-10, 10], 400k of either sign from 1e-30 to 10, and every
    97th float32 bit pattern; exact at 0 and -0, within 3e-7 of +-1 at +-inf, NaN stays NaN. float64 keeps
    SLEEF's (torch's)."""
    ops = engines.load()
    span = torch.logspace(-30, 1, 200_001)
    bits = torch.arange(0, 2**31, 97, dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([torch.linspace(-10, 10, 4_000_001), span, -span, bits[torch.isfinite(bits)]]).float()
    exact = torch.tanh(x.double())
    ulp = torch.nextafter(exact.float().abs(), torch.tensor(float("inf"))).double() - exact.float().abs().double()
    got = ops.tanh(x)
    assert float(((got.double() - exact).abs() / ulp).max()) <= 7  # measured 4.6 with FMA (AVX2, AVX-512), 6.6 without
    assert float(got.abs().max()) <= 1  # never past the asymptotes (it saturates at 1 - 4 ulp)
    special = ops.tanh(torch.tensor([0.0, -0.0, float("inf"), -float("inf")]))
    assert torch.equal(special[:2], torch.tensor([0.0, -0.0]))
    assert float((special[2:] - torch.tensor([1.0, -1.0])).abs().max()) <= 3e-7
    assert bool(torch.isnan(ops.tanh(torch.full((17,), float("nan")))).all())
    x64 = torch.randn(1000, dtype=torch.float64) * 3
    assert rel_err(ops.tanh(x64), torch.tanh(x64)) <= 1e-15


def test_the_loop_runs_parallel_work_on_torchs_threads_with_one_openmp_runtime(compiled):
    """Built with -fopenmp, at::parallel_for in the loop (the micro-GEMM's split of large products) uses
    torch.set_num_threads threads (without it the pragmas compile away and it ran on one); and the process
    holds a single libgomp, torch's own (two OpenMP runtimes in one process oversubscribe the cores)."""
    import re
    from pathlib import Path

    ops = engines.load()
    with threads(2):
        assert ops.parallel_threads() == 2
    with threads(1):
        assert ops.parallel_threads() == 1
    runtimes = set(re.findall(r"\S*lib(?:g|i)?omp\S*", Path("/proc/self/maps").read_text()))  # GNU, Intel, LLVM
    assert len(runtimes) <= 1, runtimes

"""Unrolling a cell over time, with masks, and its hand-written backpropagation through time.

To read the backward first, read a cell's `reference_backward` in `cells.py`: the whole BPTT of one
cell in one plain loop over t. This file holds the fast version of it (backward="manual") and the
unroll that both paths share.

`unroll(cell, x, state, lengths, backward)` runs any cell of `cells.py` over a batch of sequences:

    p_t = U x_t + b                for all t at once: one matmul (dense x) or a column lookup (ids)
    s_t = cell.step(p_t, s_{t-1})  for t = 1..T; padded steps (t > length) keep s_{t-1} unchanged

and returns the outputs s_1..s_T (zero at padded steps, as torch's packed sequences give) and each
sequence's state at its true last step. Two backward paths give the same gradients:

- backward="autograd": the loop is made of differentiable torch ops; `loss.backward()` does the rest,
  exactly what the lab handout does.
- backward="manual": the loop runs without autograd (`manual_forward`), writing into preallocated
  buffers what the derivative needs; the backward is our BPTT: the time loop is `bptt`, which calls
  the cells' `backward_t` step by step, and `_ManualBPTT.backward` sets it up and turns its results
  into weight gradients. `_ManualBPTT` is a `torch.autograd.Function` only so that it plugs into the
  rest of a model (embedding, output layer, loss) and can be checked with `torch.autograd.gradcheck`.
  `engine` picks who runs the time loop: this file's Python (engine="python", the readable reference)
  or the same equations compiled (engine="compiled": `compiled_forward` / `compiled_bptt`, see
  `rnnlab.engine` and csrc/loop.cpp); "auto" (the default, or RNNLAB_ENGINE) takes the compiled loop
  on the CPU where it builds.

BPTT, for gradients ds_t arriving from the loss (through the outputs and the final state):
    for t = T..1:   cell.backward_t(t - 1, ds_t, buf) writes dp_t and dgh_t into buf, and into
                                                       buf.dh_prev ds_{t-1} = W^T dgh_t + (the cell's
                                                       direct path from s_{t-1}, e.g. the GRU's z_t ds_t)
                    (padded rows: backward_t sees a zero gradient, and ds_t passes to s_{t-1} unchanged;
                    the code counts steps from 0: its step t maps s_t to s_{t+1})
    dW = sum_t dgh_t^T s_{t-1}     dU = sum_t dp_t^T x_t     db = sum_t dp_t       (one matmul each)

The manual backward writes each dp_t over the local derivatives of step t as soon as it has read
them, so it needs no (T, B, G*H) buffer of its own (the measured peak memory is at or below
torch.nn's: README, Speed); the price is one backward per forward, unless the forward runs inside
`retain_buffers()`.

`unroll_layers` stacks layers as torch.nn's num_layers does, one `unroll` per layer. `Recurrent` wraps
it in the calling convention of `torch.nn.RNN` / `LSTM` / `GRU` (num_layers and dropout between layers
included), and converts weights to and from those modules (`from_torch`, `.to_torch()`).
Left out: bidirectional layers, `proj_size`, PackedSequence objects (pass lengths).
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch

from rnnlab import choices
from rnnlab import engine as engines
from rnnlab.cells import Buffers, Cell, State, make_cell
from rnnlab.gemm import linear

BACKWARDS = choices.BACKWARDS


def _mask(lengths: torch.Tensor | None, T: int, B: int, device) -> torch.Tensor | None:
    """(T, B, 1) bool, True where step t is inside sequence b; None when no sequence is padded."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    assert lengths.shape == (B,), f"lengths must have shape ({B},), got {tuple(lengths.shape)}"
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"every length must be in 1..{T}, got {lengths.tolist()}")
    if bool((lengths == T).all()):
        return None
    return (torch.arange(T, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)


def input_projection(cell: Cell, x: torch.Tensor) -> torch.Tensor:
    """p_t = U x_t + b for every step at once, from time-major x: (T, B) ids or (T, B, E); (T, B, G*H).

    Token ids select columns of U: U @ onehot(id) == U[:, id]. The lookup gives the same numbers as
    the one-hot product (a test checks it) without building a (V, B*T) one-hot matrix.
    """
    if x.dtype in (torch.int64, torch.int32):
        p = cell.U.t()[x].contiguous()  # (T, B, G*H): column lookup of U
        return p if cell.b is None else p + cell.b
    T, B, E = x.shape
    return linear(x.reshape(T * B, E), cell.U, cell.b).view(T, B, -1)  # one matmul for every step


def _keep_padded(mask_t: torch.Tensor | None, new: State, old: State) -> State:
    """Padded rows keep their old state: s_t = m_t s_t + (1 - m_t) s_{t-1}."""
    if mask_t is None:
        return new
    return tuple(torch.where(mask_t, n, o) for n, o in zip(new, old))


def unroll(cell: Cell, x: torch.Tensor, state: State | None = None, lengths: torch.Tensor | None = None,
           backward: str = "autograd", batch_first: bool = True, engine: str | None = None,
           ) -> tuple[torch.Tensor, State]:
    """Run `cell` over x: (B, T) token ids or (B, T, E) vectors, or (T, B) / (T, B, E) with
    batch_first=False (time-major, which the loop uses: no transposed copy is made).

    Returns outputs (T, B, H), time-major and zero at padded steps, and the final state, a tuple of
    (B, H) tensors taken at each sequence's last real step. `state=None` starts from zeros.
    `engine` ("auto", "python", "compiled"; None reads RNNLAB_ENGINE) runs backward="manual"'s loop.
    """
    if x.dim() not in (2, 3) or (x.dim() == 2 and x.is_floating_point()):
        raise ValueError(f"x must be (B, T) integer token ids or (B, T, E) vectors, got {x.dtype} {tuple(x.shape)}")
    if x.dim() == 2 and x.dtype not in (torch.int64, torch.int32):
        x = x.long()  # uint8, int16 ... ids
    x = x.transpose(0, 1) if batch_first else x  # time-major (T, B[, E]): a view
    T, B = x.shape[:2]
    if T < 1:
        raise ValueError("cannot unroll over an empty sequence (T = 0)")
    if x.dim() == 3:
        assert x.shape[2] == cell.input_size, f"x has {x.shape[2]} features, the cell expects {cell.input_size}"
    state = cell.zero_state(B) if state is None else tuple(state)
    mask = _mask(lengths, T, B, x.device)
    if backward == "manual":
        which = engines.resolve(engine, cell.W)
        out = _ManualBPTT.apply(cell, x, mask, which, len(state), *state, *cell.parameters())
        return out[0], tuple(out[1:])
    if backward != "autograd":
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    p = input_projection(cell, x)  # (T, B, G*H)
    outputs = []
    for t in range(T):
        new = cell.step(p[t], state)
        state = _keep_padded(None if mask is None else mask[t], new, state)
        outputs.append(state[0])
    out = torch.stack(outputs)  # (T, B, H)
    return (out if mask is None else out * mask), state


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted dropout: x * m / (1 - p), m ~ Bernoulli(1 - p) elementwise, masks drawn from `generator`."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=generator.device) >= p
    return x * keep.to(x.device, x.dtype) / (1 - p)


class _Embedding(torch.autograd.Function):
    """x = E[ids]; backward dE = sum_r onehot(id_r) d_r^T by the compiled engine's embedding_backward."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.V = E.shape[0]
        return torch.nn.functional.embedding(ids, E)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the op has no backward itself: 2nd derivatives refused, not lost
    def backward(ctx, d: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return None, engines.load().embedding_backward(d, ids.long(), ctx.V)


def embedding(ids: torch.Tensor, E: torch.Tensor, backward: str = "autograd", engine: str | None = None
              ) -> torch.Tensor:
    """x = E[ids], (*ids.shape, D): the embedding lookup (F.embedding). Its gradient is
    dE = sum_r onehot(id_r) d_r^T, a (V, D) matrix of zeros with the gradient of each looked-up row added in.
    With backward="manual" on the compiled engine (`engine` as `unroll`'s), that is csrc/loop.cpp's
    embedding_backward (one memset and a vectorised row add per id; torch's dense embedding backward took
    0.67 ms against its 0.32 for a 5,000 x 512 E and 2,048 ids, one thread, caches cold; scratch timings);
    otherwise torch's own, as the handout's autograd does."""
    if backward == "manual" and E.requires_grad and torch.is_grad_enabled() and \
            engines.resolve(engine, E) == "compiled":
        return _Embedding.apply(ids, E)
    return torch.nn.functional.embedding(ids, E)


def drop_weights(cell: Cell, p: float, generator: torch.Generator) -> Cell:
    """DropConnect on the recurrent weights (Wan et al. 2013; AWD-LSTM's weight drop, Merity et al. 2017):
    a copy of `cell` whose W is W * m / (1 - p), m ~ Bernoulli(1 - p) for each entry of W, drawn once and
    used at every time step and by every row of the batch (of this process: under torchrun each rank
    draws its own, see distributed.py). Dropout on s_{t-1} itself would disturb the
    memory at each step; dropping weights regularises the recurrence and leaves s_t alone.

    W * m / (1 - p) is an autograd expression, so the gradient reaching the weight is, by the chain rule,
    dL/dW = dL/dW_eff * m / (1 - p): the hand BPTT (and the compiled loop) see W_eff as the cell's W and
    need no change, and dropped entries get no gradient this step."""
    dropped = copy.copy(cell)  # shares U, b and the rest; only W differs
    dropped.W = dropout(cell.W, p, generator)
    return dropped


def unroll_layers(cells: list[Cell], x: torch.Tensor, states: list[State] | None = None,
                  lengths: torch.Tensor | None = None, backward: str = "autograd",
                  dropout_between: tuple[float, torch.Generator] | None = None,
                  batch_first: bool = True, engine: str | None = None,
                  weight_drop: tuple[float, torch.Generator] | None = None) -> tuple[torch.Tensor, list[State]]:
    """Stacked layers, as torch.nn's num_layers: the outputs s^l_1..s^l_T of layer l are the inputs of
    layer l + 1, each layer one `unroll` (so with backward="manual" the hand BPTT runs layer by layer,
    top layer first). dropout_between = (p, generator) drops layer l's outputs before layer l + 1 reads
    them (training only; not after the last layer, as torch.nn). weight_drop = (p, generator) runs each
    layer on `drop_weights(cell, p, generator)` (training only). Returns the top layer's outputs
    (T, B, H), time-major, and each layer's final state, bottom first."""
    finals = []
    for layer, cell in enumerate(cells):
        if weight_drop is not None:
            cell = drop_weights(cell, *weight_drop)  # this layer's W * m / (1 - p) for the whole chunk
        if layer > 0 and dropout_between is not None:
            x = dropout(x, *dropout_between)
        x, state = unroll(cell, x, None if states is None else states[layer], lengths, backward,
                          batch_first=batch_first and layer == 0, engine=engine)  # layer 0's outputs are time-major
        finals.append(state)
    return x, finals


_retain_buffers = False


@contextlib.contextmanager
def retain_buffers():
    """Manual forwards run inside keep their saved buffers through backward, so the graph can be
    differentiated more than once (retain_graph=True, torch.autograd.gradcheck). Costs one extra
    (T, B, G*H) buffer per backward; training does not need it. It is read when the forward runs,
    and it is a process-wide switch (not per thread)."""
    global _retain_buffers
    previous, _retain_buffers = _retain_buffers, True
    try:
        yield
    finally:
        _retain_buffers = previous


def manual_forward(cell: Cell, x: torch.Tensor, state: State | None = None,
                   mask: torch.Tensor | None = None) -> Buffers:
    """The manual forward pass without autograd: time-major x ((T, B) ids or (T, B, E)) -> the cell's
    buffers, with s_0..s_T in `buf.h` (and c_0..c_T in `buf.c` for the LSTM) and the cell's gate
    activations (see `Cell.activations`). Padded rows (mask False) keep s_{t-1}."""
    T, B = x.shape[:2]
    buf = cell.buffers(input_projection(cell, x))  # starts from U x_t + b for every t   (T, B, G*H)
    state = cell.zero_state(B) if state is None else state
    buf.h[0] = state[0]
    if cell.n_states == 2:
        buf.c[0] = state[1]
    for t in range(T):
        cell.forward_t(t, buf)  # writes s_{t+1} into buf.h[t + 1] (and c_{t+1} into buf.c[t + 1])
        if mask is not None:  # padded rows keep s_t
            torch.where(mask[t], buf.h_t[t + 1], buf.h_t[t], out=buf.h_t[t + 1])
            if cell.n_states == 2:
                torch.where(mask[t], buf.c_t[t + 1], buf.c_t[t], out=buf.c_t[t + 1])
    return buf


def bptt(cell: Cell, buf: Buffers, dh: torch.Tensor, d_out: torch.Tensor | None = None,
         mask: torch.Tensor | None = None, on_step=None) -> torch.Tensor:
    """The time loop of the hand-written backward, over buffers prepared by `local_derivatives` and
    `scratch`: dh = dL/ds_T (and buf.dc = dL/dc_T) in, dL/ds_0 out; dp_t and dgh_t land in buf.

    d_out (T, B, H), if given, is the gradient arriving at each output s_t. `on_step(t, dh, dc)`, if
    given, sees dL/ds_t (and dL/dc_t, else None) for t = T..1 before step t is undone; `rnnlab
    gradflow` records the gradient norms there. It must not change them. `dh` itself is overwritten (it
    serves as scratch for later steps): pass a copy if you need it afterwards."""
    if d_out is not None and mask is not None:
        d_out = d_out * mask  # padded outputs are constants (zero)
    not_mask = None if mask is None else ~mask
    dc = buf.dc if cell.n_states == 2 else None
    # invariant: entering step t (0-based: it maps s_t to s_{t+1}), dh = dL/ds_{t+1} (and buf.dc = dL/dc_{t+1});
    # leaving it, dL/ds_t (and dL/dc_t)
    for t in reversed(range(buf.h.shape[0] - 1)):
        if d_out is not None:
            dh += d_out[t]  # s_{t+1} also feeds the output d_out[t] belongs to
        if on_step is not None:
            on_step(t + 1, dh, dc)
        if mask is None:
            cell.backward_t(t, dh, buf)  # writes dp[t], dgh[t], and dL/ds_t (buf.dh_prev; buf.dc)
            dh, buf.dh_prev = buf.dh_prev, dh  # swap: dL/ds_t becomes the gradient to carry on
            continue
        # padded rows: s_{t+1} = s_t, so their gradient passes through unchanged
        m, keep = mask[t], not_mask[t]
        dc_keep = dc * keep if dc is not None else None
        if dc_keep is not None:
            dc.mul_(m)
        cell.backward_t(t, dh * m, buf)
        buf.dh_prev.addcmul_(dh, keep)
        if dc_keep is not None:
            dc.add_(dc_keep)
        dh, buf.dh_prev = buf.dh_prev, dh
    return dh


def _mask_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(T, B, 1) bool -> (T, B) uint8, contiguous, as the compiled loop reads it."""
    return None if mask is None else mask[..., 0].contiguous().view(torch.uint8)


STEP_ATEN, STEP_BLAS, STEP_ONEDNN, STEP_MICRO = 0, 1, 2, 3  # how the loop makes a step's product (csrc/loop.cpp)


def _step_path(cell: Cell, B: int) -> int:
    """How the compiled loop makes each step's product, forward (B, H) x (H, G*H) and backward
    (B, G*H) x (G*H, H): its own register-blocked micro-GEMM (csrc/loop.cpp), at every size and dtype.
    `python benchmarks/bench_step_gemm.py --unroll --hidden 32 128 256 512` times one layer's forward +
    backward with each path forced (stored in benchmarks/results/bench_step_gemm.txt): the micro-GEMM is the
    fastest at every H, oneDNN 1.5-7% slower at H = 512 (where the micro-GEMM needs W in padded rows; before
    them oneDNN was the faster there). The other paths, ATen's mm (STEP_ATEN), MKL's sgemm_/dgemm_ called
    directly (STEP_BLAS) and oneDNN (STEP_ONEDNN, its weight reordered once per sequence), are kept for that
    comparison; the benchmark sets them through this function."""
    return STEP_MICRO


@functools.cache
def _has_blas(f64: bool) -> bool:
    """Whether the compiled loop found MKL's gemm (dgemm_ for f64, else sgemm_) and it agreed with at::mm."""
    return bool(engines.load().has_blas(f64))


# All-steps products of more multiply-adds than this go to the libraries (rnnlab.gemm: oneDNN where it works):
# it is the largest size measured. `python benchmarks/bench_routing.py` (and `--threads 2`; stored in
# benchmarks/results/bench_routing.txt) times whole training steps of the compiled engine with every all-steps
# product on the micro-GEMM and with every one on the libraries: the micro-GEMM's step is faster in every
# workload (library / micro, one thread: RNN 1.30 and 1.09 at H = 128 and 512, LSTM 1.13 and 1.03, GRU 1.19
# and 1.10, the LM's 2 x LSTM 256 1.06; two threads 1.06-1.32). One product at a time (`python
# benchmarks/bench_step_gemm.py --all-steps`, benchmarks/results/bench_all_steps.txt), ms micro / library on
# one thread: the input projection x U^T (mm copies U^T into padded rows) at the LSTM's H = 128 1.09 / 1.09,
# at H = 512 (2^31) 19.6 / 17.7 (the one product the library makes faster alone; not in whole steps);
# dx = dp U 1.04 / 1.09 and 17.2 / 18.0; the weight gradients dp^T s (the library: oneDNN's backward-weights
# kernel, with its conversions) LSTM at 128 1.12 / 1.32, RNN at 512 4.33 / 4.96, GRU at 512 13.6 / 14.6,
# LSTM at 512 18.0 / 19.6, the LM's LSTM 256 (6400 rows) 15.1 / 16.7, an LSTM at 640 (3200 rows, 2^32.3,
# past the bound) 43.9 / 45.9.
MICRO_MAX_MACS = 1 << 32


def _micro_fits(M: int, K: int, N: int) -> bool:
    """Whether an all-steps (M, K) x (K, N) product is the micro-GEMM's: at most MICRO_MAX_MACS multiply-adds."""
    return M * K * N <= MICRO_MAX_MACS


def compiled_input_projection(cell: Cell, x: torch.Tensor) -> torch.Tensor:
    """`input_projection` with the compiled loop's micro-GEMM for vector inputs: (T, B, G*H), contiguous."""
    T, B = x.shape[:2]
    if x.dtype in (torch.int64, torch.int32) or not _micro_fits(T * B, *cell.U.shape):
        return input_projection(cell, x).contiguous()
    E = x.shape[2]
    U = cell.U.detach()
    b = None if cell.b is None else cell.b.detach()
    return engines.load().mm(x.reshape(T * B, E), U.t(), b).view(T, B, -1)  # x_t U^T + b (mm copies U^T)


def compiled_weight_grads(cell: Cell, buf: Buffers, h_prev: torch.Tensor, x: torch.Tensor | None) -> dict:
    """`cell.weight_grads` with the compiled loop's micro-GEMM: dW = sum_t dgh_t^T s_{t-1}, and for vector
    inputs dU = sum_t dp_t^T x_t and db = sum_t dp_t, added up while the same pass reads dp (for token ids
    db is left to `_ManualBPTT.backward`); it reads dp^T in place (no transposed copy). Products
    of more than MICRO_MAX_MACS multiply-adds go to `cell.weight_grads` (oneDNN's backward-weights kernel)."""
    H, GH = cell.hidden_size, buf.dp.shape[-1]
    dp = buf.dp.view(-1, GH)
    if not _micro_fits(dp.shape[0], GH, max(H, cell.input_size if x is not None else 0)):
        return cell.weight_grads(buf, h_prev, x)
    ops = engines.load()  # mm_tn(a, b, out, sums): out = a^T b, sums = a's column sums; mm_tn2: a^T b, a^T b2
    db = dp.new_empty(GH) if x is not None and cell.b is not None else None
    if cell.name == "gru":  # dgh = [dr, dz, dn * r]: its rz part is dp's, its n part is dgh_n
        dgh_n = buf.dgh_n.view(-1, H)
        dW, db_hn = dp.new_empty(GH, H), dp.new_empty(H)  # dW's rows [W_r; W_z] and W_n written in place
        ops.mm_tn(dp[:, : 2 * H], h_prev, dW[: 2 * H])
        ops.mm_tn(dgh_n, h_prev, dW[2 * H :], db_hn)  # db_hn = sum_t dn_t * r_t
        grads = {"W": dW, "b_hn": db_hn}
        if x is not None:
            grads["U"] = ops.mm_tn(dp, x, None, db)
    elif x is not None:  # dW and dU from one pass over dp
        grads = dict(zip(("W", "U"), ops.mm_tn2(dp, h_prev, x, db)))
    else:
        grads = {"W": ops.mm_tn(dp, h_prev)}
    if db is not None:
        grads["b"] = db
    return grads


def compiled_forward(cell: Cell, x: torch.Tensor, state: State, mask: torch.Tensor | None) -> dict:
    """`manual_forward` + `local_derivatives`, run by the compiled loop (csrc/loop.cpp): the same
    equations, one product and one fused point-wise pass per step. Returns the tensors its backward
    reads, by name: P (T, B, G*H) the gate activations, h (T + 1, B, H) s_0..s_T, and c, tc (LSTM:
    c_0..c_T and tanh(c_t)) or ghn (GRU: W_n s_{t-1} + b_hn)."""
    ops = engines.load()
    T, B = x.shape[:2]
    H = cell.hidden_size
    P = compiled_input_projection(cell, x)  # U x_t + b, overwritten with the gates
    W, m, path = cell.W.detach(), _mask_bytes(mask), _step_path(cell, B)
    h = P.new_empty(T + 1, B, H)
    h[0] = state[0]
    if cell.name == "rnn":
        ops.rnn_forward(P, h, W, m, cell.phi == "relu", path)
        return {"P": P, "h": h}
    if cell.name == "lstm":
        c, tc = P.new_empty(T + 1, B, H), P.new_empty(T, B, H)
        c[0] = state[1]
        ops.lstm_forward(P, h, c, tc, W, m, path)
        return {"P": P, "h": h, "c": c, "tc": tc}
    ghn = P.new_empty(T, B, H)
    b_hn = None if cell.b_hn is None else cell.b_hn.detach()
    ops.gru_forward(P, h, ghn, W, b_hn, m, path)
    return {"P": P, "h": h, "ghn": ghn}


def compiled_bptt(cell: Cell, saved: dict, dh: torch.Tensor, dc: torch.Tensor | None, d_out: torch.Tensor | None,
                  mask: torch.Tensor | None, W: torch.Tensor, reuse: bool) -> tuple[Buffers, State]:
    """`bptt` run by the compiled loop over what `compiled_forward` saved: dh = dL/ds_T (dc = dL/dc_T)
    in; buffers with dp (and dgh_n, GRU) for `weight_grads`, and dL/ds_0 (dL/dc_0) out. With `reuse`,
    dp is written over the saved gates (one backward per forward), as the Python loop does."""
    ops = engines.load()
    P, h = saved["P"], saved["h"]
    if reuse:  # C++ writes through pointers: tell autograd the saved gates change, so a second backward is refused
        torch.autograd.graph.increment_version(P)
    else:
        P = P.clone()
    W, m = W.detach(), _mask_bytes(mask)
    d_out = None if d_out is None else d_out.contiguous()
    path = _step_path(cell, h.shape[1])
    if cell.name == "rnn":
        d0 = (ops.rnn_backward(P, h, W, dh, d_out, m, cell.phi == "relu", path),)
        return Buffers(h=h, dp=P), d0
    if cell.name == "lstm":
        d0 = tuple(ops.lstm_backward(P, saved["c"], saved["tc"], W, dh, dc, d_out, m, path))
        return Buffers(h=h, dp=P), d0
    ghn = saved["ghn"] if reuse else saved["ghn"].clone()
    d0 = (ops.gru_backward(P, h, ghn, W, dh, d_out, m, path),)
    return Buffers(h=h, dp=P, dgh_n=ghn), d0  # ghn now holds dgh_n = dn * r


def backward_through_time(cell: Cell, buf: Buffers, dh_T: torch.Tensor | None, dc_T: torch.Tensor | None = None, *,
                          d_out: torch.Tensor | None = None, mask: torch.Tensor | None = None, on_step=None,
                          W: torch.Tensor | None = None, reuse: bool = True) -> State:
    """The Python engine's hand BPTT, from the buffers of `manual_forward` after `cell.local_derivatives(buf)`:
    the one entry into it, for `_ManualBPTT.backward` and for `rnnlab gradflow`, which watches it.

    dh_T = dL/ds_T and dc_T = dL/dc_T (LSTM) arrive at the final state (None: zero); d_out, mask and
    on_step are `bptt`'s. Returns dL/ds_0 (and dL/dc_0), and leaves dp_t (and dgh_t) in buf for the
    weight gradients. W is the forward's weight as saved with it (default: the cell's). With `reuse`,
    dp is written over the saved local derivatives (one backward per forward)."""
    T, B, H = buf.h.shape[0] - 1, buf.h.shape[1], buf.h.shape[2]
    cell.scratch(buf, T, B, cell.W if W is None else W, reuse=reuse)
    dh = dh_T.clone() if dh_T is not None else buf.h.new_zeros(B, H)  # bptt overwrites its dh
    if cell.n_states == 2 and dc_T is not None:
        buf.dc.copy_(dc_T)
    elif cell.n_states == 2:
        buf.dc.zero_()
    dh = bptt(cell, buf, dh, d_out, mask, on_step)  # dL/ds_0, and dp_t, dgh_t for every t in buf
    return (dh, buf.dc.clone()) if cell.n_states == 2 else (dh,)


class _ManualBPTT(torch.autograd.Function):
    """Forward without autograd into preallocated buffers; backward is the hand-derived BPTT. `engine`
    ("python" or "compiled", resolved by `rnnlab.engine.resolve`) says who runs the time loop."""

    @staticmethod
    def forward(ctx, cell: Cell, x, mask, engine: str, n_states: int, *state_and_params):
        """x is time-major: (T, B) ids or (T, B, E)."""
        state = state_and_params[:n_states]
        T, B = x.shape[:2]
        for s in state:
            assert s.dtype == cell.W.dtype and s.device == cell.W.device, "the state must match the weights"
        ctx.cell, ctx.mask, ctx.reuse, ctx.done, ctx.engine = cell, mask, not _retain_buffers, False, engine
        if engine == "compiled":
            saved = compiled_forward(cell, x, state, mask)
            ctx.names = tuple(saved)
            h = saved["h"]
            ctx.save_for_backward(x, cell.W, cell.U, *saved.values())
            final = (h[T].clone(),) if n_states == 1 else (h[T].clone(), saved["c"][T].clone())
        else:
            buf = manual_forward(cell, x, state, mask)
            cell.local_derivatives(buf)  # the gates' local derivatives, for all steps at once
            # (the local derivatives of padded steps come from states that the mask then discards; the
            # backward multiplies them by a zero gradient, so they never count)
            # saved through autograd: freed after backward (kept only with retain_graph), and W and U are
            # version-checked, so changing a weight between forward and backward is an error, not a wrong gradient
            ctx.save_for_backward(x, cell.W, cell.U, *(getattr(buf, name) for name in cell.saved))
            h = buf.h
            final = (h[T].clone(),) if n_states == 1 else (h[T].clone(), buf.c[T].clone())  # not views of out
        ctx.set_materialize_grads(False)
        out = h[1:] if mask is None else h[1:] * mask  # (T, B, H)
        return (out, *final)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, *d_final):
        cell, mask = ctx.cell, ctx.mask
        try:
            x, W, U, *saved = ctx.saved_tensors
        except RuntimeError as e:
            if not ctx.done:  # a tensor changed between forward and backward: autograd's message says which
                raise
            raise RuntimeError("backward='manual' writes its gradients over its saved buffers, so it supports one "
                               "backward per forward; run the forward inside `with rnnlab.retain_buffers():` "
                               "to backpropagate twice (retain_graph=True, gradcheck)") from e
        if ctx.engine == "compiled":
            h = saved[ctx.names.index("h")]
            T, B, H = h.shape[0] - 1, h.shape[1], h.shape[2]
            # gradients arriving at the final state; zeros where the caller did not use it
            # contiguous copies: the C++ loop reads rows of B x H (a transposed gradient keeps its strides in clone())
            dh = d_final[0].clone(memory_format=torch.contiguous_format) if d_final[0] is not None else \
                h.new_zeros(B, H)
            dc = None
            if cell.n_states == 2:
                dc = d_final[1].clone(memory_format=torch.contiguous_format) if d_final[1] is not None else \
                    h.new_zeros(B, H)
            buf, d_state0 = compiled_bptt(cell, dict(zip(ctx.names, saved)), dh, dc, d_out, mask, W, ctx.reuse)
        else:
            buf = Buffers(**dict(zip(cell.saved, saved)))
            T, B, H = buf.h.shape[0] - 1, buf.h.shape[1], buf.h.shape[2]
            d_state0 = backward_through_time(cell, buf, *d_final, d_out=d_out, mask=mask, W=W, reuse=ctx.reuse)
        GH = cell.n_gates * H
        # weight gradients: one matmul each over all steps
        dp = buf.dp.view(-1, GH)
        ids = x.dtype in (torch.int64, torch.int32)
        x2d = None if ids else x.reshape(T * B, x.shape[-1])  # time-major like dp
        # dW = sum_t dgh_t^T s_{t-1}; from vector inputs also dU = sum_t dp_t^T x_t and db = sum_t dp_t
        compiled = ctx.engine == "compiled"
        h_prev = buf.h[:-1].reshape(-1, H)  # s_0..s_{T-1}, time-major like dp
        grads = compiled_weight_grads(cell, buf, h_prev, x2d) if compiled else cell.weight_grads(buf, h_prev, x2d)
        dx = None
        if ids:  # dU[:, id] += dp_t for each token id
            dU_t = dp.new_zeros(cell.input_size, GH).index_add_(0, x.reshape(-1), dp)
            grads["U"] = dU_t.t()
        elif ctx.needs_input_grad[1]:  # dx_t = U^T dp_t, time-major like x
            micro = compiled and _micro_fits(dp.shape[0], *U.shape)
            dx = (engines.load().mm(dp, U.detach(), None) if micro else linear(dp, U.t().contiguous())).view(T, B, -1)
        if cell.b is not None and "b" not in grads:
            grads["b"] = dp.sum(dim=0)  # db = sum_t dp_t
        d_params = [grads.get(n) if p is not None else None for n, p in zip(cell.param_names, cell.parameters())]
        ctx.done = True
        return (None, dx, None, None, None, *d_state0, *d_params)


class Recurrent:
    """A recurrent layer, or a stack of them, called like `torch.nn.RNN` / `LSTM` / `GRU`:

        out, h_n = layer(x, h_0)            (RNN, GRU)
        out, (h_n, c_n) = layer(x, (h_0, c_0))   (LSTM)

    x is (T, B, E) or, with batch_first, (B, T, E); or unbatched (T, E). States are (N, B, H), one
    row per layer (N = num_layers), or (N, H) unbatched, as torch.nn's; `out` is the top layer's.
    With num_layers = N, layer l + 1 reads the outputs of layer l (`unroll_layers`); while training
    (`.train()`, the default, as torch.nn), `dropout` drops layer l's outputs before layer l + 1 reads
    them, not after the top layer, as torch.nn does; `.eval()` turns it off.
    `lengths` (B,) may be passed to mask padded steps. Computes with rnnlab's cells, never torch.nn.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, phi: str = "tanh", backward: str = "autograd",
                 generator=None, dtype=torch.float32, device=None, engine: str | None = None):
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
        # layer 0 reads x (E features); layer l > 0 reads the outputs of layer l - 1 (H features)
        self.cells: list[Cell] = [make_cell(cell, input_size if layer == 0 else hidden_size, hidden_size, phi=phi,
                                            bias=bias, generator=generator, dtype=dtype, device=device)
                                  for layer in range(num_layers)]
        self.num_layers, self.dropout, self.training = num_layers, dropout, True
        self.batch_first, self.backward, self.engine = batch_first, backward, engine

    @property
    def cell(self) -> Cell:
        """The bottom layer's cell (the only one when num_layers = 1)."""
        return self.cells[0]

    def train(self, mode: bool = True) -> Recurrent:
        """Dropout between layers on (mode=True) or off, as torch.nn.Module.train."""
        self.training = mode
        return self

    def eval(self) -> Recurrent:
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """Every layer's W, U, b (and b_hn), bottom layer first."""
        return [p for c in self.cells for p in c.parameters() if p is not None]

    def __call__(self, x: torch.Tensor, hx=None, *, lengths=None, generator: torch.Generator | None = None):
        """generator: draws the dropout masks while training (default: one seeded from torch's global
        generator, so torch.manual_seed repeats them)."""
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)  # (T, 1, E)
        states = None
        if hx is not None:
            hx = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
            N, H = self.num_layers, self.cell.hidden_size
            want = (N, H) if unbatched else (N, x.shape[0] if self.batch_first else x.shape[1], H)
            for h in hx:
                if h.shape != want:
                    raise ValueError(f"initial states must have shape {want} (num_layers, batch, hidden), "
                                     f"got {tuple(h.shape)}")
            hx = tuple(h.unsqueeze(1) if unbatched else h for h in hx)  # (N, B, H)
            states = [tuple(h[layer] for h in hx) for layer in range(N)]  # layer l's (h_0, [c_0]), each (B, H)
        drop = None
        if self.training and self.dropout > 0 and self.num_layers > 1:
            if generator is None:
                generator = torch.Generator(device=x.device)
                generator.manual_seed(int(torch.randint(2**62, ())))
            drop = (self.dropout, generator)
        batch_first = self.batch_first and not unbatched
        out, finals = unroll_layers(self.cells, x, states, lengths, self.backward, drop,
                                    batch_first=batch_first, engine=self.engine)  # out (T, B, H): the top layer's
        # finals: per layer (h_n, [c_n]) -> h_n (N, B, H) [, c_n (N, B, H)], bottom layer first
        state = tuple(torch.stack([f[k] for f in finals]) for k in range(self.cell.n_states))
        if unbatched:
            out, state = out[:, 0], tuple(s[:, 0] for s in state)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (state if self.cell.n_states == 2 else state[0])

    @classmethod
    def from_torch(cls, module: torch.nn.Module, backward: str = "autograd", engine: str | None = None) -> Recurrent:
        """An rnnlab layer with the weights of a unidirectional nn.RNN/LSTM/GRU (any num_layers; its
        dropout and training mode too)."""
        kind = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}.get(type(module).__name__)
        if kind is None:
            raise TypeError(f"from_torch takes torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
        if module.bidirectional or getattr(module, "proj_size", 0):
            raise ValueError("from_torch supports one direction and no proj_size")
        phi = getattr(module, "nonlinearity", "tanh")
        w = module.weight_hh_l0
        layer = cls(kind, module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                    batch_first=module.batch_first, dropout=module.dropout, phi=phi, backward=backward,
                    dtype=w.dtype, device=w.device, engine=engine)
        layer.train(module.training)
        H = module.hidden_size
        with torch.no_grad():
            for k, c in enumerate(layer.cells):  # layer k: weight_hh_l{k}, weight_ih_l{k}, bias_ih_l{k}, bias_hh_l{k}
                c.W.copy_(getattr(module, f"weight_hh_l{k}"))
                c.U.copy_(getattr(module, f"weight_ih_l{k}"))
                if module.bias:
                    b_ih, b_hh = getattr(module, f"bias_ih_l{k}"), getattr(module, f"bias_hh_l{k}")
                    if kind == "gru":  # b_hr and b_hz only add; b_hn is multiplied by r
                        c.b.copy_(b_ih)
                        c.b[: 2 * H] += b_hh[: 2 * H]
                        c.b_hn.copy_(b_hh[2 * H :])
                    else:
                        c.b.copy_(b_ih + b_hh)
        return layer

    def to_torch(self) -> torch.nn.Module:
        """The equivalent torch.nn module, num_layers, dropout and training mode included (b goes to
        bias_ih_l{k}, bias_hh_l{k} is zero but for the GRU's b_hn)."""
        c = self.cell
        kw = dict(num_layers=self.num_layers, bias=c.b is not None, batch_first=self.batch_first,
                  dropout=self.dropout, dtype=c.W.dtype, device=c.W.device)
        if c.name == "rnn":
            module = torch.nn.RNN(c.input_size, c.hidden_size, nonlinearity=c.phi, **kw)
        else:
            module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[c.name](c.input_size, c.hidden_size, **kw)
        module.train(self.training)
        H = c.hidden_size
        with torch.no_grad():
            for k, c in enumerate(self.cells):
                getattr(module, f"weight_hh_l{k}").copy_(c.W)
                getattr(module, f"weight_ih_l{k}").copy_(c.U)
                if c.b is not None:
                    b_ih, b_hh = getattr(module, f"bias_ih_l{k}"), getattr(module, f"bias_hh_l{k}")
                    b_ih.copy_(c.b)
                    b_hh.zero_()
                    if c.name == "gru":
                        b_hh[2 * H :] = c.b_hn
        return module


def from_torch(module: torch.nn.Module, backward: str = "autograd", engine: str | None = None) -> Recurrent:
    """`rnnlab.from_torch(nn.LSTM(...))`: see `Recurrent.from_torch`."""
    return Recurrent.from_torch(module, backward=backward, engine=engine)

"""The three recurrent cells, each one time step written from its equations, forward and backward.

Start reading at a cell's class docstring (its equations and their derivative) and its
`reference_backward`: backpropagation through time for a whole sequence in one plain loop over t, the
docstring's backward equations line for line, with no buffers and nothing in place. That is the
backward to read, and to check a derivation against; tests/test_reference_backward.py checks it
against autograd, and the fast path below against it.

A cell maps the input projection of one time step and the previous state to the next state. The
input projection `p_t = U x_t + b` is computed for all time steps at once, before the loop over time
(see `recurrent.py`), because it does not depend on the state; the cell adds the recurrent part
`W s_{t-1}` itself. Everything is written for a batch of row vectors, so `W s` becomes `s @ W.T`.

Each cell has three pieces:

    step(p_t, state) -> next_state     the equations in plain differentiable torch ops; autograd
                                       differentiates them (backward="autograd", what the handout does)
    reference_backward(...)            the hand-derived BPTT, plain: the one to read
    forward_t / backward_t             the fast path (backward="manual"): the same step written into
                                       preallocated buffers, and its derivative beside it

The fast path splits each derivative into a part known after the forward pass (the gates' local
derivatives such as dc_t/dz_i = g_t i_t (1 - i_t), computed for all steps at once by
`local_derivatives`) and a part that needs the gradient flowing back (a few element-wise products and
one matmul per step). With `gh_t = W s_{t-1}` the recurrent pre-activation, `backward_t` writes dp_t
(the gradient of U x_t + b) and dgh_t into buffers and ds_{t-1} into `buf.dh_prev`; the unroll turns
dgh into `dW = sum_t dgh_t^T s_{t-1}` with one matmul after the loop, and dp into dU and db the same
way. So `backward_t` never touches a weight gradient. To save memory the fast path writes in place:
one storage goes from pre-activations to gates to local derivatives to gradients. Where a storage
changes meaning it changes name (the old name is deleted), and each cell's `buffers`,
`local_derivatives` and `scratch` say, where they allocate or rename a buffer, what it holds from
when to when; each class docstring gives the numbers held (T steps, batch B, hidden size H, input
size E, G gate blocks).

Parameter layout follows PyTorch's `nn.RNN` / `nn.LSTM` / `nn.GRU` (gate blocks stacked in rows, in
the order i, f, g, o and r, z, n), so weights convert both ways without reshuffling. PyTorch has two
bias vectors per layer; where they are only ever added (RNN, LSTM, the r and z gates of the GRU) we
keep their sum `b`. The GRU's `b_hn` sits inside `r * (...)` and cannot be merged, so it stays.

References: the lab handout (vanilla RNN); Hochreiter & Schmidhuber 1997 and the PyTorch `nn.LSTM`
docs (LSTM, with forget gate); Cho et al. 2014 and the PyTorch `nn.GRU` docs (GRU); torch-rnn's
LSTM.lua (a backward in one loop, buffer reuse written down, a memory formula).
Left out: peepholes, projections (`proj_size`), layer norm, dropout between steps.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from rnnlab import choices, gemm
from rnnlab.gemm import linear

State = tuple[torch.Tensor, ...]  # (h,) for RNN and GRU, (h, c) for LSTM; each (B, H)
Grads = tuple[dict[str, torch.Tensor | None], torch.Tensor, State]  # what reference_backward returns


class Buffers(SimpleNamespace):
    """Preallocated tensors of one manual forward/backward pass, by name (see `Cell.buffers`).

    `buf.h` is the whole (T + 1, B, H) tensor and `buf.h_t[t]` its view at step t: a tuple of views
    made once (`buf.h_t = buf.h.unbind(0)`), because indexing a tensor inside the time loop costs a
    dispatch each time."""


def _uniform(shape: tuple[int, ...], bound: float, generator, dtype, device) -> torch.Tensor:
    w = torch.empty(shape, dtype=dtype, device=device)
    w.uniform_(-bound, bound, generator=generator)
    return w.requires_grad_(True)


class Cell:
    """What the three cells share: parameters `W` (G*H, H), `U` (G*H, E), `b` (G*H) as plain leaf
    tensors with `requires_grad`, where G is the number of gate blocks.

    Initialisation: every weight and bias ~ Uniform(-1/sqrt(H), 1/sqrt(H)), as torch.nn does for its
    recurrent layers. The bound keeps each pre-activation's variance roughly independent of H, so tanh
    and the sigmoids start in their sensitive range rather than saturated.
    """

    name = ""
    n_gates = 1  # G: gate blocks stacked in W, U and b
    n_states = 1  # 1 for (h,), 2 for (h, c)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, generator=None,
                 dtype=torch.float32, device=None):
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        G, H, E = self.n_gates, hidden_size, input_size
        k = 1.0 / math.sqrt(H)
        self.W = _uniform((G * H, H), k, generator, dtype, device)  # recurrent weights
        self.U = _uniform((G * H, E), k, generator, dtype, device)  # input weights
        self.b = _uniform((G * H,), k, generator, dtype, device) if bias else None

    def parameters(self) -> list[torch.Tensor]:
        """The leaf tensors, in the order of `param_names` (None where a bias is off)."""
        return [getattr(self, n) for n in self.param_names]

    param_names: tuple[str, ...] = ("W", "U", "b")

    def reference_backward(self, x: torch.Tensor, states: State, d_out: torch.Tensor, d_final: State,
                           mask: torch.Tensor | None = None) -> Grads:
        """Backpropagation through time, plain: one loop over t = T..1, the class docstring's backward
        equations line for line (each cell writes its own; this one only documents the arguments).

        x (T, B, E) time-major inputs (token ids as one-hot rows); states = the forward's s_0..s_T,
        (h,) or (h, c), each (T + 1, B, H); d_out (T, B, H) the gradient arriving at each output s_t
        from outside the recurrence; d_final = dL/ds_T from outside ((dh_T, dc_T) for the LSTM); mask
        (T, B, 1) bool, False at padded steps, where s_t = s_{t-1} (None: no padding).
        Returns ({"W": dW, "U": dU, "b": db, ...} (None for a bias that is off), dx (T, B, E), dL/ds_0).
        """
        raise NotImplementedError

    # -- fast path: hand-written BPTT over preallocated buffers ----------------------------------------
    # names of the buffers that `local_derivatives` leaves for the backward pass (the rest is freed)
    saved: tuple[str, ...] = ("h",)

    def buffers(self, p: torch.Tensor) -> Buffers:
        """What the manual forward writes, allocated once per pass, given p (T, B, G*H) = U x_t + b for
        every t: the states h for s_0..s_T here; each cell adds its own (gates, candidates). Where a
        buffer starts as p_t, each step adds W s_{t-1} in place: no copy per step."""
        T, B, _ = p.shape
        buf = Buffers()
        buf.h = p.new_empty(T + 1, B, self.hidden_size)  # s_0..s_T: the forward writes s_t, the backward reads
        buf.h_t = buf.h.unbind(0)
        buf.add_Wh = gemm.accumulator(self.W.detach(), B)  # add_Wh(out, h): out += W h
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        """What the backward writes: dp_t for every t, and ds_{t-1} for the current t.
        With `reuse`, dp is written in place over the saved local derivatives `factor` (step t's are
        read once, just before they are overwritten), which saves a (T, B, G*H) buffer. W is the
        forward pass's, as saved with it."""
        # dp (T, B, G*H): until backward_t(t) runs, dp_t[t] still holds step t's local derivatives;
        # backward_t multiplies the incoming gradient into them, in place, and from then on it is dp_t
        buf.dp = buf.factor if reuse else buf.factor.clone()
        del buf.factor
        buf.dp_t = buf.dp.unbind(0)
        buf.dh_prev = buf.h.new_empty(B, self.hidden_size)  # ds_{t-1}, written by backward_t(t) (bptt swaps it)
        buf.W_T_dp = gemm.multiplier(W.detach().t().contiguous(), B)  # W_T_dp(out, dp) = W^T dp
        return buf

    def weight_grads(self, buf: Buffers, h_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """dW = sum_t dgh_t^T s_{t-1} in one matmul; h_prev is s_0..s_{T-1} as (T*B, H). For RNN and
        LSTM dgh_t = dp_t."""
        return {"W": linear(buf.dp.view(-1, buf.dp.shape[-1]).t(), h_prev.t())}

    def activations(self, buf: Buffers) -> dict[str, torch.Tensor]:
        """The gate activations of a manual forward, by name, each (T, B, H): read them after the time
        loop and before `local_derivatives`, which overwrites them. The vanilla RNN has none."""
        return {}

    def zero_state(self, B: int) -> State:
        H = self.hidden_size
        return tuple(self.W.new_zeros(B, H) for _ in range(self.n_states))


class RNNCell(Cell):
    """Vanilla (Elman) RNN, the handout's equation:

        s_t = phi(a_t),   a_t = W s_{t-1} + U x_t + b          phi = tanh (default) or relu

    Backward, with ds_t the gradient arriving at s_t (from the output at step t and from step t + 1):
        da_t = ds_t * phi'(a_t)                    tanh' = 1 - s_t^2,  relu' = [a_t > 0]
        ds_{t-1} = W^T da_t,   dx_t = U^T da_t,   dW += da_t s_{t-1}^T,   dU += da_t x_t^T,   db += da_t

    Memory of the fast path, in numbers (G = 1): the forward writes h, (T + 1)BH (U x_t + b, GTBH, is
    copied into it and freed); kept for the backward: h and phi'(a_t), (G + 1)TBH + BH; the backward
    adds 2BH for ds_t and ds_{t-1}, then the gradients: GH^2 + GHE + GH, and TBE for dx.
    """

    name = "rnn"
    saved = ("h", "factor")

    def __init__(self, input_size: int, hidden_size: int, *, phi: str = "tanh", **kw):
        if phi not in ("tanh", "relu"):
            raise ValueError(f"phi must be 'tanh' or 'relu', got {phi!r}")
        self.phi = phi
        super().__init__(input_size, hidden_size, **kw)

    def step(self, p_t: torch.Tensor, state: State) -> State:
        (s_prev,) = state
        a = torch.addmm(p_t, s_prev, self.W.t())  # a_t = U x_t + b + W s_{t-1}   (B, H)
        return (torch.tanh(a) if self.phi == "tanh" else torch.relu(a),)  # s_t = phi(a_t)

    @torch.no_grad()
    def reference_backward(self, x, states, d_out, d_final, mask=None) -> Grads:
        """BPTT in one plain loop, the class docstring line for line (arguments: `Cell.reference_backward`)."""
        (s,) = states  # s[t] = s_t, t = 0..T;  x[t - 1] = x_t
        W, U = self.W.detach(), self.U.detach()
        b = 0 if self.b is None else self.b.detach()
        dW, dU, db, dx = torch.zeros_like(W), torch.zeros_like(U), torch.zeros_like(W[:, 0]), torch.zeros_like(x)
        (ds,) = d_final  # dL/ds_T from outside
        mask = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.bool) if mask is None else mask  # all real
        for t in range(len(x), 0, -1):  # t = T..1
            m = mask[t - 1]  # (B, 1): False where step t is padding (s_t = s_{t-1})
            ds = ds + d_out[t - 1] * m  # s_t also feeds the output at step t (a padded output is a constant 0)
            a = s[t - 1] @ W.T + x[t - 1] @ U.T + b  # a_t = W s_{t-1} + U x_t + b: the forward step again
            phi_prime = 1 - torch.tanh(a) ** 2 if self.phi == "tanh" else (a > 0).to(a.dtype)
            da = ds * phi_prime * m  # da_t = ds_t * phi'(a_t)   (zero at padded steps)
            dW += da.T @ s[t - 1]  # dW += da_t s_{t-1}^T, summed over the batch
            dU += da.T @ x[t - 1]  # dU += da_t x_t^T
            db += da.sum(0)  # db += da_t
            dx[t - 1] = da @ U  # dx_t = U^T da_t
            ds = torch.where(m, da @ W, ds)  # ds_{t-1} = W^T da_t; at a padded step ds passes through
        return {"W": dW, "U": dU, "b": None if self.b is None else db}, dx, (ds,)

    # -- fast path: hand-written BPTT over preallocated buffers ----------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        buf.h[1:] = p  # h[t + 1] holds U x_t + b until forward_t(t) turns it into a_t, then s_t (in place)
        return buf

    def forward_t(self, t: int, buf: Buffers) -> None:
        s = buf.add_Wh(buf.h_t[t + 1], buf.h_t[t])  # a_t = (U x_t + b) + W s_{t-1}
        if self.phi == "tanh":  # s_t = phi(a_t), in place
            s.tanh_()
        else:
            s.relu_()

    def local_derivatives(self, buf: Buffers) -> None:
        """buf.factor (T, B, H) = phi'(a_t) for every t at once (a new buffer, saved for the backward)."""
        s = buf.h[1:]  # (T, B, H)
        buf.factor = 1 - s * s if self.phi == "tanh" else (s > 0).to(s.dtype)  # ds_t/da_t: tanh' or relu'

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        da = buf.dp_t[t].mul_(dh)  # da_t = ds_t * phi'(a_t), over phi'(a_t);  dp_t = dgh_t = da_t
        buf.dh_prev = buf.W_T_dp(buf.dh_prev, da)  # ds_{t-1} = W^T da_t


class LSTMCell(Cell):
    """Long short-term memory, PyTorch's form (gate order i, f, g, o), with z_t = W h_{t-1} + U x_t + b
    the four pre-activations (z_i, z_f, z_g, z_o):

        i_t = sigma(z_i)     input gate               f_t = sigma(z_f)     forget gate
        g_t = tanh (z_g)     candidate cell           o_t = sigma(z_o)     output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    Backward, given dh_t and dc_t from the output and from step t + 1 (sigma' = s (1 - s), tanh' = 1 - t^2):
        dc   = dc_t + dh_t * o_t * (1 - tanh(c_t)^2)      (c_t also reaches the loss through h_t)
        dz_i = dc * g_t * i_t (1 - i_t)           dz_f = dc * c_{t-1} * f_t (1 - f_t)
        dz_g = dc * i_t * (1 - g_t^2)             dz_o = dh_t * tanh(c_t) * o_t (1 - o_t)
        dc_{t-1} = dc * f_t       dh_{t-1} = W^T dz    dx_t = U^T dz    (dz: the four blocks, (B, 4H))
        dW += dz h_{t-1}^T        dU += dz x_t^T       db += dz

    Memory of the fast path, in numbers (G = 4): the forward writes the gates, GTBH (over U x_t + b),
    h and c, 2(T + 1)BH, and tanh(c_t), TBH: (G + 3)TBH + 2BH; `local_derivatives` adds dh_t/dc_t and
    f_t, 2TBH, and for a moment a copy of i_t and element-wise temporaries (TBH each); kept for the
    backward: h, the local derivatives, dh_t/dc_t and f_t, (G + 3)TBH + BH; the backward adds 3BH for
    dh_t, dh_{t-1} and dc, then the gradients: GH^2 + GHE + GH, and TBE for dx.
    """

    name = "lstm"
    n_gates = 4
    n_states = 2
    saved = ("h", "factor", "dh_dc", "f")

    def step(self, p_t: torch.Tensor, state: State) -> State:
        h_prev, c_prev = state
        H = self.hidden_size
        z = torch.addmm(p_t, h_prev, self.W.t())  # all four pre-activations in one matmul (B, 4H)
        i = torch.sigmoid(z[:, :H])  # input gate
        f = torch.sigmoid(z[:, H : 2 * H])  # forget gate
        g = torch.tanh(z[:, 2 * H : 3 * H])  # candidate
        o = torch.sigmoid(z[:, 3 * H :])  # output gate
        c = f * c_prev + i * g  # c_t = f * c_{t-1} + i * g
        h = o * torch.tanh(c)  # h_t = o * tanh(c_t)
        return h, c

    @torch.no_grad()
    def reference_backward(self, x, states, d_out, d_final, mask=None) -> Grads:
        """BPTT in one plain loop, the class docstring line for line (arguments: `Cell.reference_backward`)."""
        h, c = states  # h[t] = h_t, c[t] = c_t, t = 0..T;  x[t - 1] = x_t
        W, U, H = self.W.detach(), self.U.detach(), self.hidden_size
        b = 0 if self.b is None else self.b.detach()
        dW, dU, db, dx = torch.zeros_like(W), torch.zeros_like(U), torch.zeros_like(W[:, 0]), torch.zeros_like(x)
        dh, dc = d_final  # dL/dh_T, dL/dc_T from outside
        mask = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.bool) if mask is None else mask  # all real
        for t in range(len(x), 0, -1):  # t = T..1
            m = mask[t - 1]  # (B, 1): False where step t is padding (h_t = h_{t-1})
            dh = dh + d_out[t - 1] * m  # h_t also feeds the output at step t (a padded output is a constant 0)
            z = h[t - 1] @ W.T + x[t - 1] @ U.T + b  # z_t: the forward step again
            i, f, o = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H : 2 * H]), torch.sigmoid(z[:, 3 * H :])
            g, tanh_c = torch.tanh(z[:, 2 * H : 3 * H]), torch.tanh(c[t])
            dc = dc + dh * o * (1 - tanh_c**2) * m  # dc = dc_t + dh_t * o_t * (1 - tanh(c_t)^2); padded: dc_t
            dz_i = dc * g * i * (1 - i)
            dz_f = dc * c[t - 1] * f * (1 - f)
            dz_g = dc * i * (1 - g**2)
            dz_o = dh * tanh_c * o * (1 - o)
            dz = torch.cat([dz_i, dz_f, dz_g, dz_o], dim=1) * m  # (B, 4H), zero at padded steps
            dW += dz.T @ h[t - 1]  # dW += dz h_{t-1}^T, summed over the batch
            dU += dz.T @ x[t - 1]  # dU += dz x_t^T
            db += dz.sum(0)  # db += dz
            dx[t - 1] = dz @ U  # dx_t = U^T dz
            dh = torch.where(m, dz @ W, dh)  # dh_{t-1} = W^T dz; at a padded step dh and dc pass through
            dc = torch.where(m, dc * f, dc)  # dc_{t-1} = dc * f_t
        return {"W": dW, "U": dU, "b": None if self.b is None else db}, dx, (dh, dc)

    # -- fast path: hand-written BPTT over preallocated buffers ----------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        T, B, _ = p.shape
        H = self.hidden_size
        # gates (T, B, 4H): starts as U x_t + b (p itself, no copy); forward_t(t) adds W h_{t-1} (z_t) and
        # applies the gates in place: [i, f, g, o] until local_derivatives renames it `factor`
        buf.gates = p
        buf.gates_t = buf.gates.unbind(0)
        buf.c = p.new_empty(T + 1, B, H)  # c_0..c_T, written by forward_t
        buf.c_t = buf.c.unbind(0)
        buf.tanh_c = p.new_empty(T, B, H)  # tanh(c_t), t = 1..T: read by local_derivatives, then freed
        buf.tanh_c_t = buf.tanh_c.unbind(0)
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        super().scratch(buf, T, B, W, reuse)
        buf.dc = buf.h.new_empty(B, self.hidden_size)  # dL/dc_t on entry to backward_t(t), dL/dc_{t-1} on exit
        buf.dh_dc_t, buf.f_t = buf.dh_dc.unbind(0), buf.f.unbind(0)
        return buf

    def forward_t(self, t: int, buf: Buffers) -> None:
        H = self.hidden_size
        z = buf.add_Wh(buf.gates_t[t], buf.h_t[t])  # z_t = (U x_t + b) + W h_{t-1}, then the gates in place
        z[:, : 2 * H].sigmoid_()  # i, f
        z[:, 2 * H : 3 * H].tanh_()  # g
        z[:, 3 * H :].sigmoid_()  # o
        i, f, g, o = z.split(H, dim=1)
        c = torch.mul(f, buf.c_t[t], out=buf.c_t[t + 1]).addcmul_(i, g)  # c_t = f * c_{t-1} + i * g
        tanh_c = torch.tanh(c, out=buf.tanh_c_t[t])
        torch.mul(o, tanh_c, out=buf.h_t[t + 1])  # h_t = o * tanh(c_t)

    def activations(self, buf: Buffers) -> dict[str, torch.Tensor]:
        """i, f, g, o and the cell state c, each (T, B, H)."""
        i, f, g, o = buf.gates.split(self.hidden_size, dim=2)
        return {"i": i, "f": f, "g": g, "o": o, "c": buf.c[1:]}

    def local_derivatives(self, buf: Buffers) -> None:
        """For every t at once: what each gate's pre-activation gradient is the incoming dc (or dh) times.
        The gates' storage is overwritten block by block and renamed: afterwards buf.factor (T, B, 4H) =
        [dc_t/dz_i, dc_t/dz_f, dc_t/dz_g, dh_t/dz_o] = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), tanh(c) o(1-o)],
        and buf.gates is gone. Two new (T, B, H) buffers are kept: dh_dc and f."""
        i, f, g, o = buf.gates.split(self.hidden_size, dim=2)  # (T, B, H) views of the gates
        tanh_c, c_prev = buf.tanh_c, buf.c[:-1]
        buf.dh_dc = o * (1 - tanh_c * tanh_c)  # dh_t/dc_t = o (1 - tanh^2 c_t): dc += dh * dh_dc
        buf.f = f.clone()  # dc_t/dc_{t-1} = f_t: dc_{t-1} = dc * f
        i_gate = i.clone()  # dc_t/dz_g needs i_t after block i is overwritten (freed on return)
        # each block is overwritten after the last read of its gate; from its line on, `i` (f, g, o) is
        # no longer that gate but its factor
        i.mul_(1 - i).mul_(g)  # block i <- dc_t/dz_i = g i (1 - i)
        f.mul_(1 - f).mul_(c_prev)  # block f <- dc_t/dz_f = c_{t-1} f (1 - f)
        g.mul_(g).neg_().add_(1).mul_(i_gate)  # block g <- dc_t/dz_g = i (1 - g^2)
        o.mul_(1 - o).mul_(tanh_c)  # block o <- dh_t/dz_o = tanh(c_t) o (1 - o)
        buf.factor = buf.gates  # the same storage, under the name of what it holds now
        del buf.gates, buf.gates_t

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        B, H = dh.shape
        dc = buf.dc.addcmul_(dh, buf.dh_dc_t[t])  # dc = dc_t + dh * o (1 - tanh^2 c)
        dz = buf.dp_t[t]  # (B, 4H): step t's factors until the next two lines turn them into dz, in place
        dz[:, : 3 * H].view(B, 3, H).mul_(dc.unsqueeze(1))  # dz_i, dz_f, dz_g = dc x factors
        dz[:, 3 * H :].mul_(dh)  # dz_o = dh x factor
        buf.dh_prev = buf.W_T_dp(buf.dh_prev, dz)  # dh_{t-1} = W^T dz
        dc.mul_(buf.f_t[t])  # dc_{t-1} = dc f


class GRUCell(Cell):
    """Gated recurrent unit, PyTorch's form (gate order r, z, n), with pre-activations a_r, a_z, a_n:

        r_t = sigma(a_r),  a_r = U_r x_t + b_r + W_r h_{t-1}                   reset gate
        z_t = sigma(a_z),  a_z = U_z x_t + b_z + W_z h_{t-1}                   update gate
        n_t = tanh (a_n),  a_n = U_n x_t + b_n + r_t * (W_n h_{t-1} + b_hn)    candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    `b_r`, `b_z` are PyTorch's b_ir + b_hr and b_iz + b_hz; `b_n` is b_in; `b_hn` stays separate.

    Backward, given dh_t from the output and from step t + 1:
        da_n = dh_t (1 - z_t) (1 - n_t^2)          da_z = dh_t (h_{t-1} - n_t) z_t (1 - z_t)
        da_r = da_n (W_n h_{t-1} + b_hn) r_t (1 - r_t)
        dp  = [da_r, da_z, da_n]           gradient of U x_t + b:   dx_t = U^T dp,  dU += dp x_t^T,  db += dp
        dgh = [da_r, da_z, da_n * r_t]     gradient of W h_{t-1} + [0, 0, b_hn]:  dW += dgh h_{t-1}^T,
                                           db_hn += da_n * r_t
        dh_{t-1} = dh_t z_t + W^T dgh

    Memory of the fast path, in numbers (G = 3): the forward writes U x_t + b, GTBH, W h_{t-1} + b_hn,
    GTBH, r and z, 2TBH, n, TBH, and h, (T + 1)BH: (2G + 4)TBH + BH; `local_derivatives` frees
    U x_t + b and n; kept for the backward: h, the local derivatives (over W h_{t-1} + b_hn) and r, z,
    (G + 3)TBH + BH; the backward adds 2BH for dh_t and dh_{t-1}, then the gradients:
    GH^2 + GHE + GH + H, and TBE for dx.
    """

    name = "gru"
    n_gates = 3
    param_names = ("W", "U", "b", "b_hn")
    saved = ("h", "factor", "rz")

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, generator=None,
                 dtype=torch.float32, device=None):
        super().__init__(input_size, hidden_size, bias=bias, generator=generator, dtype=dtype, device=device)
        k = 1.0 / math.sqrt(hidden_size)
        self.b_hn = _uniform((hidden_size,), k, generator, dtype, device) if bias else None

    def step(self, p_t: torch.Tensor, state: State) -> State:
        (h_prev,) = state
        H = self.hidden_size
        gh = h_prev @ self.W.t()  # W h_{t-1} for all three gates   (B, 3H)
        r = torch.sigmoid(p_t[:, :H] + gh[:, :H])  # reset gate
        z = torch.sigmoid(p_t[:, H : 2 * H] + gh[:, H : 2 * H])  # update gate
        gh_n = gh[:, 2 * H :] if self.b_hn is None else gh[:, 2 * H :] + self.b_hn  # W_n h_{t-1} + b_hn
        n = torch.tanh(p_t[:, 2 * H :] + r * gh_n)  # n_t = tanh(U_n x_t + b_n + r * (W_n h_{t-1} + b_hn))
        return ((1 - z) * n + z * h_prev,)  # h_t

    @torch.no_grad()
    def reference_backward(self, x, states, d_out, d_final, mask=None) -> Grads:
        """BPTT in one plain loop, the class docstring line for line (arguments: `Cell.reference_backward`)."""
        (h,) = states  # h[t] = h_t, t = 0..T;  x[t - 1] = x_t
        W, U, H = self.W.detach(), self.U.detach(), self.hidden_size
        b, b_hn = (0 if v is None else v.detach() for v in (self.b, self.b_hn))
        dW, dU, db, dx = torch.zeros_like(W), torch.zeros_like(U), torch.zeros_like(W[:, 0]), torch.zeros_like(x)
        db_hn = torch.zeros_like(W[:H, 0])
        (dh,) = d_final  # dL/dh_T from outside
        mask = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.bool) if mask is None else mask  # all real
        for t in range(len(x), 0, -1):  # t = T..1
            m = mask[t - 1]  # (B, 1): False where step t is padding (h_t = h_{t-1})
            dh = dh + d_out[t - 1] * m  # h_t also feeds the output at step t (a padded output is a constant 0)
            p, gh = x[t - 1] @ U.T + b, h[t - 1] @ W.T  # U x_t + b and W h_{t-1}: the forward step again
            r, z = torch.sigmoid(p[:, :H] + gh[:, :H]), torch.sigmoid(p[:, H : 2 * H] + gh[:, H : 2 * H])
            gh_n = gh[:, 2 * H :] + b_hn  # W_n h_{t-1} + b_hn
            n = torch.tanh(p[:, 2 * H :] + r * gh_n)
            da_n = dh * (1 - z) * (1 - n**2)
            da_z = dh * (h[t - 1] - n) * z * (1 - z)
            da_r = da_n * gh_n * r * (1 - r)
            dp = torch.cat([da_r, da_z, da_n], dim=1) * m  # gradient of U x_t + b, zero at padded steps
            dgh = torch.cat([da_r, da_z, da_n * r], dim=1) * m  # gradient of W h_{t-1} + [0, 0, b_hn]
            dW += dgh.T @ h[t - 1]  # dW += dgh h_{t-1}^T, summed over the batch
            dU += dp.T @ x[t - 1]  # dU += dp x_t^T
            db += dp.sum(0)  # db += dp
            db_hn += dgh[:, 2 * H :].sum(0)  # db_hn += da_n * r_t
            dx[t - 1] = dp @ U  # dx_t = U^T dp
            dh = torch.where(m, dh * z + dgh @ W, dh)  # dh_{t-1} = dh_t z_t + W^T dgh; padded: passes through
        no_bias = self.b is None
        return {"W": dW, "U": dU, "b": None if no_bias else db, "b_hn": None if no_bias else db_hn}, dx, (dh,)

    # -- fast path: hand-written BPTT over preallocated buffers ----------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        T, B, GH = p.shape
        H = self.hidden_size
        b_hn = self.b_hn.detach() if self.b_hn is not None else p.new_zeros(H)
        buf.p = p  # (T, B, 3H) U x_t + b, read by forward_t; freed by local_derivatives
        buf.p_t = buf.p.unbind(0)
        buf.rz = p.new_empty(T, B, 2 * H)  # r_t, z_t (saved; the backward writes dgh_n over the r half)
        buf.rz_t = buf.rz.unbind(0)
        buf.n = p.new_empty(T, B, H)  # n_t: read by local_derivatives, then freed
        buf.n_t = buf.n.unbind(0)
        # gh (T, B, 3H): starts as [0, 0, b_hn]; forward_t(t) adds W h_{t-1}; local_derivatives
        # overwrites it with the local derivatives and renames it `factor`
        buf.gh = torch.cat((p.new_zeros(2 * H), b_hn)).expand(T, B, GH).clone()
        buf.gh_t = buf.gh.unbind(0)
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        """As the base class, but dh_{t-1} takes the r, z rows and the n rows of W separately."""
        H = self.hidden_size
        # dp (T, B, 3H): until backward_t(t) runs, dp_t[t] holds step t's local derivatives (as in Cell.scratch)
        buf.dp = buf.factor if reuse else buf.factor.clone()
        del buf.factor
        buf.dp_t = buf.dp.unbind(0)
        if not reuse:
            buf.rz = buf.rz.clone()  # the backward writes over r: keep the saved r, z for a second backward
        buf.rz_t = buf.rz.unbind(0)
        # dgh_n (T, B, H) is the r half of rz: backward_t(t) reads r_t for the last time, then writes
        # dgh_n_t = da_n * r_t over it; after the loop it holds dgh_n for every t (read by weight_grads)
        buf.dgh_n = buf.rz[..., :H]
        buf.dh_prev = buf.h.new_empty(B, H)  # dh_{t-1}, written by backward_t(t) (bptt swaps it)
        W = W.detach()
        buf.W_T_rz = gemm.multiplier(W[: 2 * H].t().contiguous(), B)
        buf.add_W_T_n = gemm.accumulator(W[2 * H :].t().contiguous(), B)
        return buf

    def forward_t(self, t: int, buf: Buffers) -> None:
        H = self.hidden_size
        h_prev, p_t = buf.h_t[t], buf.p_t[t]
        gh = buf.add_Wh(buf.gh_t[t], h_prev)  # [0, 0, b_hn] + W h_{t-1}   (B, 3H)
        rz = torch.add(p_t[:, : 2 * H], gh[:, : 2 * H], out=buf.rz_t[t]).sigmoid_()  # r, z
        r, z = rz[:, :H], rz[:, H:]
        n = torch.addcmul(p_t[:, 2 * H :], r, gh[:, 2 * H :], out=buf.n_t[t]).tanh_()  # n_t
        torch.lerp(n, h_prev, z, out=buf.h_t[t + 1])  # h_t = n + z (h_{t-1} - n) = (1 - z) n + z h_{t-1}

    def activations(self, buf: Buffers) -> dict[str, torch.Tensor]:
        """r, z and the candidate n, each (T, B, H)."""
        r, z = buf.rz.split(self.hidden_size, dim=2)
        return {"r": r, "z": z, "n": buf.n}

    def local_derivatives(self, buf: Buffers) -> None:
        """For every t at once, in place over gh, which is renamed: afterwards buf.factor (T, B, 3H) =
        [dh_t/da_r, dh_t/da_z, dh_t/da_n] = [dn (W_n h_{t-1} + b_hn) r (1 - r), (h_{t-1} - n) z (1 - z), dn]
        with dn = (1 - z)(1 - n^2), so dp = dh x factor. buf.p, buf.n and buf.gh are gone."""
        H = self.hidden_size
        del buf.p, buf.p_t  # U x_t + b is not needed any more: free it first
        r, z = buf.rz.split(H, dim=2)  # (T, B, H) views
        n, h_prev = buf.n, buf.h[:-1]
        # blocks r and z of gh (W_r h_{t-1}, W_z h_{t-1}) are dead after the forward: they receive two
        # factors; block n holds gh_n = W_n h_{t-1} + b_hn until its last read, then the third
        dh_dar, dh_daz, gh_n = buf.gh.split(H, dim=2)
        torch.sub(h_prev, n, out=dh_daz).mul_(z).mul_(1 - z)  # dh_t/da_z = (h_{t-1} - n) z (1 - z)
        dn = n.mul_(n).neg_().add_(1).mul_(1 - z)  # dn = dh_t/da_n = (1 - z)(1 - n^2), over n
        torch.mul(dn, gh_n, out=dh_dar).mul_(r).mul_(1 - r)  # dh_t/da_r = dn (W_n h_{t-1} + b_hn) r (1 - r)
        gh_n.copy_(dn)  # block n <- dh_t/da_n
        buf.factor = buf.gh  # the same storage, under the name of what it holds now
        del buf.gh, buf.gh_t, buf.n, buf.n_t  # n held dn: not n any more, and not needed

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        B, H = dh.shape
        rz = buf.rz_t[t]
        r, z = rz[:, :H], rz[:, H:]
        dp = buf.dp_t[t]  # (B, 3H): step t's factors until the next line turns them into dp, in place
        dp.view(B, 3, H).mul_(dh.unsqueeze(1))  # da_r, da_z, da_n = dh x factors
        dgh_n = r.mul_(dp[:, 2 * H :])  # dgh_n_t = da_n * r_t, over r_t (its last read): buf.dgh_n[t]
        buf.dh_prev = buf.W_T_rz(buf.dh_prev, dp[:, : 2 * H])  # W_rz^T [da_r, da_z]
        buf.add_W_T_n(buf.dh_prev, dgh_n).addcmul_(dh, z)  # dh_{t-1} = W^T dgh + dh z

    def weight_grads(self, buf: Buffers, h_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        H = self.hidden_size
        dp_rz = buf.dp.view(-1, 3 * H)[:, : 2 * H]
        dgh_n = buf.dgh_n.view(-1, H)  # (T*B, H), rows 2H apart: the r half of rz
        dW = torch.cat((linear(dp_rz.t(), h_prev.t()), linear(dgh_n.t(), h_prev.t())))  # dgh^T s_{t-1}
        return {"W": dW, "b_hn": dgh_n.sum(dim=0)}  # b_hn enters with W_n s_{t-1}


CELLS = dict(zip(choices.CELLS, (RNNCell, LSTMCell, GRUCell)))  # the names of choices.py, in order


def make_cell(kind: str, input_size: int, hidden_size: int, **kw) -> Cell:
    """`kind` is 'rnn', 'lstm' or 'gru'; keyword arguments go to the cell (`phi` only for 'rnn')."""
    if kind not in CELLS:
        raise ValueError(f"unknown cell {kind!r}; choose one of {', '.join(CELLS)}")
    if kind != "rnn":
        kw.pop("phi", None)
    return CELLS[kind](input_size, hidden_size, **kw)

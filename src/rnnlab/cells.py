"""The three recurrent cells, each one time step written from its equations, forward and backward.

A cell maps the input projection of one time step and the previous state to the next state. The
input projection `p_t = U x_t + b` is computed for all time steps at once, before the loop over time
(see `recurrent.py`), because it does not depend on the state; the cell adds the recurrent part
`W s_{t-1}` itself. Everything is written for a batch of row vectors, so `W s` becomes `s @ W.T`.

Each cell computes one step two ways:

    step(p_t, state) -> next_state     the equations in plain differentiable torch ops; autograd
                                       differentiates them (backward="autograd", what the handout does)
    forward_t / backward_t             the same step written into preallocated buffers, and its
                                       hand-derived derivative beside it (backward="manual")

The manual path splits each derivative into a part known after the forward pass (the gates' local
derivatives such as i (1 - i), computed for all steps at once by `local_derivatives`) and a part
that needs the gradient flowing back (a few element-wise products and one matmul per step). With
`gh_t = W s_{t-1}` the recurrent pre-activation, `backward_t` writes dp_t (gradient of U x_t + b) and
dgh_t and ds_{t-1}; the unroll turns dgh into `dW = sum_t dgh_t^T s_{t-1}` with one matmul after the
loop, and dp into dU and db the same way. So a cell's backward never touches a weight gradient.

Parameter layout follows PyTorch's `nn.RNN` / `nn.LSTM` / `nn.GRU` (gate blocks stacked in rows, in
the order i, f, g, o and r, z, n), so weights convert both ways without reshuffling. PyTorch has two
bias vectors per layer; where they are only ever added (RNN, LSTM, the r and z gates of the GRU) we
keep their sum `b`. The GRU's `b_hn` sits inside `r * (...)` and cannot be merged, so it stays.

References: the lab handout (vanilla RNN); Hochreiter & Schmidhuber 1997 and the PyTorch `nn.LSTM`
docs (LSTM, with forget gate); Cho et al. 2014 and the PyTorch `nn.GRU` docs (GRU).
Left out: peepholes, projections (`proj_size`), layer norm, dropout between steps.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from rnnlab import gemm
from rnnlab.gemm import linear

State = tuple[torch.Tensor, ...]  # (h,) for RNN and GRU, (h, c) for LSTM; each (B, H)


class Buffers(SimpleNamespace):
    """Preallocated tensors of one manual forward/backward pass, by name (see `Cell.buffers`).

    `buf.h` is the whole (T + 1, B, H) tensor and `buf.h_t[t]` its view at step t: a tuple of views
    made once (`per_step`), because indexing a tensor inside the time loop costs a dispatch each time."""

    def per_step(self, *names: str) -> None:
        for name in names:
            setattr(self, name + "_t", getattr(self, name).unbind(0))


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

    # names of the buffers that `local_derivatives` leaves for the backward pass (the rest is freed)
    saved: tuple[str, ...] = ("h",)

    def buffers(self, p: torch.Tensor) -> Buffers:
        """What the manual forward writes, allocated once per pass, given p (T, B, G*H) = U x_t + b for
        every t: the states h for s_0..s_T here; each cell adds its own (gates, candidates). Where a
        buffer starts as p_t, each step adds W s_{t-1} in place: no copy per step."""
        T, B, _ = p.shape
        buf = Buffers(h=p.new_empty(T + 1, B, self.hidden_size))
        buf.add_Wh = gemm.accumulator(self.W.detach(), B)  # add_Wh(out, h): out += W h
        buf.per_step("h")
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        """What the backward writes: dp_t for every t, and ds_{t-1} for the current t.
        With `reuse`, dp is written in place over the saved local derivatives `factor` (step t's are
        read once, just before they are overwritten), which saves a (T, B, G*H) buffer. W is the
        forward pass's, as saved with it."""
        buf.dp = buf.factor if reuse else buf.factor.clone()
        buf.per_step("dp")
        buf.dh_prev = buf.h.new_empty(B, self.hidden_size)
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

        s_t = phi(W s_{t-1} + U x_t + b)          phi = tanh (default) or relu

    Backward, with a_t the pre-activation and ds_t the gradient arriving at s_t:
        da_t = ds_t * phi'(a_t)                    tanh' = 1 - s_t^2,  relu' = [s_t > 0]
        ds_{t-1} = W^T da_t,   dW += da_t s_{t-1}^T,   dU += da_t x_t^T,   db += da_t
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

    # -- hand-written BPTT ------------------------------------------------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        buf.h[1:] = p  # a_t starts as U x_t + b
        return buf

    def forward_t(self, t: int, buf: Buffers) -> None:
        s = buf.add_Wh(buf.h_t[t + 1], buf.h_t[t])  # a_t = (U x_t + b) + W s_{t-1}
        if self.phi == "tanh":  # s_t = phi(a_t), in place
            s.tanh_()
        else:
            s.relu_()

    def local_derivatives(self, buf: Buffers) -> None:
        s = buf.h[1:]  # (T, B, H)
        buf.factor = 1 - s * s if self.phi == "tanh" else (s > 0).to(s.dtype)  # phi'(a_t) for every t at once

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        da = buf.dp_t[t].mul_(dh)  # da_t = ds_t * phi'(a_t), over phi'(a_t);  dp_t = dgh_t = da_t
        buf.dh_prev = buf.W_T_dp(buf.dh_prev, da)  # ds_{t-1} = W^T da_t


class LSTMCell(Cell):
    """Long short-term memory, PyTorch's form (gate order i, f, g, o):

        i_t = sigma(U_i x_t + b_i + W_i h_{t-1})     input gate
        f_t = sigma(U_f x_t + b_f + W_f h_{t-1})     forget gate
        g_t = tanh (U_g x_t + b_g + W_g h_{t-1})     candidate cell
        o_t = sigma(U_o x_t + b_o + W_o h_{t-1})     output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    Backward, given dh_t and dc_t from later steps (sigma' = s (1 - s), tanh' = 1 - t^2):
        dc   = dc_t + dh_t * o_t * (1 - tanh(c_t)^2)
        dz_i = dc * g_t * i_t (1 - i_t)           dz_f = dc * c_{t-1} * f_t (1 - f_t)
        dz_g = dc * i_t * (1 - g_t^2)             dz_o = dh_t * tanh(c_t) * o_t (1 - o_t)
        dc_{t-1} = dc * f_t                       dh_{t-1} = W^T dz    (dz: the four blocks, (B, 4H))
    """

    name = "lstm"
    n_gates = 4
    n_states = 2
    saved = ("h", "factor", "dc_dh", "f")

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

    # -- hand-written BPTT ------------------------------------------------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        T, B, _ = p.shape
        buf.gates, buf.c, buf.tanh_c = p, p.new_empty(T + 1, B, self.hidden_size), p.new_empty(T, B, self.hidden_size)
        buf.per_step("gates", "c", "tanh_c")  # the gates start as U x_t + b
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        super().scratch(buf, T, B, W, reuse)
        buf.dc = buf.h.new_empty(B, self.hidden_size)  # dc_t on entry to backward_t, dc_{t-1} on exit
        buf.per_step("dc_dh", "f")
        return buf

    def forward_t(self, t: int, buf: Buffers) -> None:
        H = self.hidden_size
        z = buf.add_Wh(buf.gates_t[t], buf.h_t[t])  # (U x_t + b) + W h_{t-1}, then the gates in place
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
        """For every t at once, over the gates in place: what each gate's pre-activation gradient is
        multiplied by. Afterwards buf.factor (T, B, 4H) = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), tanh(c) o(1-o)]."""
        i, f, g, o = buf.gates.split(self.hidden_size, dim=2)  # (T, B, H) views
        tanh_c, c_prev = buf.tanh_c, buf.c[:-1]
        buf.dc_dh = o * (1 - tanh_c * tanh_c)  # dc += dh o (1 - tanh^2 c)
        buf.f = f.clone()  # dc_{t-1} = dc f
        i_copy = i.clone()
        i.mul_(1 - i).mul_(g)  # x dc -> dz_i
        f.mul_(1 - f).mul_(c_prev)  # x dc -> dz_f
        g.mul_(g).neg_().add_(1).mul_(i_copy)  # x dc -> dz_g
        o.mul_(1 - o).mul_(tanh_c)  # x dh -> dz_o
        buf.factor = buf.gates

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        B, H = dh.shape
        dc = buf.dc.addcmul_(dh, buf.dc_dh_t[t])  # dc = dc_t + dh o (1 - tanh^2 c)
        dz = buf.dp_t[t]  # (B, 4H), in place over the factors of step t
        dz[:, : 3 * H].view(B, 3, H).mul_(dc.unsqueeze(1))  # dz_i, dz_f, dz_g = dc x factors
        dz[:, 3 * H :].mul_(dh)  # dz_o = dh x factor
        buf.dh_prev = buf.W_T_dp(buf.dh_prev, dz)  # dh_{t-1} = W^T dz
        dc.mul_(buf.f_t[t])  # dc_{t-1} = dc f


class GRUCell(Cell):
    """Gated recurrent unit, PyTorch's form (gate order r, z, n):

        r_t = sigma(U_r x_t + b_r + W_r h_{t-1})                 reset gate
        z_t = sigma(U_z x_t + b_z + W_z h_{t-1})                 update gate
        n_t = tanh (U_n x_t + b_n + r_t * (W_n h_{t-1} + b_hn))  candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    `b_r`, `b_z` are PyTorch's b_ir + b_hr and b_iz + b_hz; `b_n` is b_in; `b_hn` stays separate.

    Backward, given dh_t:
        dn_pre = dh_t (1 - z_t) (1 - n_t^2)                        (through n_t = tanh(...))
        dr_pre = dn_pre (W_n h_{t-1} + b_hn) r_t (1 - r_t)         dz_pre = dh_t (h_{t-1} - n_t) z_t (1 - z_t)
        dp  = [dr_pre, dz_pre, dn_pre]           gradient of U x_t + b
        dgh = [dr_pre, dz_pre, dn_pre * r_t]     gradient of W h_{t-1} + [0, 0, b_hn]
        dh_{t-1} = dh_t z_t + W^T dgh
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

    # -- hand-written BPTT ------------------------------------------------------------------------------
    def buffers(self, p: torch.Tensor) -> Buffers:
        buf = super().buffers(p)
        T, B, GH = p.shape
        H = self.hidden_size
        b_hn = self.b_hn.detach() if self.b_hn is not None else p.new_zeros(H)
        buf.p, buf.rz, buf.n = p, p.new_empty(T, B, 2 * H), p.new_empty(T, B, H)
        buf.gh = torch.cat((p.new_zeros(2 * H), b_hn)).expand(T, B, GH).clone()  # starts as [0, 0, b_hn]
        buf.per_step("p", "rz", "n", "gh")
        return buf

    def scratch(self, buf: Buffers, T: int, B: int, W: torch.Tensor, reuse: bool) -> Buffers:
        """As the base class, but dh_{t-1} takes the r, z rows and the n rows of W separately."""
        H = self.hidden_size
        buf.dp = buf.factor if reuse else buf.factor.clone()
        if not reuse:
            buf.rz = buf.rz.clone()
        buf.dh_prev = buf.h.new_empty(B, H)
        buf.dgh_n = buf.rz[..., :H]  # dgh_n_t is written over r_t, once backward_t has read r_t for the last time
        W = W.detach()
        buf.W_T_rz = gemm.multiplier(W[: 2 * H].t().contiguous(), B)
        buf.add_W_T_n = gemm.accumulator(W[2 * H :].t().contiguous(), B)
        buf.per_step("dp", "rz", "dgh_n")
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
        """For every t at once, in place over gh and n: buf.factor (T, B, 3H) becomes
        [dn gh_n r (1 - r),  (h_{t-1} - n) z (1 - z),  dn]  with dn = (1 - z)(1 - n^2), so dp = dh x factor."""
        H = self.hidden_size
        del buf.p  # U x_t + b is not needed any more: free it first
        r, z = buf.rz.split(H, dim=2)  # (T, B, H) views
        n, h_prev = buf.n, buf.h[:-1]
        f_r, f_z, gh_n = buf.gh.split(H, dim=2)
        torch.sub(h_prev, n, out=f_z).mul_(z).mul_(1 - z)  # (h_{t-1} - n) z (1 - z)
        dn = n.mul_(n).neg_().add_(1).mul_(1 - z)  # dn = (1 - z)(1 - n^2), over n
        torch.mul(dn, gh_n, out=f_r).mul_(r).mul_(1 - r)  # dn (W_n h_{t-1} + b_hn) r (1 - r)
        gh_n.copy_(dn)
        buf.factor = buf.gh

    def backward_t(self, t: int, dh: torch.Tensor, buf: Buffers) -> None:
        B, H = dh.shape
        rz = buf.rz_t[t]
        r, z = rz[:, :H], rz[:, H:]
        dp = buf.dp_t[t]  # (B, 3H), in place over the factors of step t
        dp.view(B, 3, H).mul_(dh.unsqueeze(1))  # dr_pre, dz_pre, dn_pre
        dgh_n = r.mul_(dp[:, 2 * H :])  # dgh = [dr_pre, dz_pre, dn_pre * r], over r (buf.dgh_n_t[t])
        buf.dh_prev = buf.W_T_rz(buf.dh_prev, dp[:, : 2 * H])  # W_rz^T [dr_pre, dz_pre]
        buf.add_W_T_n(buf.dh_prev, dgh_n).addcmul_(dh, z)  # dh_{t-1} = W^T dgh + dh z

    def weight_grads(self, buf: Buffers, h_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        H = self.hidden_size
        dp_rz = buf.dp.view(-1, 3 * H)[:, : 2 * H]
        dgh_n = buf.dgh_n.view(-1, H)  # (T*B, H), rows 2H apart: the r half of rz
        dW = torch.cat((linear(dp_rz.t(), h_prev.t()), linear(dgh_n.t(), h_prev.t())))  # dgh^T s_{t-1}
        return {"W": dW, "b_hn": dgh_n.sum(dim=0)}  # b_hn enters with W_n s_{t-1}


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(kind: str, input_size: int, hidden_size: int, **kw) -> Cell:
    """`kind` is 'rnn', 'lstm' or 'gru'; keyword arguments go to the cell (`phi` only for 'rnn')."""
    if kind not in CELLS:
        raise ValueError(f"unknown cell {kind!r}; choose one of {', '.join(CELLS)}")
    if kind != "rnn":
        kw.pop("phi", None)
    return CELLS[kind](input_size, hidden_size, **kw)

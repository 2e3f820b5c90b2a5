"""The three recurrent cells, each one time step written from its equations, forward and backward.

A cell maps the input projection of one time step and the previous state to the next state. The
input projection `p_t = U x_t + b` is computed for all time steps at once, before the loop over time
(see `recurrent.py`), because it does not depend on the state; the cell adds the recurrent part
`W s_{t-1}` itself. Everything is written for a batch of row vectors, so `W s` becomes `s @ W.T`.

Each cell has two methods that sit side by side, step for step:
    step(p_t, state)            -> (next_state, cache)          the forward equations
    step_backward(d_state, cache) -> (dp_t, dgh_t, d_state_prev)  their derivatives (hand BPTT)
where `gh_t = s_{t-1} @ W.T` is the recurrent pre-activation. The unroll turns `dgh_t` into
`ds_{t-1} += dgh_t @ W` and, after the loop, into `dW = sum_t dgh_t.T @ s_{t-1}` with one matmul, and
turns `dp_t` into `dU` and `db` the same way. So a cell's backward never touches a weight gradient.

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

import torch

State = tuple[torch.Tensor, ...]  # (h,) for RNN and GRU, (h, c) for LSTM; each (B, H)


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

    def __init__(self, input_size: int, hidden_size: int, *, phi: str = "tanh", **kw):
        if phi not in ("tanh", "relu"):
            raise ValueError(f"phi must be 'tanh' or 'relu', got {phi!r}")
        self.phi = phi
        super().__init__(input_size, hidden_size, **kw)

    def step(self, p_t: torch.Tensor, state: State) -> tuple[State, tuple]:
        (s_prev,) = state
        a = torch.addmm(p_t, s_prev, self.W.t())  # a_t = U x_t + b + W s_{t-1}   (B, H)
        s = torch.tanh(a) if self.phi == "tanh" else torch.relu(a)  # s_t = phi(a_t)
        return (s,), (s,)

    def step_backward(self, d_state: State, cache: tuple):
        (ds,) = d_state
        (s,) = cache
        if self.phi == "tanh":
            da = ds * (1 - s * s)  # tanh'(a) = 1 - tanh(a)^2 = 1 - s^2
        else:
            da = ds * (s > 0)  # relu'(a) = 1 where a > 0, i.e. where s > 0
        return da, da, (None,)  # dp_t, dgh_t, no direct path from s_t to s_{t-1}


class LSTMCell(Cell):
    """Long short-term memory, PyTorch's form (gate order i, f, g, o):

        i_t = sigma(U_i x_t + b_i + W_i h_{t-1})     input gate
        f_t = sigma(U_f x_t + b_f + W_f h_{t-1})     forget gate
        g_t = tanh (U_g x_t + b_g + W_g h_{t-1})     candidate cell
        o_t = sigma(U_o x_t + b_o + W_o h_{t-1})     output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    Backward, given dh_t and dc_t from later steps:
        dc   = dc_t + dh_t * o_t * (1 - tanh(c_t)^2)
        do   = dh_t * tanh(c_t)      di = dc * g_t      dg = dc * i_t      df = dc * c_{t-1}
        dc_{t-1} = dc * f_t
        then through the nonlinearities: sigma' = s (1 - s), tanh' = 1 - t^2, and the pre-activation
        gradient (B, 4H) feeds dW, dU, db and dh_{t-1} = W^T d(pre-activation).
    """

    name = "lstm"
    n_gates = 4
    n_states = 2

    def step(self, p_t: torch.Tensor, state: State) -> tuple[State, tuple]:
        h_prev, c_prev = state
        H = self.hidden_size
        z = torch.addmm(p_t, h_prev, self.W.t())  # all four pre-activations in one matmul (B, 4H)
        ifo = torch.sigmoid(z[:, : 2 * H]), torch.sigmoid(z[:, 3 * H :])
        i, f = ifo[0][:, :H], ifo[0][:, H:]  # input and forget gates
        o = ifo[1]  # output gate
        g = torch.tanh(z[:, 2 * H : 3 * H])  # candidate
        c = torch.addcmul(f * c_prev, i, g)  # c_t = f * c_{t-1} + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c  # h_t = o * tanh(c_t)
        return (h, c), (i, f, g, o, c_prev, tanh_c)

    def step_backward(self, d_state: State, cache: tuple):
        dh, dc_next = d_state
        i, f, g, o, c_prev, tanh_c = cache
        dc = torch.addcmul(dc_next, dh * o, 1 - tanh_c * tanh_c)  # dc = dc_t + dh o (1 - tanh^2 c)
        dz = torch.cat(
            (
                dc * g * i * (1 - i),  # di * sigma'   (di = dc g)
                dc * c_prev * f * (1 - f),  # df * sigma'   (df = dc c_{t-1})
                dc * i * (1 - g * g),  # dg * tanh'    (dg = dc i)
                dh * tanh_c * o * (1 - o),  # do * sigma'   (do = dh tanh c)
            ),
            dim=1,
        )
        return dz, dz, (None, dc * f)  # dc_{t-1} = dc f


class GRUCell(Cell):
    """Gated recurrent unit, PyTorch's form (gate order r, z, n):

        r_t = sigma(U_r x_t + b_r + W_r h_{t-1})                 reset gate
        z_t = sigma(U_z x_t + b_z + W_z h_{t-1})                 update gate
        n_t = tanh (U_n x_t + b_n + r_t * (W_n h_{t-1} + b_hn))  candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    `b_r`, `b_z` are PyTorch's b_ir + b_hr and b_iz + b_hz; `b_n` is b_in; `b_hn` stays separate.

    Backward, given dh_t:
        dz = dh_t * (h_{t-1} - n_t)        dn = dh_t * (1 - z_t)        dh_{t-1} = dh_t * z_t + W^T dgh
        dn_pre = dn * (1 - n_t^2)          dr = dn_pre * (W_n h_{t-1} + b_hn)
        dgh = [dr r(1-r), dz z(1-z), dn_pre * r_t]   (gradient of W h_{t-1} + [0, 0, b_hn])
        dp  = [dr r(1-r), dz z(1-z), dn_pre]         (gradient of U x_t + b)
    """

    name = "gru"
    n_gates = 3
    param_names = ("W", "U", "b", "b_hn")

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, generator=None,
                 dtype=torch.float32, device=None):
        super().__init__(input_size, hidden_size, bias=bias, generator=generator, dtype=dtype, device=device)
        k = 1.0 / math.sqrt(hidden_size)
        self.b_hn = _uniform((hidden_size,), k, generator, dtype, device) if bias else None

    def step(self, p_t: torch.Tensor, state: State) -> tuple[State, tuple]:
        (h_prev,) = state
        H = self.hidden_size
        gh = h_prev @ self.W.t()  # W h_{t-1} for all three gates   (B, 3H)
        rz = torch.sigmoid(p_t[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]  # reset and update gates
        gh_n = gh[:, 2 * H :] if self.b_hn is None else gh[:, 2 * H :] + self.b_hn  # W_n h + b_hn
        n = torch.tanh(torch.addcmul(p_t[:, 2 * H :], r, gh_n))  # n_t = tanh(U_n x + b_n + r * (...))
        h = torch.lerp(n, h_prev, z)  # h_t = (1 - z) n + z h_{t-1}
        return (h,), (r, z, n, h_prev, gh_n)

    def step_backward(self, d_state: State, cache: tuple):
        (dh,) = d_state
        r, z, n, h_prev, gh_n = cache
        dn_pre = dh * (1 - z) * (1 - n * n)  # dn * tanh'
        dr_pre = dn_pre * gh_n * r * (1 - r)  # dr * sigma'
        dz_pre = dh * (h_prev - n) * z * (1 - z)  # dz * sigma'
        dp = torch.cat((dr_pre, dz_pre, dn_pre), dim=1)
        dgh = torch.cat((dr_pre, dz_pre, dn_pre * r), dim=1)
        return dp, dgh, (dh * z,)  # dh_{t-1} direct path: h_t = ... + z h_{t-1}


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(kind: str, input_size: int, hidden_size: int, **kw) -> Cell:
    """`kind` is 'rnn', 'lstm' or 'gru'; keyword arguments go to the cell (`phi` only for 'rnn')."""
    if kind not in CELLS:
        raise ValueError(f"unknown cell {kind!r}; choose one of {', '.join(CELLS)}")
    if kind != "rnn":
        kw.pop("phi", None)
    return CELLS[kind](input_size, hidden_size, **kw)

"""Why RNNs are hard to train, measured (`rnnlab gradflow`): the handout's question 6.

A loss on the last state, L = CE(W_out s_T + b_out, y), reaches an earlier state only through every
step in between. Backpropagation through time (the hand BPTT of `recurrent.bptt`) carries

    dL/ds_{t-1} = J_t^T dL/ds_t,      J_t = ds_t/ds_{t-1} = diag(1 - s_t^2) W     (vanilla RNN, tanh)

so ||dL/ds_t|| is multiplied by one Jacobian per step of distance from T. When the Jacobians shrink
vectors (spectral radius of W below one, or saturated units) the gradient vanishes exponentially; when
they stretch them it explodes. The LSTM's cell path c_t = f_t c_{t-1} + i_t g_t multiplies by the
forget gate instead of by W, and the GRU's h_t = z_t h_{t-1} + (1 - z_t) n_t by the update gate.

For each setup this module measures, on random sentences of length T:

    ||dL/ds_t||         t = 1..T, the norm of the gradient at each state (over the batch), from the hand BPTT
    ||ds_T/ds_t||_2     the spectral norm of the Jacobian of the last state with respect to s_t (mean over
                        a few sequences), from the same BPTT started from each unit vector of s_T at once
    ratio               ||dL/ds_1|| / ||dL/ds_T||
    ||g||               the norm of the whole parameter gradient, before and after clipping it to `clip`

Clipping acts after backpropagation, on the parameter gradient: dW = sum_t (contribution of step t) is
multiplied by one factor min(1, clip / ||g||). That bounds the size of an exploding update, but every
step's contribution shrinks by the same factor, so how little the early steps contribute (the vanishing)
is left exactly as it was. The plot's dashed lines are the measured curves times that factor.

Setups: the vanilla RNN with W rescaled to spectral radius rho in {0.5, 1.0, 1.5}, then the LSTM and the
GRU as initialised (uniform in +-1/sqrt(H), torch.nn's default). Inputs are random token ids through a
random N(0, 1) embedding (as `Classifier` initialises it); labels are random.
Left out: training dynamics (this is the gradient at initialisation), several layers (refused: one line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.optim import clip_grad_norm, grad_norm
from rnnlab.recurrent import backward_through_time, manual_forward

SETUPS = (("rnn", 0.5), ("rnn", 1.0), ("rnn", 1.5), ("lstm", None), ("gru", None))


@dataclass
class Flow:
    name: str  # e.g. "rnn rho=0.5"
    dL_ds: list[float]  # ||dL/ds_t|| for t = 1..T
    ds_T_ds: list[float]  # ||ds_T/ds_t||_2 for t = 1..T (1 at t = T)
    grad_norm: float  # ||dL/dtheta|| over every parameter, before clipping
    clipped_norm: float  # the same after clipping to `clip`
    dL_dc: list[float] | None = None  # LSTM only: ||dL/dc_t|| for t = 1..T, the gradient on the cell path
    gate_means: dict[str, float] | None = None  # mean activation of each gate over every unit, step and sequence

    @property
    def ratio(self) -> float:
        """||dL/ds_1|| / ||dL/ds_T||"""
        return self.dL_ds[0] / self.dL_ds[-1]

    def to_dict(self) -> dict:
        return {"name": self.name, "ratio": self.ratio, "grad_norm": self.grad_norm,
                "clipped_norm": self.clipped_norm, "dL_ds": self.dL_ds, "ds_T_ds": self.ds_T_ds,
                "dL_dc": self.dL_dc, "gate_means": self.gate_means}


def set_spectral_radius(W: torch.Tensor, rho: float) -> None:
    """W <- W * rho / max |eigenvalue of W|, in place."""
    with torch.no_grad():
        radius = torch.linalg.eigvals(W.double()).abs().max()
        W.mul_(rho / float(radius))


def make_model(cell: str, rho: float | None, *, hidden: int, embed_dim: int, vocab_size: int,
               seed: int) -> Classifier:
    # float64: at T = 100 the gradient at s_1 can be 1e-40 of the one at s_T, below float32's range
    model = Classifier(vocab_size, hidden, 2, cell=cell, embed_dim=embed_dim, backward="manual", seed=seed,
                       dtype=torch.float64)
    if rho is not None:
        set_spectral_radius(model.cell.W, rho)
    return model


def _one_layer(model: Classifier) -> None:
    if model.layers != 1:
        raise UserError(f"gradflow measures a one-layer model; this one has {model.layers} layers")


def state_gradients(model: Classifier, ids: torch.Tensor, y: torch.Tensor):
    """(dL/ds_t, dL/dc_t, mean gates) by the hand BPTT, L = mean cross-entropy of W_out s_T + b_out:
    dL/ds_t for t = 1..T as (T, B, H); dL/dc_t the same for the LSTM's cell state (None for the other
    cells); and the mean activation of each gate over the forward pass ({} for the vanilla RNN)."""
    _one_layer(model)
    with torch.no_grad():
        x = model.inputs(ids)  # time-major
        buf = manual_forward(model.cell, x)
        gates = {k: float(v.mean()) for k, v in model.cell.activations(buf).items() if k != "c"}
        s_T = buf.h[-1].clone()
        p = torch.softmax(model.logits(s_T), dim=-1)
        dlogits = (p - F.one_hot(y, p.shape[1]).to(p.dtype)) / len(y)  # d mean CE / d logits
        ds, dc = _backward(model, buf, x, dlogits @ model.W_out)  # dL/ds_T = W_out^T dlogits
        return ds, dc, gates


def final_state_jacobians(model: Classifier, ids: torch.Tensor) -> torch.Tensor:
    """ds_T/ds_t for t = 1..T, (T, B, H, H) with [t, b, i, j] = d s_T[i] / d s_t[j] of sequence b.

    Each sequence is repeated H times in one batch, and the BPTT of copy i starts from the unit
    vector e_i at s_T: what arrives at s_t is then row i of the Jacobian."""
    _one_layer(model)
    B, T = ids.shape
    H = model.hidden_size
    with torch.no_grad():
        rep = ids.repeat_interleave(H, dim=0)  # (B*H, T): copy i of sequence b is row b*H + i
        x = model.inputs(rep)
        buf = manual_forward(model.cell, x)
        dh_T = torch.eye(H, dtype=buf.h.dtype).repeat(B, 1)  # e_i for copy i
        return _backward(model, buf, x, dh_T)[0].view(T, B, H, H)


def memory_needed(length: int, hidden: int, jacobian_sequences: int = 4) -> int:
    """Bytes, roughly, of `final_state_jacobians`: float64 LSTM buffers (about 12 numbers per unit and step)
    for jacobian_sequences * H copies of a sequence."""
    return 8 * 12 * jacobian_sequences * hidden * hidden * (length + 1)


def _backward(model: Classifier, buf, x, dh_T: torch.Tensor):
    """The hand BPTT (`recurrent.backward_through_time`) from dL/ds_T = dh_T (and dL/dc_T = 0), keeping
    dL/ds_t of every step, and dL/dc_t for the LSTM (else None)."""
    cell = model.cell
    T, B = x.shape[:2]
    cell.local_derivatives(buf)  # after the gates were read: this overwrites them
    ds = buf.h.new_empty(T, B, model.hidden_size)
    dcs = buf.h.new_empty(T, B, model.hidden_size) if cell.n_states == 2 else None

    def record(t, dh, dc):  # dh = dL/ds_t (dc = dL/dc_t), t = T..1
        ds[t - 1] = dh
        if dcs is not None:
            dcs[t - 1] = dc

    backward_through_time(cell, buf, dh_T, on_step=record)
    return ds, dcs


def measure(cell: str, rho: float | None = None, *, length: int = 100, batch: int = 16, hidden: int = 64,
            embed_dim: int = 32, vocab_size: int = 1000, clip: float = 1.0, jacobian_sequences: int = 4,
            seed: int = 0) -> Flow:
    """One setup: the gradient at every state, the Jacobians of s_T, and the parameter gradient's norm."""
    model = make_model(cell, rho, hidden=hidden, embed_dim=embed_dim, vocab_size=vocab_size, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)
    ds, dc, gates = state_gradients(model, ids, y)
    dL_ds = ds.flatten(1).norm(dim=1)  # ||dL/ds_t|| over the batch
    dL_dc = dc.flatten(1).norm(dim=1).tolist() if dc is not None else None
    J = final_state_jacobians(model, ids[:jacobian_sequences])  # (T, b, H, H)
    ds_T_ds = torch.linalg.matrix_norm(J, ord=2).mean(dim=1)  # spectral norm, mean over the sequences
    # the whole parameter gradient, through the training path (model forward, loss.backward), then clipped
    loss = F.cross_entropy(model(ids), y)
    loss.backward()
    params = model.parameters()
    norm = float(clip_grad_norm(params, clip))
    clipped = float(grad_norm(params))
    name = f"{cell} rho={rho:g}" if rho is not None else cell
    return Flow(name, dL_ds.tolist(), ds_T_ds.tolist(), norm, clipped, dL_dc, gates or None)


def run(*, length: int = 100, clip: float = 1.0, seed: int = 0, setups=SETUPS, progress: bool | None = None,
        **kw) -> list[Flow]:
    """`measure` for each setup; a progress bar on stderr when it is a terminal (progress=None) or when asked."""
    import sys

    from rnnlab.train import _progress  # the house bar (tqdm), imported only when one is drawn

    bar = _progress(len(setups), 0, "gradflow setups", sys.stderr.isatty() if progress is None else progress)
    flows = []
    for cell, rho in setups:
        flows.append(measure(cell, rho, length=length, clip=clip, seed=seed, **kw))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return flows


def format_table(flows: list[Flow], clip: float) -> str:
    lines = [f"{'setup':<14} {'|dL/ds_1|/|dL/ds_T|':>20} {'|ds_T/ds_1|':>12} {'|g| unclipped':>14} "
             f"{f'|g| clip {clip:g}':>12}"]
    for f in flows:
        lines.append(f"{f.name:<14} {f.ratio:20.3e} {f.ds_T_ds[0]:12.3e} {f.grad_norm:14.3e} {f.clipped_norm:12.3e}")
    return "\n".join(lines)


def write(flows: list[Flow], out_dir, *, length: int, hidden: int, clip: float, seed: int) -> list[Path]:
    """gradflow.json (the settings and every measured curve) and gradflow.png in `out_dir`; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"length": length, "hidden": hidden, "clip": clip, "seed": seed}
    (out / "gradflow.json").write_text(json.dumps({**settings, "flows": [f.to_dict() for f in flows]}) + "\n")
    return [out / "gradflow.json", plot(flows, out / "gradflow.png", clip=clip)]


def plot(flows: list[Flow], path, *, clip: float, show: bool = False):
    """Two panels on a log scale against t: ||dL/ds_t|| (dashed: times the clipping factor) and ||ds_T/ds_t||."""
    from rnnlab import plots

    fig, (left, right) = plots.figure_grid(1, 2, (12, 4.5), show=show)
    for f in flows:
        t = range(1, len(f.dL_ds) + 1)
        (line,) = left.plot(t, f.dL_ds, label=f"{f.name}  (ratio {f.ratio:.1e})")
        scale = f.clipped_norm / f.grad_norm if f.grad_norm > 0 else 1.0
        if scale < 1:  # not measured: clipping multiplies every step's share of dW by this one factor
            left.plot(t, [v * scale for v in f.dL_ds], color=line.get_color(), linestyle="dashed")
        right.plot(t, f.ds_T_ds, label=f.name, color=line.get_color())
    left.set_title(f"||dL/ds_t||  (dashed: scaled by clipping to {clip:g})")
    right.set_title("||ds_T / ds_t||  (spectral norm)")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("t (the loss reads s_T, at the right)")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    return plots.save(fig, path, show)

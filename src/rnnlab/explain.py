"""Look inside a trained classifier, one word at a time (`rnnlab explain`): the handout's question 5.

For a sentence w_1 .. w_T the trace holds, after each word t:

    s_t                          the hidden state (all of it for small H; the top principal components otherwise)
    gates                        i, f, g, o (and c) for the LSTM; r, z, n for the GRU; each (H,)
    p_t = softmax(W_out s_t + b_out)   the class probabilities the model would give if the sentence
                                       stopped at word t; p_T is what `predict` answers

The states and gates come from the manual forward pass (`recurrent.manual_forward`), which keeps
every step's gate activations in its buffers; no gradient is computed. With stacked layers they are
the top layer's (the one W_out reads); each layer below runs the same way and feeds its states up.

Principal components: the states of a set of sentences (s_1..s_T of each, stacked as rows) are
centred, S - mean = U Sigma V^T, and a state is shown as its coordinates on the first k rows of V^T.
The sign of each component is fixed so that its largest loading is positive, so the same states
always give the same picture.

Left out: attributions (saliency, integrated gradients), attention-style word weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.recurrent import manual_forward

FULL_STATE_MAX = 8  # states up to this size are shown whole; larger ones by their principal components


@dataclass
class Trace:
    text: str
    tokens: list[str]
    known: list[bool]  # False where the word is not in the vocabulary (it was read as <unk>)
    states: torch.Tensor  # (T, H): s_1 .. s_T
    gates: dict[str, torch.Tensor]  # name -> (T, H); empty for the vanilla RNN
    probs: torch.Tensor  # (T, C): softmax(W_out s_t + b_out) after each word
    label_names: list[str]

    @property
    def label(self) -> str:
        """The predicted label: argmax of the probabilities after the last word."""
        return self.label_names[int(self.probs[-1].argmax())]

    def to_dict(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "known": self.known, "label": self.label,
                "label_names": self.label_names, "probs": self.probs.tolist(), "states": self.states.tolist(),
                "gates": {k: v.tolist() for k, v in self.gates.items()}}


@torch.no_grad()
def trace(model: Classifier, ids: list[int], tokens: list[str], label_names: list[str], *, text: str = "",
          known: list[bool] | None = None) -> Trace:
    """Run one encoded sentence through the model and keep everything it computes on the way."""
    assert len(ids) == len(tokens), "one id per token"
    if not tokens:
        raise UserError(f"sentence {text!r} has no words; give each sentence at least one word")
    x = model.inputs(torch.tensor([ids], device=model.W_out.device))  # (T, 1) ids or (T, 1, D), time-major
    for cell in model.cells:  # layer l reads the states s^{l-1}_1..s^{l-1}_T of the layer below
        buf = manual_forward(cell, x)
        x = buf.h[1:]  # (T, 1, H)
    gates = {name: a[:, 0].cpu().clone() for name, a in model.cells[-1].activations(buf).items()}  # top layer's
    states = buf.h[1:, 0]  # (T, H): s_1 .. s_T of the top layer
    probs = torch.softmax(model.logits(states), dim=-1)  # p_t = softmax(W_out s_t + b_out)
    return Trace(text or " ".join(tokens), list(tokens), list(known or [True] * len(tokens)), states.cpu().clone(),
                 gates, probs.cpu(), list(label_names))


def explain_texts(model: Classifier, vocab, texts: list[str], label_names: list[str], lowercase: bool) -> list[Trace]:
    """`trace` for raw texts, tokenised and encoded as training did."""
    from rnnlab.data import tokenize

    traces = []
    for text in texts:
        tokens = tokenize(text, lowercase)
        traces.append(trace(model, vocab.encode(tokens), tokens, label_names, text=text,
                            known=[t in vocab.stoi for t in tokens]))
    return traces


def explain_checkpoint(path, texts: list[str]) -> tuple[Classifier, list[Trace]]:
    """(model, traces) for raw texts, with a model trained by `rnnlab train` (a run folder or model.pt)."""
    from rnnlab import checkpoint

    model, config, vocab, label_names, _ = checkpoint.load_model(path)
    return model, explain_texts(model, vocab, texts, label_names, config.lowercase)


def write(model: Classifier, traces: list[Trace], out_dir) -> list:
    """explain.json (every number of the traces) and trajectory.png in `out_dir`; their paths."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.json").write_text(json.dumps([tr.to_dict() for tr in traces], indent=1) + "\n")
    return [out / "explain.json", plot_trajectories(model, traces, out / "trajectory.png")]


# -- principal components ----------------------------------------------------------------------------
@dataclass
class PCA:
    mean: torch.Tensor  # (H,)
    components: torch.Tensor  # (k, H): orthonormal rows, the directions of largest variance first
    explained: torch.Tensor  # (k,): fraction of the total variance along each component

    def project(self, s: torch.Tensor) -> torch.Tensor:
        """(N, H) states -> (N, k) coordinates: (s - mean) V_k^T"""
        return (s - self.mean) @ self.components.t()

    def shares(self) -> str:
        """The variance each component explains, as percentages: "29%, 6%, 5%"."""
        return ", ".join(f"{100 * float(e):.0f}%" for e in self.explained)


def fit_pca(states: torch.Tensor, k: int) -> PCA:
    """Principal components of the rows of `states` (N, H), by the SVD of the centred rows."""
    S = states.double()
    mean = S.mean(dim=0)
    _, sigma, Vt = torch.linalg.svd(S - mean, full_matrices=False)  # S - mean = U diag(sigma) V^T
    k = min(k, Vt.shape[0])
    V = Vt[:k]
    signs = torch.sign(V.gather(1, V.abs().argmax(dim=1, keepdim=True)))  # largest loading positive
    V = V * torch.where(signs == 0, 1.0, signs)
    variance = sigma**2
    total = variance.sum()
    explained = variance[:k] / total if total > 0 else torch.zeros(k, dtype=S.dtype)
    return PCA(mean.to(states.dtype), V.to(states.dtype), explained.to(states.dtype))


# -- text output ---------------------------------------------------------------------------------------
def shared_pca(traces: list[Trace], k: int = 3) -> PCA | None:
    """One PCA fitted on the states of all the traces, so their tables share axes; None when H is small
    enough to show whole."""
    if traces[0].states.shape[1] <= FULL_STATE_MAX:
        return None
    return fit_pca(torch.cat([tr.states for tr in traces]), k)


def format_trace(tr: Trace, pca: PCA | None = None) -> str:
    """A per-word table: the word, p(class) if the sentence stopped there, the state, the gates' means.
    States larger than FULL_STATE_MAX are shown on `pca`'s components (fitted on this sentence if None)."""
    H = tr.states.shape[1]
    pca = pca or shared_pca([tr])
    if pca is None:
        state_cols = [f"s[{j}]" for j in range(H)]
        state_vals = tr.states
    else:
        state_cols = [f"pc{j + 1}" for j in range(pca.components.shape[0])]
        state_vals = pca.project(tr.states)
    gate_cols = [f"mean {g}" for g in tr.gates]
    width = max(8, *(len(t) + (1 if not k else 0) for t, k in zip(tr.tokens, tr.known)))
    p_cols = [f"p({n})" for n in tr.label_names]
    head = [f"{'word':<{width}}", *(c.rjust(max(7, len(c))) for c in p_cols),
            *(c.rjust(8) for c in state_cols), *(c.rjust(8) for c in gate_cols)]
    lines = [f"{tr.text!r} -> {tr.label}", "  ".join(head)]
    for t, token in enumerate(tr.tokens):
        word = token if tr.known[t] else token + "*"
        row = [f"{word:<{width}}", *(f"{p:{max(7, len(c))}.4f}" for p, c in zip(tr.probs[t].tolist(), p_cols)),
               *(f"{v:+8.4f}" for v in state_vals[t].tolist()),
               *(f"{float(a[t].mean()):8.4f}" for a in tr.gates.values())]
        lines.append("  ".join(row))
    notes = []
    if pca is not None:
        notes.append(f"state shown as its top principal components (variance explained {pca.shares()}; H = {H})")
    if tr.gates:
        notes.append("gates: mean over the H units")
    if not all(tr.known):
        notes.append("* not in the vocabulary, read as <unk>")
    return "\n".join(lines + [f"  ({n})" for n in notes])


# -- picture ---------------------------------------------------------------------------------------------
def plot_trajectories(model: Classifier, traces: list[Trace], path, *, pca: PCA | None = None, show: bool = False):
    """Each sentence's path s_0 = 0 -> s_1 -> ... -> s_T, each point filled with the class the model gives it,
    argmax softmax(W_out s_t + b_out) (s_0 = 0 gives b_out's class), with the output layer's decision boundary.

    H = 2: the states themselves, and the boundary w . s + c = 0 (w = W_out[1] - W_out[0], c = b_out[1] -
    b_out[0]) with its two regions: the picture is exact. Otherwise their coordinates z on the top two principal
    components (fitted on these sentences' states unless `pca` is given), and the line drawn is the boundary
    restricted to that plane: with s = mean + V^T z, w . s + c = (V w) . z + (w . mean + c). A state off the
    plane can sit on the line's other side, so there the points' fills, not the line, give the model's answer.
    """
    from rnnlab import plots  # matplotlib only when drawing

    H = model.hidden_size
    W_out, b_out = model.W_out.detach().cpu(), model.b_out.detach().cpu()
    w, c = (W_out[1] - W_out[0], float(b_out[1] - b_out[0])) if model.num_classes == 2 else (None, None)
    words = [tr.tokens for tr in traces]
    paths = [torch.cat((torch.zeros(1, H), tr.states)) for tr in traces]  # s_0 = 0, then one state per word
    s0_class = int(b_out.argmax())  # softmax(W_out 0 + b_out): the answer before any word
    predictions = [[s0_class, *tr.probs.argmax(dim=1).tolist()] for tr in traces]  # the model's own, per point
    names = traces[0].label_names
    bounded = model.cell.name != "rnn" or model.cell.phi == "tanh"  # tanh and the gated cells keep h_t in (-1, 1)
    if H == 2 and pca is None:
        boundary = None if w is None else (w.tolist(), c)
        return plots.trajectory(words, [p.tolist() for p in paths], predictions, names, boundary, path, exact=True,
                                axes=("s[0]", "s[1]"), limits=(-1.1, 1.1) if bounded else None,
                                title="Hidden state after each word", show=show)
    pca = pca or fit_pca(torch.cat([tr.states for tr in traces]), 2)
    V, share = pca.components[:2], pca.explained[:2]  # the plane of the first two
    if len(V) < 2:  # H = 1, or a single state: one direction only; the second axis stays at 0
        V, share = torch.cat((V, V.new_zeros(2 - len(V), H))), torch.cat((share, share.new_zeros(2 - len(share))))
    pca = PCA(pca.mean, V, share)
    boundary = None if w is None else ((pca.components @ w).tolist(), float(w @ pca.mean) + c)
    return plots.trajectory(words, [pca.project(p).tolist() for p in paths], predictions, names, boundary, path,
                            exact=False, axes=("principal component 1", "principal component 2"),
                            title=f"Hidden states (H = {H}) on their top 2 principal components ({pca.shares()} of "
                                  "variance)", show=show)

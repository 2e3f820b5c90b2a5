"""The sentence classifier: token ids -> recurrent cell(s) -> last state -> class logits.

    x_t  = one-hot(id_t)  or  E[id_t]              (embedding E (V, D) when embed_dim is set)
    s_t  = cell(x_t, s_{t-1}),  s_0 = 0            (rnn: s_t = phi(W s_{t-1} + U x_t + b))
    logits = W_out s_T + b_out                     s_T: the state at each sentence's last word
    class  = argmax(logits)

With layers = N > 1 the cells are stacked as torch.nn's num_layers: layer l reads the states of layer
l - 1 as its inputs, s^l_t = cell_l(s^{l-1}_t, s^l_{t-1}) with s^0_t = x_t, and s_T is the top layer's
final state. Layer 0's parameters keep the one-layer names (W, U, b, b_hn), so one-layer checkpoints
load as before; layer l > 0 adds the suffix `_l{l}` (W_l1, U_l1, b_l1, b_hn_l1), after torch.nn's
`weight_hh_l1`.

With no embedding, as in the lab handout, U (H, V) multiplies the one-hot vector directly, which is a
lookup of U's column for the word. All parameters are plain leaf tensors with `requires_grad`, named
after the symbols (`W`, `U`, `b`, `W_out`, `b_out`, `E`); no torch.nn layers compute anything here.

Left out: dropout between time steps (variational dropout), attention or pooling over the states.
"""

from __future__ import annotations

import math

import torch

from rnnlab.cells import Cell, make_cell
from rnnlab.recurrent import dropout as _dropout
from rnnlab.recurrent import embedding, unroll_layers


class Parameters:
    """What a model does with its leaf tensors, given `named_parameters()` (name -> tensor, in a fixed order):
    the list the optimiser steps, their count, and the plain copies a checkpoint holds."""

    def named_parameters(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def parameters(self) -> list[torch.Tensor]:
        return list(self.named_parameters().values())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mine = self.named_parameters()
        if set(state) != set(mine):
            raise KeyError(f"parameter names differ: expected {sorted(mine)}, got {sorted(state)}")
        with torch.no_grad():
            for n, p in mine.items():
                if state[n].shape != p.shape:
                    raise ValueError(f"{n}: expected shape {tuple(p.shape)}, got {tuple(state[n].shape)}")
                p.copy_(state[n])


class Classifier(Parameters):
    """ids (B, T) with lengths (B,) -> logits (B, C), through `layers` stacked cells.

    W_out, b_out ~ Uniform(-1/sqrt(H), 1/sqrt(H)) (torch.nn.Linear's default, fan-in H); the cell
    initialises itself the same way; the embedding E ~ N(0, 1) as torch.nn.Embedding does.
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_classes: int = 2, *, cell: str = "rnn",
                 phi: str = "tanh", embed_dim: int | None = None, layers: int = 1,
                 backward: str = "autograd", seed: int | None = None, dtype=torch.float32, device=None,
                 engine: str | None = None):
        if vocab_size < 1 or hidden_size < 1 or num_classes < 2 or layers < 1:
            raise ValueError("need vocab_size >= 1, hidden_size >= 1, num_classes >= 2 and layers >= 1")
        g = torch.Generator(device=device or "cpu")
        if seed is not None:
            g.manual_seed(seed)
        else:
            g.seed()
        self.vocab_size, self.hidden_size, self.num_classes = vocab_size, hidden_size, num_classes
        self.embed_dim, self.backward = embed_dim, backward
        self.engine = engine  # who runs backward="manual"'s time loop (rnnlab.engine); None: RNNLAB_ENGINE or auto
        self.E = None
        if embed_dim:
            self.E = torch.randn(vocab_size, embed_dim, generator=g, dtype=dtype, device=device).requires_grad_()
        input_size = embed_dim or vocab_size  # layer 0 reads x_t; layer l > 0 reads s^{l-1}_t (H)
        self.cells: list[Cell] = [make_cell(cell, input_size if layer == 0 else hidden_size, hidden_size, phi=phi,
                                            generator=g, dtype=dtype, device=device) for layer in range(layers)]
        k = 1.0 / math.sqrt(hidden_size)
        self.W_out = torch.empty(num_classes, hidden_size, dtype=dtype, device=device).uniform_(-k, k, generator=g)
        self.b_out = torch.empty(num_classes, dtype=dtype, device=device).uniform_(-k, k, generator=g)
        self.W_out.requires_grad_()
        self.b_out.requires_grad_()

    @property
    def cell(self) -> Cell:
        """The bottom layer's cell (the only one when layers = 1)."""
        return self.cells[0]

    @property
    def layers(self) -> int:
        return len(self.cells)

    # -- parameters -----------------------------------------------------------------------------------
    def named_parameters(self) -> dict[str, torch.Tensor]:
        """{'W': ..., 'U': ..., 'b': ..., ['b_hn'], [per layer l > 0: 'W_l1', 'U_l1', 'b_l1', ['b_hn_l1']],
        ['E'], 'W_out': ..., 'b_out': ...}"""
        params = {n + (f"_l{layer}" if layer else ""): p
                  for layer, cell in enumerate(self.cells)
                  for n, p in zip(cell.param_names, cell.parameters()) if p is not None}
        if self.E is not None:
            params["E"] = self.E
        params["W_out"], params["b_out"] = self.W_out, self.b_out
        return params

    # -- forward --------------------------------------------------------------------------------------
    def inputs(self, ids: torch.Tensor, backward: str | None = None) -> torch.Tensor:
        """x_t for every step of ids (B, T), time-major as the loop runs (no transposed copies later): the ids
        themselves (T, B), since one-hot(id) U == U[:, id] is a column lookup; or the embeddings E[id] (T, B, D)
        (`recurrent.embedding`: with backward="manual" on the compiled engine, its gradient is the engine's)."""
        assert ids.dim() == 2, f"ids must be (B, T), got shape {tuple(ids.shape)}"
        ids = ids.t()  # (T, B)
        return ids if self.E is None else embedding(ids, self.E, backward or self.backward, self.engine)

    def states(self, ids: torch.Tensor, lengths: torch.Tensor | None = None, backward: str | None = None,
               dropout: tuple[float, torch.Generator] | None = None,
               weight_drop: tuple[float, torch.Generator] | None = None):
        """The top layer's states: outputs (T, B, H) (zero past each length) and its final state tuple.
        With dropout = (p, generator), the embeddings and each layer's outputs but the top's are dropped;
        with weight_drop = (p, generator), each layer's recurrent W (see `recurrent.drop_weights`)."""
        x = self.inputs(ids, backward)
        if dropout is not None and self.E is not None:
            x = _dropout(x, *dropout)
        out, finals = unroll_layers(self.cells, x, None, lengths, backward or self.backward, dropout_between=dropout,
                                    batch_first=False, engine=self.engine, weight_drop=weight_drop)
        return out, finals[-1]

    def logits(self, s_T: torch.Tensor) -> torch.Tensor:
        """logits = W_out s_T + b_out   (B, C)"""
        return torch.addmm(self.b_out, s_T, self.W_out.t())

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor | None = None,
                 dropout: tuple[float, torch.Generator] | None = None,
                 weight_drop: tuple[float, torch.Generator] | None = None) -> torch.Tensor:
        """logits (B, C) of each sentence, from s_T, its state at its last word.

        dropout = (p, generator), for training only: each embedding entry, each entry of the states a
        layer passes to the next (layers > 1) and each entry of s_T is zeroed with probability p and the
        rest scaled by 1 / (1 - p), with masks drawn from `generator` (so a run, and a resumed run, draws
        the same masks). weight_drop = (p, generator): DropConnect on each layer's W, for training only."""
        _, state = self.states(ids, lengths, dropout=dropout, weight_drop=weight_drop)
        s_T = state[0] if dropout is None else _dropout(state[0], *dropout)
        return self.logits(s_T)

    @torch.no_grad()
    def predict_proba(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(logits), (B, C); no graph is built, so the plain forward serves both backward modes."""
        _, state = self.states(ids, lengths, backward="autograd")
        return torch.softmax(self.logits(state[0]), dim=-1)

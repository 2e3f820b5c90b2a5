"""One typed configuration for every run: the model, the optimiser and the data handling.

A run writes its resolved `Config` (seed included) as `config.json` in its folder, so it can be
repeated exactly; a checkpoint carries it too. `Config.lab()` is the lab handout's setting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from rnnlab import choices
from rnnlab.errors import UserError


@dataclass
class Config:
    # -- model --
    cell: str = "gru"  # recurrent cell: 'rnn' (vanilla, the handout's), 'lstm' or 'gru'
    hidden: int = 128  # H: size of the hidden state s_t
    layers: int = 1  # stacked recurrent layers (torch.nn's num_layers)
    phi: str = "tanh"  # nonlinearity of the vanilla RNN: 'tanh' or 'relu'
    embed_dim: int | None = 128  # D: word embedding size; None feeds one-hot words straight into U (the lab)
    dropout: float = 0.0  # training only: drop embedding entries, layer outputs and s_T entries with this probability
    weight_drop: float = 0.0  # training only: DropConnect on each layer's recurrent W, one mask per step (AWD-LSTM)
    backward: str = "manual"  # "manual" (hand-written BPTT, the faster) or "autograd" (loss.backward through the loop)
    engine: str = "auto"  # who runs the manual time loop: 'auto' (compiled where it builds), 'python' or 'compiled'
    # -- optimisation --
    optimizer: str = "adam"  # 'sgd', 'adagrad' or 'adam', all written by hand in optim.py
    lr: float = 2e-3  # learning rate
    momentum: float = 0.0  # SGD momentum (0 = plain SGD)
    weight_decay: float = 0.0  # L2 penalty added to the gradient
    clip: float | None = 5.0  # clip the gradients' global L2 norm to this; None = no clipping
    batch_size: int = 32  # sentences per step
    epochs: int = 10  # passes over the training split
    patience: int | None = 3  # stop after this many epochs without a better validation loss; None = never
    steps: int | None = None  # stop after this many optimiser steps (whichever of epochs, steps, minutes first)
    minutes: float | None = None  # stop after this many minutes of training (wall clock, across resumes)
    schedule: str = "constant"  # learning rate over the steps: 'constant', 'cosine' (to 0) or 'step' (x0.3 per third)
    warmup: int = 0  # linear warm-up of the learning rate over this many first steps
    # -- data --
    lowercase: bool = True  # lower-case text before tokenising (the lab keeps "The" as written)
    min_freq: int = 1  # words seen fewer times in the training split map to <unk>
    max_vocab: int | None = 20000  # keep at most this many words (specials included); None = all
    val_frac: float = 0.1  # fraction held out for validation (early stopping) when no --val file is given
    test_frac: float = 0.1  # fraction held out for the final test when no --test file is given
    bucket: bool = True  # batch sentences of similar length together (less padding, same maths)
    # -- language model (task 'lm') --
    task: str = "classify"  # 'classify' (labelled sentences) or 'lm' (predict the next token of a text)
    level: str = "char"  # lm tokens: 'char' (every character) or 'word' (the tokeniser, plus an end-of-line token)
    seq_len: int = 100  # lm: tokens per chunk, the length of truncated BPTT
    random_offset: bool = False  # lm: each epoch cuts its streams from a random offset in [0, seq_len)
    seed: int = 0  # seeds the weights, the split and the batch order
    device: str = "cpu"  # 'cpu', 'cuda', 'cuda:1' or 'mps': where the tensors live (see check_device)

    @classmethod
    def lab(cls, **overrides) -> Config:
        """The lab handout: n = 2, one-hot words, SGD with lr 0.1, 300 epochs, one sentence a step, seed 42."""
        base = dict(cell="rnn", hidden=2, embed_dim=None, backward="autograd", optimizer="sgd", lr=0.1, clip=None,
                    batch_size=1, epochs=300, patience=None, lowercase=False, bucket=False, seed=42)
        return cls(**{**base, **overrides})

    def validate(self) -> Config:
        """Raise UserError (one line, with the fix) for settings no run can use."""
        checks = [
            (self.cell in choices.CELLS, f"--cell {self.cell}: choose {_or(choices.CELLS)}"),
            (self.phi in choices.PHIS, f"--phi {self.phi}: choose {_or(choices.PHIS)}"),
            (self.backward in choices.BACKWARDS, f"--backward {self.backward}: choose {_or(choices.BACKWARDS)}"),
            (self.engine in choices.ENGINES, f"--engine {self.engine}: choose {_or(choices.ENGINES)}"),
            (self.optimizer in choices.OPTIMIZERS, f"--optimizer {self.optimizer}: choose {_or(choices.OPTIMIZERS)}"),
            (self.hidden >= 1, f"--hidden {self.hidden}: the hidden size must be a positive integer, e.g. --hidden "
                               f"{Config.hidden}"),
            (self.epochs >= 1, f"--epochs {self.epochs}: train for at least one epoch, e.g. --epochs {Config.epochs}"),
            (self.lr > 0, f"--lr {self.lr}: the learning rate must be positive, e.g. --lr {Config.lr:g}"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: use at least 1"),
            (self.embed_dim is None or self.embed_dim >= 1, f"--embed-dim {self.embed_dim}: use a positive size"),
            (self.clip is None or self.clip > 0, f"--clip {self.clip}: use a positive norm, or leave it out"),
            (0 <= self.dropout < 1, f"--dropout {self.dropout}: use a probability in [0, 1), e.g. --dropout 0.5"),
            (0 <= self.weight_drop < 1, f"--weight-drop {self.weight_drop}: use a probability in [0, 1), e.g. "
                                        "--weight-drop 0.2"),
            (self.layers >= 1, f"--layers {self.layers}: use at least 1"),
            (self.steps is None or self.steps >= 1, f"--steps {self.steps}: use at least 1 optimiser step"),
            (self.minutes is None or self.minutes > 0, f"--minutes {self.minutes}: use a positive number of minutes"),
            (self.schedule in choices.SCHEDULES, f"--schedule {self.schedule}: choose {_or(choices.SCHEDULES)}"),
            (self.warmup >= 0, f"--warmup {self.warmup}: use 0 or more steps"),
            (self.task in choices.TASKS, f"--task {self.task}: choose {_or(choices.TASKS)}"),
            (self.level in choices.LEVELS, f"--level {self.level}: choose {_or(choices.LEVELS)}"),
            (self.seq_len >= 1, f"--seq-len {self.seq_len}: use at least 1 token per chunk, e.g. --seq-len 100"),
            (self.patience is None or self.patience >= 1, f"--patience {self.patience}: use at least 1, or 0 for none"),
            (self.momentum >= 0 and self.weight_decay >= 0, "--momentum and --weight-decay must be >= 0"),
            (0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1,
             "--val-frac and --test-frac must be in [0, 1) and sum to less than 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        check_device(self.device)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _or(names) -> str:
    """'a, b or c'"""
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_device(device: str) -> str:
    """`device` if this torch can compute there, else a UserError naming the devices it has and the fix.

    Checked before any work is done: torch itself only fails at the first tensor, with a traceback
    about a missing CUDA library."""
    import torch

    have = ["cpu"]
    if torch.cuda.is_available():
        have += ["cuda"] + [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        have.append("mps")
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    fix = f"this torch {torch.__version__} ({build}) can use {', '.join(have)}; pass --device cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device}: not a device name; {fix}") from None
    if kind.type == "cpu" or (kind.type == "cuda" and kind.index is None and "cuda" in have):
        return device
    if str(kind) not in have:
        raise UserError(f"--device {device}: not available here; {fix}")
    return device

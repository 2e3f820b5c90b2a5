"""How far back can each cell remember? A generated long-range memory task (`rnnlab memory`).

The task, for a distance D and C classes over a vocabulary of V tokens:

    x_0           ~ Uniform{0, ..., C - 1}          the signal token; the label is its index, y = x_0
    x_1 .. x_D    ~ Uniform{C, ..., V - 1}          D distractor tokens, from a disjoint range
    predict y from s_{D+1}, the state after the last distractor

Everything the model needs is in the first token; the D distractors carry no information about the
label. To answer, the cell must carry x_0 through D updates of its state. The gradient that teaches it
to do so flows back through the same D steps: for the vanilla RNN it is a product of D Jacobians
diag(phi') W that tends to vanish (Bengio, Simard & Frasconi 1994; Hochreiter 1991), while the LSTM's
cell state c_t = f_t * c_{t-1} + ... and the GRU's h_t = (1 - z_t) * n_t + z_t * h_{t-1} have an additive
path that carries it (Hochreiter & Schmidhuber 1997; Cho et al. 2014). This is the "remember the first
symbol" probe of those papers, in its simplest form; chance accuracy is 1 / C.

`sweep` trains every cell at every distance with one common budget (`MemoryConfig`: the same steps,
batch size, optimiser, learning rate, clipping, hidden size and initialisation seed), feeding each cell
the identical stream of training batches at a given D, and measures accuracy on a fresh held-out set.

What it measures with the default budget, and how that compares with the textbook order (it does not
follow it), is in docs/questions.md, which `make figures` regenerates from a run of `sweep`.

Left out, on purpose: the copy and adding tasks, variable-length distractor runs, and a search over the
learning rate per cell (one shared setting keeps the comparison about the cell, not the tuning). Repeats
over seeds are there (`MemoryConfig.seeds`, `rnnlab memory --seeds N`: each point is the mean over N
seeds); the default is one seed per point, and single points can be noisy.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import choices
from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.optim import clip_grad_norm, make_optimizer

CELLS = choices.CELLS
DISTANCES = (5, 10, 20, 50, 100)  # D: distractor tokens between the signal and the answer


@dataclass
class MemoryConfig:
    """One budget shared by every cell and distance of a sweep."""

    steps: int = 2000  # optimiser steps per (cell, D), each on a new batch; the full sweep takes ~1 min on 2 cores
    batch_size: int = 32  # sequences per step
    hidden: int = 32  # H: size of the hidden state
    optimizer: str = "adam"  # 'adam' (per-parameter step sizes), or 'sgd' (steps in proportion to the gradient)
    lr: float = 1e-2  # learning rate
    clip: float = 1.0  # clip the gradients' global L2 norm to this (tames the RNN's exploding steps)
    num_classes: int = 4  # C signal tokens, one per class: chance accuracy is 1 / C
    vocab_size: int = 12  # V: C signal tokens + (V - C) distractor tokens, fed to U as one-hot vectors
    n_test: int = 1000  # held-out sequences per D, from their own seed
    seed: int = 0  # the weights (same seed for each cell), the training stream and the test set
    seeds: int = 1  # repeat each run with seeds seed, seed + 1, ...; the accuracy reported is their mean

    def validate(self) -> MemoryConfig:
        """Raise UserError (one line, with the fix) for a budget no run can use."""
        checks = [
            (self.steps >= 1, f"--steps {self.steps}: train for at least one step, e.g. --steps 2000"),
            (self.batch_size >= 1, f"batch_size {self.batch_size}: use at least 1"),
            (self.hidden >= 1, f"--hidden {self.hidden}: the hidden size must be a positive integer, e.g. --hidden 32"),
            (self.optimizer in choices.OPTIMIZERS,
             f"--optimizer {self.optimizer}: choose one of {', '.join(choices.OPTIMIZERS)}"),
            (self.lr > 0, f"--lr {self.lr}: the learning rate must be positive"),
            (self.clip > 0, f"clip {self.clip}: use a positive norm"),
            (self.num_classes >= 2, f"num_classes {self.num_classes}: use at least 2"),
            (self.vocab_size > self.num_classes, f"vocab_size {self.vocab_size}: leave at least one distractor "
                                                 f"token above the {self.num_classes} signal tokens"),
            (self.n_test >= 1, f"n_test {self.n_test}: use at least 1"),
            (self.seeds >= 1, f"--seeds {self.seeds}: use at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


def _check_distance(distance: int) -> None:
    if distance < 1:
        raise UserError(f"distance {distance}: put at least one distractor after the signal, e.g. --distances 5 10")


def make_task(n: int, distance: int, vocab_size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of the memory task: ids (n, D + 1) int64 and labels (n,) int64.

    ids[:, 0] is a signal token in 0..C-1 and labels == ids[:, 0]; ids[:, 1:] are distractors in C..V-1.
    The same arguments give the same tensors on every machine: the draws come from an own generator
    seeded with `seed`, never from torch's global one.
    """
    _check_distance(distance)
    if n < 1 or num_classes < 2 or vocab_size <= num_classes:
        raise UserError(f"need n >= 1, num_classes >= 2 and vocab_size > num_classes; got n={n}, "
                        f"num_classes={num_classes}, vocab_size={vocab_size}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)  # y = x_0 (n,)
    distractors = torch.randint(num_classes, vocab_size, (n, distance), generator=g)  # x_1..x_D (n, D)
    ids = torch.cat([labels[:, None], distractors], dim=1)  # (n, D + 1)
    return ids, labels


def _stream_seeds(seed: int, distance: int) -> tuple[int, int]:
    """(training seed, test seed) for one D: distinct for every (seed, D), and train never equals test."""
    base = 2 * (1_000_003 * seed + distance)  # distinct for every (seed, D) with D < 1,000,003
    return base, base + 1


def train_one(cell: str, distance: int, config: MemoryConfig) -> dict:
    """Train one `cell` on the task at `distance` for the budget; its test accuracy and final loss.

    The loop: draw a batch, forward, cross-entropy, backward (hand-written BPTT), clip, optimiser step.
    """
    config.validate()
    _check_distance(distance)
    C, V, B = config.num_classes, config.vocab_size, config.batch_size
    train_seed, test_seed = _stream_seeds(config.seed, distance)
    train_ids, train_labels = make_task(config.steps * B, distance, V, C, train_seed)  # one batch per step
    model = Classifier(V, config.hidden, C, cell=cell, embed_dim=None, backward="manual", seed=config.seed)
    params = model.parameters()
    optimizer = make_optimizer(config.optimizer, params, lr=config.lr)

    t0 = time.perf_counter()
    losses = []
    for step in range(config.steps):
        x, y = train_ids[step * B:(step + 1) * B], train_labels[step * B:(step + 1) * B]  # (B, D + 1), (B,)
        loss = F.cross_entropy(model(x), y)  # forward, loss
        loss.backward()  # backward: the hand BPTT through all D + 1 steps
        clip_grad_norm(params, config.clip)  # clip
        optimizer.step()  # step
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0

    test_ids, test_labels = make_task(config.n_test, distance, V, C, test_seed)  # fresh, held out
    predictions = model.predict_proba(test_ids).argmax(dim=1)
    tail = losses[-max(1, config.steps // 10):]  # the last tenth of the run, smoother than the last batch
    return {"cell": cell, "distance": distance, "accuracy": float((predictions == test_labels).float().mean()),
            "final_train_loss": sum(tail) / len(tail), "seconds": seconds}


def check_sweep(cells, distances) -> tuple[list[str], list[int]]:
    """The cells and distances of a sweep, each once, in order; a UserError for one no run can use."""
    cells, distances = list(dict.fromkeys(cells)), list(dict.fromkeys(distances))  # each pair once
    for cell in cells:
        if cell not in CELLS:
            raise UserError(f"cell {cell!r}: choose from {', '.join(CELLS)}")
    for distance in distances:
        _check_distance(distance)
    return cells, distances


def sweep(cells: list[str] | tuple[str, ...] = CELLS, distances: list[int] | tuple[int, ...] = DISTANCES,
          config: MemoryConfig | None = None, log: Callable[[str], None] = print,
          progress: bool | None = None) -> list[dict]:
    """train_one for every cell and distance (D outermost) and seed; one row per (cell, D), whose
    `accuracy` is the mean over the seeds, with each seed's in `accuracies`. The rows hold no run times (they
    are logged), so the same sweep always gives the same rows. A progress bar goes to stderr when it is a
    terminal (progress=None) or when asked."""
    import sys

    from rnnlab.train import _progress  # the house bar (tqdm), imported only when one is drawn

    config = (config or MemoryConfig()).validate()
    cells, distances = check_sweep(cells, distances)
    bar = _progress(len(distances) * len(cells) * config.seeds, 0, "memory runs",
                    sys.stderr.isatty() if progress is None else progress)
    rows = []
    for distance in distances:
        for cell in cells:
            runs = []
            for seed in range(config.seed, config.seed + config.seeds):
                run = train_one(cell, distance, dataclasses.replace(config, seed=seed))
                line = (f"D={distance:<4d} {cell:<5} seed {seed}  accuracy {run['accuracy']:.3f}  "
                        f"train loss {run['final_train_loss']:.3f}  ({run['seconds']:.1f}s)")
                if bar is None:
                    log(line)
                else:
                    with bar.external_write_mode():  # the line above the bar, not through it
                        log(line)
                    bar.update(1)
                runs.append(run)
            accuracies = [r["accuracy"] for r in runs]
            rows.append({"cell": cell, "distance": distance, "accuracy": sum(accuracies) / len(runs),
                         "accuracies": accuracies, "seeds": list(range(config.seed, config.seed + config.seeds)),
                         "final_train_loss": sum(r["final_train_loss"] for r in runs) / len(runs)})
    if bar is not None:
        bar.close()
    return rows


def table(rows: list[dict]) -> str:
    """Accuracy as text: one line per cell, one column per D."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    distances = list(dict.fromkeys(r["distance"] for r in rows))
    accuracy = {(r["cell"], r["distance"]): r["accuracy"] for r in rows}
    lines = [f"{'cell':<6}" + "".join(f"{'D=' + str(d):>8}" for d in distances)]
    for cell in cells:
        lines.append(f"{cell:<6}" + "".join(f"{accuracy[cell, d]:8.3f}" for d in distances))
    return "\n".join(lines)


def write_results(rows: list[dict], config: MemoryConfig, out_dir: str | Path, *, show: bool = False) -> list[Path]:
    """memory.json (the budget and every row) and memory.png (accuracy against D); their paths."""
    from rnnlab import plots  # matplotlib is imported only when a picture is drawn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chance = 1.0 / config.num_classes
    json_path = out / "memory.json"
    json_path.write_text(json.dumps({"config": dataclasses.asdict(config), "chance": chance, "rows": rows},
                                    indent=2) + "\n")
    c = config
    name = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad"}[c.optimizer]
    seeds = f"seed {c.seed}" if c.seeds == 1 else f"mean of seeds {c.seed}-{c.seed + c.seeds - 1} (band: min-max)"
    budget = (f"H = {c.hidden}, {c.steps} {name} steps of {c.batch_size} at lr {c.lr:g}, clip {c.clip:g}, "
              f"{c.num_classes} classes, {seeds}")
    png_path = plots.memory_sweep(rows, chance, out / "memory.png", budget=budget, show=show)
    return [png_path, json_path]

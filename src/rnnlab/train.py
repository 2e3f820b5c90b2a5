"""Training: one loop, in short stages, shared by the sentence classifier and the language model.

`train(config, data, out_dir)` trains a classifier; `lm.train_lm` a language model. Both are

    run = open_run(...)                           resume from last.pt, or start a fresh run folder
    fit(run, task):
        for each epoch:
            train_epoch: for each step of the epoch (the task decides what a step reads):
                task.step: forward -> cross-entropy loss -> backward (-> average over processes)
                update:    clip -> learning rate of the schedule -> optimiser step
            end_epoch: task.validate (no gradients) -> log -> keep the best checkpoint -> early stop
    task.finish: reload the best weights -> test -> write history, curves and the task's own records

What a task supplies (`ClassifierTask` below, `lm.LMTask`): `start_epoch` (how many steps the epoch
has), `step` (one batch's forward and backward, returning its summed loss, correct count and size),
`validate` and `finish`. Everything else is shared: the held Ctrl-C, the budget (`--epochs`,
`--steps`, `--minutes`, whichever first), checkpoints, the NaN guard, the progress bar.

The batches of epoch e depend only on (seed, e), so a run stopped with Ctrl-C (which saves `last.pt`)
and resumed with `--resume` ends with exactly the weights of an uninterrupted run. Ctrl-C is held
until the step under way is finished, so `last.pt` is always saved between two steps, never in the
middle of an optimiser update; a second Ctrl-C stops at once and saves nothing (the `last.pt` of the
previous epoch stays, and resuming from it is just as exact). What a step carries to the next (the
language model's final states) is committed to the run's progress only with the step itself.
A loss, gradient norm or validation loss that is NaN or inf stops the run before anything is saved,
so `model.pt` and `last.pt` keep the last good weights.
Several processes (torchrun, one shard of every batch each, gradients averaged by one all-reduce) go
through `team` (see distributed.py); a single process gets `distributed.Alone`, which changes nothing.
Left out: mixed precision, callbacks (two tasks, one loop: a task is four functions).
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import checkpoint, distributed
from rnnlab.config import Config
from rnnlab.data import Dataset, Vocab, batches, encode_dataset, load_dataset, split_dataset, tokenize
from rnnlab.errors import UserError
from rnnlab.evaluate import evaluate_dataset, evaluate_ids, predict_ids
from rnnlab.model import Classifier
from rnnlab.optim import LRSchedule, Optimizer, clip_grad_norm, make_optimizer, make_schedule


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict]  # one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, seconds
    test: dict | None  # metrics on the test split, from the best weights
    model: Classifier
    files: list[Path] = field(default_factory=list)
    stopped_early: bool = False


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The batch order of an epoch depends on the seed and the epoch number only (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def step_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The dropout masks of a step depend on (seed, epoch, step) only, like the batch order; with several
    processes, also on the process's rank, so that their shards get masks of their own."""
    seed = (seed * 1_000_003 + epoch) * 1_000_003 + step
    return torch.Generator().manual_seed(seed * 1_000_003 + rank if rank else seed)


def masks(c: Config, epoch: int, step: int, rank: int = 0) -> tuple:
    """A training step's (dropout, weight_drop) arguments: (p, generator) or None, both drawing from the
    step's own generator (so a resumed run draws the same masks)."""
    if not (c.dropout or c.weight_drop):
        return None, None
    g = step_generator(c.seed, epoch, step, rank)
    return ((c.dropout, g) if c.dropout else None), ((c.weight_drop, g) if c.weight_drop else None)


# -- the run: what every stage shares ------------------------------------------------------------------
@dataclass
class Run:
    """One training run: settings, folder, model, optimiser, processes, and the progress that resumes.

    progress: epoch and step to go on from, the running sums of the epoch (loss_sum, correct, seen),
    best_val_loss, bad_epochs, history, seconds trained before this process; a task adds its own.
    keys: what a checkpoint holds besides weights and progress (the vocabulary, the label names).
    """

    config: Config
    out: Path
    model: object  # Classifier or lm.LanguageModel: parameters(), state_dict(), load_state_dict()
    optimizer: Optimizer
    team: distributed.Alone
    log: Callable
    show_bar: bool
    keys: dict
    schedule: LRSchedule | None = None
    progress: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # this process's start, for --minutes

    def save(self, name: str, **progress) -> None:
        """Write a checkpoint atomically (rank 0 only): weights, optimiser state and progress."""
        if not self.team.is_main:
            return
        ckpt = checkpoint.make(self.model, self.config, self.keys["vocab"], self.keys["label_names"],
                               optimizer=self.optimizer.state_dict(), progress={**self.progress, **progress},
                               **{k: v for k, v in self.keys.items() if k not in ("vocab", "label_names")})
        checkpoint.atomic_save(ckpt, self.out / name)

    def seconds(self) -> float:
        """Training seconds so far, across resumes."""
        return self.progress.get("seconds", 0.0) + time.perf_counter() - self.started

    def budget_spent(self) -> bool:
        """--steps (optimiser steps) or --minutes (wall clock) reached; --epochs is the loop's own bound."""
        c = self.config
        return (c.steps is not None and self.optimizer.step_count >= c.steps) or \
               (c.minutes is not None and self.seconds() >= 60 * c.minutes)


def planned_steps(config: Config, steps_per_epoch: int | list[int]) -> int:
    """The optimiser steps a schedule plans for: --epochs' worth, or --steps if that is fewer (--minutes
    cannot be known in advance: a run it stops ends before its schedule does). steps_per_epoch: one
    number for every epoch, or each epoch's own (the language model's --random-offset)."""
    total = config.epochs * steps_per_epoch if isinstance(steps_per_epoch, int) else sum(steps_per_epoch)
    return total if config.steps is None else min(config.steps, total)


def open_run(config: Config, out: Path, model, keys: dict, *, resume: bool, fresh: dict, team, log,
             progress: bool | None, total_steps: int) -> Run:
    """The optimiser and schedule for `model`, then resume from `out`/last.pt or start a new folder.

    fresh: the task's own starting progress (added to the shared one). With several processes, rank 0
    opens the folder and every rank goes on from its weights, optimiser state and progress."""
    if not team.is_main:  # the other ranks train in silence
        log, progress = _quiet, False
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    schedule = make_schedule(config.schedule, optimizer, total_steps, config.warmup)
    run = Run(config, Path(out), model, optimizer, team, log, sys.stderr.isatty() if progress is None else progress,
              keys, schedule)

    def open_on_rank0() -> dict:
        if resume:
            state = _resume(run)
        elif any((run.out / name).exists() for name in (checkpoint.BEST, checkpoint.LAST)):  # never overwrite
            raise UserError("this run folder already holds a checkpoint; continue it with --resume, or train into "
                            "a new --out", path=run.out)
        else:
            state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "best_val_loss": math.inf,
                     "bad_epochs": 0, "history": [], **fresh}
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.json").write_text(config.to_json() + "\n")
        return state

    run.progress = team.start(run.out, model, optimizer, open_on_rank0)  # every rank from rank 0's state
    return run


# settings a resumed run may change: its budget and stopping rule (a longer run), and where it computes
RESUME_MAY_CHANGE = ("epochs", "steps", "minutes", "patience", "device",
                     "engine")  # the engine only says who runs the same time loop (rnnlab.engine)


def _resume(run: Run) -> dict:
    out = run.out
    if not (out / checkpoint.LAST).is_file():
        raise UserError("nothing to resume: no last.pt here; drop --resume to start a new run, or pass the "
                        "run's folder as --out", path=out / checkpoint.LAST)
    ckpt = checkpoint.read(out, checkpoint.LAST)
    saved_config = Config.from_dict(ckpt.get("config", {})).to_dict()
    changed = sorted(k for k, v in run.config.to_dict().items() if saved_config.get(k) != v)
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(f"cannot resume with different settings ({', '.join(refused)}); leave those flags out to "
                        f"keep the run's config.json, or start a new --out", path=out / checkpoint.LAST)
    if any(ckpt.get(k) != (v.to_list() if hasattr(v, "to_list") else v) for k, v in run.keys.items()):
        raise UserError("cannot resume on different data; pass the same --data as the run", path=out / checkpoint.LAST)
    with checkpoint.contents(out / checkpoint.LAST):
        run.model.load_state_dict(ckpt["weights"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        state = dict(ckpt["progress"])
    state["history"] = [dict(r) for r in state["history"]]
    if changed:
        state.pop("budget_spent", None)  # a bigger budget: fit() checks the new one
        run.log(f"resuming with {', '.join(f'{k} {saved_config.get(k)} -> {getattr(run.config, k)}' for k in changed)}")
    run.log(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state


# -- the loop ---------------------------------------------------------------------------------------------
def fit(run: Run, task) -> bool:
    """Epochs until --epochs, the budget (--steps, --minutes) or early stopping; True if it stopped early."""
    stopped = _stopped(run)
    for epoch in range(run.progress["epoch"], run.config.epochs):
        if stopped or run.budget_spent():  # a resumed run that had stopped stays stopped, as the uninterrupted
            break                          # run did
        t0 = time.perf_counter()
        finished = train_epoch(run, task, epoch)
        stopped = end_epoch(run, task, epoch, finished, time.perf_counter() - t0)
    return stopped


def _stopped(run: Run) -> bool:
    patience = run.config.patience
    return run.progress.get("budget_spent", False) or (patience is not None and run.progress["bad_epochs"] >= patience)


def train_epoch(run: Run, task, epoch: int) -> bool:
    """The steps of one epoch, from where the run stands; False if the budget ran out before its end.

    Ctrl-C is held until the step under way is counted; then last.pt is saved and KeyboardInterrupt raised."""
    start = run.progress["step"] if epoch == run.progress["epoch"] else 0
    if start == 0:
        run.progress.update(loss_sum=0.0, correct=0, seen=0)
    n_steps = task.start_epoch(run, epoch, start)
    bar = _progress(n_steps, start, f"epoch {epoch + 1}/{run.config.epochs}", run.show_bar)
    done = start  # steps of this epoch whose update is applied and counted
    try:
        with _HeldCtrlC() as ctrl_c:
            for step in range(start, n_steps):
                ctrl_c.check()  # a Ctrl-C pressed during the previous step stops here, between steps
                if run.budget_spent():
                    break
                loss_sum, correct, seen, carry = task.step(run, epoch, step)  # forward, loss, backward
                update(run, loss_sum / seen, epoch, step)  # clip, schedule, optimiser step
                run.progress.update(loss_sum=run.progress["loss_sum"] + loss_sum, correct=run.progress["correct"]
                                    + correct, seen=run.progress["seen"] + seen, **carry)  # the step is counted
                done = step + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task.postfix(run))
            ctrl_c.check()  # pressed during the epoch's last step
    except KeyboardInterrupt:  # keep what was done: the next --resume continues from step `done`
        if bar is not None:
            bar.close()
        if ctrl_c.forced:
            run.log(f"stopped without saving; {run.out / checkpoint.LAST} holds the end of an earlier epoch")
            raise
        run.save(checkpoint.LAST, epoch=epoch, step=done, seconds=run.seconds())
        run.log(f"interrupted at epoch {epoch + 1}, step {done}; saved {run.out / checkpoint.LAST}; continue with "
                "--resume")
        raise
    if bar is not None:
        bar.close()
    run.progress["step"] = done
    return done == n_steps


def update(run: Run, loss: float, epoch: int, step: int) -> None:
    """clip -> the schedule's learning rate -> optimiser step, after the NaN guard."""
    params = run.model.parameters()
    _check_finite("loss", loss, epoch, step, run)  # the same on every rank
    if run.config.clip:
        norm = clip_grad_norm(params, run.config.clip)  # clip
        _check_finite("gradient norm", norm.item(), epoch, step, run)  # before it reaches W
    if run.schedule is not None:
        run.optimizer.lr = run.schedule.lr_at(run.optimizer.step_count)  # lr of this step, from the step count
    run.optimizer.step()  # step
    run.optimizer.zero_grad()


def end_epoch(run: Run, task, epoch: int, finished: bool, seconds: float) -> bool:
    """Validate, log, keep the best checkpoint and last.pt; True when the run stops here."""
    row = task.validate(run, epoch)
    row["seconds"] = seconds
    run.progress["history"].append(row)
    run.log(task.describe(row))
    _check_finite("validation loss", row["val_loss"], epoch, None, run)  # before anything is saved
    if finished:
        run.progress.update(epoch=epoch + 1, step=0)
    else:  # the budget ran out inside the epoch: a resumed run stays stopped
        run.progress.update(epoch=epoch, budget_spent=True)
    if row["val_loss"] < run.progress["best_val_loss"]:
        run.progress.update(best_val_loss=row["val_loss"], bad_epochs=0)
        run.save(checkpoint.BEST)
    else:
        run.progress["bad_epochs"] += 1
    run.save(checkpoint.LAST, seconds=run.seconds())
    if not finished:
        run.log("stopped: the training budget (--steps / --minutes) is spent")
        return True
    if run.config.patience is not None and run.progress["bad_epochs"] >= run.config.patience:
        run.log(f"early stop: no better validation loss for {run.config.patience} epochs")
        return True
    return False


def reload_best(run: Run) -> None:
    """The weights of model.pt (the best validation loss) back into the model."""
    run.model.load_state_dict(checkpoint.read(run.out)["weights"])


def write_history(out: Path, history: list[dict]) -> Path:
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    return out / "history.csv"


def _quiet(*_) -> None:
    pass


class _HeldCtrlC:
    """Hold Ctrl-C (SIGINT) until `check()`, so a training step is never cut in half.

    The first Ctrl-C only sets `pressed`; `check()`, called between steps, then raises KeyboardInterrupt.
    A second Ctrl-C raises at once and sets `forced` (the step under way may be half done: save nothing).
    Outside the main thread, where Python cannot catch signals, Ctrl-C is left as it is.
    """

    def __enter__(self):
        self.pressed = self.forced = False
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame):
        if self.pressed:
            self.forced = True
            raise KeyboardInterrupt
        self.pressed = True

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def __exit__(self, *exc_info):
        if self.installed:  # None: a handler set outside Python, which Python cannot put back
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
        return False


def _check_finite(what: str, value: float, epoch: int, step: int | None, run: Run) -> None:
    """Stop on a NaN or inf, before it reaches a checkpoint; the files on disk keep the last good weights."""
    if not math.isfinite(value):
        when = f"at epoch {epoch + 1}, step {step + 1}" if step is not None else f"after epoch {epoch + 1}"
        kept = "the last good checkpoint is kept" if (run.out / checkpoint.LAST).exists() else \
            "no checkpoint was written"
        raise UserError(f"the {what} became {value} {when}; lower --lr (now "
                        f"{run.config.lr:g}) or clip gradients (e.g. --clip 1); {kept}", path=run.out)


def _progress(total: int, start: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm  # imported only when a bar is drawn

    return tqdm(total=total, initial=start, desc=desc, leave=False, file=sys.stderr)


# -- the classifier ---------------------------------------------------------------------------------------
def _splits(config: Config, data, fmt, val_data, test_data, **reading):
    """(train, val, test) datasets; reading: text_column, label_column, encoding (see load_dataset)."""
    full = load_dataset(data, fmt, **reading)
    if val_data is None and test_data is None:
        return split_dataset(full, config.val_frac, config.test_frac, config.seed)
    names = full.label_names
    val = load_dataset(val_data, fmt, label_names=names, **reading) if val_data else None
    test = load_dataset(test_data, fmt, label_names=names, **reading) if test_data else None
    if val is None:  # carve validation out of the training file
        train, val, _ = split_dataset(full, config.val_frac, 0.0, config.seed)
    else:
        train = full
    return train, val, test


def _check_classes(train: Dataset) -> None:
    for name, count in zip(train.label_names, train.class_counts()):
        if count == 0:
            raise UserError(f"class {name!r} has no training examples; add some or drop the class",
                            path=train.source)


@dataclass
class ClassifierTask:
    """Labelled sentences: a step is one shuffled, padded batch; validation is accuracy and loss."""

    train_ds: Dataset
    val_ds: Dataset
    test_ds: Dataset | None
    vocab: Vocab
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    epoch_batches: list = field(default_factory=list)

    def start_epoch(self, run: Run, epoch: int, start: int) -> int:
        """This epoch's batches, shuffled from (seed, epoch) only."""
        c = run.config
        self.epoch_batches = list(batches(self.train_ids, self.train_ds.labels, c.batch_size, shuffle=True,
                                          generator=epoch_generator(c.seed, epoch), bucket=c.bucket))
        return len(self.epoch_batches)

    def step(self, run: Run, epoch: int, step: int):
        """forward -> cross-entropy -> backward on one batch; (loss sum, correct, rows, nothing to carry)."""
        c = run.config
        x, lengths, y, rows = run.team.shard(self.epoch_batches[step], c.device)  # alone: the whole batch
        drop, weight_drop = masks(c, epoch, step, run.team.rank)
        logits = run.model(x, lengths, dropout=drop, weight_drop=weight_drop)  # forward
        loss = F.cross_entropy(logits, y)  # loss
        loss.backward()  # backward (autograd, or the hand BPTT inside the cell)
        loss_sum, correct, seen = run.team.sum_step(run.model.parameters(), loss, logits, y, rows)  # over ranks
        return loss_sum, correct, seen, {}

    @staticmethod
    def postfix(run: Run) -> dict:
        return {"loss": f"{run.progress['loss_sum'] / run.progress['seen']:.4f}"}

    def validate(self, run: Run, epoch: int) -> dict:
        val = evaluate_ids(run.model, self.val_ids, self.val_ds.labels, self.train_ds.label_names)
        p = run.progress
        return {"epoch": epoch + 1, "train_loss": p["loss_sum"] / p["seen"], "train_acc": p["correct"] / p["seen"],
                "val_loss": val["loss"], "val_acc": val["accuracy"]}

    @staticmethod
    def describe(row: dict) -> str:
        return (f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  ({row['seconds']:.1f}s)")

    def finish(self, run: Run, plots: bool, report: bool) -> tuple[dict | None, list[Path]]:
        """Reload the best weights, test, and write the run's record (rank 0)."""
        reload_best(run)
        c, names, test_ds = run.config, self.train_ds.label_names, self.test_ds
        test = None
        if test_ds is not None and len(test_ds):
            test = evaluate_dataset(run.model, test_ds, self.vocab, c.lowercase, names)
            run.log(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  (best epoch by validation loss)")
        files = _write_records(run.out, run.progress["history"], test, names, plots)
        held_out = test_ds if test_ds is not None and len(test_ds) else self.val_ds
        files.append(_write_samples(run.out, held_out, names, run.model, self.vocab, c.lowercase))
        from rnnlab.report import write_data_record  # data.json: where each split came from, for the report

        files.append(write_data_record(run.out, {"train": self.train_ds, "validation": self.val_ds, "test": test_ds}))
        files += [run.out / "config.json", run.out / checkpoint.BEST, run.out / checkpoint.LAST]
        if report:  # the HTML page that shows all of the above, with the samples' explain traces
            from rnnlab.report import write_report

            files += write_report(run.out)
        return test, files


def train(config: Config, data, out_dir: str | Path, *, fmt: str | None = None, val_data=None, test_data=None,
          text_column=None, label_column=None, encoding: str | None = None, resume: bool = False, log=print,
          progress: bool | None = None, plots: bool = True, report: bool = False,
          team: distributed.Alone | None = None) -> TrainResult:
    """Train a classifier on `data` (see `load_dataset` for formats) and write a run folder.

    team: this process's place in a data-parallel job (`distributed.launch`); None for a single process.
    Only rank 0 logs and writes files; it alone returns the test metrics and the files.
    """
    config.validate()
    team = team or distributed.Alone()
    torch.manual_seed(config.seed)

    # data: split, vocabulary from the training split only, ids
    train_ds, val_ds, test_ds = _splits(config, data, fmt, val_data, test_data, text_column=text_column,
                                        label_column=label_column, encoding=encoding)
    _check_classes(train_ds)
    if not len(val_ds):  # early stopping and the best checkpoint are chosen on the validation split
        raise UserError("no validation examples; pass --val FILE or a --val-frac above 0", path=train_ds.source)
    label_names = train_ds.label_names
    vocab = Vocab.build([tokenize(t, config.lowercase) for t in train_ds.texts], config.min_freq, config.max_vocab)
    task = ClassifierTask(train_ds, val_ds, test_ds, vocab, encode_dataset(train_ds, vocab, config.lowercase),
                          encode_dataset(val_ds, vocab, config.lowercase))

    model = Classifier(len(vocab), config.hidden, len(label_names), cell=config.cell, phi=config.phi,
                       embed_dim=config.embed_dim, layers=config.layers, backward=config.backward, seed=config.seed,
                       device=config.device, engine=config.engine)
    steps_per_epoch = math.ceil(len(train_ds) / config.batch_size)
    run = open_run(config, out_dir, model, {"vocab": vocab, "label_names": label_names}, resume=resume, fresh={},
                   team=team, log=log, progress=progress, total_steps=planned_steps(config, steps_per_epoch))
    run.log(f"train {len(train_ds)}  val {len(val_ds)}  test {len(test_ds) if test_ds else 0}  vocab {len(vocab)}  "
            f"classes {label_names}  parameters {model.num_parameters():,}  -> {run.out}")
    stopped_early = fit(run, task)
    history = run.progress["history"]
    if not team.is_main:  # rank 0 tests and writes the run's record
        return TrainResult(run.out, history, None, model, [], stopped_early)
    test, files = task.finish(run, plots, report)
    for f in files:
        run.log(f"wrote {f}")
    return TrainResult(run.out, history, test, model, files, stopped_early)


def _write_samples(out: Path, ds: Dataset, label_names: list[str], model: Classifier, vocab: Vocab,
                   lowercase: bool, n: int = 8) -> Path:
    """samples.json: n sentences of the held-out split `ds`, with their true and predicted labels, balanced over
    classes and right/wrong predictions (`report.choose_samples`), for `rnnlab report`."""
    from rnnlab.report import choose_samples

    predicted = predict_ids(model, [vocab.encode(tokenize(t, lowercase)) for t in ds.texts]).argmax(1).tolist()
    samples = choose_samples(ds.texts, ds.labels, predicted, label_names, n)
    (out / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out / "samples.json"


def _write_records(out: Path, history: list[dict], test: dict | None, label_names, draw: bool) -> list[Path]:
    files = [write_history(out, history)]
    if test is not None:
        (out / "metrics.json").write_text(json.dumps(test, indent=2) + "\n")
        files.append(out / "metrics.json")
    if draw:
        from rnnlab import plots

        files += plots.training_curves(history, out)
        if test is not None:
            files.append(plots.confusion(test["confusion"], label_names, out / "confusion.png"))
    return files

"""Training, evaluation and prediction on real sentences: `rnnlab train / evaluate / predict`.

`train(config, data, out_dir)` is the whole run, and its loop reads in the order it happens:

    for each epoch:
        for each batch (shuffled from the seed and the epoch number, padded, with lengths):
            forward -> cross-entropy loss -> backward -> clip -> optimiser step
        evaluate on the validation split (no gradients) -> log -> keep the best checkpoint -> early stop
    reload the best weights -> test -> write history, curves, confusion matrix

The batch order of epoch e depends only on (seed, e), so a run stopped with Ctrl-C (which saves
`last.pt`) and resumed with `--resume` ends with exactly the weights of an uninterrupted run. Ctrl-C
is held until the step under way is finished, so `last.pt` is always saved between two steps, never
in the middle of an optimiser update; a second Ctrl-C stops at once and saves nothing (the `last.pt`
of the previous epoch stays, and resuming from it is just as exact).
A loss, gradient norm or validation loss that is NaN or inf stops the run before anything is saved,
so `model.pt` and `last.pt` keep the last good weights.
Several processes (torchrun, one shard of every batch each, gradients averaged by one all-reduce) go
through `team` (see distributed.py); a single process gets `distributed.Alone`, which changes nothing.
Left out: learning-rate schedules from the command line, mixed precision.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import checkpoint, distributed
from rnnlab.config import Config
from rnnlab.data import Dataset, Vocab, batches, encode_dataset, load_dataset, split_dataset, tokenize
from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.optim import clip_grad_norm, make_optimizer


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


# -- metrics ------------------------------------------------------------------------------------------
def confusion_matrix(y_true: list[int], y_pred: list[int], num_classes: int) -> list[list[int]]:
    """counts[true][predicted]"""
    m = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def metrics(y_true: list[int], y_pred: list[int], label_names: list[str], loss: float | None = None) -> dict:
    """Accuracy, per-class precision / recall / F1 and the confusion matrix."""
    C = len(label_names)
    cm = confusion_matrix(y_true, y_pred, C)
    per_class = {}
    for c, name in enumerate(label_names):
        tp = cm[c][c]
        predicted = sum(cm[t][c] for t in range(C))
        actual = sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = len(y_true)
    return {"n": n, "accuracy": sum(cm[c][c] for c in range(C)) / n if n else 0.0, "loss": loss,
            "per_class": per_class, "confusion": cm, "label_names": list(label_names)}


@torch.no_grad()
def predict_ids(model: Classifier, ids: list[list[int]], batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, C) on the CPU for encoded sentences, in their order."""
    device = model.W_out.device  # batches are built on the CPU; the model may sit on a GPU
    probs = []
    for x, lengths, _ in batches(ids, [0] * len(ids), batch_size, shuffle=False):
        probs.append(model.predict_proba(x.to(device), lengths.to(device)).cpu())
    return torch.cat(probs) if probs else torch.empty(0, model.num_classes)


def evaluate_ids(model: Classifier, ids: list[list[int]], labels: list[int], label_names: list[str]) -> dict:
    probs = predict_ids(model, ids)
    y = torch.tensor(labels)
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-45)), y)) if len(labels) else float("nan")
    return metrics(labels, probs.argmax(1).tolist(), label_names, loss)


# -- training -----------------------------------------------------------------------------------------
def _splits(config: Config, data, fmt, val_data, test_data, text_column, label_column):
    full = load_dataset(data, fmt, text_column=text_column, label_column=label_column)
    if val_data is None and test_data is None:
        return split_dataset(full, config.val_frac, config.test_frac, config.seed)
    names = full.label_names
    val = load_dataset(val_data, fmt, text_column=text_column, label_column=label_column, label_names=names) \
        if val_data else None
    test = load_dataset(test_data, fmt, text_column=text_column, label_column=label_column, label_names=names) \
        if test_data else None
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


def train(config: Config, data, out_dir: str | Path, *, fmt: str | None = None, val_data=None, test_data=None,
          text_column=None, label_column=None, resume: bool = False, log=print, progress: bool | None = None,
          plots: bool = True, report: bool = False, team: distributed.Alone | None = None) -> TrainResult:
    """Train a classifier on `data` (see `load_dataset` for formats) and write a run folder.

    team: this process's place in a data-parallel job (`distributed.launch`); None for a single process.
    Only rank 0 logs and writes files; it alone returns the test metrics and the files.
    """
    config.validate()
    team = team or distributed.Alone()
    if not team.is_main:  # the other ranks train in silence
        log, progress = _quiet, False
    out = Path(out_dir)
    torch.manual_seed(config.seed)

    # data: split, vocabulary from the training split only, ids
    train_ds, val_ds, test_ds = _splits(config, data, fmt, val_data, test_data, text_column, label_column)
    _check_classes(train_ds)
    if not len(val_ds):  # early stopping and the best checkpoint are chosen on the validation split
        raise UserError("no validation examples; pass --val FILE or a --val-frac above 0", path=train_ds.source)
    label_names = train_ds.label_names
    vocab = Vocab.build([tokenize(t, config.lowercase) for t in train_ds.texts], config.min_freq, config.max_vocab)
    train_ids = encode_dataset(train_ds, vocab, config.lowercase)
    val_ids = encode_dataset(val_ds, vocab, config.lowercase)

    # model and optimiser
    model = Classifier(len(vocab), config.hidden, len(label_names), cell=config.cell, phi=config.phi,
                       embed_dim=config.embed_dim, backward=config.backward, seed=config.seed, device=config.device)
    params = model.parameters()
    optimizer = make_optimizer(config.optimizer, params, config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)

    def open_run() -> dict:  # on rank 0 only, with several processes
        if resume:
            state = _resume(out, config, vocab, label_names, model, optimizer, log)
        elif any((out / name).exists() for name in (checkpoint.BEST, checkpoint.LAST)):  # never overwrite a run
            raise UserError("this run folder already holds a checkpoint; continue it with --resume, or train into "
                            "a new --out", path=out)
        else:
            state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "best_val_loss": math.inf,
                     "bad_epochs": 0, "history": []}
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config.to_json() + "\n")
        return state

    progress_state = team.start(out, model, optimizer, open_run)  # every rank goes on from rank 0's state
    history = progress_state["history"]
    log(f"train {len(train_ds)}  val {len(val_ds)}  test {len(test_ds) if test_ds else 0}  vocab {len(vocab)}  "
        f"classes {label_names}  parameters {model.num_parameters():,}  -> {out}")

    def save(name: str, **progress) -> None:
        if not team.is_main:
            return
        ckpt = checkpoint.make(model, config, vocab, label_names, optimizer=optimizer.state_dict(),
                               progress={**progress_state, **progress})
        checkpoint.atomic_save(ckpt, out / name)

    show_bar = sys.stderr.isatty() if progress is None else progress
    stopped_early = config.patience is not None and progress_state["bad_epochs"] >= config.patience
    for epoch in range(progress_state["epoch"], config.epochs):
        if stopped_early:  # a resumed run that had stopped early stays stopped, as the uninterrupted run did
            break
        t0 = time.perf_counter()
        epoch_batches = list(batches(train_ids, train_ds.labels, config.batch_size, shuffle=True,
                                     generator=epoch_generator(config.seed, epoch), bucket=config.bucket))
        start = progress_state["step"] if epoch == progress_state["epoch"] else 0
        if start == 0:
            progress_state.update(loss_sum=0.0, correct=0, seen=0)
        bar = _progress(len(epoch_batches), start, f"epoch {epoch + 1}/{config.epochs}", show_bar)
        done = start  # steps of this epoch whose update is applied and counted
        try:
            with _HeldCtrlC() as ctrl_c:
                for step in range(start, len(epoch_batches)):
                    ctrl_c.check()  # a Ctrl-C pressed during the previous step stops here, between steps
                    x, lengths, y, rows = team.shard(epoch_batches[step], config.device)  # alone: the whole batch
                    drop = (config.dropout, step_generator(config.seed, epoch, step, team.rank)) \
                        if config.dropout else None
                    logits = model(x, lengths, dropout=drop)  # forward
                    loss = F.cross_entropy(logits, y)  # loss
                    loss.backward()  # backward (autograd, or the hand BPTT inside the cell)
                    loss_sum, correct, seen = team.sum_step(params, loss, logits, y, rows)  # average over ranks
                    _check_finite("loss", loss_sum / seen, epoch, step, config, out)  # the same on every rank
                    if config.clip:
                        norm = clip_grad_norm(params, config.clip)  # clip
                        _check_finite("gradient norm", norm.item(), epoch, step, config, out)  # before it reaches W
                    optimizer.step()  # step
                    optimizer.zero_grad()
                    progress_state["loss_sum"] += loss_sum
                    progress_state["correct"] += correct
                    progress_state["seen"] += seen
                    done = step + 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{progress_state['loss_sum'] / progress_state['seen']:.4f}")
                ctrl_c.check()  # pressed during the epoch's last step
        except KeyboardInterrupt:  # keep what was done: the next --resume continues from step `done`
            if bar is not None:
                bar.close()
            if ctrl_c.forced:
                log(f"stopped without saving; {out / checkpoint.LAST} holds the end of an earlier epoch")
                raise
            save(checkpoint.LAST, epoch=epoch, step=done)
            log(f"interrupted at epoch {epoch + 1}, step {done}; saved {out / checkpoint.LAST}; continue with --resume")
            raise
        if bar is not None:
            bar.close()

        # evaluate on the validation split, log, keep the best, stop early
        val = evaluate_ids(model, val_ids, val_ds.labels, label_names)
        row = {"epoch": epoch + 1, "train_loss": progress_state["loss_sum"] / progress_state["seen"],
               "train_acc": progress_state["correct"] / progress_state["seen"], "val_loss": val["loss"],
               "val_acc": val["accuracy"], "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  ({row['seconds']:.1f}s)")
        _check_finite("validation loss", val["loss"], epoch, None, config, out)  # before anything is saved
        progress_state.update(epoch=epoch + 1, step=0)
        if val["loss"] < progress_state["best_val_loss"]:
            progress_state.update(best_val_loss=val["loss"], bad_epochs=0)
            save(checkpoint.BEST)
        else:
            progress_state["bad_epochs"] += 1
        save(checkpoint.LAST)
        if config.patience is not None and progress_state["bad_epochs"] >= config.patience:
            log(f"early stop: no better validation loss for {config.patience} epochs")
            stopped_early = True
            break

    if not team.is_main:  # rank 0 tests and writes the run's record
        return TrainResult(out, history, None, model, [], stopped_early)

    # reload the best weights, test, and write the run's record
    best, *_ = checkpoint.load_model(out)
    model.load_state_dict(best.state_dict())
    test = None
    if test_ds is not None and len(test_ds):
        test = evaluate_dataset(model, test_ds, vocab, config.lowercase, label_names)
        log(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  (best epoch by validation loss)")
    files = _write_records(out, history, test, label_names, plots)
    held_out = test_ds if test_ds is not None and len(test_ds) else val_ds
    files.append(_write_samples(out, held_out, label_names, model, vocab, config.lowercase))
    from rnnlab.report import write_data_record  # data.json: where each split came from, for the report

    files.append(write_data_record(out, {"train": train_ds, "validation": val_ds, "test": test_ds}))
    files += [out / "config.json", out / checkpoint.BEST, out / checkpoint.LAST]
    if report:  # the HTML page that shows all of the above, with the samples' explain traces
        from rnnlab.report import write_report

        files += write_report(out)
    for f in files:
        log(f"wrote {f}")
    return TrainResult(out, history, test, model, files, stopped_early)


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


def _check_finite(what: str, value: float, epoch: int, step: int | None, config: Config, out: Path) -> None:
    """Stop on a NaN or inf, before it reaches a checkpoint; the files on disk keep the last good weights."""
    if not math.isfinite(value):
        when = f"at epoch {epoch + 1}, step {step + 1}" if step is not None else f"after epoch {epoch + 1}"
        kept = "the last good checkpoint is kept" if (out / checkpoint.LAST).exists() else "no checkpoint was written"
        raise UserError(f"the {what} became {value} {when}; lower --lr (now "
                        f"{config.lr:g}) or clip gradients (e.g. --clip 1); {kept}", path=out)


def _progress(total: int, start: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm  # imported only when a bar is drawn

    return tqdm(total=total, initial=start, desc=desc, leave=False, file=sys.stderr)


def _resume(out: Path, config: Config, vocab: Vocab, label_names, model, optimizer, log) -> dict:
    if not (out / checkpoint.LAST).is_file():
        raise UserError("nothing to resume: no last.pt here; drop --resume to start a new run, or pass the "
                        "run's folder as --out", path=out / checkpoint.LAST)
    _, saved_config, saved_vocab, saved_labels, ckpt = checkpoint.load_model(out, checkpoint.LAST)
    if saved_config.to_dict() != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if saved_config.to_dict().get(k) != v)
        raise UserError(f"cannot resume with different settings ({', '.join(changed)}); use the run's "
                        f"config.json or start a new --out", path=out / checkpoint.LAST)
    if saved_vocab.to_list() != vocab.to_list() or saved_labels != label_names:
        raise UserError("cannot resume on different data; pass the same --data as the run", path=out / checkpoint.LAST)
    model.load_state_dict(ckpt["weights"])
    optimizer.load_state_dict(ckpt["optimizer"])
    state = dict(ckpt["progress"])
    state["history"] = [dict(r) for r in state["history"]]
    log(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state


def evaluate_dataset(model: Classifier, ds: Dataset, vocab: Vocab, lowercase: bool, label_names: list[str]) -> dict:
    """`evaluate_ids` on a labelled data set, plus its unknown-word rate; each text is tokenised once."""
    tokens = [tokenize(t, lowercase) for t in ds.texts]
    result = evaluate_ids(model, [vocab.encode(t) for t in tokens], ds.labels, label_names)
    total = sum(len(t) for t in tokens)
    result["unknown_rate"] = sum(vocab.count_unknown(t) for t in tokens) / total if total else 0.0
    return result


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
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    files = [out / "history.csv"]
    if test is not None:
        (out / "metrics.json").write_text(json.dumps(test, indent=2) + "\n")
        files.append(out / "metrics.json")
    if draw:
        from rnnlab import plots

        files += plots.training_curves(history, out)
        if test is not None:
            files.append(plots.confusion(test["confusion"], label_names, out / "confusion.png"))
    return files


# -- evaluate and predict -----------------------------------------------------------------------------
def evaluate(checkpoint_path, data, fmt: str | None = None, *, text_column=None, label_column=None) -> dict:
    """Metrics of a trained model on a labelled file; labels must be among the model's classes."""
    model, config, vocab, label_names, _ = checkpoint.load_model(checkpoint_path)
    ds = load_dataset(data, fmt, text_column=text_column, label_column=label_column, label_names=label_names)
    return evaluate_dataset(model, ds, vocab, config.lowercase, label_names)


def predict(checkpoint_path, texts: list[str]) -> list[dict]:
    """For each text: the label, the class probabilities and the words the model has never seen."""
    model, config, vocab, label_names, _ = checkpoint.load_model(checkpoint_path)
    tokens = [tokenize(t, config.lowercase) for t in texts]
    probs = predict_ids(model, [vocab.encode(t) for t in tokens])
    results = []
    for text, toks, p in zip(texts, tokens, probs.tolist()):
        c = max(range(len(p)), key=p.__getitem__)
        results.append({"text": text, "label": label_names[c], "class": c,
                        "probabilities": dict(zip(label_names, p)),
                        "unknown_words": [t for t in toks if t not in vocab.stoi]})
    return results

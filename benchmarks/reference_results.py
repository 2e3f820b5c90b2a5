"""Reference accuracies on the real data sets, with a bag-of-words baseline, from one command.

    python benchmarks/reference_results.py            (both data sets; the time it took is stored, see below)
    python benchmarks/reference_results.py --only uci
    python benchmarks/reference_results.py --readme-only   (the README's table from the stored JSON, no runs)

- rt-polarity (Pang & Lee 2005, 10,662 sentences, 80/10/10 stratified split, seed 0): GRU and LSTM
  trained from scratch (random embeddings), best epoch by validation loss, test accuracy.
  For scale: Kim (2014) reports 76.1% for a CNN with random vectors on this data.
- UCI sentiment labelled sentences (3,000 sentences, same split): RNN, LSTM, GRU.
- The bag-of-words baseline on both: logistic regression on word counts (the same tokeniser and
  vocabulary), trained with rnnlab's Adam and L2 weight decay, best epoch by validation accuracy.

Each recurrent row is one `rnnlab train ...` command line, run through rnnlab's own CLI (so the stored
command is exactly what made the row) into --out/<data>-<cell>, its log in train.log there. The rows, their
command lines, the seconds each took and the total go to --json (docs/figures/reference_results.json), and
the README's table between its `reference-results` markers is rewritten from that file (`readme_section`;
tests/test_docs.py checks the two agree, and that each command gives the stored config).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import cli
from rnnlab.config import Config
from rnnlab.data import Vocab, encode_dataset, load_dataset, split_dataset, tokenize
from rnnlab.optim import Adam
from rnnlab.train import _progress

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"rt": "../shared/data/rt-polarity", "uci": "../shared/data/uci-sentiment"}  # from the repository root
TITLES = {"rt": "rt-polarity (10,662)", "uci": "UCI sentences (3,000)"}
JSON = REPO / "docs" / "figures" / "reference_results.json"
README = REPO / "README.md"
MARKERS = ("<!-- reference-results: start (python benchmarks/reference_results.py writes this) -->",
           "<!-- reference-results: end -->")

# rt-polarity: of the 12 settings tried (H 64-256, D 64-300, lr 5e-4-2e-3, weight decay 0-1e-4,
# min_freq 1-2, dropout 0-0.6, batch 32-64; seed 0), each cell's row is the one with the best
# validation accuracy. Without dropout every setting overfitted by epoch 3 and stayed near 0.72.
# Each row: the flags of `rnnlab train` beyond --data and --out, as the user types them.
RUNS = {
    "rt": {"gru": "--cell gru --hidden 256 --embed-dim 300 --lr 1e-3 --dropout 0.5 --weight-decay 1e-5 --min-freq 2 "
                  "--epochs 15 --patience 3 --seed 0",
           "lstm": "--cell lstm --hidden 256 --embed-dim 300 --lr 1e-3 --dropout 0.5 --weight-decay 1e-5 "
                   "--epochs 15 --patience 3 --seed 0"},
    "uci": {"rnn": "--cell rnn --hidden 64 --embed-dim 64 --lr 1e-3 --epochs 12 --patience 3 --seed 0",
            "lstm": "--cell lstm --hidden 64 --embed-dim 64 --lr 2e-3 --epochs 12 --patience 3 --seed 0",
            "gru": "--cell gru --hidden 64 --embed-dim 64 --lr 2e-3 --epochs 12 --patience 3 --seed 0"},
}
# torch threads for every row: one, so the numbers do not depend on the machine's core count, and a machine
# shared with other jobs does not slow the run several-fold (two OpenMP threads wait on each other there)
THREADS = 1


def train_command(data: str, cell: str, out: str) -> str:
    """The full `rnnlab train` command line of one row, runnable from the repository root."""
    return f"rnnlab train --data {DATASETS[data]} {RUNS[data][cell]} --out {out}/{data}-{cell}"


def bag_of_words(data: Path, seed: int = 0, epochs: int = 30) -> dict:
    """Logistic regression on word counts: logits = counts @ W^T + b, by hand with rnnlab's Adam."""
    train_ds, val_ds, test_ds = split_dataset(load_dataset(data), 0.1, 0.1, seed)
    vocab = Vocab.build([tokenize(t) for t in train_ds.texts], min_freq=1, max_size=20000)

    def counts(ds) -> torch.Tensor:
        X = torch.zeros(len(ds), len(vocab))
        for row, ids in enumerate(encode_dataset(ds, vocab)):
            X[row].index_add_(0, torch.tensor(ids, dtype=torch.long), torch.ones(len(ids)))
        return X

    X, Xv, Xt = counts(train_ds), counts(val_ds), counts(test_ds)
    y, yv, yt = (torch.tensor(d.labels) for d in (train_ds, val_ds, test_ds))
    C = len(train_ds.label_names)
    g = torch.Generator().manual_seed(seed)
    W = torch.zeros(C, len(vocab), requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    opt = Adam([W, b], lr=0.01, weight_decay=1e-4)
    best = (-1.0, 0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(X[idx] @ W.t() + b, y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            val_acc = float(((Xv @ W.t() + b).argmax(1) == yv).float().mean())
            test_acc = float(((Xt @ W.t() + b).argmax(1) == yt).float().mean())
        if val_acc > best[0]:
            best = (val_acc, test_acc)
    return {"model": "bag-of-words logistic regression", "val_acc": best[0], "test_acc": best[1]}


def run_row(data: str, cell: str, out: str) -> dict:
    """Run one row's command through rnnlab's CLI; read its accuracies back from the run folder."""
    command = train_command(data, cell, out)
    run = Path(out) / f"{data}-{cell}"
    if (run / "config.json").is_file():  # this script's own earlier run of the row: replaced
        shutil.rmtree(run)
    argv = command.split()[1:]
    argv[argv.index("--data") + 1] = str(REPO / DATASETS[data])  # the same folder, from any working directory
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        code = cli.main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"reference_results: `{command}` exited {code}:\n{log.getvalue()}")
    (run / "train.log").write_text(log.getvalue())
    config = json.loads((run / "config.json").read_text())
    history = list(csv_rows(run / "history.csv"))
    best_val = min(history, key=lambda r: float(r["val_loss"]))
    test = json.loads((run / "metrics.json").read_text())
    return {"data": data, "model": model_name(config), "val_acc": float(best_val["val_acc"]),
            "test_acc": test["accuracy"], "epochs": len(history), "best_epoch": int(best_val["epoch"]),
            "command": command, "config": config, "seconds": round(seconds, 1)}


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def model_name(config: dict) -> str:
    """'GRU, H 256, D 300, dropout 0.5, weight decay 1e-5, min_freq 2': the cell and what differs from the defaults."""
    d = Config()
    name = {"rnn": "vanilla RNN", "lstm": "LSTM", "gru": "GRU"}[config["cell"]]
    parts = [name, f"H {config['hidden']}", f"D {config['embed_dim']}"]
    for key, label in (("dropout", "dropout"), ("weight_decay", "weight decay"), ("min_freq", "min_freq")):
        if config[key] != getattr(d, key):
            parts.append(f"{label} {config[key]:g}".replace("e-0", "e-"))  # 1e-5 as typed, not 1e-05
    return ", ".join(parts)


def readme_section(results: dict) -> str:
    """The README's reference table, its commands and its run time, from the stored results."""
    rows = results["rows"]
    lines = [MARKERS[0],
             "Reference accuracies (`python benchmarks/reference_results.py`, stored in "
             "[docs/figures/reference_results.json](docs/figures/reference_results.json); seed 0, stratified "
             "80/10/10 split, best epoch by validation loss; the bag-of-words row is a logistic regression on word "
             "counts with the same tokeniser, trained with rnnlab's Adam):", "",
             "| data | model | val acc | test acc | epochs (best) | command |", "|---|---|---|---|---|---|"]
    best_test = {d: max(r["test_acc"] for r in rows if r["data"] == d) for d in {r["data"] for r in rows}}
    shown = set()
    for i, r in enumerate(rows, 1):
        title = TITLES[r["data"]] if r["data"] not in shown else TITLES[r["data"]].split(" (")[0]
        shown.add(r["data"])
        test = f"**{r['test_acc']:.4f}**" if r["test_acc"] == best_test[r["data"]] else f"{r['test_acc']:.4f}"
        epochs = f"{r['epochs']} ({r['best_epoch']})" if "epochs" in r else ""
        command = f"row {i}" if "command" in r else "in the script"
        model = model_name(r["config"]) if "config" in r else r["model"]
        lines.append(f"| {title} | {model} | {r['val_acc']:.4f} | {test} | {epochs} | {command} |")
    minutes, seconds = divmod(round(results["seconds"]), 60)
    lines += ["", "The command behind each row, run from the repository root (the bag-of-words rows are computed "
              "inside the script):", "", "```"]
    lines += [f"{r['command']}   # row {i}" for i, r in enumerate(rows, 1) if "command" in r]
    lines += ["```", "",
              f"The whole script took {minutes} min {seconds:02d} s on {results['machine']} "
              f"({results['threads']} torch thread{'s' if results['threads'] > 1 else ''}; the machine's load "
              f"average was {results['load_average'][0]:g} at the start and {results['load_average'][1]:g} at the "
              f"end, other jobs included); each row's seconds are in the JSON.",
              MARKERS[1]]
    return "\n".join(lines) + "\n"


def write_readme(results: dict, readme: Path = README) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]) + "\n", re.S)
    if not pattern.search(text):
        sys.exit(f"reference_results: {readme} has no {MARKERS[0]} ... {MARKERS[1]} section to rewrite")
    readme.write_text(pattern.sub(lambda _: readme_section(results), text), encoding="utf-8")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Reference accuracies on rt-polarity and the UCI sentences.")
    p.add_argument("--only", choices=list(DATASETS), help="one data set only (writes no JSON and no README)")
    p.add_argument("--out", default="runs/reference", help="where the run folders go (default runs/reference)")
    p.add_argument("--json", type=Path, default=JSON, help=f"results file (default {JSON.relative_to(REPO)})")
    p.add_argument("--readme-only", action="store_true",
                   help="rewrite the README's table from the stored --json without running anything")
    args = p.parse_args(argv)
    if args.readme_only:
        results = json.loads(args.json.read_text())
        write_readme(results)
        print(f"wrote {README} from {args.json}")
        return results
    torch.set_num_threads(THREADS)
    names = [n for n in DATASETS if not args.only or n == args.only]
    units = [(n, None) for n in names] + [(n, cell) for n in names for cell in RUNS[n]]
    units.sort(key=lambda u: names.index(u[0]))  # per data set: the baseline, then its cells
    bar = _progress(len(units), 0, "reference rows", sys.stderr.isatty())
    rows, t_all, load_before = [], time.perf_counter(), os.getloadavg()[0]
    for data, cell in units:
        if bar is not None:
            bar.set_postfix_str(f"{data} {cell or 'bag-of-words'}")
        if cell is None:
            t0 = time.perf_counter()
            bow = bag_of_words(REPO / DATASETS[data])
            rows.append({"data": data, **bow, "seconds": round(time.perf_counter() - t0, 1)})
        else:
            rows.append(run_row(data, cell, args.out))
        (bar.write if bar is not None else print)(
            f"{data:4} {rows[-1]['model']:58} val {rows[-1]['val_acc']:.4f}  test {rows[-1]['test_acc']:.4f}  "
            f"({rows[-1]['seconds']:.0f} s)")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    results = {"rows": rows, "seconds": round(time.perf_counter() - t_all, 1), "threads": THREADS,
               "machine": f"{os.cpu_count()} CPU cores", "torch": torch.__version__,
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}  # other jobs slow it
    print(f"total {results['seconds']:.0f} s")
    if args.only is None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
        if args.json == JSON:
            write_readme(results)
            print(f"wrote {README}")
    return results


if __name__ == "__main__":
    main()

"""What gets the Shakespeare model lower within 15 minutes: the schedule, dropout, the width (issue 13).

The README's first Shakespeare run (2 x LSTM 256, dropout 0.2, constant Adam 2e-3) reached its best
validation loss, 1.463 nats/char, after ~7 minutes and then overfitted (train 1.16, validation 1.50 at
15 minutes). This study trains variants of it, each as one `rnnlab train --task lm` command:

- a cosine learning-rate decay over the run (`--schedule cosine --warmup 100`): the rate is small at the
  end, where the constant rate kept the weights bouncing;
- more dropout (between the layers and before the output layer), against the overfitting;
- a wider model (H = 384, 512, 640), fewer steps in the same time, with more dropout;
- batch 32 (twice the optimiser steps at the same tokens/s), a higher peak rate (3e-3, 4e-3), and
  DropConnect on the recurrent weights (`--weight-drop`) with less dropout.

Each row's `--steps` is what 2 torch threads train in about 14 minutes here (whole training steps,
validation included; measured 2026-12-01 with `bench_lm.throughput`: 46,900 tokens/s at H = 256,
23,400 at H = 384, 14,600 at H = 512 with batch 64, 6,400 tokens a step; 14,300 at H = 512 and 10,350
at H = 640 with batch 32, 3,200 tokens a step), so a row shows what the settings reach
within the issue's 15-minute budget. The rows themselves run on one torch thread each, two at a time
(a --steps budget does not depend on the speed it runs at); `python benchmarks/bench_lm.py` then times
the chosen settings at 2 threads against torch.nn under a 15-minute wall-clock budget.

    python benchmarks/lm_study.py --run            (the rows not yet in --runs; ~25 min per pair of rows)
    python benchmarks/lm_study.py                  (collect --runs into benchmarks/results/lm_study.json)
    python benchmarks/lm_study.py --readme          (the README's table from the stored JSON)

Collecting checks that each run folder's config.json is the config of the row's command, so a stored
figure belongs to the command printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JSON = REPO / "benchmarks" / "results" / "lm_study.json"
COMMON = ("--task lm --data ../shared/data/tinyshakespeare/input.txt --cell lstm --layers 2 --embed-dim 64 "
          "--seq-len 100 --lr 0.002 --clip 5 --epochs 1000 --patience 0")
# name: the flags beyond COMMON, as the user types them
ROWS = {
    "h256-d0.2-cosine": "--hidden 256 --dropout 0.2 --batch-size 64 --schedule cosine --warmup 100 --steps 5700",
    "h384-d0.35-cosine": "--hidden 384 --dropout 0.35 --batch-size 64 --schedule cosine --warmup 100 --steps 2900",
    "h384-d0.35-b32-cosine": "--hidden 384 --dropout 0.35 --batch-size 32 --schedule cosine --warmup 100 --steps 5800",
    "h512-d0.4-cosine": "--hidden 512 --dropout 0.4 --batch-size 64 --schedule cosine --warmup 100 --steps 1830",
    "h512-d0.4-b32-cosine": "--hidden 512 --dropout 0.4 --batch-size 32 --schedule cosine --warmup 100 --steps 3660",
    "h512-d0.5-b32-cosine": "--hidden 512 --dropout 0.5 --batch-size 32 --schedule cosine --warmup 100 --steps 3660",
    "h640-d0.45-b32-cosine": "--hidden 640 --dropout 0.45 --batch-size 32 --schedule cosine --warmup 100 --steps 2600",
    "h640-d0.5-b32-cosine": "--hidden 640 --dropout 0.5 --batch-size 32 --schedule cosine --warmup 100 --steps 2600",
    "h640-d0.45-b32-lr0.003": "--hidden 640 --dropout 0.45 --batch-size 32 --schedule cosine --warmup 100 --steps 2600 "
                              "--lr 0.003",
    "h640-d0.45-b32-lr0.004": "--hidden 640 --dropout 0.45 --batch-size 32 --schedule cosine --warmup 100 --steps 2600 "
                              "--lr 0.004",
    "h640-d0.4-wd0.2-b32-lr0.003": "--hidden 640 --dropout 0.4 --weight-drop 0.2 --batch-size 32 --schedule cosine "
                                   "--warmup 100 --steps 2600 --lr 0.003",
    "h640-d0.45-b32-lr0.003-offset": "--hidden 640 --dropout 0.45 --batch-size 32 --schedule cosine --warmup 100 "
                                     "--steps 2600 --lr 0.003 --random-offset",
    "h640-d0.45-b32-lr0.003-offset-2300": "--hidden 640 --dropout 0.45 --batch-size 32 --schedule cosine --warmup 100 "
                                          "--steps 2300 --lr 0.003 --random-offset",
}
# the first README run (constant rate, dropout 0.2, 15 minutes on 2 threads; `bench_lm.py` before the study):
# its history up to the study's steps at H = 256 is the table's first row
FIRST = REPO / "benchmarks" / "results" / "bench_lm_first.json"
THREADS = 1  # torch threads per row
PARALLEL = 2  # rows at a time


def command(name: str, runs: str = "runs/lm-study") -> str:
    """The full `rnnlab train` command line of one row, runnable from the repository root."""
    return f"rnnlab train {COMMON} {ROWS[name]} --out {runs}/{name}"


def config_of(cmd: str) -> dict:
    """The config `rnnlab train` builds from a command line (parsed by rnnlab's own CLI)."""
    from rnnlab import cli

    args = cli.build_parser().parse_args(shlex.split(cmd)[1:])
    return json.loads(cli._config(args).to_json())


def differences(stored: dict, expected: dict) -> dict:
    """{field: (stored, expected)} where a run folder's config.json differs from its command's config. A
    field that Config gained after the run (absent from the stored file) counts as the same when the
    command leaves it at its default, which is what the run did: e.g. weight_drop, added for the later rows."""
    from rnnlab.config import Config

    defaults = json.loads(Config().to_json())
    return {k: (stored.get(k), v) for k, v in expected.items()
            if stored.get(k, defaults.get(k)) != v or (k not in stored and k not in defaults)}


def run(names: list[str], runs: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    todo = [n for n in names if not (runs / n / "history.csv").exists()]
    for k in range(0, len(todo), PARALLEL):
        procs = []
        for name in todo[k:k + PARALLEL]:
            argv = shlex.split(command(name, str(runs)))
            log = open(runs / f"{name}.log", "w")
            print(f"running {name}: {' '.join(argv)}", flush=True)
            procs.append((name, subprocess.Popen([sys.executable, "-m", "rnnlab", *argv[1:]], cwd=REPO, env=env,
                                                 stdout=log, stderr=subprocess.STDOUT), log))
        for name, p, log in procs:
            if p.wait() != 0:
                raise SystemExit(f"{name} failed: see {runs / (name + '.log')}")
            log.close()


def collect(runs: Path) -> dict:
    rows = []
    for name in ROWS:
        folder = runs / name
        history = list(csv.DictReader((folder / "history.csv").read_text().splitlines()))
        stored = json.loads((folder / "config.json").read_text())
        expected = config_of(command(name))
        diff = differences(stored, expected)
        if diff or set(stored) - set(expected):
            raise SystemExit(f"{folder}: its config.json is not the config of the row's command: {diff}")
        val = [float(r["val_loss"]) for r in history]
        rows.append({"name": name, "command": command(name), "config": stored, "val_loss": val[-1],
                     "best_val_loss": min(val), "best_step": int(history[val.index(min(val))]["step"]),
                     "steps": int(history[-1]["step"]), "train_loss": float(history[-1]["train_loss"]),
                     "history": [{k: float(r[k]) for k in ("step", "train_loss", "val_loss")} for r in history]})
    first = json.loads(FIRST.read_text())
    limit = rows[0]["config"]["steps"]  # the H = 256 row's budget
    history = [r for r in first["training"]["rnnlab"]["history"] if r["step"] <= limit]
    best = min(history, key=lambda r: r["val_loss"])
    baseline = {"name": "first run", "command": first["command"], "val_loss": history[-1]["val_loss"],
                "best_val_loss": best["val_loss"], "best_step": best["step"], "steps": history[-1]["step"],
                "train_loss": history[-1]["train_loss"]}
    return {"threads": THREADS, "first": baseline, "rows": rows}


def readme_section(r: dict) -> str:
    """The README's "What helped" table: the first run at the study's step budget, then each row."""
    f = r["first"]
    lines = ["| hidden | dropout | weight drop | batch | stream offsets | learning rate | steps | training loss "
             "(dropout on) | validation loss, final | best (at step) |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| 256 | 0.2 | 0 | 64 | fixed | constant 0.002 (the first run) | {f['steps']:,} | "
             f"{f['train_loss']:.3f} | **{f['val_loss']:.3f}** | {f['best_val_loss']:.3f} ({f['best_step']:,}) |"]
    for row in r["rows"]:
        c = row["config"]  # the run's own config.json (runs made before --weight-drop existed had none: 0)
        rate = f"{c['schedule']} from {c['lr']:g}, {c['warmup']} warm-up"
        offsets = "random" if c.get("random_offset") else "fixed"
        lines.append(f"| {c['hidden']} | {c['dropout']} | {c.get('weight_drop', 0):g} | {c['batch_size']} | "
                     f"{offsets} | {rate} | "
                     f"{row['steps']:,} | {row['train_loss']:.3f} | **{row['val_loss']:.3f}** | "
                     f"{row['best_val_loss']:.3f} ({row['best_step']:,}) |")
    best = min(r["rows"], key=lambda row: row["val_loss"])
    return (f"""### What helped

The first 15-minute run of issue 13's model (2 x LSTM 256, batch 64, dropout 0.2, a constant Adam rate;
`benchmarks/results/bench_lm_first.json`, the same benchmark) overfitted: its validation loss was lowest
at step {f['best_step']:,} and rose after. `benchmarks/lm_study.py` trained variants of it, each one
`rnnlab train` command (the first run's flags with these changed; `--steps` is what 2 threads train in
about 14 minutes here, run on {r['threads']} thread each; the script's docstring has the throughput behind
it). The first row is the first run's own history at the same step budget as the H = 256 row. "weight
drop" is `--weight-drop`, DropConnect on the recurrent weights (AWD-LSTM's); "random" stream offsets is
`--random-offset` (each epoch's chunk boundaries moved); the learning rate is Adam's peak rate.

""" + "\n".join(lines) + f"""

Lowest final validation loss: {best['val_loss']:.3f} nats/char, with `{ROWS[best['name']]}`, the
settings of the 15-minute run above. A row ran on {r['threads']} thread and that run on 2: their products round
differently, so the two runs of the same settings take different paths; the gap between their losses is the
spread to expect between two runs. Rerun:
`python benchmarks/lm_study.py --run` (about 25 minutes per pair of rows), then
`python benchmarks/lm_study.py --readme` prints this table from `benchmarks/results/lm_study.json`.
""")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="store_true", help="train the rows not yet in --runs, then collect")
    p.add_argument("--only", nargs="+", choices=list(ROWS), help="with --run: these rows only")
    p.add_argument("--runs", default=str(REPO / "runs" / "lm-study"), help="the rows' run folders")
    p.add_argument("--json", default=str(JSON), help=f"write the results here (default {JSON.relative_to(REPO)})")
    p.add_argument("--readme", action="store_true", help="print the README's table from --json, and stop")
    args = p.parse_args(argv)
    if args.readme:
        print(readme_section(json.loads(Path(args.json).read_text())), end="")
        return {}
    runs = Path(args.runs)
    if args.run:
        runs.mkdir(parents=True, exist_ok=True)
        run(args.only or list(ROWS), runs)
    missing = [n for n in ROWS if not (runs / n / "history.csv").exists()]
    if missing:
        raise SystemExit(f"not collected: no finished run of {', '.join(missing)} in {runs} (train them with --run)")
    with contextlib.redirect_stdout(io.StringIO()):
        results = collect(runs)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(readme_section(results), end="")
    return results


if __name__ == "__main__":
    main()

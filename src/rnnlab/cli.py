"""The `rnnlab` command: a thin argparse layer over the library.

Each subcommand parses its flags, builds a `Config` where it needs one, and calls one library function.
Bad input (a `UserError`) prints one line to stderr and exits 2, with no traceback.
Heavy modules (plots, data, training) are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from rnnlab import choices
from rnnlab.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) and exit 2, like our other errors."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)  # --epoch is not --epochs: what was typed is what is read
        super().__init__(*a, **kw)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{_did_you_mean(message)}\n")


def _did_you_mean(message: str) -> str:
    """"; did you mean train?" after argparse's "invalid choice: 'trian' (choose from ...)", when one is close."""
    import difflib
    import re

    found = re.match(r"argument .*: invalid choice: '(.*)' \(choose from (.*)\)", message)
    if not found:
        return ""
    choices = re.findall(r"'([^']*)'", found.group(2))
    close = difflib.get_close_matches(found.group(1), choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _add_lab(sub) -> None:
    p = sub.add_parser("lab", help="run the lab handout's experiment (vanilla RNN, two sentences)",
                       description="Train the handout's RNN on 'The movie is good/bad', plot the loss, test it.")
    p.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--hidden", type=int, default=2, help="hidden size n (default 2)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42, the handout's)")
    p.add_argument("--phi", choices=choices.PHIS, default="tanh", help="nonlinearity (default tanh)")
    p.add_argument("--cell", choices=choices.CELLS, default="rnn", help="cell (default rnn, the handout's)")
    p.add_argument("--backward", choices=choices.BACKWARDS, default="autograd",
                   help="autograd (the handout's loss.backward, the default) or manual (hand-written BPTT)")
    p.add_argument("--sentence", action="append", metavar="TEXT",
                   help="a test sentence (repeatable; default: the handout's two)")
    p.add_argument("--out", default="runs/lab", help="run folder for the plot and logs (default runs/lab)")
    p.add_argument("--show", action="store_true", help="also open the plot in a window")
    _add_force(p)
    p.set_defaults(func=cmd_lab)


def cmd_lab(args) -> int:
    from rnnlab.config import Config
    from rnnlab.lab import run_lab

    config = Config.lab(epochs=args.epochs, lr=args.lr, hidden=args.hidden, seed=args.seed, phi=args.phi,
                        cell=args.cell, backward=args.backward).validate()
    sentences = [s.split() for s in _texts(args.sentence)] if args.sentence else None
    run_lab(config, _out_dir(args.out, args), test_sentences=sentences, show=args.show)
    return 0


def _add_gradcheck(sub) -> None:
    p = sub.add_parser("gradcheck", help="check the hand-written BPTT against autograd and finite differences",
                       description="Per parameter, the largest relative error of the hand BPTT against autograd "
                                   "and against float64 central differences; exit 1 past tolerance.")
    p.add_argument("--cell", choices=[*choices.CELLS, "all"], default="all", help="cell to check (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and inputs (default 0)")
    p.add_argument("--engine", choices=choices.ENGINES, default=None,
                   help="who runs the hand BPTT's time loop (default: $RNNLAB_ENGINE, else auto)")
    p.set_defaults(func=cmd_gradcheck)


def cmd_gradcheck(args) -> int:
    from rnnlab.gradcheck import report

    cells = choices.CELLS if args.cell == "all" else [args.cell]
    results = [report(cell, seed=args.seed, engine=args.engine) for cell in cells]
    return 0 if all(results) else 1


def _add_train(sub) -> None:
    from rnnlab.config import Config

    d = Config()
    p = sub.add_parser("train", help="train a classifier on a labelled file, or a language model on a text",
                       description="Train on TSV/CSV/UCI/rt-polarity data (or, with --task lm, on a text file); "
                                   "writes config, history, curves, confusion matrix and checkpoints (model.pt "
                                   "best, last.pt) to --out.")
    p.add_argument("--task", choices=choices.TASKS, default=d.task,
                   help="classify labelled sentences, or lm: predict the next token of a text (default classify)")
    p.add_argument("--data", required=True, nargs="+", help="training file(s) or folder (lm: one text file)")
    p.add_argument("--format", choices=choices.FORMATS, help="input format (default: from the name)")
    p.add_argument("--val", nargs="+", help="validation file(s) (default: split from --data)")
    p.add_argument("--test", nargs="+", help="test file(s) (default: split from --data)")
    p.add_argument("--text-column", help="text column: index or header name (default: first)")
    p.add_argument("--label-column", help="label column: index or header name (default: last)")
    _add_encoding(p)
    p.add_argument("--out", help="run folder (default runs/<cell>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--cell", choices=choices.CELLS, default=d.cell, help=f"cell (default {d.cell})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden size H (default {d.hidden})")
    p.add_argument("--layers", type=int, default=d.layers,
                   help=f"stacked recurrent layers, as torch.nn's num_layers (default {d.layers})")
    p.add_argument("--embed-dim", type=int, default=d.embed_dim,
                   help=f"embedding size; 0 feeds one-hot words to U (default {d.embed_dim})")
    p.add_argument("--phi", choices=choices.PHIS, default=d.phi, help=f"vanilla RNN nonlinearity (default {d.phi})")
    p.add_argument("--dropout", type=float, default=d.dropout,
                   help="dropout on the embeddings, between layers and on s_T while training (default 0)")
    p.add_argument("--weight-drop", type=float, default=d.weight_drop,
                   help="DropConnect on each layer's recurrent weights W while training: one mask per step (and "
                        "process), shared by every time step (AWD-LSTM's weight drop) (default 0)")
    p.add_argument("--backward", choices=choices.BACKWARDS, default=d.backward,
                   help=f"autograd, or manual (hand-written BPTT) (default {d.backward})")
    p.add_argument("--engine", choices=choices.ENGINES, default=None,
                   help="who runs the manual BPTT's time loop: compiled C++ (built once on first use), python, or "
                        "auto: compiled where it builds (default: $RNNLAB_ENGINE, else auto)")
    p.add_argument("--optimizer", choices=choices.OPTIMIZERS, default=d.optimizer,
                   help=f"optimiser (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default 0)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay (default 0)")
    p.add_argument("--clip", type=float, default=d.clip, help=f"clip the global gradient norm (default {d.clip}); "
                                                              "0 for no clipping")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--steps", type=int, help="stop after this many optimiser steps (with --epochs and --minutes: "
                                             "whichever comes first)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes of training (wall clock)")
    p.add_argument("--schedule", choices=choices.SCHEDULES, default=d.schedule,
                   help="learning rate over the planned steps (--epochs, or --steps if fewer; --minutes is not "
                        "foreseen): constant, cosine (down towards 0) or step (x0.3 after each third); default "
                        "constant")
    p.add_argument("--warmup", type=int, default=d.warmup, help="raise the learning rate linearly over this many "
                                                                "first steps (default 0)")
    p.add_argument("--level", choices=choices.LEVELS, default=d.level,
                   help="lm: model characters or words (default char)")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help=f"lm: tokens per chunk, the BPTT length (default {d.seq_len})")
    p.add_argument("--random-offset", action="store_true",
                   help="lm: each epoch cuts the streams from a random offset in [0, seq-len) of the text (drawn "
                        "from seed and epoch), so chunk boundaries change from epoch to epoch")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"early-stopping patience in epochs; 0 never stops early (default {d.patience})")
    p.add_argument("--min-freq", type=int, default=d.min_freq,
                   help=f"words seen fewer times map to <unk> (default {d.min_freq})")
    p.add_argument("--max-vocab", type=int, default=d.max_vocab, help=f"vocabulary size cap (default {d.max_vocab})")
    p.add_argument("--no-lowercase", action="store_true", help="keep the case of words")
    p.add_argument("--no-bucket", action="store_true", help="do not batch sentences of similar length together")
    p.add_argument("--val-frac", type=float, default=d.val_frac,
                   help=f"validation fraction (default {d.val_frac}; lm: the text's last part)")
    p.add_argument("--test-frac", type=float, default=d.test_frac,
                   help=f"test fraction (default {d.test_frac}); the language model tests only on --test")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--device", default=d.device, help="cpu or cuda (default cpu)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG curves")
    p.add_argument("--report", action="store_true", help="also write report.html: curves, metrics and sample "
                                                         "predictions with their word-by-word traces")
    p.add_argument("--dist-backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="under torchrun: the torch.distributed backend (default auto: nccl for cuda, else gloo)")
    p.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: give up when another process has not answered for this long (default 300)")
    _add_force(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import time

    from rnnlab import distributed
    from rnnlab.train import train

    config = _config(args)
    out = _out_dir(args.out or f"runs/{args.cell}-{time.strftime('%Y%m%d-%H%M%S')}", args, create=False)
    if args.resume:  # the run's own settings, but for the flags given now
        config = _resumed_config(out, config, _given(args) | {"engine"})  # the engine is this session's choice
    backend = None if args.dist_backend == "auto" else args.dist_backend
    if config.task == "lm":
        from rnnlab.lm import train_lm

        if len(args.data) != 1 or (args.val and len(args.val) != 1) or (args.test and len(args.test) != 1):
            raise UserError("--task lm reads one text file each for --data, --val and --test")
        with distributed.launch(config.validate(), backend, args.dist_timeout) as team:
            train_lm(config, args.data[0], out, val_data=args.val and args.val[0], test_data=args.test and
                     args.test[0], resume=args.resume, plots=not args.no_plots, team=team)
        if args.report:
            from rnnlab.report import write_report

            for f in write_report(out):
                print(f"wrote {f}")
        return 0
    with distributed.launch(config.validate(), backend, args.dist_timeout) as team:  # Alone without torchrun
        train(config, args.data, out, fmt=args.format, val_data=args.val, test_data=args.test,
              text_column=_column(args.text_column), label_column=_column(args.label_column), encoding=args.encoding,
              resume=args.resume,
              plots=not args.no_plots, report=args.report, team=team)
    return 0


def _config(args):
    """The Config of train's flags: each flag's destination is its field's name, but --no-lowercase and
    --no-bucket, which negate theirs, and --embed-dim, --clip and --patience, whose 0 means None (none)."""
    import dataclasses

    from rnnlab.config import Config

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    values.update(lowercase=not args.no_lowercase, bucket=not args.no_bucket)
    for name in ("embed_dim", "clip", "patience"):
        values[name] = values[name] or None
    values["engine"] = args.engine or os.environ.get("RNNLAB_ENGINE", "auto")  # no --engine: the environment's
    return Config(**values)


def _given(args) -> set[str]:
    """The destinations of the options typed on this command line (not left at their defaults)."""
    sub = build_parser()._subparsers._group_actions[0].choices[args.command]
    typed = {token.split("=", 1)[0] for token in args.argv if token.startswith("-")}
    return {a.dest for a in sub._actions if typed & set(a.option_strings)}


def _resumed_config(out: Path, config, given: set[str]):
    """`--resume`: the settings of the run's config.json, overridden by the flags given explicitly
    (`--epochs 20` extends a finished run; a flag that changes the maths is refused when the checkpoint is
    read). Flags that are not Config fields are mapped to theirs (--no-lowercase -> lowercase)."""
    import dataclasses
    import json

    from rnnlab.config import Config

    saved = out / "config.json"
    if not saved.is_file():
        return config  # train() says there is nothing to resume
    try:
        settings = json.loads(saved.read_text(encoding="utf-8"))
        assert isinstance(settings, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise UserError("not a valid config.json; restore it from the run's checkpoint or start a new --out",
                        path=saved) from None
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {name.removeprefix("no_") for name in given} & fields
    return Config.from_dict({**settings, **{name: getattr(config, name) for name in given}})


def _out_dir(path: str, args, create: bool = True) -> Path:
    """The output folder of this command, checked and created now (see rundir.prepare): a folder with other
    files in it is refused unless --force, a source folder always."""
    from rnnlab.rundir import prepare

    return prepare(path, args.command, force=args.force, create=create)


def _add_encoding(p) -> None:
    p.add_argument("--encoding", help="the data files' text encoding, e.g. cp1252 or latin-1 (default utf-8; "
                                      "cp1252 for rt-polarity)")


def _add_force(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds something other than this command's run")


def _column(value: str | None):
    """A column given as an index ("0") or a header name ("review")."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class precision/recall/F1 and confusion on labelled data",
                       description="Score a trained model on labelled data (its labels must be among the model's "
                                   "classes): accuracy, loss, per-class precision, recall and F1, the confusion "
                                   "matrix, and the share of words the model never saw.")
    p.add_argument("--checkpoint", required=True, help="run folder or model.pt")
    p.add_argument("--data", required=True, nargs="+", help="labelled file(s) or folder")
    p.add_argument("--format", choices=choices.FORMATS, help="input format (default: from the name)")
    p.add_argument("--text-column", help="text column: index or header name (default: first)")
    p.add_argument("--label-column", help="label column: index or header name (default: last)")
    _add_encoding(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json

    from rnnlab.evaluate import evaluate

    if _is_lm(args.checkpoint):
        return _evaluate_lm(args)
    m = evaluate(args.checkpoint, args.data, args.format, text_column=_column(args.text_column),
                 label_column=_column(args.label_column), encoding=args.encoding)
    _warn_unknown(m["unknown_rate"])
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"examples {m['n']}  accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  "
          f"unknown words {100 * m['unknown_rate']:.1f}%")
    print(f"{'class':>12} {'precision':>10} {'recall':>10} {'f1':>10} {'support':>8}")
    for name, c in m["per_class"].items():
        print(f"{name:>12} {c['precision']:10.4f} {c['recall']:10.4f} {c['f1']:10.4f} {c['support']:8d}")
    names = m["label_names"]
    print("confusion (rows true, columns predicted):")
    print(" " * 13 + " ".join(f"{n:>8}" for n in names))
    for name, row in zip(names, m["confusion"]):
        print(f"{name:>12} " + " ".join(f"{v:8d}" for v in row))
    return 0


def _is_lm(path) -> bool:
    """Whether a checkpoint holds a language model (its config says task 'lm')."""
    from rnnlab import checkpoint

    return checkpoint.read(path)["config"].get("task") == "lm"


def _evaluate_lm(args) -> int:
    import json

    from rnnlab import lm

    if len(args.data) != 1:
        raise UserError("a language model is evaluated on one text file; pass one --data")
    m = lm.evaluate(args.checkpoint, args.data[0])
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['level']} tokens {m['tokens']}  loss {m['loss']:.4f} nats/token  {m['bits_per_token']:.4f} "
          f"bits/token  perplexity {m['perplexity']:.3f}  next-token accuracy {m['accuracy']:.4f}")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write text with a trained language model",
                       description="Feeds --prime through the model, prints it, then draws --length tokens one "
                                   "at a time. The text goes to stdout as it is drawn; status lines to stderr.")
    p.add_argument("--checkpoint", required=True, help="run folder or model.pt of `rnnlab train --task lm`")
    p.add_argument("--length", type=int, default=500, help="tokens to draw (default 500)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divide the scores by this before the softmax; 0 takes the most likely token (default 1)")
    p.add_argument("--top-k", type=int, help="draw among the k most likely tokens only")
    p.add_argument("--prime", help="text to start from (printed as the start of the output; default none)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the settings and the text")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    import json

    from rnnlab import lm

    model, config, vocab = lm.load(args.checkpoint)
    prime = _texts([args.prime])[0] if args.prime else ""
    lm.encode(prime, vocab, config.level, config.lowercase, where="--prime")  # unknown characters: an error first
    print(f"sampling {args.length} {config.level} tokens at temperature {args.temperature:g} from "
          f"{args.checkpoint}", file=sys.stderr)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    text = lm.sample(model, vocab, config.level, length=args.length, temperature=args.temperature, top_k=args.top_k,
                     prime=prime, seed=args.seed, lowercase=config.lowercase,
                     on_text=None if args.json else stream)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "level": config.level, "length": args.length,
                          "temperature": args.temperature, "top_k": args.top_k, "prime": prime,
                          "seed": args.seed, "text": text}, ensure_ascii=False))
    else:
        print()
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label new sentences (arguments, or one per line on stdin)",
                       description="Label each sentence with a trained model: the class, its probabilities and "
                                   "the words the model never saw. One output per argument or stdin line; a blank "
                                   "line gets an error entry in its place.")
    p.add_argument("--checkpoint", required=True, help="run folder or model.pt")
    p.add_argument("texts", nargs="*", help="sentences; none reads lines from stdin")
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    import json

    from rnnlab.data import tokenize
    from rnnlab.evaluate import predict

    texts = _sentences(args.texts, keep_blank=True)
    scored = iter(predict(args.checkpoint, [t for t in texts if t.strip()]))
    results = [next(scored) if t.strip() else {"text": t, "error": "blank line: nothing to classify"} for t in texts]
    words = sum(len(tokenize(r["text"])) for r in results if "error" not in r)
    _warn_unknown(sum(len(r.get("unknown_words", ())) for r in results) / words)
    for line, r in enumerate(results, start=1):
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"-\terror: line {line}: {r['error']}\t{r['text']}")
        else:
            probs = "  ".join(f"p({k}) = {v:.4f}" for k, v in r["probabilities"].items())
            unk = f"  unknown: {', '.join(r['unknown_words'])}" if r["unknown_words"] else ""
            print(f"{r['label']}\t{probs}{unk}\t{r['text']}")
    return 0


UNKNOWN_WARNING = 0.5  # above this share of unknown words, evaluate and predict warn that the input may not fit


def _warn_unknown(rate: float) -> None:
    """A loud line on stderr when most words are unknown to the model: the scores then mean little."""
    if rate > UNKNOWN_WARNING:
        print(f"rnnlab: warning: {100 * rate:.1f}% of the words are unknown to this model "
              "(they all read as <unk>), so its answers mean little; check that the data and the checkpoint "
              "belong together (language, lower-casing, format)", file=sys.stderr)


def _texts(arguments: list[str]) -> list[str]:
    """The sentences given as arguments: each non-empty and valid UTF-8."""
    for i, text in enumerate(arguments, start=1):
        if not text.strip():
            raise UserError(f"sentence argument {i} is empty; write some text in it or leave it out")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal could not decode arrive as lone surrogates
            raise UserError(f"sentence argument {i} is not valid UTF-8; pass UTF-8 text") from None
    return arguments


def _sentences(arguments: list[str], keep_blank: bool = False) -> list[str]:
    """The sentences given as arguments, or else the lines of stdin (blank ones too, with keep_blank);
    at least one that is not blank."""
    texts = _texts(arguments) if arguments else _stdin_lines()
    if not any(t.strip() for t in texts):
        raise UserError("no text on stdin; give sentences as arguments or one per line on stdin", path="<stdin>")
    return texts if keep_blank else [t for t in texts if t.strip()]


def _stdin_lines() -> list[str]:
    """The lines of stdin, read as UTF-8 bytes whatever the locale says (a final newline ends the last line)."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"not valid UTF-8 (byte 0x{data[e.start]:02x}); send UTF-8 text, e.g. through "
                        "`iconv -f cp1252 -t utf-8`", path="<stdin>", line=line) from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="a sentence word by word: hidden state, gates and class probabilities",
                       description="For each word: the class probabilities if the sentence stopped there, the "
                                   "hidden state (its top principal components when H > 8) and the mean gate "
                                   "activations (LSTM, GRU).")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="run folder or model.pt written by `rnnlab train`")
    model.add_argument("--lab", action="store_true", help="use the lab handout's model (trained here, about 1 s)")
    p.add_argument("texts", nargs="*", help="sentences (default with --lab: the handout's two test sentences)")
    p.add_argument("--out", help="also write explain.json and trajectory.png (the states' paths) to this folder")
    p.add_argument("--json", action="store_true", help="print the traces as JSON")
    _add_force(p)
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    import json

    from rnnlab import explain

    out = _out_dir(args.out, args) if args.out else None  # a bad --out stops before the work, not after
    if args.checkpoint and _is_lm(args.checkpoint):
        return _explain_lm(args, out)
    if args.lab:
        from rnnlab.lab import explain_lab

        model, traces = explain_lab(_texts(args.texts) or None)
    else:
        model, traces = explain.explain_checkpoint(args.checkpoint, _sentences(args.texts))
    if args.json:
        print(json.dumps([tr.to_dict() for tr in traces]))
    else:
        pca = explain.shared_pca(traces)  # one set of axes for all the sentences given
        print("\n\n".join(explain.format_trace(tr, pca) for tr in traces))
    for f in explain.write(model, traces, out) if out else []:
        print(f"wrote {f}")
    return 0


def _explain_lm(args, out: Path | None) -> int:
    """A language model: per token, p(token), surprisal in bits and the top 3; --out draws the text coloured."""
    import json

    from rnnlab import lm

    results = lm.explain_texts(args.checkpoint, _sentences(args.texts))
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        print("\n\n".join(lm.format_surprisal(r["tokens"], r["first"]) for r in results))
    if out:
        (out / "explain.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out / 'explain.json'}")
        for i, r in enumerate(results):
            name = "surprisal.png" if len(results) == 1 else f"surprisal-{i + 1}.png"
            print(f"wrote {lm.plot_surprisal(r['tokens'], r['first'], r['level'], out / name)}")
    return 0


def _add_gradflow(sub) -> None:
    p = sub.add_parser("gradflow", help="how the gradient dL/ds_t shrinks or grows with distance (question 6)",
                       description="||dL/ds_t|| and ||ds_T/ds_t|| against t for the vanilla RNN with W at spectral "
                                   "radius 0.5, 1, 1.5, and for the LSTM and the GRU; with and without clipping.")
    p.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size H (default 64)")
    p.add_argument("--clip", type=float, default=1.0, help="clip the parameter gradient to this norm (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the random sentences (default 0)")
    p.add_argument("--out", default="runs/gradflow",
                   help="folder for gradflow.png and gradflow.json (default runs/gradflow)")
    _add_force(p)
    p.set_defaults(func=cmd_gradflow)


def cmd_gradflow(args) -> int:
    import math

    from rnnlab import gradflow

    if args.length < 2 or args.hidden < 1 or not (args.clip > 0 and math.isfinite(args.clip)):
        raise UserError("need --length >= 2, --hidden >= 1 and a finite --clip > 0, e.g. --length 100 --hidden 64 "
                        "--clip 1")
    gb = gradflow.memory_needed(args.length, args.hidden) / 2**30
    if gb > 4:
        raise UserError(f"--hidden {args.hidden} with --length {args.length} needs about {gb:.0f} GB (the Jacobians "
                        "take H copies of each sequence); lower --hidden or --length")
    out = _out_dir(args.out, args)
    flows = gradflow.run(length=args.length, hidden=args.hidden, clip=args.clip, seed=args.seed)
    print(gradflow.format_table(flows, args.clip))
    for f in gradflow.write(flows, out, length=args.length, hidden=args.hidden, clip=args.clip, seed=args.seed):
        print(f"wrote {f}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML page for a training run",
                       description="Config, test metrics, curves, confusion matrix and sample predictions with "
                                   "their word-by-word traces, as RUN_DIR/report.html.")
    p.add_argument("run_dir", help="run folder written by `rnnlab train`")
    p.add_argument("--sentence", action="append", metavar="TEXT", help="also explain this sentence (repeatable)")
    p.add_argument("--out", help="folder for report.html and trajectory.png (default: the run folder)")
    _add_force(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from rnnlab.report import write_report

    for f in write_report(args.run_dir, _texts(args.sentence or []), _out_dir(args.out, args) if args.out else None):
        print(f"wrote {f}")
    return 0


def _add_memory(sub) -> None:
    # the defaults live in memory.MemoryConfig, CELLS and DISTANCES (importing them here would load torch for
    # every command); None below means "the library's default", quoted in the help
    p = sub.add_parser("memory", help="long-range memory: accuracy against the distance D for rnn, lstm, gru",
                       description="The label is the first token, followed by D distractor tokens. Trains each "
                                   "cell at each D for the same budget; prints the accuracy table and writes "
                                   "memory.png and memory.json to --out.")
    p.add_argument("--cells", nargs="+", choices=choices.CELLS, help="cells to compare (default: all three)")
    p.add_argument("--distances", nargs="+", type=int, metavar="D",
                   help="distractor counts D, each >= 1 (default: 5 10 20 50 100)")
    p.add_argument("--steps", type=int, help="optimiser steps per cell and D (default 2000)")
    p.add_argument("--hidden", type=int, help="hidden size H (default 32)")
    p.add_argument("--optimizer", choices=choices.OPTIMIZERS, help="optimiser (default adam)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.01)")
    p.add_argument("--seed", type=int, help="seed for the weights and the data (default 0)")
    p.add_argument("--seeds", type=int, help="repeat with this many seeds from --seed on; report the mean (default 1)")
    p.add_argument("--out", default="runs/memory", help="folder for memory.png and memory.json (default runs/memory)")
    _add_force(p)
    p.set_defaults(func=cmd_memory)


def cmd_memory(args) -> int:
    from rnnlab import memory

    given = {"steps": args.steps, "hidden": args.hidden, "seed": args.seed, "seeds": args.seeds,
             "optimizer": args.optimizer, "lr": args.lr}
    config = memory.MemoryConfig(**{k: v for k, v in given.items() if v is not None}).validate()
    cells, distances = memory.check_sweep(args.cells or memory.CELLS, args.distances or memory.DISTANCES)
    out = _out_dir(args.out, args)  # before the sweep: its minutes are not lost to a bad --out
    rows = memory.sweep(cells, distances, config)
    seeds = "" if config.seeds == 1 else f", mean of {config.seeds} seeds"
    print(f"test accuracy (chance {1 / config.num_classes:.3f}{seeds}):")
    print(memory.table(rows))
    for f in memory.write_results(rows, config, out):
        print(f"wrote {f}")
    return 0


def _add_bench(sub) -> None:
    from rnnlab import bench

    p = sub.add_parser("bench", help="training throughput against torch.nn + torch.optim, both engines",
                       description=bench.__doc__.split("\n\n")[0].split(": ", 1)[1])
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from rnnlab import bench

    bench.run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rnnlab import __version__

    parser = _Parser(prog="rnnlab", description="Recurrent networks written from their equations.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_lab(sub)
    _add_gradcheck(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_sample(sub)
    _add_explain(sub)
    _add_gradflow(sub)
    _add_report(sub)
    _add_memory(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    args.argv = argv  # which flags were typed: --resume keeps the run's settings for the others
    if rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except UserError as e:
        print(f"rnnlab {args.command}: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except BrokenPipeError:  # the output went into a command that stopped reading, e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print(f"rnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> int:
    """The `rnnlab` script and `python -m rnnlab`: `main`, then a quick exit.

    After the command, the interpreter's shutdown runs the cyclic garbage collector over every object left
    (~220,000 after torch and matplotlib are imported), several times: 0.2 s of the lab's 1.5 s, measured.
    `gc.freeze()` moves them out of the collector's reach, so the shutdown only frees them; nothing is lost
    (files are closed and checkpoints renamed before `main` returns; only finalisers of garbage still in
    reference cycles go unrun, which Python does not promise at exit anyway). Only here, not in `main`, which
    tests and notebooks call in a process that goes on.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())

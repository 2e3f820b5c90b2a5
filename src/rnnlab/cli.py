"""The `rnnlab` command: a thin argparse layer over the library.

Each subcommand parses its flags, builds a `Config` where it needs one, and calls one library function.
Bad input (a `UserError`) prints one line to stderr and exits 2, with no traceback.
Heavy modules (plots, data, training) are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys

from rnnlab.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) and exit 2, like our other errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_lab(sub) -> None:
    p = sub.add_parser("lab", help="run the lab handout's experiment (vanilla RNN, two sentences)",
                       description="Train the handout's RNN on 'The movie is good/bad', plot the loss, test it.")
    p.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--hidden", type=int, default=2, help="hidden size n (default 2)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42, the handout's)")
    p.add_argument("--phi", choices=["tanh", "relu"], default="tanh", help="nonlinearity (default tanh)")
    p.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn", help="cell (default rnn, the handout's)")
    p.add_argument("--backward", choices=["autograd", "manual"], default="autograd",
                   help="autograd (the handout's loss.backward) or manual (hand-written BPTT)")
    p.add_argument("--sentence", action="append", metavar="TEXT",
                   help="a test sentence (repeatable; default: the handout's two)")
    p.add_argument("--out", default="runs/lab", help="run folder for the plot and logs (default runs/lab)")
    p.add_argument("--show", action="store_true", help="also open the plot in a window")
    p.set_defaults(func=cmd_lab)


def cmd_lab(args) -> int:
    from rnnlab.config import Config
    from rnnlab.lab import run_lab

    config = Config.lab(epochs=args.epochs, lr=args.lr, hidden=args.hidden, seed=args.seed, phi=args.phi,
                        cell=args.cell, backward=args.backward)
    sentences = [s.split() for s in args.sentence] if args.sentence else None
    result = run_lab(config, args.out, test_sentences=sentences, show=args.show)
    return 0 if result.loss_history else 1


def _add_gradcheck(sub) -> None:
    p = sub.add_parser("gradcheck", help="check the hand-written BPTT against autograd and finite differences",
                       description="Per parameter, the largest relative error of the hand BPTT against autograd "
                                   "and against float64 central differences; exit 1 past tolerance.")
    p.add_argument("--cell", choices=["rnn", "lstm", "gru", "all"], default="all", help="cell to check (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and inputs (default 0)")
    p.set_defaults(func=cmd_gradcheck)


def cmd_gradcheck(args) -> int:
    from rnnlab.gradcheck import report

    cells = ["rnn", "lstm", "gru"] if args.cell == "all" else [args.cell]
    results = [report(cell, seed=args.seed) for cell in cells]
    return 0 if all(results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnlab", description="Recurrent networks written from their equations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_lab(sub)
    _add_gradcheck(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"rnnlab {args.command}: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"rnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

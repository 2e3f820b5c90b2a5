"""Checkpoints: save and load a trained classifier safely.

A checkpoint is one file written by `torch.save` holding only tensors and plain data:

    {"format": "rnnlab", "version": 1, "config": {...}, "vocab": [...], "label_names": [...],
     "weights": {"W": tensor, ...}, "optimizer": {...}, "progress": {...}}

- Loading uses `torch.load(weights_only=True)`, which refuses any pickled object other than tensors
  and plain containers, so a checkpoint can never run code; such a file is reported, not loaded.
  `torch.save` writes a zip archive; a file that is not a complete one (truncated, a bare pickle, any
  other file) is reported as corrupt before anything in it is unpickled.
- Writing is atomic: the bytes go to a temporary file in the same folder, are flushed to disk, and
  the file is renamed over the old one. A crash or a full disk leaves the previous checkpoint intact.
- A run folder holds `model.pt` (the best weights, for evaluate/predict) and `last.pt` (everything
  needed to resume); `--checkpoint` accepts the folder or either file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from rnnlab.config import Config
from rnnlab.data import Vocab
from rnnlab.errors import UserError
from rnnlab.model import Classifier

FORMAT, VERSION = "rnnlab", 1
BEST, LAST = "model.pt", "last.pt"


def atomic_save(obj: dict, path: Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make(model: Classifier, config: Config, vocab: Vocab, label_names: list[str], **extra) -> dict:
    """The checkpoint dictionary: tensors and plain data only."""
    return {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "vocab": vocab.to_list(),
            "label_names": list(label_names), "weights": model.state_dict(), **extra}


def resolve(path: str | Path, name: str = BEST) -> Path:
    """A run folder means its `model.pt` (or `last.pt` when asked); a file means itself.

    A run stopped before its first validation (Ctrl-C in epoch 1) has only `last.pt`: it is used, with a
    one-line notice on stderr, rather than "no checkpoint here"."""
    path = Path(path)
    if path.is_dir():
        if name == BEST and not (path / BEST).exists() and (path / LAST).is_file():
            print(f"rnnlab: {path} has no {BEST} yet (the run stopped before its first validation); using {LAST}",
                  file=sys.stderr)
            name = LAST
        path = path / name
    if not path.exists():
        raise UserError("no checkpoint here; pass a run folder made by `rnnlab train` or its model.pt", path=path)
    return path


def read(path: str | Path, name: str = BEST) -> dict:
    """Load a checkpoint dictionary without executing anything from the file."""
    path = resolve(path, name)
    corrupt = "truncated or corrupt checkpoint ({}); restore it or train again"
    try:
        complete = zipfile.is_zipfile(path)  # the zip's directory sits at its end: a cut file has none
    except OSError as e:
        raise UserError(f"cannot read the checkpoint: {e.strerror}", path=path) from None
    if not complete:
        raise UserError(corrupt.format("not a complete torch zip archive"), path=path)
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles would add lines to our one-line error
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError("refusing to load: the file holds Python objects other than tensors (it could run code); "
                        "only load checkpoints written by rnnlab", path=path) from None
    except Exception as e:  # anything else a damaged archive makes torch.load raise
        raise UserError(corrupt.format(type(e).__name__), path=path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError("not an rnnlab checkpoint; pass a model.pt written by `rnnlab train`", path=path)
    if ckpt.get("version") != VERSION:
        raise UserError(f"checkpoint format version {ckpt.get('version')}, this rnnlab reads version {VERSION}; "
                        "train again with this version", path=path)
    return ckpt


@contextlib.contextmanager
def contents(path: Path, also: tuple = ()):
    """Reading a checkpoint's entries into a model: a missing entry or a wrong shape (KeyError, ValueError, ...,
    and the exception types in `also`) becomes one UserError naming the file."""
    try:
        yield
    except (KeyError, ValueError, TypeError, AttributeError, *also) as e:
        raise UserError(f"the checkpoint's contents do not fit together ({type(e).__name__}: {e}); the file is "
                        "damaged, train again", path=path) from None


def load_model(path: str | Path, name: str = BEST) -> tuple[Classifier, Config, Vocab, list[str], dict]:
    """(model, config, vocab, label_names, checkpoint) from a checkpoint file or run folder."""
    path = resolve(path, name)  # the file (and the notice, when a run folder has only last.pt) once
    ckpt = read(path)
    if isinstance(ckpt.get("config"), dict) and ckpt["config"].get("task") == "lm":
        raise UserError("this checkpoint is a language model, not a classifier; use it with `rnnlab sample`, "
                        "`evaluate` or `explain`", path=path)
    with contents(path, also=(UserError,)):  # Vocab.from_list refuses a list without its specials
        config = Config.from_dict(ckpt["config"])
        vocab = Vocab.from_list(ckpt["vocab"])
        labels = list(ckpt["label_names"])
        model = Classifier(len(vocab), config.hidden, len(labels), cell=config.cell, phi=config.phi,
                           embed_dim=config.embed_dim, layers=config.layers, backward=config.backward,
                           seed=config.seed)  # a checkpoint older than `layers` has none: Config's 1
        model.load_state_dict(ckpt["weights"])
    return model, config, vocab, labels, ckpt

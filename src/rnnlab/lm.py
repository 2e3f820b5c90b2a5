"""Language models that write: learn a text, then continue it (`rnnlab train --task lm`, `sample`).

The model, at every step t of a chunk (Karpathy's char-rnn, jcjohnson's torch-rnn, d2l's RNN chapters):

    x_t      = E[id_t]                                       embedding E (V, D)
    s^l_t    = cell_l(s^{l-1}_t, s^l_{t-1}),  s^0_t = x_t     stacked layers l = 1..L (recurrent.unroll_layers)
    logits_t = W_out s^L_t + b_out                           (V,): a score for every possible next token
    loss     = mean_t -log softmax(logits_t)[id_{t+1}]        cross-entropy on the next token, in nats

Batching as char-rnn / torch-rnn do it: the N training tokens are cut into B parallel streams of
L = (N - 1) // B inputs (stream b reads tokens b*L .. b*L + L - 1 and predicts b*L + 1 .. b*L + L, so
its last token is a target only), and each stream is read in consecutive chunks
of T = --seq-len tokens. The final state of one chunk is the initial state of the next, detached from
the graph (truncated BPTT: context carries across chunks, gradients do not); states start at zero
at each epoch. With --random-offset, epoch e first drops its first o_e tokens, o_e drawn from
(seed, e) in [0, T): the chunks' boundaries move from epoch to epoch, so the model does not see
the same T-token windows, with the same carried context, every epoch (the aim of AWD-LSTM's random
BPTT lengths). Dropout (--dropout p) drops the outputs of every layer before the next layer and
before W_out, with masks from (seed, epoch, step), so a resumed run draws the same masks.

Levels: `char` keeps every character of the text (newlines, case, punctuation, any UTF-8); its
vocabulary is the characters of the given files (the training file, --val and --test), in code
point order. `word` uses the tokeniser of data.py with --min-freq / --max-vocab and <unk>, on each
line, plus the token <eol> at every line end, so samples keep their lines; its vocabulary comes from
the training split alone.

Without --val, the last 10% of the tokens validate (nanoGPT's convention); a test split exists only
when --test is given. Losses are reported in nats per token and in bits per token (nats / ln 2).
Under torchrun each process reads a strided share of the streams (see distributed.py).
Left out: beam search, subword tokens, tied input and output embeddings.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab import checkpoint, distributed
from rnnlab.cells import Cell, make_cell
from rnnlab.config import Config
from rnnlab.data import Vocab, tokenize
from rnnlab.errors import UserError
from rnnlab.model import Parameters
from rnnlab.recurrent import dropout as _dropout
from rnnlab.recurrent import embedding, unroll_layers
from rnnlab.train import epoch_generator, fit, masks, open_run, planned_steps, reload_best, write_history

EOL = "<eol>"  # word level: the end of a line
LN2 = math.log(2)


# -- text and tokens ------------------------------------------------------------------------------------
def read_text(path) -> str:
    """A whole UTF-8 text file; an empty, binary or non-UTF-8 file is a one-line UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError("is a folder; pass a text file", path=path) from None
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror}", path=path) from None
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise UserError("a binary file (it holds NUL bytes), not text; pass a UTF-8 text file", path=path, line=line)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"not valid UTF-8 (byte 0x{data[e.start]:02x}); re-save the file as UTF-8", path=path,
                        line=line) from None
    if not text.strip():
        raise UserError("the text is empty; pass a file with some text to learn", path=path)
    return text


class Chars:
    """The character-level vocabulary: `itos[id] -> character`, in code point order; no <unk>."""

    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def to_list(self) -> list[str]:
        return list(self.itos)


def vocab_from_list(level: str, itos: list[str]):
    return Chars(itos) if level == "char" else Vocab.from_list(itos)


def tokens(text: str, level: str, lowercase: bool = True) -> list[str]:
    """Characters, or the words of each line followed by <eol> (no <eol> after a last line with no newline)."""
    if level == "char":
        return list(text)
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        out += tokenize(line, lowercase)
        if i < len(lines) - 1:
            out.append(EOL)
    return out


def encode(text: str, vocab, level: str, lowercase: bool = True, *, where: str = "the text", path=None) -> list[int]:
    """Token ids. Char level: characters the model never saw are a UserError naming them; word level:
    unknown words become <unk>."""
    toks = tokens(text, level, lowercase)
    if level == "word":
        return vocab.encode(toks)
    unknown = sorted(set(toks) - set(vocab.stoi))
    if unknown:
        shown = " ".join(repr(ch) for ch in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise UserError(f"{where} has {len(unknown)} character(s) the model never saw: {shown}; remove them or "
                        "train on a text that has them", path=path)
    return [vocab.stoi[ch] for ch in toks]


def decode(ids: list[int], vocab, level: str) -> str:
    """The text of token ids: characters joined, or words joined by spaces with <eol> as a newline."""
    if level == "char":
        return "".join(vocab.itos[i] for i in ids)
    out: list[str] = []
    for i in ids:
        out.append(_word_piece(vocab.itos[i], out[-1] if out else "\n"))
    return "".join(out)


def _word_piece(word: str, before: str) -> str:
    """How a word is written after the piece `before`: <eol> as a newline, a space between words."""
    return "\n" if word == EOL else (word if before.endswith("\n") else " " + word)


# -- the model ----------------------------------------------------------------------------------------------
class LanguageModel(Parameters):
    """ids (B, T) and the layers' states -> logits (T, B, V) of the next token, and the final states.

    E ~ N(0, 1) as torch.nn.Embedding; each cell initialises itself (Uniform(+-1/sqrt(H))); W_out, b_out
    ~ Uniform(-1/sqrt(H), 1/sqrt(H)) as torch.nn.Linear. Parameters are plain leaf tensors named after
    the symbols, with the layer as a suffix: E, W_l0, U_l0, b_l0, ..., W_out, b_out.
    """

    def __init__(self, vocab_size: int, hidden_size: int, *, layers: int = 1, cell: str = "lstm", phi: str = "tanh",
                 embed_dim: int = 64, backward: str = "manual", engine: str | None = None, seed: int | None = None,
                 dtype=torch.float32, device=None):
        if vocab_size < 1 or hidden_size < 1 or layers < 1 or embed_dim < 1:
            raise ValueError("need vocab_size, hidden_size, layers and embed_dim >= 1")
        g = torch.Generator(device=device or "cpu")
        g.manual_seed(seed) if seed is not None else g.seed()
        self.vocab_size, self.hidden_size, self.backward = vocab_size, hidden_size, backward
        self.engine = engine  # who runs backward="manual"'s time loop (rnnlab.engine); None: RNNLAB_ENGINE or auto
        self.E = torch.randn(vocab_size, embed_dim, generator=g, dtype=dtype, device=device).requires_grad_()
        self.cells: list[Cell] = [make_cell(cell, embed_dim if layer == 0 else hidden_size, hidden_size, phi=phi,
                                            generator=g, dtype=dtype, device=device) for layer in range(layers)]
        k = 1.0 / math.sqrt(hidden_size)
        self.W_out = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device).uniform_(-k, k, generator=g)
        self.b_out = torch.empty(vocab_size, dtype=dtype, device=device).uniform_(-k, k, generator=g)
        self.W_out.requires_grad_()
        self.b_out.requires_grad_()

    def named_parameters(self) -> dict[str, torch.Tensor]:
        params = {"E": self.E}
        for layer, cell in enumerate(self.cells):
            params.update({f"{n}_l{layer}": p for n, p in zip(cell.param_names, cell.parameters()) if p is not None})
        params["W_out"], params["b_out"] = self.W_out, self.b_out
        return params

    def __call__(self, ids: torch.Tensor, states: list | None = None, dropout: tuple[float, torch.Generator] | None
                 = None, backward: str | None = None, weight_drop: tuple[float, torch.Generator] | None = None,
                 ) -> tuple[torch.Tensor, list]:
        """logits (T, B, V) for ids (B, T), from the layers' initial `states` (None: zeros); and the final
        states, one tuple per layer, bottom first. dropout = (p, generator) and weight_drop = (p, generator)
        (DropConnect on each layer's W: `recurrent.drop_weights`) while training only."""
        assert ids.dim() == 2, f"ids must be (B, T), got shape {tuple(ids.shape)}"
        x = embedding(ids.t(), self.E, backward or self.backward, self.engine)  # x_t = E[id_t], time-major (T, B, D)
        out, finals = unroll_layers(self.cells, x, states, None, backward or self.backward, dropout_between=dropout,
                                    batch_first=False, engine=self.engine, weight_drop=weight_drop)  # top s_t
        if dropout is not None:
            out = _dropout(out, *dropout)  # the top layer's outputs too, as torch-rnn does
        T, B, H = out.shape
        logits = torch.addmm(self.b_out, out.reshape(T * B, H), self.W_out.t())  # W_out s_t + b_out   (T*B, V)
        return logits.view(T, B, -1), finals


def make_model(config: Config, vocab_size: int) -> LanguageModel:
    return LanguageModel(vocab_size, config.hidden, layers=config.layers, cell=config.cell, phi=config.phi,
                         embed_dim=config.embed_dim, backward=config.backward, engine=config.engine,
                         seed=config.seed, device=config.device)


def detach(states: list) -> list:
    """The states as constants: the next chunk starts from their values, with no gradient into this one."""
    return [tuple(s.detach() for s in state) for state in states]


# -- streams: char-rnn batching -------------------------------------------------------------------------------
def streams(ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n, L + 1): n consecutive streams, stream b being tokens b*L .. b*L + L of `ids` (its last token
    only a target), L = (N - 1) // n. The final N - 1 - n*L targets are left out."""
    L = (len(ids) - 1) // n
    assert L >= 1, f"{len(ids)} tokens cannot make {n} streams"
    return torch.stack([ids[b * L : b * L + L + 1] for b in range(n)])


def epoch_offset(config: Config, epoch: int) -> int:
    """Where epoch `epoch` starts cutting its streams: 0, or with --random-offset an offset in [0, seq_len)
    drawn from (seed, epoch) only, so a resumed run cuts the same streams."""
    if not config.random_offset:
        return 0
    return int(torch.randint(0, config.seq_len, (1,), generator=epoch_generator(config.seed, epoch)))


def chunks_per_epoch(n_tokens: int, config: Config, epoch: int) -> int:
    """The whole chunks epoch `epoch` reads from a text of n_tokens (as `epoch_streams` cuts it): with
    --random-offset it can be one fewer in an epoch whose offset shortens the streams."""
    return ((n_tokens - 1 - epoch_offset(config, epoch)) // config.batch_size) // config.seq_len


def epoch_streams(ids: torch.Tensor, config: Config, epoch: int) -> torch.Tensor:
    """The (batch_size, L + 1) streams epoch `epoch` reads: `streams` of the text from `epoch_offset` on."""
    return streams(ids[epoch_offset(config, epoch):], config.batch_size)


def chunk(s: torch.Tensor, k: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk k of every stream: inputs (n, <=T) and their next tokens as targets (the last chunk may be short)."""
    end = min((k + 1) * T, s.shape[1] - 1)  # the stream's last token is a target only
    return s[:, k * T : end], s[:, k * T + 1 : end + 1]


@torch.no_grad()
def stream_loss(model: LanguageModel, ids: torch.Tensor, n: int, seq_len: int) -> dict:
    """Cross-entropy of every next token of `ids` read as n carried streams in chunks of seq_len (no dropout):
    {"tokens", "loss" (nats per token), "bits_per_token", "perplexity", "accuracy"}. With n = 1 every token
    but the first is predicted, with the whole text before it as context (truncated at nothing)."""
    s = streams(ids.to(model.W_out.device), n)
    total, correct, count, states = 0.0, 0, 0, None
    for k in range(math.ceil((s.shape[1] - 1) / seq_len)):
        x, y = chunk(s, k, seq_len)
        logits, states = model(x, states)  # no graph is built here, so the manual path only runs forward
        y = y.t()  # (T, B), time-major like the logits
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    loss = total / count
    return {"tokens": count, "loss": loss, "bits_per_token": loss / LN2, "perplexity": math.exp(loss),
            "accuracy": correct / count}


# -- training ---------------------------------------------------------------------------------------------------
def _check_length(ids: torch.Tensor, config: Config, what: str, path) -> None:
    need = config.batch_size * (config.seq_len + 1) + (config.seq_len - 1 if config.random_offset else 0)
    if len(ids) < need:
        offset = f" + (--seq-len - 1 = {config.seq_len - 1}) for --random-offset" if config.random_offset else ""
        raise UserError(f"{what} has {len(ids)} tokens, shorter than one chunk of every stream: --batch-size "
                        f"{config.batch_size} x (--seq-len {config.seq_len} + 1){offset} = {need}; give a longer "
                        "text or lower --batch-size / --seq-len", path=path)


@dataclass
class LMTask:
    """A text: a step is chunk k of every stream, starting from the states the previous chunk left."""

    train_ids: torch.Tensor
    val_ids: torch.Tensor
    test_ids: torch.Tensor | None
    vocab: object  # Chars or a word Vocab
    train_streams: torch.Tensor | None = field(default=None, init=False)  # (B, L + 1), this epoch's (epoch_streams)
    epoch_start: float = field(default=0.0, init=False)  # for tokens/s
    epoch_tokens: int = field(default=0, init=False)

    def start_epoch(self, run, epoch: int, start: int) -> int:
        """Chunks per epoch; states start at zero at the epoch's first chunk."""
        self.train_streams = epoch_streams(self.train_ids, run.config, epoch).to(run.config.device)
        if start == 0:
            run.progress["carry"] = None
        self.epoch_start, self.epoch_tokens = time.perf_counter(), 0
        return (self.train_streams.shape[1] - 1) // run.config.seq_len  # whole chunks only

    def step(self, run, epoch: int, step: int):
        """forward from the carried states -> cross-entropy on the next tokens -> backward (truncated BPTT)."""
        c, team = run.config, run.team
        mine = team.streams(c.batch_size).to(c.device)  # the streams this process reads: all of them, alone
        x, y = (part[mine] for part in chunk(self.train_streams, step, c.seq_len))  # (B, T) each
        states = run.progress["carry"]
        if states is not None:
            states = [tuple(s.to(c.device)[mine] for s in state) for state in states]
        drop, weight_drop = masks(c, epoch, step, team.rank)
        logits, finals = run.model(x, states, dropout=drop, weight_drop=weight_drop)  # forward   (T, B, V)
        logits, y = logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1)
        loss = F.cross_entropy(logits, y)  # mean over the chunk's T*B next tokens
        loss.backward()  # backward: the hand BPTT (or autograd) inside the chunk only
        loss_sum, correct, seen = team.sum_step(run.model.parameters(), loss, logits, y, len(y))  # over processes
        self.epoch_tokens += seen
        carry = [tuple(team.gather_streams(s, c.batch_size) for s in state) for state in detach(finals)]
        return loss_sum, correct, seen, {"carry": carry}  # the carry is committed with the step

    def postfix(self, run) -> dict:
        p = run.progress
        rate = self.epoch_tokens / max(time.perf_counter() - self.epoch_start, 1e-9)
        return {"loss": f"{p['loss_sum'] / p['seen']:.4f}", "tok/s": f"{rate:,.0f}"}

    def validate(self, run, epoch: int) -> dict:
        c, p = run.config, run.progress
        val = evaluate_ids(run.model, self.val_ids, c.batch_size, c.seq_len)
        train_loss = p["loss_sum"] / p["seen"] if p["seen"] else float("nan")
        return {"epoch": epoch + 1, "step": run.optimizer.step_count, "train_loss": train_loss,
                "train_bits": train_loss / LN2, "train_acc": p["correct"] / p["seen"] if p["seen"] else float("nan"),
                "val_loss": val["loss"], "val_bits": val["bits_per_token"], "val_acc": val["accuracy"],
                "lr": run.optimizer.lr, "tokens_per_s": self.epoch_tokens / max(time.perf_counter()
                                                                                  - self.epoch_start, 1e-9)}

    @staticmethod
    def describe(row: dict) -> str:
        return (f"epoch {row['epoch']:3d}  step {row['step']:6d}  train {row['train_loss']:.4f} nats "
                f"({row['train_bits']:.3f} bits)  val {row['val_loss']:.4f} nats ({row['val_bits']:.3f} bits)  "
                f"{row['tokens_per_s']:,.0f} tok/s  ({row['seconds']:.1f}s)")

    def write_samples(self, run) -> Path:
        """samples.json: the start of the held-out text, which `rnnlab report` colours by surprisal."""
        path = run.out / "samples.json"
        path.write_text(json.dumps([{"text": _held_out_snippet(self, run.config), "label": None}], indent=1,
                                   ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def finish(self, run, plots: bool) -> tuple[dict | None, list[Path]]:
        """Reload the best weights, test (one carried stream, as `evaluate`), write history, curves, samples."""
        reload_best(run)
        test = None
        if self.test_ids is not None:
            test = {"task": "lm", "level": run.config.level,
                    **evaluate_ids(run.model, self.test_ids, 1, run.config.seq_len)}
            run.log(f"test loss {test['loss']:.4f} nats/token ({test['bits_per_token']:.3f} bits), perplexity "
                    f"{test['perplexity']:.2f}  (best epoch by validation loss)")
            (run.out / "metrics.json").write_text(json.dumps(test, indent=2) + "\n")
        files = [write_history(run.out, run.progress["history"]), self.write_samples(run)]
        files += [run.out / "metrics.json"] if test else []
        if plots:
            from rnnlab import plots as _plots

            files += _plots.training_curves(run.progress["history"], run.out)
        return test, files + [run.out / "config.json", run.out / checkpoint.BEST, run.out / checkpoint.LAST]


def _held_out_snippet(task: LMTask, config: Config, n: int = 300) -> str:
    """The first n tokens of the validation text, for `rnnlab report`."""
    return decode(task.val_ids[:n].tolist(), task.vocab, config.level)


def evaluate_ids(model: LanguageModel, ids: torch.Tensor, n: int, seq_len: int) -> dict:
    """`stream_loss` with at most n streams, fewer when the text is short (each needs one target)."""
    return stream_loss(model, ids, max(1, min(n, len(ids) - 1)), seq_len)


@dataclass
class LMResult:
    out_dir: Path
    history: list[dict]
    test: dict | None
    model: LanguageModel
    files: list[Path] = field(default_factory=list)
    stopped_early: bool = False


def load_splits(config: Config, data, val_data=None, test_data=None):
    """(vocab, train ids, val ids, test ids or None) from the text files."""
    text = read_text(data)
    val_text = read_text(val_data) if val_data else None
    test_text = read_text(test_data) if test_data else None
    toks = tokens(text, config.level, config.lowercase)
    if val_text is None:  # the last --val-frac of the text validates (0.1 by default, nanoGPT's split)
        cut = int(len(toks) * (1 - config.val_frac))
        train_toks, val_toks = toks[:cut], toks[cut:]
    else:
        train_toks, val_toks = toks, tokens(val_text, config.level, config.lowercase)
    if config.level == "char":
        vocab = Chars(sorted(set("".join(t for t in (text, val_text, test_text) if t))))
    else:
        vocab = Vocab.build([train_toks], config.min_freq, config.max_vocab)

    def ids(toks: list[str]) -> torch.Tensor:  # every character is in a char vocabulary made from these texts
        return torch.tensor(vocab.encode(toks) if config.level == "word" else [vocab.stoi[ch] for ch in toks])

    train_ids = ids(train_toks)
    _check_length(train_ids, config, "the training text", data)
    val_ids = ids(val_toks)
    if len(val_ids) < 2:
        raise UserError("the validation text has fewer than 2 tokens; pass a longer --val, a larger --val-frac or "
                        "a longer --data",
                        path=val_data or data)
    test_ids = None
    if test_text is not None:
        test_ids = torch.tensor(encode(test_text, vocab, config.level, config.lowercase, path=test_data))
        if len(test_ids) < 2:
            raise UserError("the test text has fewer than 2 tokens; pass a longer --test", path=test_data)
    return vocab, train_ids, val_ids, test_ids


def train_lm(config: Config, data, out_dir, *, val_data=None, test_data=None, resume: bool = False,
             log: Callable = print, progress: bool | None = None, plots: bool = True,
             team: distributed.Alone | None = None) -> LMResult:
    """Train a language model on the text file `data` and write a run folder (see the module docstring)."""
    config.validate()
    if config.embed_dim is None:
        raise UserError("--embed-dim 0: the language model reads its tokens through an embedding; give its size, "
                        "e.g. --embed-dim 64")
    team = team or distributed.Alone()
    vocab, train_ids, val_ids, test_ids = load_splits(config, data, val_data, test_data)
    task = LMTask(train_ids, val_ids, test_ids, vocab)
    model = make_model(config, len(vocab))
    per_epoch = [chunks_per_epoch(len(train_ids), config, e) for e in range(config.epochs)]  # as `streams` cuts
    chunks = f"{min(per_epoch)}" if min(per_epoch) == max(per_epoch) else f"{min(per_epoch)}-{max(per_epoch)}"
    run = open_run(config, out_dir, model, {"vocab": vocab, "label_names": []}, resume=resume,
                   fresh={"carry": None}, team=team, log=log, progress=progress,
                   total_steps=planned_steps(config, per_epoch))
    run.log(f"{config.level} level  train {len(train_ids):,} tokens  val {len(val_ids):,}  test "
            f"{len(test_ids) if test_ids is not None else 0:,}  vocab {len(vocab)}  {config.layers} x {config.cell} "
            f"{config.hidden}  parameters {model.num_parameters():,}  {chunks} steps per epoch  -> {run.out}")
    stopped = fit(run, task)
    if not team.is_main:  # rank 0 tests and writes the run's record
        return LMResult(run.out, run.progress["history"], None, model, [], stopped)
    test, files = task.finish(run, plots)
    for f in files:
        run.log(f"wrote {f}")
    return LMResult(run.out, run.progress["history"], test, model, files, stopped)


# -- using a trained model ----------------------------------------------------------------------------------
def load(path) -> tuple[LanguageModel, Config, object]:
    """(model, config, vocab) of a language model's checkpoint (a run folder or a .pt file)."""
    path = checkpoint.resolve(path)  # the file (and the notice, when a run folder has only last.pt) once
    ckpt = checkpoint.read(path)
    with checkpoint.contents(path):
        config = Config.from_dict(ckpt["config"])
        if config.task != "lm":
            raise UserError("this checkpoint is a classifier, not a language model; pass a run of "
                            "`rnnlab train --task lm`", path=path)
        vocab = vocab_from_list(config.level, ckpt["vocab"])
        config.device = "cpu"
        model = make_model(config, len(vocab))
        model.load_state_dict(ckpt["weights"])
    return model, config, vocab


def evaluate(path, data) -> dict:
    """The whole file as one stream with the state carried: {task, level, tokens, loss, bits_per_token,
    perplexity, accuracy}."""
    model, config, vocab = load(path)
    text = read_text(data)
    ids = torch.tensor(encode(text, vocab, config.level, config.lowercase, path=data))
    if len(ids) < 2:
        raise UserError("the text has fewer than 2 tokens: nothing to predict; pass a longer text", path=data)
    return {"task": "lm", "level": config.level, **stream_loss(model, ids, 1, config.seq_len)}


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """Draw the next token id from softmax(logits / temperature), among the top_k scores if given;
    temperature 0 takes the argmax."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)  # only the k best stay possible
    probs = torch.softmax(logits.double(), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def sample(model: LanguageModel, vocab, level: str, *, length: int = 500, temperature: float = 1.0,
           top_k: int | None = None, prime: str = "", seed: int = 0, lowercase: bool = True,
           on_text: Callable[[str], None] | None = None) -> str:
    """The prime, then `length` tokens drawn one at a time, each fed back as the next input.

    on_text(piece), if given, receives the prime and then each new token's text as soon as it is drawn.
    Without a prime the model starts from a newline (<eol> at word level) that is not printed."""
    if temperature < 0 or (top_k is not None and top_k < 1) or length < 0:
        raise UserError("need --temperature >= 0, --top-k >= 1 and --length >= 0")
    g = torch.Generator().manual_seed(seed)
    if prime:
        ids = encode(prime, vocab, level, lowercase, where="--prime")
        if level == "word" and not ids:
            raise UserError("--prime has no words; give some text or leave --prime out")
    else:
        start = "\n" if level == "char" else EOL
        ids = [vocab.stoi.get(start, 0)]
    pieces = []

    def emit(piece: str) -> None:
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)

    if prime:
        emit(prime)  # as given (at word level the model reads its unknown words as <unk>)
    logits, states = model(torch.tensor([ids]), None, backward="autograd")  # the prime sets the states
    for _ in range(length):
        token = next_token(logits[-1, 0], temperature, top_k, g)
        piece = vocab.itos[token]
        emit(piece if level == "char" else _word_piece(piece, pieces[-1] if pieces else "\n"))
        logits, states = model(torch.tensor([[token]]), states, backward="autograd")
    return "".join(pieces)


@torch.no_grad()
def surprisal(model: LanguageModel, vocab, level: str, text: str, lowercase: bool = True, top: int = 3) -> list[dict]:
    """For each token after the first: the model's probability of it, its surprisal -log2 p in bits, and
    the model's top predictions there."""
    ids = encode(text, vocab, level, lowercase)
    if len(ids) < 2:
        raise UserError("give at least two tokens: the first has nothing before it to be predicted from")
    logits, _ = model(torch.tensor([ids[:-1]]), None, backward="autograd")
    probs = torch.softmax(logits[:, 0].double(), dim=-1)  # (T - 1, V)
    rows = []
    for t, token in enumerate(ids[1:]):
        p = float(probs[t, token])
        best = torch.topk(probs[t], min(top, probs.shape[1]))
        rows.append({"token": vocab.itos[token], "p": p, "bits": -math.log2(p) if p > 0 else math.inf,
                     "top": [[vocab.itos[i], float(q)] for q, i in zip(best.values.tolist(), best.indices.tolist())]})
    return rows


def format_surprisal(rows: list[dict], first: str) -> str:
    """One line per token: the token, p(token), surprisal in bits, the top predictions there."""
    lines = [f"{'token':>8} {'p':>7} {'bits':>6}  top 3 predictions", f"{first!r:>8} {'':>7} {'':>6}  (first: not "
             "predicted)"]
    for r in rows:
        top = "  ".join(f"{tok!r} {q:.3f}" for tok, q in r["top"])
        lines.append(f"{r['token']!r:>8} {r['p']:7.4f} {r['bits']:6.2f}  {top}")
    mean = sum(r["bits"] for r in rows) / len(rows)
    lines.append(f"mean surprisal {mean:.3f} bits per token over {len(rows)} tokens")
    return "\n".join(lines)


def plot_surprisal(rows: list[dict], first: str, level: str, path, *, max_bits: float = 8.0, width: int = 80):
    """The text with each token on a background coloured by its surprisal (white 0 bits, dark red >= max_bits);
    the first token, which nothing predicts, in grey. Lines wrap at `width` characters."""
    from matplotlib import colormaps

    from rnnlab import plots

    sep = "" if level == "char" else " "
    cells, line, col = [], 0, 0  # (line, column, text, bits or None)
    for token, bits in [(first, None)] + [(r["token"], r["bits"]) for r in rows]:
        shown = "\\n" if token in ("\n", EOL) else token
        if col + len(shown) > width:
            line, col = line + 1, 0
        cells.append((line, col, shown, bits))
        col += len(shown) + len(sep)
        if token in ("\n", EOL):
            line, col = line + 1, 0
    n_lines = line + 1
    fig, ax = plots.figure_grid(1, 1, (max(6.0, 0.11 * width), 0.6 + 0.28 * n_lines))
    cmap = colormaps["Reds"]
    for line, col, shown, bits in cells:
        face = "#dddddd" if bits is None else cmap(min(bits, max_bits) / max_bits)
        ax.text(col, -line, shown, family="monospace", fontsize=9, va="center", ha="left",
                bbox={"boxstyle": "square,pad=0.1", "facecolor": face, "edgecolor": "none"})
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-n_lines, 1)
    ax.axis("off")
    ax.set_title(f"surprisal -log2 p(token) in bits (white 0, dark red {max_bits:g} or more)")
    return plots.save(fig, Path(path))


def explain_texts(path, texts: list[str]) -> list[dict]:
    """For each text: {"text", "first", "tokens": surprisal rows} with the model of a run folder or model.pt."""
    model, config, vocab = load(path)
    out = []
    for text in texts:
        rows = surprisal(model, vocab, config.level, text, config.lowercase)
        first = tokens(text, config.level, config.lowercase)[0]
        out.append({"text": text, "level": config.level, "first": first, "tokens": rows})
    return out

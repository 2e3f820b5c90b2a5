"""Text to ids: the tokenizer, the vocabulary, the data-set loaders, the split and padded batches.

The pipeline reads top to bottom in the order a sentence travels through it:

    file --load_dataset--> Dataset(texts, labels) --split_dataset--> train / val / test
    text --tokenize--> ["it's", "great", "!"] --Vocab.encode--> [17, 342, 9] --batches--> padded tensors

Formats `load_dataset` reads (the real files are described in ../shared/data/README.md):
    tsv / csv   one example per row, a text column and a label column, optional header
    uci         UCI "Sentiment Labelled Sentences": `sentence<TAB>0|1`, no header, one or more files
    rt          Pang & Lee rt-polarity: `*.pos` and `*.neg`, one sentence per line, cp1252 bytes

Every problem with the input is a `UserError` naming the file, the line and the fix, so the CLI can
print one line and exit 2 instead of showing a traceback.

Deliberately left out: subword tokenisation and pretrained embeddings, multi-label data, files larger
than memory (everything is read at once; the sets here are a few MB), CSV dialect sniffing, and
downloading data sets.
"""

from __future__ import annotations

import codecs
import csv
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from rnnlab import choices
from rnnlab.errors import UserError

# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------

# A word is a run of letters, digits and underscores; inner apostrophes (straight or curly) stay in
# the word, so "don't", "it's" and "rock'n'roll" are one token each, as the rt-polarity files already
# write them. Every other non-space character is a token of its own: "!", ",", "$", "-", an emoji.
_TOKEN_RE = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split `text` into words and single punctuation marks.

    "Don't buy it -- $5.99!" -> ["don't", "buy", "it", "-", "-", "$", "5", ".", "99", "!"]

    Never raises. Tokens are never empty and never contain whitespace, and a text with at least one
    non-space character gives at least one token.
    """
    if lowercase:
        text = text.lower()
    return _TOKEN_RE.findall(text)


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------


class Vocab:
    """A mapping between tokens and ids: `itos[id] -> token`, `stoi[token] -> id`.

    Id 0 is `<pad>` (what `batches` fills short sequences with) and id 1 is `<unk>` (every token not in
    the vocabulary). The rest are ordered by frequency, most frequent first, ties broken
    alphabetically, so the same data always gives the same ids.
    """

    PAD = "<pad>"
    UNK = "<unk>"
    PAD_ID = 0
    UNK_ID = 1

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if not all(isinstance(token, str) for token in itos):
            raise UserError("a vocabulary is a list of strings; the checkpoint's vocabulary is corrupt")
        if itos[:2] != [self.PAD, self.UNK]:
            raise UserError(
                f"a vocabulary starts with {self.PAD!r}, {self.UNK!r}, found {itos[:2]}; "
                "the checkpoint's vocabulary is corrupt or was not made by rnnlab"
            )
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {}
        for i, token in enumerate(itos):
            if token in self.stoi:
                raise UserError(f"token {token!r} appears twice in the vocabulary (ids {self.stoi[token]} and {i})")
            self.stoi[token] = i

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Count tokens; keep those seen at least `min_freq` times, at most `max_size` ids in all.

        `max_size` counts the two specials, so `max_size=1000` keeps the 998 most frequent tokens.
        """
        if min_freq < 1:
            raise UserError(f"min_freq must be at least 1, got {min_freq}")
        if max_size is not None and max_size < 2:
            raise UserError(f"max_size must be at least 2 (it counts {cls.PAD} and {cls.UNK}), got {max_size}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        for special in (cls.PAD, cls.UNK):  # the specials have fixed ids; a literal one is not a word
            counts.pop(special, None)
        words = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            words = words[: max_size - 2]
        return cls([cls.PAD, cls.UNK, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token ids; a token not in the vocabulary becomes `UNK_ID`."""
        return [self.stoi.get(token, self.UNK_ID) for token in tokens]

    def count_unknown(self, tokens: Iterable[str]) -> int:
        """How many of `tokens` `encode` would map to `<unk>`."""
        return sum(token not in self.stoi for token in tokens)

    def to_list(self) -> list[str]:
        """The vocabulary as plain data for a checkpoint: `Vocab.from_list(v.to_list())` equals `v`."""
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from `to_list()`; a list not starting with the specials is a UserError."""
        return cls(itos)


# ---------------------------------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Labelled sentences, as loaded: no tokenising, no ids yet."""

    texts: list[str]  # one sentence per example, stripped of surrounding whitespace, never empty
    labels: list[int]  # class ids, each an index into label_names
    label_names: list[str]  # the name of each class, e.g. ["neg", "pos"]
    source: str  # where the examples came from (the paths as given), for messages and run logs

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> list[int]:
        """Examples per class, in label_names order (a class with no examples counts 0)."""
        counts = [0] * len(self.label_names)
        for y in self.labels:
            counts[y] += 1
        return counts

    def subset(self, indices: Sequence[int], source: str) -> Dataset:
        """The examples at `indices`, in that order, with the same classes."""
        return Dataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            source=source,
        )


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

FORMATS = choices.FORMATS
UCI_LABEL_NAMES = ["negative", "positive"]  # the UCI files write 0 and 1
RT_LABEL_NAMES = ["neg", "pos"]  # 0: lines of the .neg file, 1: lines of the .pos file


class _Example(NamedTuple):
    """One example before its label is turned into an id; path and line are for error messages."""

    path: Path
    line: int
    text: str
    label: str


def load_dataset(
    paths: str | Path | Sequence[str | Path],
    format: str | None = None,
    *,
    text_column: int | str | None = None,
    label_column: int | str | None = None,
    label_names: Sequence[str] | None = None,
    encoding: str | None = None,
) -> Dataset:
    """Read labelled sentences from one file, several files or a folder.

    format: "tsv", "csv", "uci" or "rt"; None infers it from the names: `.pos`/`.neg` files or a folder
        holding them -> rt, `*_labelled.txt` files or a folder of them -> uci, `.csv` -> csv,
        `.tsv`/`.txt` -> tsv.
    text_column, label_column (tsv/csv only): an int index (negative counts from the end) or a header
        name; default the first and the last column. A name means the first row is a header;
        otherwise the first row is taken as a header when its label cell is not the label of any
        other row of the file, the other rows hold at least 2 classes, and the cell could not itself
        be a label (an integer among integer labels, or one of `label_names`).
    label_names: the classes of a trained model. Each label must then be one of these names or an
        integer index into them, and classes without examples are allowed. Without it, the classes
        are the sorted distinct labels (integers in numeric order, so labels 0..K-1 keep their
        value as id), and there must be at least 2. uci and rt have fixed classes (0 negative,
        1 positive; with label_names, their labels are indexes into them), so one class may be absent.
    encoding: of the files; default UTF-8 (a leading byte-order mark is dropped) and, for rt, cp1252
        with latin-1 for any line that cp1252 cannot decode.

    Blank lines are skipped, text and label cells are stripped of surrounding whitespace. TSV rows are
    split on every TAB with no quoting (csv.QUOTE_NONE): the UCI sentences hold unbalanced double
    quotes. CSV follows the csv module's default dialect (quotes may wrap commas and newlines).
    """
    path_list = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    source = ", ".join(str(p) for p in path_list)
    if not path_list:
        raise UserError("no data files given; pass at least one file or folder")
    for path in path_list:
        if not path.exists():
            raise UserError("file not found; check the path", path=path)
    if format is None:
        format = _infer_format(path_list)
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; pass --format tsv, csv, uci or rt")
    if format in ("uci", "rt") and (text_column is not None or label_column is not None):
        raise UserError(f"text and label columns are chosen for tsv and csv files only, not for {format}")
    if label_names is not None:
        label_names = _checked_label_names(label_names)

    if format == "rt":
        examples = _read_rt(path_list, encoding or "cp1252")
        label_names = label_names or RT_LABEL_NAMES
    elif format == "uci":
        examples = [ex for path in _uci_files(path_list) for ex in _read_uci(path, encoding or "utf-8")]
        label_names = label_names or UCI_LABEL_NAMES
    else:
        delimiter = "\t" if format == "tsv" else ","
        examples = []
        for path in path_list:
            rows = _read_rows(path, delimiter, encoding or "utf-8")
            examples += _table_examples(path, rows, delimiter, text_column, label_column, label_names)

    if label_names is None:
        label_names = _names_from_labels([ex.label for ex in examples], source)
    labels = []
    for ex in examples:
        y = _label_id(ex.label, label_names)
        if y is None:
            raise UserError(
                f"label {ex.label!r} is not one of the known labels {', '.join(label_names)} "
                f"(or an index 0..{len(label_names) - 1}); fix the label or train a model on these labels",
                path=ex.path,
                line=ex.line,
            )
        labels.append(y)
    return Dataset([ex.text for ex in examples], labels, list(label_names), source)


def _infer_format(paths: list[Path]) -> str:
    """The one format all `paths` look like, from their names."""
    formats = {_infer_one_format(path) for path in paths}
    if len(formats) > 1:
        raise UserError(f"the files look like different formats ({', '.join(sorted(formats))}); pass --format")
    return formats.pop()


def _infer_one_format(path: Path) -> str:
    if path.is_dir():
        names = [child.name for child in path.iterdir()]
        if any(name.endswith((".pos", ".neg")) for name in names):
            return "rt"
        if any(name.endswith("_labelled.txt") for name in names):
            return "uci"
        raise UserError(
            "cannot tell the format of this folder (no rt-polarity .pos/.neg files, no UCI "
            "*_labelled.txt files); pass the data files themselves, or --format",
            path=path,
        )
    if path.suffix in (".pos", ".neg"):
        return "rt"
    if path.name.endswith("_labelled.txt"):
        return "uci"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() in (".tsv", ".txt"):
        return "tsv"
    raise UserError("cannot tell the format from the file name; pass --format tsv, csv, uci or rt", path=path)


def _checked_label_names(label_names: Sequence[str]) -> list[str]:
    names = list(label_names)
    ok = all(isinstance(n, str) and n.strip() for n in names) and len(set(names)) == len(names) >= 2
    if not ok:
        raise UserError(f"label names must be at least 2 distinct non-empty strings, got {names!r}")
    return names


# --- reading bytes and lines -------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise UserError("is a folder; pass the data files themselves", path=path) from None
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror}", path=path) from None


def _decode(path: Path, data: bytes, encoding: str) -> str:
    """The whole file as text; a byte the encoding rejects is a UserError naming its line and column."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1  # in bytes, 1-based
        if codecs.lookup(encoding).name == "utf-8":
            fix = "re-save the file as UTF-8 or pass --encoding cp1252"
        else:
            fix = "pass the file's real encoding with --encoding (latin-1 accepts any byte)"
        raise UserError(
            f"not valid {encoding} (byte 0x{data[e.start]:02x} at column {column}); {fix}",
            path=path,
            line=line,
        ) from None
    except (LookupError, UnicodeError) as e:
        raise UserError(f"cannot decode with encoding {encoding!r} ({e}); pass another --encoding", path=path) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first sentence


def _lines(text: str) -> list[str]:
    """Lines split on "\\n" only; str.splitlines would also split on \\x85, \\u2028 and friends."""
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline ends the last line, it does not start a new one
        lines.pop()
    return lines


def _read_rows(path: Path, delimiter: str, encoding: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a TSV or CSV file as (line number, cells); at least one row."""
    lines = _lines(_decode(path, _read_bytes(path), encoding))
    rows = []
    if delimiter == "\t":
        for number, line in enumerate(lines, start=1):
            cells = line.removesuffix("\r").split("\t")
            if any(cell.strip() for cell in cells):
                rows.append((number, cells))
    else:
        reader = csv.reader((line + "\n" for line in lines), strict=True)
        start = 1  # a quoted cell may span lines: a row is numbered by its first line
        try:
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    rows.append((start, cells))
                start = reader.line_num + 1
        except csv.Error as e:
            raise UserError(
                f"malformed CSV row ({e}); quote a cell that holds commas, quotes or newlines, "
                'and double a quote inside it ("")',
                path=path,
                line=start,  # where the bad row starts: for an unclosed quote the end is the end of file
            ) from None
    if not rows:
        raise UserError("no data rows: the file is empty", path=path)
    return rows


# --- tsv and csv -------------------------------------------------------------------------------------


def _table_examples(
    path: Path,
    rows: list[tuple[int, list[str]]],
    delimiter: str,
    text_column: int | str | None,
    label_column: int | str | None,
    label_names: list[str] | None,
) -> list[_Example]:
    """Pick the text and label column of each row, after checking every row has the same columns."""
    first_line, first_cells = rows[0]
    n_columns = len(first_cells)
    separator = "a TAB" if delimiter == "\t" else "a comma"
    if n_columns < 2:
        raise UserError(
            f"found 1 column, need a text and a label; separate them with {separator}",
            path=path,
            line=first_line,
        )
    for line, cells in rows:
        if len(cells) != n_columns:
            raise UserError(
                f"expected {n_columns} columns like line {first_line}, found {len(cells)}; "
                f"every row needs a text and a label separated by {separator}",
                path=path,
                line=line,
            )

    if isinstance(text_column, str) or isinstance(label_column, str):
        header = [cell.strip() for cell in first_cells]
    else:
        header = None
    text_index = _column_index(text_column, 0, header, n_columns, path, first_line)
    label_index = _column_index(label_column, n_columns - 1, header, n_columns, path, first_line)
    if text_index == label_index:
        raise UserError(f"the text and the label are the same column ({text_index}); choose two columns", path=path)
    if header is None and _looks_like_header(rows, label_index, label_names):
        header = first_cells
    lone_label = first_cells[label_index].strip()
    if len(rows) == 1 and header is None and (label_names is None or _label_id(lone_label, label_names) is None):
        raise UserError(f"one row only, which reads as a header (label cell {lone_label!r}): the file has no data "
                        "rows; add labelled rows below it", path=path, line=first_line)
    data_rows = rows[1:] if header is not None else rows
    if not data_rows:
        raise UserError("only a header row, no data rows", path=path, line=first_line)

    examples = []
    for line, cells in data_rows:
        text, label = cells[text_index].strip(), cells[label_index].strip()
        if not label:
            raise UserError(f"missing label in column {label_index + 1}; give every row a label", path=path, line=line)
        if not text:
            raise UserError(
                f"empty text in column {text_index + 1}; remove the row or write its text",
                path=path,
                line=line,
            )
        examples.append(_Example(path, line, text, label))
    return examples


def _column_index(
    column: int | str | None, default: int, header: list[str] | None, n_columns: int, path: Path, line: int
) -> int:
    """A column given as None (the default), an int index or a header name, as an index 0..n_columns-1."""
    if column is None:
        return default
    if isinstance(column, str):
        assert header is not None, "a column given by name means the first row is the header"
        if column not in header:
            raise UserError(f"no column named {column!r}; the header has {header}", path=path, line=line)
        return header.index(column)
    if not -n_columns <= column < n_columns:
        raise UserError(f"column {column} does not exist; the rows have {n_columns} columns", path=path, line=line)
    return column % n_columns


def _looks_like_header(rows: list[tuple[int, list[str]]], label_index: int, label_names: list[str] | None) -> bool:
    """Whether the first row is a header: its label cell is no other row's label and could not be a label."""
    first = rows[0][1][label_index].strip()
    rest = {cells[label_index].strip() for _, cells in rows[1:]}
    if first in rest or len(rest) < 2:  # a header leaving fewer than 2 classes would make no data set
        return False
    if label_names is not None and _label_id(first, label_names) is not None:
        return False
    return not (_is_int(first) and all(_is_int(label) for label in rest))


# --- uci -----------------------------------------------------------------------------------------------


def _uci_files(paths: list[Path]) -> list[Path]:
    """The given files, with a folder replaced by its .txt files (sorted) less the data set's readme.txt."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.txt") if p.name.lower() != "readme.txt")
            if not found:
                raise UserError("no .txt files in this folder; pass the UCI *_labelled.txt files", path=path)
            files += found
        else:
            files.append(path)
    return files


def _read_uci(path: Path, encoding: str) -> list[_Example]:
    """`sentence<TAB>0|1` rows, no header."""
    examples = []
    for line, cells in _read_rows(path, "\t", encoding):
        if len(cells) != 2:
            raise UserError(
                f"expected 2 columns (sentence<TAB>0 or 1), found {len(cells)}; a UCI row holds no other TAB",
                path=path,
                line=line,
            )
        text, label = cells[0].strip(), cells[1].strip()
        if not label:
            raise UserError("missing label; end the row with a TAB and 0 or 1", path=path, line=line)
        if not text:
            raise UserError("empty text; remove the row or write its sentence", path=path, line=line)
        examples.append(_Example(path, line, text, label))
    return examples


# --- rt-polarity -------------------------------------------------------------------------------------


def _read_rt(paths: list[Path], encoding: str) -> list[_Example]:
    """The .neg file's sentences (label "0") followed by the .pos file's (label "1")."""
    negatives, positives = _rt_pair(paths)
    return _read_rt_file(negatives, "0", encoding) + _read_rt_file(positives, "1", encoding)


def _rt_pair(paths: list[Path]) -> tuple[Path, Path]:
    """The one .neg and the one .pos file named by `paths`: their folder, either file, or both."""
    found: dict[str, dict[Path, Path]] = {".neg": {}, ".pos": {}}  # resolved path -> path as given
    for path in paths:
        if path.is_dir():
            candidates = [child for child in path.iterdir() if child.suffix in found]
        elif path.suffix in found:
            sibling = path.with_suffix(".pos" if path.suffix == ".neg" else ".neg")
            candidates = [path] + ([sibling] if sibling.exists() else [])
        else:
            raise UserError("not an rt-polarity file; pass the .pos and .neg files or their folder", path=path)
        for candidate in candidates:
            found[candidate.suffix][candidate.resolve()] = candidate
    for suffix, files in found.items():
        if len(files) != 1:
            listed = ", ".join(str(p) for p in files.values()) or "none"
            raise UserError(
                f"rt-polarity needs exactly one {suffix} file, found {listed}; "
                "pass one .pos and one .neg file or their folder",
                path=", ".join(str(p) for p in paths),
            )
    return next(iter(found[".neg"].values())), next(iter(found[".pos"].values()))


def _read_rt_file(path: Path, label: str, encoding: str) -> list[_Example]:
    """One sentence per line. Lines are split on b"\\n" only: byte 0x85 (an ellipsis in cp1252) occurs
    inside sentences. A line the encoding rejects is decoded as latin-1, which accepts every byte."""
    examples = []
    for number, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        except (LookupError, UnicodeError) as e:
            raise UserError(
                f"cannot decode with encoding {encoding!r} ({e}); pass another --encoding", path=path
            ) from None
        text = text.strip()
        if text:
            examples.append(_Example(path, number, text, label))
    if not examples:
        raise UserError("no sentences: the file is empty", path=path)
    return examples


# --- labels --------------------------------------------------------------------------------------------


def _is_int(s: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", s) is not None


def _names_from_labels(labels: list[str], source: str) -> list[str]:
    """The classes of a data set: its distinct labels, sorted (integers by value)."""
    distinct = set(labels)
    if all(_is_int(label) for label in distinct):
        names = sorted(distinct, key=lambda label: (int(label), label))
    else:
        names = sorted(distinct)
    if len(names) < 2:
        raise UserError(
            f"only {len(names)} class ({', '.join(names)}) in the data; a classifier needs at least 2",
            path=source,
        )
    return names


def _label_id(label: str, label_names: list[str]) -> int | None:
    """The class id of a label cell: its position among the names, else the integer it spells if that
    is a valid index; None when it is neither."""
    if label in label_names:
        return label_names.index(label)
    if _is_int(label) and 0 <= int(label) < len(label_names):
        return int(label)
    return None


# ---------------------------------------------------------------------------------------------------
# Train / validation / test split
# ---------------------------------------------------------------------------------------------------


def split_dataset(
    ds: Dataset, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset, Dataset]:
    """Split into (train, val, test), stratified by class, deterministic in `seed`.

    Each class is shuffled on its own (with random.Random(seed), not the global RNG) and round(n *
    val_frac) of its n examples go to val, round(n * test_frac) to test and the rest to train, so each
    part's share of a class is within half an example of its target. Each part keeps file order.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"val_frac={val_frac} and test_frac={test_frac} must be >= 0 and sum to less than 1")
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c, name in enumerate(ds.label_names):
        indices = [i for i, y in enumerate(ds.labels) if y == c]
        rng.shuffle(indices)
        n_val = int(len(indices) * val_frac + 0.5)  # round half up (Python's round() goes to even)
        n_test = int(len(indices) * test_frac + 0.5)
        if len(indices) - n_val - n_test < 1:
            raise UserError(
                f"class {name!r} has {len(indices)} examples, too few to keep one for training after "
                f"val_frac={val_frac} and test_frac={test_frac}; add examples of it or lower the fractions",
                path=ds.source,
            )
        val += indices[:n_val]
        test += indices[n_val : n_val + n_test]
        train += indices[n_val + n_test :]
    for part, frac, what in ((val, val_frac, "validation"), (test, test_frac, "test")):
        if frac > 0 and not part:
            raise UserError(
                f"{what} split is empty ({frac} of {len(ds)} examples rounds to 0 per class); "
                "raise the fraction or use more data",
                path=ds.source,
            )
    return (
        ds.subset(sorted(train), f"{ds.source} (train)"),
        ds.subset(sorted(val), f"{ds.source} (val)"),
        ds.subset(sorted(test), f"{ds.source} (test)"),
    )


# ---------------------------------------------------------------------------------------------------
# Ids and batches
# ---------------------------------------------------------------------------------------------------

POOL_BATCHES = 50  # bucket=True sorts pools of this many batches by length: similar lengths, still random


def encode_dataset(ds: Dataset, vocab: Vocab, lowercase: bool = True) -> list[list[int]]:
    """Each text tokenised and encoded. (A text that gives no tokens gives [], see `batches`.)"""
    return [vocab.encode(tokenize(text, lowercase)) for text in ds.texts]


def batches(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (ids (B, T_max), lengths (B,), labels (B,)) LongTensors covering every example once.

    Each row of `ids` holds a sequence then `Vocab.PAD_ID` (0) up to the batch's longest. The last
    batch may be smaller. An empty sequence is given a single `<unk>`, so every length is >= 1.

    shuffle: draw a new order from `generator` on each call (None uses torch's global RNG). Seed one
        generator before training and each epoch gets a different, repeatable order.
    bucket: cut batches from pools of POOL_BATCHES * batch_size examples sorted by length, then shuffle
        the batch order (when shuffle is set): less padding, the same examples.
    """
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} sequences but {len(labels)} labels")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    n = len(ids)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if bucket:
        pool_size = POOL_BATCHES * batch_size
        chunks = []
        for start in range(0, n, pool_size):
            pool = sorted(order[start : start + pool_size], key=lambda i: len(ids[i]))
            chunks += [pool[j : j + batch_size] for j in range(0, len(pool), batch_size)]
        if shuffle:
            chunks = [chunks[k] for k in torch.randperm(len(chunks), generator=generator).tolist()]
    else:
        chunks = [order[j : j + batch_size] for j in range(0, n, batch_size)]
    for chunk in chunks:
        yield _pad([ids[i] for i in chunk], [labels[i] for i in chunk])


def _pad(seqs: list[Sequence[int]], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [list(s) or [Vocab.UNK_ID] for s in seqs]
    T = max(len(s) for s in seqs)
    padded = [s + [Vocab.PAD_ID] * (T - len(s)) for s in seqs]
    return (
        torch.tensor(padded, dtype=torch.long),  # (B, T)
        torch.tensor([len(s) for s in seqs], dtype=torch.long),  # (B,)
        torch.tensor(labels, dtype=torch.long),  # (B,)
    )

"""Tests for rnnlab.data: tokenizer, vocabulary, loaders (real shared files and hand-written ones),
errors, split and batches."""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlab.data import (
    Dataset,
    Vocab,
    batches,
    encode_dataset,
    load_dataset,
    split_dataset,
    tokenize,
)
from rnnlab.errors import UserError

# The real data sets live beside the repository, in ../shared/data (see its README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UCI = SHARED_DATA / "uci-sentiment"
RT = SHARED_DATA / "rt-polarity"
UCI_FILES = ["amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"]

# Outside CI a checkout without ../shared/data skips these tests (with the reason); in CI (CI=true) they
# run and fail, so a missing data folder can never pass silently.
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir() and not os.environ.get("CI"), reason=f"the shared data folder {SHARED_DATA} does not exist"
)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def raises_user_error(fn, *fragments: str) -> str:
    """Call fn, expect a UserError whose message contains every fragment; return the message."""
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, "the CLI prints the message as one line"
    return message


@pytest.fixture(scope="module")
def rt() -> Dataset:
    return load_dataset(RT)


# ---------------------------------------------------------------------------------------------------
# tokenize
# ---------------------------------------------------------------------------------------------------


def test_tokenize_words_apostrophes_and_punctuation():
    assert tokenize("Don't buy it -- $5.99! It's rock'n'roll, isn’t it?") == [
        "don't", "buy", "it", "-", "-", "$", "5", ".", "99", "!",
        "it's", "rock'n'roll", ",", "isn’t", "it", "?",
    ]  # fmt: skip
    assert tokenize("'Quoted' Words", lowercase=False) == ["'", "Quoted", "'", "Words"]
    assert tokenize("   \t\n ") == []


@given(st.text())
def test_tokenize_never_raises_and_keeps_every_non_space_character(text):
    for lowercase in (True, False):
        tokens = tokenize(text, lowercase=lowercase)
        assert all(token and not any(ch.isspace() for ch in token) for token in tokens)
        cased = text.lower() if lowercase else text
        assert "".join(tokens) == "".join(cased.split())


# ---------------------------------------------------------------------------------------------------
# Vocab
# ---------------------------------------------------------------------------------------------------


def test_vocab_specials_frequency_order_and_ties():
    v = Vocab.build([["b", "a", "c"], ["a", "b", "d", "e", "e", "e"]])
    assert v.itos == ["<pad>", "<unk>", "e", "a", "b", "c", "d"]
    assert (v.stoi["<pad>"], v.stoi["<unk>"]) == (Vocab.PAD_ID, Vocab.UNK_ID) == (0, 1)
    assert len(v) == 7 and all(v.stoi[t] == i for i, t in enumerate(v.itos))


def test_vocab_min_freq_and_max_size():
    lists = [["a", "a", "a", "b", "b", "c"]]
    assert Vocab.build(lists, min_freq=2).itos == ["<pad>", "<unk>", "a", "b"]
    assert Vocab.build(lists, max_size=3).itos == ["<pad>", "<unk>", "a"]
    assert Vocab.build(lists, max_size=2).itos == ["<pad>", "<unk>"]
    raises_user_error(lambda: Vocab.build(lists, max_size=1), "max_size")
    raises_user_error(lambda: Vocab.build(lists, min_freq=0), "min_freq")


def test_vocab_literal_specials_in_the_data_are_not_duplicated():
    v = Vocab.build([["<pad>", "<unk>", "x"]])
    assert v.itos == ["<pad>", "<unk>", "x"]


@given(st.lists(st.lists(st.sampled_from("abcdefg"), max_size=8), max_size=8), st.randoms())
def test_vocab_does_not_depend_on_the_order_of_the_data(token_lists, rnd):
    shuffled = [list(tokens) for tokens in token_lists]
    rnd.shuffle(shuffled)
    for tokens in shuffled:
        rnd.shuffle(tokens)
    assert Vocab.build(token_lists).itos == Vocab.build(shuffled).itos


def test_vocab_encode_and_count_unknown():
    v = Vocab.build([["the", "cat", "sat"]])
    assert v.encode(["the", "dog", "sat"]) == [v.stoi["the"], 1, v.stoi["sat"]]
    assert v.count_unknown(["the", "dog", "dog", "sat", "mat"]) == 3
    assert v.count_unknown([]) == 0


def test_vocab_round_trips_through_a_plain_list():
    v = Vocab.build([tokenize("A plain list, for a checkpoint; a list!")])
    data = v.to_list()
    assert isinstance(data, list) and all(isinstance(t, str) for t in data)
    w = Vocab.from_list(data)
    assert w.itos == v.itos and w.stoi == v.stoi
    data.append("mutated")  # to_list is a copy
    assert len(v) == len(w)


@pytest.mark.parametrize(
    "itos", [["<unk>", "<pad>", "a"], ["a", "b"], [], ["<pad>"], ["<pad>", "<unk>", "a", "a"], ["<pad>", "<unk>", 3]]
)
def test_vocab_from_list_rejects_a_corrupt_list(itos):
    raises_user_error(lambda: Vocab.from_list(itos), "vocabulary")


# ---------------------------------------------------------------------------------------------------
# The real shared files
# ---------------------------------------------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize("name", UCI_FILES)
def test_uci_file_round_trip(name):
    ds = load_dataset(UCI / name)
    assert len(ds) == 1000
    assert ds.label_names == ["negative", "positive"]
    assert ds.class_counts() == [500, 500]
    # every line comes back verbatim, quotes included (the files hold unbalanced double quotes)
    lines = (UCI / name).read_text(encoding="utf-8").split("\n")[:-1]
    assert ds.texts == [line.split("\t")[0].strip() for line in lines]
    assert ds.labels == [int(line.split("\t")[1]) for line in lines]
    assert any('"' in text for text in ds.texts)


@needs_shared_data
def test_uci_all_three_files_at_once():
    folder = load_dataset(UCI)  # the folder: readme.txt is skipped
    files = load_dataset([UCI / name for name in UCI_FILES], format="uci")
    assert len(folder) == len(files) == 3000
    assert folder.class_counts() == [1500, 1500]
    assert folder.texts == files.texts and folder.labels == files.labels
    assert not any("Kotzias" in text for text in folder.texts)


@needs_shared_data
@pytest.mark.parametrize("given", ["folder", "pos", "neg", "both"])
def test_rt_polarity_pair_from_folder_or_either_file(given):
    paths = {
        "folder": RT,
        "pos": RT / "rt-polarity.pos",
        "neg": RT / "rt-polarity.neg",
        "both": [RT / "rt-polarity.pos", RT / "rt-polarity.neg"],
    }[given]
    ds = load_dataset(paths)
    assert len(ds) == 10662
    assert ds.label_names == ["neg", "pos"]
    assert ds.class_counts() == [5331, 5331]


@needs_shared_data
@pytest.mark.parametrize("suffix", ["pos", "neg"])
def test_rt_polarity_is_cp1252_split_on_newline_only(rt, suffix):
    raw = (RT / f"rt-polarity.{suffix}").read_bytes()
    raw_lines = raw.split(b"\n")[:-1]
    assert len(raw_lines) == 5331
    label = 1 if suffix == "pos" else 0
    texts = [text for text, y in zip(rt.texts, rt.labels) if y == label]
    assert len(texts) == 5331  # byte 0x85 sits inside lines and must not split them
    e_acute = next(i for i, line in enumerate(raw_lines) if b"\xe9" in line)
    assert "é" in texts[e_acute]
    ellipsis = next(i for i, line in enumerate(raw_lines) if b"\x85" in line)
    assert "\u2026" in texts[ellipsis]  # 0x85 is "…" in cp1252
    assert texts == [line.decode("cp1252").strip() for line in raw_lines]


# ---------------------------------------------------------------------------------------------------
# Hand-written TSV and CSV files
# ---------------------------------------------------------------------------------------------------


def test_tsv_integer_labels_without_header(tmp_path):
    path = write(tmp_path, "a.tsv", "good film\t1\nbad film\t0\n\nfine\t1\n")
    ds = load_dataset(path)
    assert ds.texts == ["good film", "bad film", "fine"]
    assert ds.labels == [1, 0, 1]
    assert ds.label_names == ["0", "1"]
    assert ds.source == str(path)


def test_tsv_header_is_detected(tmp_path):
    path = write(tmp_path, "a.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\n")
    assert load_dataset(path).texts == ["good film", "bad film"]
    path = write(tmp_path, "b.tsv", "text\tsentiment\ngood\tpos\nbad\tneg\nok\tpos\n")
    ds = load_dataset(path)
    assert ds.texts == ["good", "bad", "ok"]
    assert ds.label_names == ["neg", "pos"] and ds.labels == [1, 0, 1]


def test_first_row_is_data_when_it_could_not_be_a_header(tmp_path):
    # without line 1 only one class would remain: line 1 is data
    two = write(tmp_path, "two.tsv", "I love it\tpos\nI hate it\tneg\n")
    assert load_dataset(two).texts == ["I love it", "I hate it"]
    # an integer among integer labels is a label
    ints = write(tmp_path, "ints.tsv", "rare class\t2\na\t0\nb\t1\n")
    assert load_dataset(ints).labels == [2, 0, 1]


def test_tsv_string_labels_three_classes_sorted(tmp_path):
    path = write(tmp_path, "a.tsv", "great\tpositive\nawful\tnegative\nmeh\tneutral\nyes\tpositive\n")
    ds = load_dataset(path)
    assert ds.label_names == ["negative", "neutral", "positive"]
    assert ds.labels == [2, 0, 1, 2]
    assert ds.class_counts() == [1, 1, 2]


def test_integer_labels_not_starting_at_zero_keep_numeric_order(tmp_path):
    path = write(tmp_path, "stars.tsv", "a\t10\nb\t2\nc\t1\nd\t2\n")
    ds = load_dataset(path)
    assert ds.label_names == ["1", "2", "10"]
    assert [ds.label_names[y] for y in ds.labels] == ["10", "2", "1", "2"]


def test_columns_by_name_and_by_index(tmp_path):
    path = write(tmp_path, "a.tsv", "id\tlabel\tsentence\n1\tpos\tgood\n2\tneg\tbad\n")
    by_name = load_dataset(path, text_column="sentence", label_column="label")
    assert by_name.texts == ["good", "bad"] and by_name.labels == [1, 0]
    by_index = load_dataset(path, text_column=-1, label_column=1)
    assert by_index.texts == by_name.texts and by_index.labels == by_name.labels
    raises_user_error(lambda: load_dataset(path, text_column="text"), "a.tsv:1:", "no column named 'text'")
    raises_user_error(lambda: load_dataset(path, text_column=3), "a.tsv:1:", "column 3")
    raises_user_error(lambda: load_dataset(path, text_column=1, label_column=1), "a.tsv", "same column")


def test_csv_with_header_quotes_and_a_multiline_cell(tmp_path):
    content = 'text,label\n"good, really",pos\n"two\nlines",neg\nsay ""hi"",pos\n'
    path = write(tmp_path, "a.csv", content)
    ds = load_dataset(path)
    assert ds.texts == ["good, really", "two\nlines", 'say ""hi""']
    assert ds.labels == [1, 0, 1]
    # a row after the two-line cell is numbered by its real line
    bad = write(tmp_path, "bad.csv", 'text,label\n"two\nlines",neg\n,pos\n')
    raises_user_error(lambda: load_dataset(bad), "bad.csv:4:", "empty text")


def test_crlf_and_byte_order_mark(tmp_path):
    path = write(tmp_path, "a.tsv", b"\xef\xbb\xbfgood\t1\r\nbad\t0\r\n")
    ds = load_dataset(path)
    assert ds.texts == ["good", "bad"] and ds.labels == [1, 0]


def test_encoding_option(tmp_path):
    path = write(tmp_path, "a.tsv", "café\t1\nthé\t0\n".encode("cp1252"))
    assert load_dataset(path, encoding="cp1252").texts == ["café", "thé"]


def test_label_names_from_a_model(tmp_path):
    names = ["neg", "neutral", "pos"]
    path = write(tmp_path, "a.tsv", "good\tpos\nbad\t0\n")  # a name and an index; no neutral example
    ds = load_dataset(path, label_names=names)
    assert ds.label_names == names and ds.labels == [2, 0]
    assert ds.class_counts() == [1, 0, 1]
    one_class = write(tmp_path, "b.tsv", "good\tpos\n")
    assert load_dataset(one_class, label_names=names).labels == [2]
    bad = write(tmp_path, "bad.tsv", "good\tpos\nbad\tneg\nhm\tmixed\n")
    raises_user_error(lambda: load_dataset(bad, label_names=names), "bad.tsv:3:", "'mixed'", "neg, neutral, pos")
    raises_user_error(lambda: load_dataset(path, label_names=["only"]), "label names")


@needs_shared_data
def test_uci_with_model_label_names():
    ds = load_dataset(UCI / UCI_FILES[0], label_names=["neg", "pos"])
    assert ds.label_names == ["neg", "pos"] and ds.class_counts() == [500, 500]


def test_format_inference(tmp_path):
    write(tmp_path, "x.pos", "good\n")
    write(tmp_path, "x.neg", "bad\n")
    assert load_dataset(tmp_path / "x.pos").texts == ["bad", "good"]
    uci = tmp_path / "uci"
    uci.mkdir()
    write(uci, "shop_labelled.txt", "nice\t1\nugly\t0\n")
    write(uci, "readme.txt", "this is not data\n")
    assert load_dataset(uci).texts == ["nice", "ugly"]
    assert load_dataset(write(tmp_path, "a.txt", "a\t1\nb\t0\n")).labels == [1, 0]
    assert load_dataset(write(tmp_path, "a.csv", "a,1\nb,0\n")).labels == [1, 0]


# ---------------------------------------------------------------------------------------------------
# Bad input: a UserError naming the file (and the line, where there is one)
# ---------------------------------------------------------------------------------------------------


def test_error_file_not_found(tmp_path):
    raises_user_error(lambda: load_dataset(tmp_path / "missing.tsv"), "missing.tsv", "not found")


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n"])
def test_error_empty_file(tmp_path, content):
    path = write(tmp_path, "empty.tsv", content)
    raises_user_error(lambda: load_dataset(path), "empty.tsv", "no data rows")
    raises_user_error(lambda: load_dataset(path, format="uci"), "empty.tsv", "no data rows")


def test_error_empty_rt_file(tmp_path):
    write(tmp_path, "x.pos", "good\n")
    write(tmp_path, "x.neg", "\n")
    raises_user_error(lambda: load_dataset(tmp_path), "x.neg", "empty")


def test_error_only_a_header(tmp_path):
    path = write(tmp_path, "head.tsv", "text\tlabel\n")
    raises_user_error(lambda: load_dataset(path, label_column="label"), "head.tsv:1:", "no data rows")


def test_error_wrong_column_count(tmp_path):
    path = write(tmp_path, "bad.tsv", "good\t1\nbad\t0\nno label here\n")
    raises_user_error(lambda: load_dataset(path), "bad.tsv:3:", "expected 2 columns", "found 1", "TAB")
    path = write(tmp_path, "bad.csv", "good,1\nbad,0,extra\n")
    raises_user_error(lambda: load_dataset(path), "bad.csv:2:", "found 3", "comma")
    path = write(tmp_path, "one.tsv", "just text\nmore text\n")
    raises_user_error(lambda: load_dataset(path), "one.tsv:1:", "1 column")


def test_error_wrong_column_count_uci(tmp_path):
    path = write(tmp_path, "x_labelled.txt", "good\t1\nbad\tfilm\t0\n")
    raises_user_error(lambda: load_dataset(path), "x_labelled.txt:2:", "expected 2 columns")


@pytest.mark.parametrize("name", ["bad.tsv", "bad_labelled.txt"])
def test_error_missing_label(tmp_path, name):
    path = write(tmp_path, name, "good\t1\nbad\t0\n\nugly\t \n")
    raises_user_error(lambda: load_dataset(path), f"{name}:4:", "missing label")


@pytest.mark.parametrize("name", ["bad.tsv", "bad_labelled.txt"])
def test_error_empty_text(tmp_path, name):
    path = write(tmp_path, name, "good\t1\n  \t0\n")
    raises_user_error(lambda: load_dataset(path), f"{name}:2:", "empty text")


def test_error_not_utf8_names_line_byte_and_column(tmp_path):
    path = write(tmp_path, "file.tsv", b"good\t1\nbad\t0\r\ncaf\xe9\t1\n")
    message = raises_user_error(lambda: load_dataset(path), "--encoding cp1252")
    assert message.endswith(
        f"{path}:3: not valid utf-8 (byte 0xe9 at column 4); re-save the file as UTF-8 or pass --encoding cp1252"
    )
    raises_user_error(lambda: load_dataset(path, encoding="ascii"), "file.tsv:3:", "byte 0xe9 at column 4")
    raises_user_error(lambda: load_dataset(path, encoding="no-such-codec"), "file.tsv", "no-such-codec")


def test_error_fewer_than_two_classes(tmp_path):
    path = write(tmp_path, "one.tsv", "good\tpos\nfine\tpos\n")
    raises_user_error(lambda: load_dataset(path), "one.tsv", "at least 2")


def test_error_malformed_csv(tmp_path):
    path = write(tmp_path, "q.csv", 'good,1\n"never closed,0\nbad,0\n')
    raises_user_error(lambda: load_dataset(path), "q.csv:2:", "malformed CSV")
    path = write(tmp_path, "r.csv", 'good,1\n"stray" quote,0\n')
    raises_user_error(lambda: load_dataset(path), "r.csv:2:", "malformed CSV")


def test_error_unknown_format(tmp_path):
    path = write(tmp_path, "data.dat", "a\t1\n")
    raises_user_error(lambda: load_dataset(path), "data.dat", "--format")
    raises_user_error(lambda: load_dataset(path, format="json"), "--format")
    both = [path, write(tmp_path, "a.csv", "a,1\n")]
    raises_user_error(lambda: load_dataset(both, format=None), "data.dat", "--format")
    mixed = [write(tmp_path, "a.tsv", "a\t1\n"), write(tmp_path, "b.csv", "a,1\n")]
    raises_user_error(lambda: load_dataset(mixed), "different formats", "--format")
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    raises_user_error(lambda: load_dataset(empty_folder), "nothing", "--format")


def test_error_folder_for_a_tsv_and_columns_for_uci(tmp_path):
    raises_user_error(lambda: load_dataset(tmp_path, format="tsv"), str(tmp_path), "folder")
    path = write(tmp_path, "x_labelled.txt", "a\t1\nb\t0\n")
    raises_user_error(lambda: load_dataset(path, text_column=0), "tsv and csv")


def test_error_rt_needs_both_files(tmp_path):
    pos = write(tmp_path, "x.pos", "good\n")
    raises_user_error(lambda: load_dataset(pos), "x.pos", ".neg")
    write(tmp_path, "x.neg", "bad\n")
    write(tmp_path, "y.neg", "worse\n")
    raises_user_error(lambda: load_dataset(tmp_path), ".neg", "x.neg", "y.neg")


def test_rt_bytes_that_cp1252_leaves_undefined_decode_as_latin1(tmp_path):
    write(tmp_path, "x.pos", b"caf\xe9 \x81 ok\nfine \x85 yes\n")
    write(tmp_path, "x.neg", b"bad\n")
    ds = load_dataset(tmp_path)
    assert ds.texts == ["bad", "caf\xe9 \x81 ok", "fine \u2026 yes"]


# ---------------------------------------------------------------------------------------------------
# Property tests: the loaders load exactly the rows written, or raise a UserError
# ---------------------------------------------------------------------------------------------------

cell = st.text(st.characters(codec="utf-8", exclude_characters="\t\n"), max_size=12)
csv_cell = st.text(max_size=12)  # anything: the csv writer quotes it


def check_round_trip(load, rows):
    """rows written with a header: the non-blank ones come back, or a UserError if a row is bad."""
    expected = [(t.strip(), y.strip()) for t, y in rows if t.strip() or y.strip()]
    ok = all(t and y for t, y in expected) and len({y for _, y in expected}) >= 2
    try:
        ds = load()
    except UserError:
        assert not ok, "clean rows must load"
        return
    assert ok, "a bad row must be reported"
    assert ds.texts == [t for t, _ in expected]
    assert [ds.label_names[y] for y in ds.labels] == [y for _, y in expected]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(cell, st.one_of(cell, st.sampled_from(["0", "1", "pos", "neg"]))), max_size=6))
def test_tsv_rows_round_trip_or_user_error(tmp_path, rows):
    content = "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows)
    path = write(tmp_path, "rows.tsv", content)
    check_round_trip(lambda: load_dataset(path, text_column="text", label_column="label"), rows)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(csv_cell, st.one_of(csv_cell, st.sampled_from(["0", "1", "pos", "neg"]))), max_size=6))
def test_csv_rows_round_trip_or_user_error(tmp_path, rows):
    path = tmp_path / "rows.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # lines end in "\r\n", and a cell holding "\r" or "\n" is quoted
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    check_round_trip(lambda: load_dataset(path, text_column="text", label_column="label"), rows)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["a.tsv", "a.csv", "a_labelled.txt", "rt"]),
    st.lists(
        st.one_of(st.binary(max_size=40), st.sampled_from([b"\t", b"\n", b",", b'"', b"\r", b"0", b"1"])), max_size=12
    ),
)
def test_arbitrary_bytes_give_a_dataset_or_a_user_error(tmp_path, name, pieces):
    data = b"".join(pieces)
    if name == "rt":
        write(tmp_path, "x.pos", data)
        path = write(tmp_path, "x.neg", data[::-1])
    else:
        path = write(tmp_path, name, data)
    try:
        ds = load_dataset(path)
    except UserError:
        return
    assert len(ds) == len(ds.labels) >= 1 and all(text.strip() == text and text for text in ds.texts)


# ---------------------------------------------------------------------------------------------------
# split_dataset
# ---------------------------------------------------------------------------------------------------


def make_dataset(counts: list[int], seed: int = 0) -> Dataset:
    """Examples "ex0", "ex1", ... with counts[c] of class c, in a shuffled order."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    random.Random(seed).shuffle(labels)
    names = [f"class{c}" for c in range(len(counts))]
    return Dataset([f"ex{i}" for i in range(len(labels))], labels, names, "made")


@given(
    st.lists(st.integers(10, 60), min_size=2, max_size=4),
    st.sampled_from([0.1, 0.15, 0.2, 0.25]),
    st.sampled_from([0.0, 0.1, 0.2]),
    st.integers(0, 2**32),
)
def test_split_is_disjoint_covering_and_stratified(counts, val_frac, test_frac, seed):
    ds = make_dataset(counts)
    parts = split_dataset(ds, val_frac=val_frac, test_frac=test_frac, seed=seed)
    texts = [t for part in parts for t in part.texts]
    assert sorted(texts) == sorted(ds.texts)  # each example exactly once
    label_of = dict(zip(ds.texts, ds.labels))
    for part, frac in zip(parts, (1 - val_frac - test_frac, val_frac, test_frac)):
        assert part.label_names == ds.label_names
        assert all(label_of[t] == y for t, y in zip(part.texts, part.labels))
        for n, got in zip(counts, part.class_counts()):
            assert abs(got - n * frac) <= 1


def test_split_is_deterministic_and_ignores_the_global_rngs():
    ds = make_dataset([40, 30, 20])
    random.seed(1)
    torch.manual_seed(1)
    first = split_dataset(ds, seed=7)
    random.seed(2)
    torch.manual_seed(2)
    again = split_dataset(ds, seed=7)
    assert [p.texts for p in first] == [p.texts for p in again]
    other = split_dataset(ds, seed=8)
    assert [p.texts for p in first] != [p.texts for p in other]


def test_split_errors():
    raises_user_error(lambda: split_dataset(make_dataset([20, 2]), 0.3, 0.3), "made", "class1", "2 examples")
    empty_class = Dataset(["a", "b", "c"], [0, 0, 2], ["x", "y", "z"], "model.tsv")
    raises_user_error(lambda: split_dataset(empty_class, 0.0, 0.0), "model.tsv", "'y'", "0 examples")
    raises_user_error(lambda: split_dataset(make_dataset([3, 3]), 0.1, 0.0), "validation split is empty")
    raises_user_error(lambda: split_dataset(make_dataset([30, 30]), 0.6, 0.5), "val_frac")
    assert [len(p) for p in split_dataset(make_dataset([3, 3]), 0.0, 0.0)] == [6, 0, 0]


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------


def test_encode_dataset():
    ds = Dataset(["The cat sat.", "A dog!"], [0, 1], ["a", "b"], "made")
    vocab = Vocab.build(tokenize(t) for t in ds.texts[:1])
    assert encode_dataset(ds, vocab) == [vocab.encode(["the", "cat", "sat", "."]), [1, 1, 1]]
    assert encode_dataset(ds, vocab, lowercase=False)[0][0] == Vocab.UNK_ID


@given(
    st.lists(st.lists(st.integers(2, 50), max_size=9), min_size=1, max_size=40),
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
)
def test_batches_shapes_padding_and_each_example_once(ids, batch_size, shuffle, bucket):
    labels = list(range(len(ids)))  # the label says which example a row is
    seen = []
    g = torch.Generator().manual_seed(0)
    for x, lengths, y in batches(ids, labels, batch_size, shuffle=shuffle, generator=g, bucket=bucket):
        B, T = x.shape
        assert x.dtype == lengths.dtype == y.dtype == torch.long
        assert lengths.shape == y.shape == (B,) and 1 <= B <= batch_size
        assert T == lengths.max().item()
        for row, length, i in zip(x.tolist(), lengths.tolist(), y.tolist()):
            expected = ids[i] or [Vocab.UNK_ID]  # an empty sequence becomes one <unk>
            assert length == len(expected) and row[:length] == expected
            assert row[length:] == [Vocab.PAD_ID] * (T - length)
        seen += y.tolist()
    assert sorted(seen) == labels
    if not shuffle and not bucket:
        assert seen == labels


def test_batches_order_is_seeded_and_changes_between_epochs():
    ids = [[2] * (1 + i % 7) for i in range(200)]
    labels = list(range(200))

    def epoch(g, bucket=False):
        return [i for _, _, y in batches(ids, labels, 16, shuffle=True, generator=g, bucket=bucket) for i in y.tolist()]

    for bucket in (False, True):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        first, second = epoch(g1, bucket), epoch(g1, bucket)
        assert first == epoch(g2, bucket) and second == epoch(g2, bucket)
        assert first != second


def test_batches_rejects_a_bad_batch_size():
    raises_user_error(lambda: next(batches([[2]], [0], 0, shuffle=False)), "batch_size")


@needs_shared_data
def test_bucketing_reduces_padding_on_rt_polarity(rt):
    vocab = Vocab.build(tokenize(t) for t in rt.texts)
    ids = encode_dataset(rt, vocab)

    def padding(bucket):
        g = torch.Generator().manual_seed(0)
        batch_list = list(batches(ids, rt.labels, 32, shuffle=True, generator=g, bucket=bucket))
        assert sum(len(y) for _, _, y in batch_list) == len(rt)
        return sum(x.numel() - lengths.sum().item() for x, lengths, _ in batch_list)

    plain, bucketed = padding(False), padding(True)
    assert bucketed < plain / 5, (plain, bucketed)


def test_class_counts_and_len():
    ds = Dataset(["a", "b", "c"], [2, 0, 2], ["x", "y", "z"], "made")
    assert len(ds) == 3 and ds.class_counts() == [1, 0, 2]
    assert Counter(ds.labels) == {2: 2, 0: 1}

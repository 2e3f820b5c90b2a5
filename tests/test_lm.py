"""The language model: truncated BPTT, char-rnn batching, exact resume, sampling, evaluation, errors.

Models are tiny (H 8 to 16) and run on one thread; references are float64 computations written out
here (one long unroll, token-by-token softmax), with the tolerance stated at each comparison.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

import rnnlab.train as rnnlab_train
from rnnlab import checkpoint, lm
from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.optim import SGD, make_schedule
from tests.conftest import REPO, SHARED_DATA, run_cli

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n" * 12  # 576 characters, 15 distinct


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only spins
    yield
    torch.set_num_threads(threads)


def quiet(*_):
    pass


def tiny(**overrides) -> Config:
    base = dict(task="lm", level="char", cell="lstm", layers=2, hidden=12, embed_dim=6, seq_len=7, batch_size=4,
                dropout=0.1, lr=0.01, epochs=2, patience=None, seed=5)
    return Config(**{**base, **overrides})


def text_file(tmp_path: Path, text: str = TEXT, name: str = "text.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model64(cell: str, layers: int, V: int = 9, seed: int = 0) -> lm.LanguageModel:
    return lm.LanguageModel(V, 6, layers=layers, cell=cell, embed_dim=5, seed=seed, dtype=torch.float64)


# -- truncated BPTT and batching ------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_carrying_the_state_across_chunks_equals_one_long_unroll(cell, backward):
    """Forward pass: chunks of k tokens, each starting from the previous chunk's (detached) final states,
    give the logits and final states of one unroll over the whole sequence, to 1e-12 in float64."""
    rng = random.Random(f"{cell}{backward}")
    for _ in range(3):
        layers, B, k, chunks = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 6), rng.randint(2, 4)
        model = model64(cell, layers, seed=rng.randint(0, 99))
        model.backward = backward
        ids = torch.randint(0, 9, (B, k * chunks), generator=torch.Generator().manual_seed(rng.randint(0, 99)))
        whole, whole_finals = model(ids)
        pieces, states = [], None
        for c in range(chunks):
            logits, states = model(ids[:, c * k : (c + 1) * k], states)
            pieces.append(logits)
            states = lm.detach(states)
        torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=1e-12)
        for a, b in zip(states, whole_finals):
            for sa, sb in zip(a, b):
                torch.testing.assert_close(sa, sb.detach(), rtol=0, atol=1e-12)


def test_random_offsets_move_the_chunks_from_epoch_to_epoch():
    """--random-offset: epoch e reads the streams of the text from offset o_e in [0, seq_len), drawn from
    (seed, e) alone (a resumed run cuts the same streams); without it every epoch reads the same streams."""
    ids = torch.arange(500)
    plain, moved = tiny(), tiny(random_offset=True)
    assert all(torch.equal(lm.epoch_streams(ids, plain, e), lm.streams(ids, plain.batch_size)) for e in range(5))
    offsets = [lm.epoch_offset(moved, e) for e in range(20)]
    assert all(0 <= o < moved.seq_len for o in offsets) and len(set(offsets)) > 3, offsets
    assert offsets == [lm.epoch_offset(moved, e) for e in range(20)]  # from (seed, epoch) only
    assert offsets != [lm.epoch_offset(tiny(random_offset=True, seed=6), e) for e in range(20)]
    for e, o in enumerate(offsets[:5]):
        s = lm.epoch_streams(ids, moved, e)
        assert torch.equal(s, lm.streams(ids[o:], moved.batch_size)) and s[0, 0] == o


def test_a_schedule_plans_the_steps_that_random_offsets_leave(tmp_path):
    """With --random-offset an epoch can read one chunk fewer; the schedule plans for the epochs' own
    counts, so a cosine schedule sized by --epochs ends where the run ends."""
    config = tiny(random_offset=True, epochs=6, schedule="cosine", dropout=0.0)
    for n in range(480, 640):  # a text whose training split gives epochs of two lengths with these offsets
        path = text_file(tmp_path, (TEXT * 2)[:n])
        train_ids = lm.load_splits(config, path)[1]
        per_epoch = [lm.chunks_per_epoch(len(train_ids), config, e) for e in range(config.epochs)]
        if len(set(per_epoch)) == 2:
            break
    assert len(set(per_epoch)) == 2, f"no text length here gives epochs of two lengths: {per_epoch}"
    result = lm.train_lm(config, path, tmp_path / "run", log=quiet, plots=False)
    assert [r["step"] for r in result.history] == list(itertools.accumulate(per_epoch))
    # the rate of the last step is the schedule's at step total - 1 of exactly the steps run (planning for
    # more, as one count for every epoch did, leaves it higher)
    total = sum(per_epoch)
    planned = make_schedule("cosine", SGD([torch.zeros(1)], lr=config.lr), total, config.warmup)
    assert result.history[-1]["lr"] == pytest.approx(planned.lr_at(total - 1), rel=1e-12)
    more = make_schedule("cosine", SGD([torch.zeros(1)], lr=config.lr), total + 1, config.warmup)
    assert result.history[-1]["lr"] != pytest.approx(more.lr_at(total - 1), rel=1e-3)


def test_streams_are_consecutive_and_chunks_predict_the_next_token():
    ids = torch.arange(23)
    s = lm.streams(ids, 3)  # L = 22 // 3 = 7 targets per stream
    assert s.tolist() == [list(range(0, 8)), list(range(7, 15)), list(range(14, 22))]
    x0, y0 = lm.chunk(s, 0, 3)
    x1, y1 = lm.chunk(s, 1, 3)
    x2, y2 = lm.chunk(s, 2, 3)  # the last chunk is short: one input left per stream
    assert x0.tolist() == [[0, 1, 2], [7, 8, 9], [14, 15, 16]] and y0.tolist() == [[1, 2, 3], [8, 9, 10], [15, 16, 17]]
    assert x1[:, 0].tolist() == [3, 10, 17]  # chunk 1 goes on where chunk 0 stopped, in every stream
    assert x2.tolist() == [[6], [13], [20]] and y2.tolist() == [[7], [14], [21]]


# -- training, resume ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    config = tiny(schedule="cosine", warmup=3, weight_drop=0.2, random_offset=True)
    return lm.train_lm(config, text_file(tmp), tmp / "a", log=quiet, plots=False)


def test_a_run_writes_history_in_nats_and_bits_and_its_checkpoints(uninterrupted):
    out = uninterrupted.out_dir
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].split(",")[:8] == ["epoch", "step", "train_loss", "train_bits", "train_acc", "val_loss",
                                      "val_bits", "val_acc"]
    for r in uninterrupted.history:
        assert r["val_bits"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
    assert len(uninterrupted.history) == 2 and uninterrupted.history[-1]["step"] == 2 * 18  # 518 // 4 - 1 = 128 // 7
    ckpt = checkpoint.read(out, checkpoint.LAST)
    assert ckpt["config"]["task"] == "lm" and ckpt["vocab"] == sorted(set(TEXT))
    model, config, vocab = lm.load(out)
    assert config.layers == 2 and len(vocab) == 15


def test_resume_after_an_interrupt_ends_with_the_same_weights(tmp_path, monkeypatch, uninterrupted):
    """Ctrl-C in the middle of epoch 2 (stream positions and carried states saved), then --resume: the
    weights, optimiser state and history equal the uninterrupted run's, bit for bit (dropout and
    DropConnect masks and the epochs' stream offsets included: both runs use --weight-drop 0.2 and
    --random-offset)."""
    real_clip, calls = rnnlab_train.clip_grad_norm, []

    def interrupt_at_step_24(params, max_norm):
        calls.append(1)
        if len(calls) == 24:  # epoch 2, after 5 of its 18 steps
            raise KeyboardInterrupt
        return real_clip(params, max_norm)

    monkeypatch.setattr(rnnlab_train, "clip_grad_norm", interrupt_at_step_24)
    config, data = tiny(schedule="cosine", warmup=3, weight_drop=0.2, random_offset=True), text_file(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        lm.train_lm(config, data, tmp_path / "b", log=quiet, plots=False)
    progress = checkpoint.read(tmp_path / "b", checkpoint.LAST)["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 5)
    assert len(progress["carry"]) == 2 and progress["carry"][0][0].shape == (4, 12)  # (h, c) of both layers
    monkeypatch.undo()
    b = lm.train_lm(config, data, tmp_path / "b", resume=True, log=quiet, plots=False)
    a_last, b_last = (checkpoint.read(r, checkpoint.LAST) for r in (uninterrupted.out_dir, b.out_dir))
    for name in a_last["weights"]:
        assert torch.equal(a_last["weights"][name], b_last["weights"][name]), name
    assert a_last["optimizer"]["lr"] == b_last["optimizer"]["lr"]
    drop = ("seconds", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in b.history] == \
           [{k: v for k, v in r.items() if k not in drop} for r in uninterrupted.history]


def test_the_step_budget_stops_inside_an_epoch_and_validates_there(tmp_path):
    r = lm.train_lm(tiny(steps=5, epochs=9), text_file(tmp_path), tmp_path / "run", log=quiet, plots=False)
    assert [row["step"] for row in r.history] == [5] and r.stopped_early
    again = lm.train_lm(tiny(steps=5, epochs=9), text_file(tmp_path), tmp_path / "run", resume=True, log=quiet,
                        plots=False)
    assert len(again.history) == 1  # a spent budget stays spent


# -- sampling ----------------------------------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_text(uninterrupted):
    model, config, vocab = lm.load(uninterrupted.out_dir)
    a = lm.sample(model, vocab, "char", length=60, prime="the ", seed=3)
    b = lm.sample(model, vocab, "char", length=60, prime="the ", seed=3)
    c = lm.sample(model, vocab, "char", length=60, prime="the ", seed=4)
    assert a == b and a != c and a.startswith("the ") and len(a) == 64
    streamed = []
    assert lm.sample(model, vocab, "char", length=60, prime="the ", seed=3, on_text=streamed.append) == a
    assert "".join(streamed) == a


def test_temperature_1_draws_from_the_models_softmax(uninterrupted):
    """4,000 one-token samples after the prime "the c" (one seed each) against softmax(logits): Pearson's
    chi-square over the tokens with an expected count of at least 5 (the rest pooled) must stay below the
    0.9999 quantile of its distribution (Wilson-Hilferty), so a correct sampler fails 1 time in 10,000."""
    model, _, vocab = lm.load(uninterrupted.out_dir)
    N = 4000
    with torch.no_grad():
        logits, _ = model(torch.tensor([[vocab.stoi[ch] for ch in "the c"]]), backward="autograd")
    p = torch.softmax(logits[-1, 0].double(), -1).tolist()
    counts = Counter(lm.sample(model, vocab, "char", length=1, prime="the c", seed=s)[-1] for s in range(N))
    big = [i for i in range(len(p)) if N * p[i] >= 5]
    observed = [counts[vocab.itos[i]] for i in big] + [N - sum(counts[vocab.itos[i]] for i in big)]
    expected = [N * p[i] for i in big] + [N * (1 - sum(p[i] for i in big))]
    cells = [(o, e) for o, e in zip(observed, expected) if e > 0]
    chi2 = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    z = 3.719  # the 0.9999 quantile of N(0, 1)
    limit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert df >= 3 and chi2 < limit, f"chi-square {chi2:.1f} with {df} degrees of freedom (limit {limit:.1f})"


def test_temperature_towards_0_approaches_the_argmax(uninterrupted):
    model, _, vocab = lm.load(uninterrupted.out_dir)
    greedy, states = [], None
    ids = [vocab.stoi[ch] for ch in "the "]
    with torch.no_grad():  # greedy decoding by hand: feed back the argmax each time
        logits, states = model(torch.tensor([ids]), backward="autograd")
        for _ in range(30):
            token = int(logits[-1, 0].argmax())
            greedy.append(vocab.itos[token])
            logits, states = model(torch.tensor([[token]]), states, backward="autograd")
    assert lm.sample(model, vocab, "char", length=30, prime="the ", temperature=0) == "the " + "".join(greedy)
    cold = [lm.sample(model, vocab, "char", length=30, prime="the ", temperature=1e-3, seed=s) for s in range(5)]
    assert all(text == "the " + "".join(greedy) for text in cold)


def test_top_k_only_draws_the_k_most_likely():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    assert {lm.next_token(logits, 5.0, 2, g) for _ in range(200)} == {1, 3}


# -- evaluation ---------------------------------------------------------------------------------------------------
def test_evaluate_equals_a_token_by_token_computation(uninterrupted, tmp_path):
    """The file as one stream in chunks of seq_len (7) with the state carried, against a float64 sum of
    -log softmax at each next token, each position computed by its own unroll over everything before it."""
    text = "the dog sat on the cat.\nthe mat"
    result = lm.evaluate(uninterrupted.out_dir, text_file(tmp_path, text))
    model, config, vocab = lm.load(uninterrupted.out_dir)
    ids = [vocab.stoi[ch] for ch in text]
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits, _ = model(torch.tensor([ids[:t]]), backward="autograd")
            nll -= float(torch.log_softmax(logits[-1, 0].double(), -1)[ids[t]])
    loss = nll / (len(ids) - 1)
    assert result["task"] == "lm" and result["level"] == "char" and result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(loss, rel=1e-5)  # float32 model against a float64 sum
    assert result["bits_per_token"] == pytest.approx(loss / math.log(2), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_explain_gives_each_tokens_surprisal_and_report_shows_samples_and_pictures(uninterrupted, tmp_path):
    text = "the cat sat on the log."
    [r] = lm.explain_texts(uninterrupted.out_dir, [text])
    rows = r["tokens"]
    assert r["first"] == "t" and [row["token"] for row in rows] == list(text[1:])
    for row in rows:
        assert row["bits"] == pytest.approx(-math.log2(row["p"]), rel=1e-12)
        assert len(row["top"]) == 3 and row["top"][0][1] >= row["top"][1][1] >= row["top"][2][1] >= 0
        assert row["p"] <= row["top"][0][1] + 1e-12
    mean_nats = sum(row["bits"] for row in rows) / len(rows) * math.log(2)  # the same numbers evaluate sums
    assert mean_nats == pytest.approx(lm.evaluate(uninterrupted.out_dir, text_file(tmp_path, text))["loss"], rel=1e-5)
    from rnnlab.report import write_report

    page, *pictures = write_report(uninterrupted.out_dir, ["the dog"], tmp_path / "report")
    html = page.read_text(encoding="utf-8")
    assert "temperature 0.5" in html and "temperature 1 " in html and html.count("<figure>") == 2  # no curves
    assert [p.name for p in pictures] == ["surprisal-1.png", "surprisal-2.png"]  # held-out text, then "the dog"
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)


# -- word level ---------------------------------------------------------------------------------------------------
def test_word_level_keeps_lines_and_maps_unknown_prime_words_to_unk(tmp_path):
    assert lm.tokens("The cat.\nA dog", "word") == ["the", "cat", ".", lm.EOL, "a", "dog"]
    r = lm.train_lm(tiny(level="word", seq_len=3, batch_size=2, epochs=1), text_file(tmp_path), tmp_path / "w",
                    log=quiet, plots=False)
    model, config, vocab = lm.load(r.out_dir)
    assert lm.EOL in vocab.stoi and "<unk>" in vocab.stoi
    text = lm.sample(model, vocab, "word", length=40, prime="the zebra", seed=0)
    assert text.startswith("the zebra") and len(text.split()) > 2  # the prime as given, then words
    assert lm.encode("the zebra", vocab, "word") == [vocab.stoi["the"], vocab.UNK_ID]  # what the model reads
    assert lm.decode([vocab.stoi[w] for w in ["the", "cat", lm.EOL, "the"]], vocab, "word") == "the cat\nthe"


# -- one-line errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", r"text\.txt: the text is empty"),
    (b"  \n\n", r"text\.txt: the text is empty"),
    (b"abc\x00\x01def", r"text\.txt:1: a binary file"),
    (b"caf\xe9 au lait\n", r"text\.txt:1: not valid UTF-8 \(byte 0xe9\)"),
])
def test_empty_binary_and_non_utf8_texts_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "text.txt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        lm.train_lm(tiny(), tmp_path / "text.txt", tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_a_text_shorter_than_one_chunk_and_seq_len_0_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"the training text has 90 tokens, shorter than one chunk of every stream: "
                                        r"--batch-size 4 x \(--seq-len 30 \+ 1\) = 124"):
        lm.train_lm(tiny(seq_len=30), text_file(tmp_path, "abcdefghij" * 10), tmp_path / "run", log=quiet)
    with pytest.raises(UserError, match=r"--seq-len 0: use at least 1"):
        lm.train_lm(tiny(seq_len=0), text_file(tmp_path), tmp_path / "run", log=quiet)
    with pytest.raises(UserError, match=r"--embed-dim 0: the language model reads its tokens through an embedding"):
        lm.train_lm(tiny(embed_dim=None), text_file(tmp_path), tmp_path / "run", log=quiet)


def test_unknown_characters_in_a_prime_or_an_evaluated_file_are_named(uninterrupted, tmp_path):
    model, _, vocab = lm.load(uninterrupted.out_dir)
    with pytest.raises(UserError, match=r"--prime has 2 character\(s\) the model never saw: 'Q' 'Z'"):
        lm.sample(model, vocab, "char", prime="QZZ")
    with pytest.raises(UserError, match=r"other\.txt: the text has 1 character\(s\) the model never saw: 'é'"):
        lm.evaluate(uninterrupted.out_dir, text_file(tmp_path, "the caté", "other.txt"))


@pytest.mark.slow
def test_the_cli_prints_one_line_errors_and_keeps_text_on_stdout(uninterrupted, tmp_path):
    run = str(uninterrupted.out_dir)
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02")
    bad = run_cli("train", "--task", "lm", "--data", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "r"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "a binary file" in bad.stderr
    prime = run_cli("sample", "--checkpoint", run, "--prime", "QQ")
    assert prime.returncode == 2 and prime.stderr.strip() == \
        "rnnlab sample: error: --prime has 1 character(s) the model never saw: 'Q'; remove them or train on a text " \
        "that has them"
    ok = run_cli("sample", "--checkpoint", run, "--prime", "the ", "--length", "20", "--seed", "1")
    assert ok.returncode == 0 and ok.stdout.startswith("the ") and len(ok.stdout) == 25  # the text and a newline
    assert "sampling 20 char tokens" in ok.stderr
    js = run_cli("sample", "--checkpoint", run, "--prime", "the ", "--length", "20", "--seed", "1", "--json")
    assert json.loads(js.stdout)["text"] == ok.stdout[:-1]
    ev = run_cli("evaluate", "--checkpoint", run, "--data", str(text_file(tmp_path)), "--json")
    assert {"task", "level", "tokens", "loss", "bits_per_token", "perplexity"} <= set(json.loads(ev.stdout))
    pred = run_cli("predict", "--checkpoint", run, "a sentence")
    assert pred.returncode == 2 and "is a language model, not a classifier" in pred.stderr
    ex = run_cli("explain", "--checkpoint", run, "the mat", "--out", str(tmp_path / "ex"))
    assert ex.returncode == 0 and "top 3 predictions" in ex.stdout and (tmp_path / "ex" / "surprisal.png").is_file()


# -- it learns ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_lm_on_shakespeare_beats_the_unigram_entropy(tmp_path):
    """40,000 characters of Tiny Shakespeare, 120 steps: the validation loss must fall below the entropy of
    the training split's character frequencies (what the best model ignoring context reaches)."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:40_000]
    data = text_file(tmp_path, text)
    r = lm.train_lm(tiny(layers=1, hidden=64, embed_dim=16, seq_len=32, batch_size=16, dropout=0.0, lr=0.01,
                         steps=120, epochs=10), data, tmp_path / "run", log=quiet, plots=False)
    train = text[: int(len(text) * 0.9)]
    counts = Counter(train)
    entropy = -sum(n / len(train) * math.log(n / len(train)) for n in counts.values())  # nats per character
    assert r.history[-1]["val_loss"] < entropy - 0.1, (r.history[-1]["val_loss"], entropy)


# -- the README's Shakespeare figures come from the stored benchmark -------------------------------------------------
def _benchmark(name: str):
    """benchmarks/<name>.py as a module (the folder is not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_readme_shakespeare_section_is_generated_from_the_stored_benchmark():
    """README.md holds exactly what `python benchmarks/bench_lm.py --readme benchmarks/results/bench_lm.json`
    prints from the stored results: no figure there can drift from the measurement."""
    bench = _benchmark("bench_lm")
    stored = json.loads((REPO / "benchmarks" / "results" / "bench_lm.json").read_text())
    section = bench.readme_section(stored)
    assert section in (REPO / "README.md").read_text(encoding="utf-8"), "paste `bench_lm.py --readme` output"
    t = stored["training"]
    for figure in (f"**{t['rnnlab']['val_loss']:.3f}**", f"**{t['torch']['val_loss']:.3f}**",
                   f"**{stored['throughput']['ratio']:.2f}**", stored["sample"]["text"]):
        assert figure in section


def test_the_baselines_learning_rates_are_rnnlabs_schedule():
    """bench_lm gives torch.optim the rates rnnlab's --schedule gives rnnlab: warm-up, then cosine or constant."""
    from rnnlab.optim import SGD, make_schedule

    bench = _benchmark("bench_lm")
    for schedule, warmup, steps in [("cosine", 7, 50), ("cosine", 0, 31), ("constant", 5, None), ("constant", 0, 9)]:
        w = bench.Workload(schedule=schedule, warmup=warmup, steps=steps, lr=0.3)
        ours = make_schedule(schedule, SGD([torch.zeros(1)], lr=0.3), steps or 100, warmup)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        theirs = torch.optim.lr_scheduler.LambdaLR(opt, bench.lr_factor(w))  # as train_torch steps it
        for t in range(60):
            expected = 0.3 if ours is None else ours.lr_at(t)
            assert 0.3 * bench.lr_factor(w)(t) == pytest.approx(expected, rel=1e-12, abs=1e-15), (schedule, t)
            assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), (schedule, t)
            opt.step()
            theirs.step()


def test_readme_study_table_is_the_stored_output_of_its_runs():
    """The README's table of what helped is `python benchmarks/lm_study.py --readme`, and each stored row is
    its command's run: the run folder's config.json, parsed again here from the command by rnnlab's CLI."""
    study = _benchmark("lm_study")
    stored = json.loads(study.JSON.read_text())
    assert study.readme_section(stored) in (REPO / "README.md").read_text(encoding="utf-8")
    assert [r["name"] for r in stored["rows"]] == list(study.ROWS)
    for r in stored["rows"]:
        assert r["command"] == study.command(r["name"])
        assert study.differences(r["config"], study.config_of(r["command"])) == {}
        assert not set(r["config"]) - set(study.config_of(r["command"])), "a stored field the command does not have"
        assert r["val_loss"] == r["history"][-1]["val_loss"] and r["steps"] == r["history"][-1]["step"]
        assert r["best_val_loss"] == min(h["val_loss"] for h in r["history"])
    first = json.loads(study.FIRST.read_text())  # the first run's row: its stored history at the same step
    at = {h["step"]: h for h in first["training"]["rnnlab"]["history"]}
    assert at[stored["first"]["steps"]]["val_loss"] == stored["first"]["val_loss"]
    assert at[stored["first"]["best_step"]]["val_loss"] == stored["first"]["best_val_loss"]


@pytest.mark.slow
def test_tiny_benchmark_runs_and_writes_json(tmp_path):
    import sys

    bench = _benchmark("bench_lm")
    out = tmp_path / "lm.json"
    results = bench.main(["--tiny", "--no-training", "--json", str(out)])
    assert json.loads(out.read_text())["throughput"] == results["throughput"]
    assert results["throughput"]["ratio"] == pytest.approx(results["throughput"]["rnnlab_tokens_per_s"]
                                                            / results["throughput"]["torch_tokens_per_s"])
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_train

    rows = bench_train.main(["--tiny", "--cells", "rnn", "--lm"])  # the LM as its own row of bench_train
    assert rows[-1].cell == "lm-lstm2" and rows[-1].ratio == pytest.approx(rows[-1].tokens_per_s
                                                                           / rows[-1].baseline_tokens_per_s)


def test_the_classifier_takes_the_schedule_and_the_step_budget_too(tmp_path):
    from rnnlab.optim import SGD, make_schedule
    from rnnlab.train import train

    rows = "".join(f"{t}\t{y}\n" for t, y in [("a good film", "pos"), ("a bad film", "neg")] * 10)
    data = text_file(tmp_path, rows, "reviews.tsv")
    config = Config(cell="gru", hidden=8, embed_dim=8, batch_size=4, epochs=3, patience=None, schedule="cosine",
                    warmup=2, steps=7, lr=0.05, val_frac=0.2, test_frac=0.0)
    r = train(config, data, tmp_path / "run", log=quiet, plots=False)
    opt = checkpoint.read(tmp_path / "run", checkpoint.LAST)["optimizer"]
    assert opt["step_count"] == 7 and r.history[-1]["epoch"] == 2  # 4 steps per epoch: stopped in epoch 2
    schedule = make_schedule("cosine", SGD([torch.zeros(1, requires_grad=True)], 0.05), 7, warmup=2)  # --steps 7
    assert opt["lr"] == pytest.approx(schedule.lr_at(6))  # the rate of the 7th and last step
    assert schedule.lr_at(6) < 0.05 * 0.1  # near the end of the cosine, not a third of the way down


def test_learning_rate_schedules_with_warmup():
    from rnnlab.optim import SGD, make_schedule

    p = torch.zeros(1, requires_grad=True)
    assert make_schedule("constant", SGD([p], 0.1), 100) is None
    s = make_schedule("cosine", SGD([p], 0.1), 100, warmup=10)
    assert [s.lr_at(t) for t in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert s.lr_at(10) == pytest.approx(0.1) and s.lr_at(55) == pytest.approx(0.05) and s.lr_at(100) < 1e-3
    step = make_schedule("step", SGD([p], 0.1), 90)
    assert [step.lr_at(t) for t in (0, 29, 30, 60, 89)] == pytest.approx([0.1, 0.1, 0.03, 0.009, 0.009])


# -- several processes ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_train_the_language_model_of_one(tmp_path):
    """torchrun with 2 processes, each reading half of the streams (dropout 0): the weights and the carried
    states in last.pt equal one process's to 1e-6 (float32 sums in another order; the states, up to ~5 in
    size, to 1e-6 relative: a few float32 ulps)."""
    import subprocess
    import sys

    from tests.test_distributed import TIMEOUT_S, free_port, worker_env

    data = text_file(tmp_path)
    config = tiny(dropout=0.0, epochs=1, batch_size=4)
    flags = ["train", "--task", "lm", "--data", str(data), "--out", str(tmp_path / "two"), "--cell", "lstm",
             "--layers", "2", "--hidden", "12", "--embed-dim", "6", "--seq-len", "7", "--batch-size", "4",
             "--lr", "0.01", "--epochs", "1", "--patience", "0", "--seed", "5", "--no-plots"]
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), "-m", "rnnlab", *flags],
                         env=worker_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert job.returncode == 0, job.stderr
    one = lm.train_lm(config, data, tmp_path / "one", log=quiet, plots=False)
    a, b = (checkpoint.read(d, checkpoint.LAST) for d in (tmp_path / "two", one.out_dir))
    assert a["config"] == b["config"]
    for name in b["weights"]:
        assert (a["weights"][name] - b["weights"][name]).abs().max() <= 1e-6, name
    for la, lb in zip(a["progress"]["carry"], b["progress"]["carry"]):  # every stream's, gathered from both
        for sa, sb in zip(la, lb):
            assert sa.shape == (4, 12)
            torch.testing.assert_close(sa, sb, rtol=1e-6, atol=1e-6)
    for sa, sb in zip(a["progress"]["history"], b["progress"]["history"]):
        assert sa["val_loss"] == pytest.approx(sb["val_loss"], abs=1e-6)
        assert sa["train_loss"] == pytest.approx(sb["train_loss"], abs=1e-6)


def test_val_frac_sets_the_held_out_tail(tmp_path):
    data = text_file(tmp_path, "abcdefghij" * 20)  # 200 characters
    for frac, n_val in [(0.1, 20), (0.5, 100)]:
        _, train_ids, val_ids, _ = lm.load_splits(tiny(val_frac=frac), data)
        assert (len(train_ids), len(val_ids)) == (200 - n_val, n_val)

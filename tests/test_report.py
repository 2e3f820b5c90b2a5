"""The HTML run report: it parses, its images are real PNGs inside it, its links point at files that exist,
and it shows the run's own numbers and one word-by-word trace per sample sentence."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest

from rnnlab.report import choose_samples, write_report
from rnnlab.train import train
from tests.conftest import run_cli
from tests.test_train import PNG_SIGNATURE, quiet, sentiment_tsv, tiny

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Collects images, links and headings, and checks that every opened tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.links, self.h3, self.text = [], [], [], [], []
        self._in_h3 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag not in VOID:
            self.stack.append(tag)
        self._in_h3 = self._in_h3 or tag == "h3"
        if tag == "h3":
            self.h3.append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "h3":
            self._in_h3 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h3:
            self.h3[-1] += data


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return train(tiny(), sentiment_tsv(folder), folder / "run", log=quiet, progress=False)


def test_report_embeds_its_images_links_existing_files_and_shows_the_runs_numbers(run):
    files = write_report(run.out_dir, ["a wonderful zzzunknown film"])
    page_path = files[0]
    assert page_path == run.out_dir / "report.html" and (run.out_dir / "trajectory.png") in files
    page = parse(page_path)
    assert len(page.images) == 4  # loss, accuracy, confusion, trajectory
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR" and len(png) > 1000
    assert page.links and all((run.out_dir / href).is_file() for href in page.links)
    text = " ".join(page.text)
    assert f"{run.test['accuracy']:.4f}" in text  # the run's own test accuracy
    samples = json.loads((run.out_dir / "samples.json").read_text())
    assert 1 <= len(samples) <= 8
    assert len(page.h3) == len(samples) + 1  # one trace per sample, and the extra sentence
    assert page.h3[-1].startswith("“a wonderful zzzunknown film” →")
    assert "Data: reviews.tsv" in " ".join(text.split())  # the data set, named from the run's data.json
    data = json.loads((run.out_dir / "data.json").read_text())
    assert sum(d["sentences"] for d in data.values()) == len(sentiment_tsv(run.out_dir).read_text().splitlines())
    assert {s["label"] for s in samples} == {"pos", "neg"}  # both classes among the samples


def test_report_of_an_older_run_says_the_data_was_not_recorded(run, tmp_path):
    (run.out_dir / "data.json").rename(tmp_path / "data.json")
    try:
        text = " ".join(" ".join(parse(write_report(run.out_dir, out_dir=tmp_path)[0]).text).split())
    finally:
        (tmp_path / "data.json").rename(run.out_dir / "data.json")
    assert "Data: not recorded" in text


@pytest.mark.parametrize("seed", range(5))
def test_samples_are_balanced_over_classes_and_right_and_wrong(seed):
    """Random held-out sets: each (true class, right/wrong) group gets its share of the n samples, a group too
    small gives its turns to the others, and short sentences come first within a group."""
    import random

    rng = random.Random(seed)
    C, N, n = rng.choice([2, 3]), rng.randrange(30, 200), rng.choice([4, 6, 8, 12])
    labels = [rng.randrange(C) for _ in range(N)]
    predicted = [y if rng.random() < rng.choice([0.6, 0.95]) else rng.randrange(C) for y in labels]
    texts = [f"s{i} " + "w " * rng.choice([3, 30]) for i in range(N)]
    names = [f"c{k}" for k in range(C)]
    samples = choose_samples(texts, labels, predicted, names, n)
    assert len(samples) == n and len({s["text"] for s in samples}) == n
    index = {t: i for i, t in enumerate(texts)}
    chosen = [index[s["text"]] for s in samples]
    sizes = {(c, r): sum(1 for i in range(N) if labels[i] == c and (predicted[i] == c) == r)
             for c in range(C) for r in (True, False)}
    got = {g: sum(1 for i in chosen if (labels[i], predicted[i] == labels[i]) == g) for g in sizes}
    fair = n // len(sizes)
    for g in sizes:  # a group has its fair share, or it ran out; nobody has more than one above another's share
        assert got[g] >= min(fair, sizes[g]), (g, got, sizes)
        assert got[g] <= max(got.values()) and (got[g] == sizes[g] or got[g] >= max(got.values()) - 1)
    for s, i in zip(samples, chosen):
        assert s["label"] == names[labels[i]] and s["predicted"] == names[predicted[i]]
    for g in sizes:  # within a group: no long sentence chosen while a short one was left
        mine = [i for i in chosen if (labels[i], predicted[i] == labels[i]) == g]
        left = [i for i in range(N) if (labels[i], predicted[i] == labels[i]) == g and i not in mine]
        if any(len(texts[i].split()) > 20 for i in mine):
            assert all(len(texts[i].split()) > 20 for i in left)


def test_cli_report_and_train_report(run, tmp_path):
    r = run_cli("report", str(run.out_dir))
    assert r.returncode == 0, r.stderr
    assert f"wrote {run.out_dir / 'report.html'}" in r.stdout
    r = run_cli("train", "--data", str(sentiment_tsv(tmp_path)), "--out", str(tmp_path / "r"), "--cell", "rnn",
                "--hidden", "4", "--embed-dim", "4", "--epochs", "1", "--report")
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'r' / 'report.html'}" in r.stdout
    parse(tmp_path / "r" / "report.html")


def test_report_elsewhere_links_back_to_the_run(run, tmp_path):
    r = run_cli("report", str(run.out_dir), "--out", str(tmp_path / "pages"))
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'pages' / 'trajectory.png'}" in r.stdout
    page = parse(tmp_path / "pages" / "report.html")
    assert len(page.images) == 4
    assert page.links and all((tmp_path / "pages" / href).resolve().is_file() for href in page.links)


def test_report_of_a_folder_without_a_model_is_a_one_line_error(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and "no model.pt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name,content,message", [
    ("samples.json", '{"a": 1}', "expected a list of"),
    ("samples.json", '[{"txt": "x"}]', "expected a list of"),
    ("samples.json", '[{"text": "", "label": "pos"}]', "expected a list of"),
    ("samples.json", '[{"text": "fine"', "not valid JSON"),
    ("samples.json", b"\xff\xfe[]", "not UTF-8"),
    ("metrics.json", '{"accuracy": 1.0}', "not the metrics.json"),
])
def test_report_refuses_damaged_run_files_in_one_line(run, tmp_path, name, content, message):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(run.out_dir, folder)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run_cli("report", str(folder))
    assert r.returncode == 2 and message in r.stderr and str(path) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr

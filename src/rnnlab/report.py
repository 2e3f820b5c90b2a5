"""One self-contained HTML page per training run (`rnnlab report RUN_DIR`, `rnnlab train --report`).

The page shows, from the files a run folder holds:

    config.json      the run's settings, as a table
    metrics.json     test accuracy, per-class precision / recall / F1
    loss.png, accuracy.png, confusion.png      the curves and the confusion matrix
    data.json        where each split came from and its size (written by `train`): the page names the data
    samples.json     a few test sentences with their true labels (written by `train`, `choose_samples`:
                     balanced over the classes and over right and wrong predictions), each with the
                     model's prediction and its `explain` trace: p(class) and the gates after every word
    trajectory.png   drawn here: the hidden-state paths of those sentences on their principal components

A language model's run (`train --task lm`) gets its own page: the curves, samples at temperatures 0.5
and 1, and the start of the held-out text (samples.json) coloured by surprisal (see lm.py).

Images are embedded as base64 `data:` URIs, so the page is one file that can be mailed or archived;
links to the run's data files (config, history, metrics) are relative, so they work beside it.
Left out: interactive plots, comparing several runs on one page.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from pathlib import Path

from rnnlab import checkpoint
from rnnlab.errors import UserError
from rnnlab.explain import Trace, explain_texts, plot_trajectories

REPORT = "report.html"
DATA = "data.json"
IMAGES = (("loss.png", "Loss per epoch"), ("accuracy.png", "Accuracy per epoch"),
          ("confusion.png", "Confusion matrix (test split)"), ("trajectory.png", "Hidden-state paths of the samples"))

CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}.wrong{color:#b00}.unk{color:#888}"""


def write_report(run_dir, sentences: list[str] | None = None, out_dir=None) -> list[Path]:
    """Write `report.html` and the samples' `trajectory.png` into `out_dir` (default: the run folder); their
    paths, the page first. Links to the run's files are relative to the page."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run
    if not (run / checkpoint.BEST).is_file():
        raise UserError("not a finished run folder (no model.pt); pass a folder written by `rnnlab train`", path=run)
    if checkpoint.read(run)["config"].get("task") == "lm":
        return _lm_report(run, out, sentences or [])
    model, config, vocab, label_names, _ = checkpoint.load_model(run)
    samples = _samples(run / "samples.json") + [{"text": s, "label": None} for s in sentences or []]
    traces = explain_texts(model, vocab, [s["text"] for s in samples], label_names, config.lowercase)
    drawn = [plot_trajectories(model, traces, out / "trajectory.png")] if traces else []
    images = {name: out / name if name == "trajectory.png" else run / name for name, _ in IMAGES}
    metrics = _read_json(run / "metrics.json", None)
    if metrics is not None and not (isinstance(metrics, dict) and {"accuracy", "n", "per_class"} <= set(metrics)):
        raise UserError("not the metrics.json `rnnlab train` writes (accuracy, n, per_class); delete it or train "
                        "again", path=run / "metrics.json")
    history = []
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))

    parts = [f"<h1>rnnlab run: {_e(run.resolve().name)}</h1>",
             f"<p>{_e(config.cell.upper())}, H = {config.hidden}"
             f"{f', {config.layers} layers (traces: the top one)' if config.layers > 1 else ''}, "
             f"{len(vocab):,} words, classes "
             f"{_e(', '.join(label_names))}; {len(history)} epochs.</p>", _data_html(_read_json(run / DATA, None))]
    if metrics:
        parts.append(_metrics_html(metrics))
    parts.append("<h2>Curves</h2>")
    parts += [_img(images[name], caption) for name, caption in IMAGES if images[name].is_file()]
    if traces:
        parts.append("<h2>Sample predictions, word by word</h2><p>After each word: the class probabilities the "
                     "model would give if the sentence ended there" + (", and the mean of each gate over the "
                     "hidden units" if traces[0].gates else "") + ". Grey words are not in the vocabulary.</p>")
        parts += [_trace_html(tr, s["label"]) for tr, s in zip(traces, samples)]
    return [_finish_page(run, out, config, parts), *drawn]


def _finish_page(run: Path, out: Path, config, parts: list[str]) -> Path:
    """The settings table and the links to the run's files after `parts`; report.html written atomically."""
    parts = parts + ["<h2>Settings</h2><table>" + "".join(
        f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in config.to_dict().items())
        + "</table>"]
    links = [f'<a href="{_e(Path(os.path.relpath(run / n, out)).as_posix())}">{n}</a>'
             for n in ("config.json", "history.csv", "metrics.json", checkpoint.BEST) if (run / n).is_file()]
    parts.append(f"<p>Files: {' · '.join(links)}</p>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>rnnlab run {_e(run.name)}'
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = out / REPORT
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # whole or not at all
    return path


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


LM_TEMPERATURES = (0.5, 1.0)  # the report's two samples: conservative, and the model's own distribution


def _lm_report(run: Path, out: Path, sentences: list[str]) -> list[Path]:
    """A language model's page: curves, samples at two temperatures, and the held-out text (and any
    --sentence) coloured by surprisal."""
    from rnnlab import lm

    model, config, vocab = lm.load(run)
    history = []
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
    best = min((float(r["val_loss"]) for r in history), default=float("nan"))
    parts = [f"<h1>rnnlab language model: {_e(run.resolve().name)}</h1>",
             f"<p>{config.layers} x {_e(config.cell.upper())} {config.hidden}, {config.level} level, {len(vocab):,} "
             f"tokens in the vocabulary; {len(history)} epochs; best validation loss {best:.4f} nats per token "
             f"({best / lm.LN2:.3f} bits).</p>", "<h2>Curves</h2>"]
    parts += [_img(run / name, caption) for name, caption in IMAGES[:2] if (run / name).is_file()]
    parts.append("<h2>Samples</h2>")
    for temperature in LM_TEMPERATURES:
        text = lm.sample(model, vocab, config.level, length=400, temperature=temperature, seed=0,
                         lowercase=config.lowercase)
        parts.append(f"<h3>temperature {temperature:g} (seed 0)</h3><pre>{_e(text)}</pre>")
    texts = [s["text"] for s in _samples(run / "samples.json")] + sentences
    drawn = []
    if texts:
        parts.append("<h2>Surprisal</h2><p>Each token on a background as dark as it was surprising to the model: "
                     "-log2 p(token) in bits, given everything before it.</p>")
        for i, r in enumerate(lm.explain_texts(run, texts)):
            path = lm.plot_surprisal(r["tokens"], r["first"], r["level"], out / f"surprisal-{i + 1}.png")
            drawn.append(path)
            mean = sum(t["bits"] for t in r["tokens"]) / len(r["tokens"])
            parts.append(_img(path, f"mean {mean:.3f} bits per token over {len(r['tokens'])} tokens"))
    return [_finish_page(run, out, config, parts), *drawn]


def write_data_record(out: Path, splits: dict) -> Path:
    """data.json: for each split ({"train": Dataset, "validation": ..., "test": ... or None}) its source (the
    paths as given), its size and its class counts, so `write_report` can name the data set."""
    record = {name: {"source": ds.source, "sentences": len(ds),
                     "class_counts": dict(zip(ds.label_names, ds.class_counts()))}
              for name, ds in splits.items() if ds is not None and len(ds)}
    (Path(out) / DATA).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(out) / DATA


def data_name(source: str) -> str:
    """'rt-polarity' for '../shared/data/rt-polarity (train)': the names of the files or folders given."""
    return ", ".join(dict.fromkeys(Path(p).name for p in _paths(source).split(", ")))


def _paths(source: str) -> str:
    """A split's source without the ' (train)' that `split_dataset` adds: the paths as given."""
    for suffix in (" (train)", " (val)", " (test)"):
        source = source.removesuffix(suffix)
    return source


def _data_html(record) -> str:
    if not isinstance(record, dict) or not all(isinstance(r, dict) for r in record.values()) or "train" not in record:
        return "<p>Data: not recorded (a run trained before rnnlab wrote data.json).</p>"
    sources = {name: _paths(str(r.get("source", "?"))) for name, r in record.items()}
    sizes = ", ".join(f"{_e(name)} {r.get('sentences', 0):,}" for name, r in record.items())
    if len(set(sources.values())) == 1:  # one file or folder, split here
        where = f"<code>{_e(sources['train'])}</code>, split into {sizes} sentences"
    else:
        where = "; ".join(f"{_e(name)}: <code>{_e(sources[name])}</code> ({r.get('sentences', 0):,} sentences)"
                          for name, r in record.items())
    return f"<p>Data: <b>{_e(data_name(sources['train']))}</b> ({where}).</p>"


def choose_samples(texts: list[str], labels: list[int], predicted: list[int], label_names: list[str], n: int = 8,
                   max_words: int = 20) -> list[dict]:
    """n held-out sentences for the report, balanced over the classes and over right and wrong predictions.

    The groups (true class c, right or wrong) take turns, right ones first: (c_0 right), (c_1 right), ...,
    (c_0 wrong), (c_1 wrong), ..., then round again; an empty group passes its turn. Within a group, sentences
    of at most `max_words` words come first (they stay readable in the pictures), then the held-out order.
    """
    groups = [[i for i in range(len(texts)) if labels[i] == c and (predicted[i] == c) == right]
              for right in (True, False) for c in range(len(label_names))]
    for group in groups:
        group.sort(key=lambda i: len(texts[i].split()) > max_words)  # stable: the held-out order otherwise
    chosen = []
    while len(chosen) < min(n, len(texts)):
        for group in groups:
            if group and len(chosen) < n:
                chosen.append(group.pop(0))
    return [{"text": texts[i], "label": label_names[labels[i]], "predicted": label_names[predicted[i]]}
            for i in chosen]


def _metrics_html(m: dict) -> str:
    rows = "".join(f'<tr><td class="l">{_e(name)}</td><td>{c["precision"]:.4f}</td><td>{c["recall"]:.4f}</td>'
                   f'<td>{c["f1"]:.4f}</td><td>{c["support"]}</td></tr>' for name, c in m["per_class"].items())
    loss = f", loss {m['loss']:.4f}" if m.get("loss") is not None else ""
    return (f"<h2>Test split</h2><p>Accuracy <b>{m['accuracy']:.4f}</b> on {m['n']} examples{loss}.</p>"
            '<table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
            f"{rows}</table>")


def _trace_html(tr: Trace, true_label: str | None) -> str:
    verdict = ""
    if true_label is not None:
        verdict = f" (true: {_e(true_label)})"
        if true_label != tr.label:
            verdict = f' <span class="wrong">{verdict}</span>'

    head = "".join(f"<th>p({_e(n)})</th>" for n in tr.label_names) + "".join(
        f"<th>mean {_e(g)}</th>" for g in tr.gates)
    rows = []
    for t, token in enumerate(tr.tokens):
        word = _e(token) if tr.known[t] else f'<span class="unk">{_e(token)}</span>'
        cells = "".join(f"<td>{p:.3f}</td>" for p in tr.probs[t].tolist()) + "".join(
            f"<td>{float(a[t].mean()):.3f}</td>" for a in tr.gates.values())
        rows.append(f'<tr><td class="l">{word}</td>{cells}</tr>')
    return (f"<h3>“{_e(tr.text)}” → {_e(tr.label)}{verdict}</h3>"
            f'<table><tr><th class="l">word</th>{head}</tr>{"".join(rows)}</table>')


def _samples(path: Path) -> list[dict]:
    """samples.json: a list of {"text": non-empty string, "label": string or null}."""
    samples = _read_json(path, [])
    ok = isinstance(samples, list) and all(
        isinstance(s, dict) and isinstance(s.get("text"), str) and s["text"].strip()
        and isinstance(s.get("label"), (str, type(None))) for s in samples)
    if not ok:
        raise UserError('expected a list of {"text": "...", "label": "..."} with non-empty texts; fix it, delete it '
                        "or train again", path=path)
    return samples


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON ({e.msg}); restore the file or train again", path=path, line=e.lineno) \
            from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text; restore the file or train again", path=path) from None


def _e(value) -> str:
    return html.escape(str(value))

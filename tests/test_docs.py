"""docs/questions.md is exactly what docs/make_figures.py writes from the numbers it stored, and every
figure it shows is there: the page cannot drift from the measurements by hand editing."""

from __future__ import annotations

import importlib.util
import json
import re

from tests.conftest import REPO

DOCS = REPO / "docs"


def _make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_questions_page_is_generated_from_the_stored_numbers():
    numbers = json.loads((DOCS / "figures" / "numbers.json").read_text())
    expected = _make_figures().questions_md(**numbers)
    assert (DOCS / "questions.md").read_text(encoding="utf-8") == expected, "run `make figures` and commit"


def test_every_figure_the_page_shows_exists():
    page = (DOCS / "questions.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert len(images) >= 5
    for image in images:
        data = (DOCS / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", image


def test_stored_numbers_hold_no_run_times():
    """`make figures` on an unchanged tree rewrites these files byte for byte: no timing may sit in them."""
    def keys(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield k
                yield from keys(v)
        elif isinstance(o, list):
            for v in o:
                yield from keys(v)

    for name in ("numbers.json", "memory.json"):
        found = [k for k in keys(json.loads((DOCS / "figures" / name).read_text())) if "second" in k or "time" in k]
        assert not found, f"{name} stores {found}"


def _reference_results():
    spec = importlib.util.spec_from_file_location("reference_results", REPO / "benchmarks" / "reference_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reference_table_is_the_stored_output_of_its_script():
    ref = _reference_results()
    results = json.loads(ref.JSON.read_text())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert ref.readme_section(results) in readme, "run `python benchmarks/reference_results.py` and commit"
    rows = [r for r in results["rows"] if "command" in r]
    assert [(r["data"], r["config"]["cell"]) for r in rows] == [(d, c) for d in ref.RUNS for c in ref.RUNS[d]]
    for r in rows:  # the stored command is the script's command for that row (same flags, same --out)
        assert r["command"] == ref.train_command(r["data"], r["config"]["cell"], "runs/reference")


def test_each_reference_command_gives_the_config_its_row_was_trained_with(monkeypatch):
    """The README's command lines, parsed by rnnlab's own CLI, train with exactly the stored config.json."""
    import shlex

    from rnnlab import cli
    from rnnlab import train as train_module
    from rnnlab.config import Config

    ref = _reference_results()
    rows = [r for r in json.loads(ref.JSON.read_text())["rows"] if "command" in r]
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, data, out, **kw: seen.append((config, data, out)))
    for r in rows:
        seen.clear()
        argv = shlex.split(r["command"])
        assert argv[:2] == ["rnnlab", "train"]
        assert cli.main(argv[1:]) == 0
        ((config, data, out),) = seen
        stored, now = r["config"], config.to_dict()
        assert {k: now[k] for k in stored} == stored, r["command"]
        assert all(now[k] == getattr(Config(), k) for k in set(now) - set(stored))  # settings added since: defaults
        assert data == [ref.DATASETS[r["data"]]] and str(out) == f"runs/reference/{r['data']}-{r['config']['cell']}"

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

"""Shared test helpers: where the real data lives, and a runner for the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, timeout: float = 600):
    """`python -m rnnlab ARGS` in a fresh process; returns the CompletedProcess (text mode)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "rnnlab", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout)


def require_compiled() -> None:
    """Tests of engine="compiled" need the C++ time loop: it builds once per machine (cached). Where it
    cannot build (no compiler) they are skipped, except under CI=true, where that is a failure."""
    import pytest

    from rnnlab import engine

    try:
        engine.load()
    except RuntimeError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the compiled time loop did not build under CI: {e}")
        pytest.skip(f"the compiled time loop is not available here: {e}")

"""Shared test helpers: where the real data lives, and a runner for the CLI in a subprocess.

One torch thread for the whole suite and for every process it starts (OMP_NUM_THREADS is inherited):
the models under test are tiny, and on a busy two-core machine torch's second thread mostly spins
waiting for a core. With two threads per process and two other jobs running, `make test` took
14 min instead of 2 (issue 12); set once here, not file by file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses: rnnlab CLI runs, torchrun workers, notebook kernels
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, timeout: float = 600):
    """`python -m rnnlab ARGS` in a fresh process; returns the CompletedProcess (text mode)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "rnnlab", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout)


def can_compile() -> bool:
    """A C++ compiler and ninja, which torch.utils.cpp_extension builds with."""
    import shutil

    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")])) is not None


def require_compiled() -> None:
    """Tests of engine="compiled" need the C++ time loop: it builds once per machine (cached). Where no
    compiler is, they are skipped with the reason; where one is (and always under CI=true), a failed build
    fails them, so a broken loop.cpp cannot hide behind a skip."""
    import pytest

    from rnnlab import engine

    try:
        engine.load()
    except RuntimeError as e:
        if os.environ.get("CI") == "true" or can_compile():
            pytest.fail(f"the compiled time loop did not build, though a compiler is here: {e}")
        pytest.skip(f"the compiled time loop is not available here (no C++ compiler or ninja): {e}")


def pytest_sessionstart(session) -> None:
    """Build the compiled time loop once before any test runs (a no-op when it is cached), so that tests
    running `rnnlab` in a subprocess find it built and its one-time "compiling" line never reaches them."""
    from rnnlab import engine

    try:
        engine.load()
    except RuntimeError:
        pass  # no compiler here: engine="auto" falls back to Python (require_compiled skips, or fails under CI)

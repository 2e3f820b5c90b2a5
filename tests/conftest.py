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

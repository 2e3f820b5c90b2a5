"""The lab handout's experiment: its bar, its determinism, its files, its bad input."""

from __future__ import annotations

import struct

import pytest
import torch

from rnnlab.config import Config
from rnnlab.lab import run_lab
from tests.conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_lab_meets_the_handouts_bar(tmp_path):
    logs = []
    result = run_lab(Config.lab(), tmp_path, log=logs.append)
    assert len(result.loss_history) == 300
    assert result.loss_history[-1] <= 0.02  # the handout's run reached 0.0100
    assert result.loss_history[-1] < result.loss_history[0] / 50
    assert result.predictions == [0, 1]  # "... bad" -> 0, "... good" -> 1
    epoch_lines = [line for line in logs if line.startswith("Epoch [")]
    assert epoch_lines[0] == f"Epoch [50/300] - Loss: {result.loss_history[49]:.4f}"
    assert len(epoch_lines) == 6
    assert "\n==== Testing ====" in logs
    assert any(line.startswith("Sentence: ['The', 'movie', 'is', 'bad'] → Prediction: 0") for line in logs)
    for p in result.probabilities:
        assert sum(p) == pytest.approx(1.0, abs=1e-6)
    assert {f.name for f in result.files} >= {"loss_curve.png", "trajectory.png", "config.json", "history.csv"}
    width, height = png_size(tmp_path / "trajectory.png")  # n = 2: the states drawn in the plane
    assert width >= 300 and height >= 300


@pytest.mark.parametrize("hidden,phi", [(5, "tanh"), (1, "tanh"), (2, "relu")])
def test_trajectory_is_drawn_for_any_state_size(tmp_path, hidden, phi):
    """n > 2 and n = 1: on principal components (one of them at 0 for n = 1); relu states are not bounded."""
    result = run_lab(Config.lab(epochs=2, hidden=hidden, phi=phi), tmp_path, log=lambda _: None)
    assert "trajectory.png" in {f.name for f in result.files}
    width, height = png_size(tmp_path / "trajectory.png")
    assert width >= 300 and height >= 300


def test_lab_is_deterministic_and_independent_of_global_rng(tmp_path):
    a = run_lab(Config.lab(epochs=60), tmp_path / "a", log=lambda _: None)
    torch.manual_seed(1234)  # disturbing the global generator must not change the run
    torch.rand(100)
    b = run_lab(Config.lab(epochs=60), tmp_path / "b", log=lambda _: None)
    assert a.loss_history == b.loss_history  # bit for bit
    assert a.states == b.states
    c = run_lab(Config.lab(epochs=60, seed=7), tmp_path / "c", log=lambda _: None)
    assert c.loss_history != a.loss_history


def test_manual_backward_gives_the_same_lab_run(tmp_path):
    a = run_lab(Config.lab(epochs=50), tmp_path / "a", log=lambda _: None)
    b = run_lab(Config.lab(epochs=50, backward="manual"), tmp_path / "b", log=lambda _: None)
    assert b.loss_history == pytest.approx(a.loss_history, rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_cli_lab_prints_the_same_figures_twice_and_writes_a_png(tmp_path):
    runs = [run_cli("lab", "--out", str(tmp_path / f"run{i}")) for i in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    strip = [r.stdout.replace(str(tmp_path / "run1"), str(tmp_path / "run0")) for r in runs]
    assert strip[0] == strip[1]
    assert "Epoch [300/300] - Loss: " in runs[0].stdout
    width, height = png_size(tmp_path / "run0" / "loss_curve.png")
    assert width >= 300 and height >= 200
    assert (tmp_path / "run0" / "loss_curve.png").stat().st_size > 5000  # a drawn curve, not a blank


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sentence", "The movie is great"], "unknown word 'great'"),
        (["--epochs", "0"], "--epochs 0"),
        (["--lr", "-1"], "--lr -1"),
        (["--hidden", "0"], "--hidden 0"),
        (["--phi", "sigmoid"], "invalid choice"),
    ],
)
def test_cli_lab_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    r = run_cli("lab", "--out", str(tmp_path), *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

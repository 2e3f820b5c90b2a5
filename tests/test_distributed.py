"""Tests for rnnlab.distributed: data-parallel training on torch.distributed (gloo, on 127.0.0.1 only).

What they pin down:
- two processes under torchrun end with the weights of one process with the same global batch and seed
  (1e-6), a short last batch that leaves one rank without rows included; only rank 0 writes; the
  two-process model.pt loads and predicts in this single process;
- a rank that dies or hangs: the other stops with one "rank lost" line within a bounded time, last.pt
  stays intact, and --resume with two processes ends with the uninterrupted run's weights;
- rank 0's refusal (a folder that already holds a run) stops every rank with rank 0's message;
- a batch smaller than the number of processes is a one-line error before any process group exists;
- one process never touches torch.distributed; how a batch's rows are shared out.

The runs start their ranks themselves (environment variables, as torchrun sets them) where a test must
signal one rank; torchrun otherwise. Every process runs one thread (a two-core machine) and every
subprocess has a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnlab import checkpoint, distributed
from rnnlab.cli import main
from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.evaluate import predict
from rnnlab.train import train
from tests.conftest import REPO
from tests.test_train import NEGATIVE, POSITIVE, quiet, weights, write_tsv

TIMEOUT_S = 120  # the most any subprocess here may take; a hang fails the test instead of blocking it

# 45 training sentences in batches of 4: eleven batches of 4 (2 rows per rank) and one of 1 (rank 1 has
# none). SGD with momentum and clipping; dropout 0, the setting for which equality is promised.
CONFIG = Config(cell="gru", hidden=8, embed_dim=8, optimizer="sgd", lr=0.1, momentum=0.9, batch_size=4, epochs=3,
                patience=None, seed=3)
FLAGS = ["--cell", "gru", "--hidden", "8", "--embed-dim", "8", "--optimizer", "sgd", "--lr", "0.1", "--momentum",
         "0.9", "--batch-size", "4", "--epochs", "3", "--patience", "0", "--seed", "3", "--no-plots"]
SENTENCES = ["a great film", "boring and slow", "the plot was good but the music was awful"]


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    """train.tsv (45 sentences) and val.tsv (15), both classes in each."""
    rows = ([(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]) * 3
    return write_tsv(tmp_path / "train.tsv", rows[:45]), write_tsv(tmp_path / "val.tsv", rows[45:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(REPO / "src"), **extra)
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over loopback only
    return env


def torchrun(*args: str) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m rnnlab ARGS` on 127.0.0.1, started in the background."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "rnnlab", *args]
    return subprocess.Popen(command, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_ranks(*args: str, world_size: int = 2) -> list[subprocess.Popen]:
    """The ranks of one job started by hand, with the environment torchrun gives them."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, "-m", "rnnlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=worker_env(WORLD_SIZE=str(world_size), RANK=str(r), LOCAL_RANK=str(r),
                                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
            for r in range(world_size)]


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out, err


def train_flags(data: tuple[Path, Path], out: Path, *more: str) -> list[str]:
    return ["train", "--data", str(data[0]), "--val", str(data[1]), "--out", str(out), *FLAGS, *more]


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        err = (a[k] - b[k]).abs().max().item()
        assert err <= atol, f"{k} differs by {err:.2e}"


# -- two processes are one process ----------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_process(tmp_path, data):
    job = torchrun(*train_flags(data, tmp_path / "two"))
    one = train(CONFIG, data[0], tmp_path / "one", val_data=data[1], log=quiet, plots=False)  # meanwhile, here
    rc, out, err = finish(job)
    assert rc == 0, err

    two = tmp_path / "two"
    assert checkpoint.read(two)["config"] == CONFIG.to_dict()
    assert_close_weights(weights(two, checkpoint.LAST), weights(one.out_dir, checkpoint.LAST))
    assert_close_weights(weights(two), weights(one.out_dir))
    progress = checkpoint.read(two, checkpoint.LAST)["progress"]
    for a, b in zip(progress["history"], one.history):  # the logged figures are those of the whole batch
        assert (a["epoch"], a["train_acc"], a["val_acc"]) == (b["epoch"], b["train_acc"], b["val_acc"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    assert out.count("epoch   1 ") == 1 and out.count(f"wrote {two / 'model.pt'}") == 1  # rank 1 is silent

    # the two-process checkpoint is an ordinary one: it loads and predicts in this single process
    predicted, expected = predict(two, SENTENCES), predict(one.out_dir, SENTENCES)
    assert [p["label"] for p in predicted] == [p["label"] for p in expected]
    for p, q in zip(predicted, expected):
        assert p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-5)


# -- a lost rank ------------------------------------------------------------------------------------------
def lose_rank_1(data, out: Path, sig: int, *flags: str) -> tuple[int, str, float]:
    """Start two ranks, send `sig` to rank 1 once rank 0 has saved last.pt; rank 0's (code, stderr, seconds)."""
    ranks = start_ranks(*train_flags(data, out, *flags))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (out / checkpoint.LAST).exists():
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()
            time.sleep(0.02)
        os.kill(ranks[1].pid, sig)
        t0 = time.monotonic()
        rc, _, err = finish(ranks[0])
        return rc, err, time.monotonic() - t0
    finally:
        for r in ranks:
            r.kill()
            r.communicate()


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_other_and_the_run_resumes_exactly(tmp_path, data):
    out, epochs = tmp_path / "run", ["--epochs", "30"]  # long enough to be under way when rank 1 dies
    rc, err, seconds = lose_rank_1(data, out, signal.SIGKILL, *epochs)
    assert rc == 2 and seconds < 30, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("rnnlab train: error: rank lost: process 0 of 2 stopped")
    assert f"the last checkpoint in {out} is intact; continue with --resume" in err
    saved = checkpoint.read(out, checkpoint.LAST)["progress"]  # a complete checkpoint, between two epochs
    assert 1 <= saved["epoch"] < 30 and saved["step"] == 0

    job = torchrun(*train_flags(data, out, *epochs, "--resume"))
    uninterrupted = train(Config(**{**CONFIG.to_dict(), "epochs": 30}), data[0], tmp_path / "one", val_data=data[1],
                          log=quiet, plots=False)
    rc, stdout, err = finish(job)
    assert rc == 0, err
    assert f"resuming {out} at epoch {saved['epoch'] + 1}" in stdout
    # ten times the rounding allowed after 3 epochs: 30 epochs of momentum SGD compound it
    assert_close_weights(weights(out, checkpoint.LAST), weights(uninterrupted.out_dir, checkpoint.LAST), atol=1e-5)


@pytest.mark.slow
def test_a_rank_that_hangs_stops_the_other_after_the_timeout(tmp_path, data):
    rc, err, seconds = lose_rank_1(data, tmp_path / "run", signal.SIGSTOP, "--epochs", "30", "--dist-timeout", "2")
    assert rc == 2 and 2 <= seconds < 30, err
    assert "rank lost: process 0 of 2" in err and "did not answer for 2 s" in err and err.count("\n") == 1
    checkpoint.read(tmp_path / "run", checkpoint.LAST)


@pytest.mark.slow
def test_rank_0_refusing_to_start_stops_every_rank_with_its_message(tmp_path, data):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / checkpoint.BEST).write_bytes(b"a run was here")
    results = [finish(r) for r in start_ranks(*train_flags(data, tmp_path / "run"))]
    for rc, _, err in results:
        assert rc == 2 and err.count("\n") == 1 and "already holds a checkpoint" in err, err


# -- errors before anything starts, and a single process ------------------------------------------------
def test_a_batch_smaller_than_the_number_of_processes_is_a_user_error(data, tmp_path, monkeypatch, capsys):
    for name, value in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=r"--batch-size 1 is smaller than the 2 processes.*--batch-size 2 or more"):
        distributed.launch(Config(batch_size=1))
    assert main(train_flags(data, tmp_path / "run", "--batch-size", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --batch-size 2 or more, or fewer processes" in err
    assert not torch.distributed.is_initialized() and not (tmp_path / "run").exists()


def test_one_process_never_touches_torch_distributed(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a single process must not start a process group")

    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    for world_size in (None, "1"):
        if world_size is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world_size)
        team = distributed.launch(CONFIG)
        assert type(team) is distributed.Alone and team.is_main and team.world_size == 1


def test_each_rank_takes_every_other_row_and_a_rank_without_rows_runs_a_stand_in():
    x = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0]])  # (B 5, T 4)
    lengths, y = torch.tensor([3, 1, 4, 2, 1]), torch.tensor([0, 1, 0, 1, 1])
    ranks = [distributed.DataParallel(r, 2, "gloo", 1.0) for r in range(2)]
    x0, lengths0, y0, rows0 = ranks[0].shard((x, lengths, y), "cpu")
    x1, lengths1, y1, rows1 = ranks[1].shard((x, lengths, y), "cpu")
    assert (rows0, rows1) == (3, 2)  # rows 0, 2, 4 and rows 1, 3: every row once
    assert torch.equal(x0, x[[0, 2, 4]]) and torch.equal(y0, y[[0, 2, 4]]) and torch.equal(lengths0, lengths[[0, 2, 4]])
    assert torch.equal(x1, x[[1, 3], :2]) and torch.equal(y1, y[[1, 3]])  # padding cut to the shard's longest
    _, _, y_alone, rows = ranks[1].shard((x[:1], lengths[:1], y[:1]), "cpu")  # a batch of one row
    assert rows == 0 and len(y_alone) == 1  # runs row 0, counts nothing

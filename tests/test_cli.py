"""The command line as a new user meets it (issue 12): help, --version, misspelled commands, --device,
predict's one output per input line, loud warnings for unknown words, a header-only file.

Everything runs through `rnnlab.cli.main` in this process (no torch import to wait for); the one
tiny model is trained once for the file.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from rnnlab import rundir
from rnnlab.cli import build_parser, main
from rnnlab.config import Config, check_device
from rnnlab.errors import UserError
from rnnlab.train import train
from tests.test_train import quiet, sentiment_tsv, tiny, write_tsv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-run")
    return train(tiny(epochs=1), sentiment_tsv(folder), folder / "run", log=quiet, plots=False, progress=False)


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"rnnlab {command}: error: "), err
    return err[0]


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_version_and_did_you_mean(capsys):
    from rnnlab import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"rnnlab {__version__}"
    with pytest.raises(SystemExit) as e:
        main(["trian", "--data", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith("did you mean train?")
    with pytest.raises(SystemExit):
        main(["xyzzy"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_every_option_has_help_and_every_command_a_description():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        if name == "bench":  # its options belong to the benchmark's own parser
            continue
        assert sub.description, f"`rnnlab {name}` has no description"
        for action in sub._actions:
            assert action.help, f"`rnnlab {name} {action.option_strings or action.dest}` has no help"
            default = action.default
            if default not in (None, False, "==SUPPRESS==") and action.option_strings and action.dest != "help":
                assert "default" in action.help, f"`rnnlab {name} {action.option_strings[0]}`: default unstated"


@pytest.mark.parametrize("device", ["cuda", "gpu", "mps", "cuda:7", "tpu"])
def test_an_unavailable_device_is_one_line_before_any_work(device, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the device is available")  # the CI machines have none
    assert main(["train", "--data", str(sentiment_tsv(tmp_path)), "--device", device,
                 "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys, "train")
    assert f"--device {device}:" in line and "pass --device cpu" in line and "can use cpu" in line
    assert not (tmp_path / "run").exists()


def test_cpu_is_always_a_device():
    assert check_device("cpu") == "cpu" and check_device("cpu:0") == "cpu:0"
    with pytest.raises(UserError, match="not a device name"):
        Config(device="gpu").validate()


def test_hints_quote_the_train_defaults_not_the_lab():
    for field, value in [("epochs", 0), ("hidden", 0)]:
        with pytest.raises(UserError) as e:
            Config(**{field: value}).validate()
        assert f"e.g. --{field} {getattr(Config, field)}" in str(e.value)


def test_predict_keeps_one_output_per_stdin_line(run, monkeypatch, capsys):
    stdin(monkeypatch, "a great film\n\n   \nthe worst movie this year\n")
    assert main(["predict", "--checkpoint", str(run.out_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    assert [r.get("error") for r in rows] == [None, "blank line: nothing to classify",
                                             "blank line: nothing to classify", None]
    assert rows[0]["text"] == "a great film" and "label" in rows[0] and rows[3]["text"].startswith("the worst")
    stdin(monkeypatch, "a great film\n\nthe worst movie this year\n")
    assert main(["predict", "--checkpoint", str(run.out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].startswith("-\terror: line 2: blank line")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_mostly_unknown_words_get_a_loud_warning(run, tmp_path, monkeypatch, capsys, command):
    known, unknown = "a great film", "zork blorp quux"
    for text, warned in [(known, False), (unknown, True)]:
        if command == "predict":
            assert main(["predict", "--checkpoint", str(run.out_dir), text]) == 0
        else:
            data = write_tsv(tmp_path / "eval.tsv", [(text, "pos"), (text, "neg")])
            assert main(["evaluate", "--checkpoint", str(run.out_dir), "--data", str(data), "--json"]) == 0
        err = capsys.readouterr().err
        assert ("warning: 100.0% of the words are unknown" in err) is warned, err


def test_a_header_only_file_says_it_has_no_data_rows(tmp_path, capsys):
    header = tmp_path / "header.tsv"
    header.write_text("text\tlabel\n")
    assert main(["train", "--data", str(header), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys, "train")
    assert "header.tsv:1:" in line and "no data rows" in line


# -- output folders: nothing the user had is overwritten, code never written into -----------------------
def test_out_refuses_source_folders_even_with_force(tmp_path, capsys):
    import rnnlab

    package = Path(rnnlab.__file__).resolve().parent
    code = tmp_path / "mycode"
    code.mkdir()
    (code / "model.py").write_text("x = 1\n")
    for folder in [package, package.parent, code]:
        for force in ([], ["--force"]):
            assert main(["gradflow", "--length", "2", "--hidden", "1", "--out", str(folder), *force]) == 2
            assert "source folder" in one_error_line(capsys, "gradflow")
    assert (code / "model.py").read_text() == "x = 1\n" and sorted(p.name for p in code.iterdir()) == ["model.py"]


def test_out_refuses_other_files_unless_forced_and_reuses_its_own_runs(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    assert rundir.made_by(mine) is None
    with pytest.raises(UserError, match="holds files that are not an rnnlab run; pass a new or empty --out, or "
                                        "--force"):
        rundir.prepare(mine, "gradflow")
    assert rundir.prepare(mine, "gradflow", force=True) == mine and (mine / "thesis.txt").exists()

    run = rundir.prepare(tmp_path / "a" / "b", "memory")  # made with its parents, and marked
    assert run.is_dir() and rundir.made_by(run) == "memory"
    (run / "memory.json").write_text("{}")
    assert rundir.prepare(run, "memory") == run  # the same command may replace its own results
    with pytest.raises(UserError, match="holds a `rnnlab memory` run"):
        rundir.prepare(run, "gradflow")
    old = tmp_path / "old-train-run"  # made before the marker existed: recognised by its files
    old.mkdir()
    (old / "config.json").write_text("{}")
    assert rundir.made_by(old) == "train"
    assert rundir.prepare(old, "train", create=False) == old and not (old / rundir.MARKER).exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="this is a file, not a folder"):
        rundir.prepare(tmp_path / "file", "lab")


def test_train_into_a_foreign_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["train", "--data", str(sentiment_tsv(tmp_path)), "--out", str(tmp_path)]) == 2
    assert "not an rnnlab run" in one_error_line(capsys, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "reviews.tsv"]


# -- --resume reads the run's settings ---------------------------------------------------------------------
def test_resume_reads_the_run_settings_and_epochs_may_grow(tmp_path, capsys):
    """A run made with non-default flags resumes with none of them retyped, and --epochs extends it: the
    result equals a run trained for the longer budget from the start (the batches of an epoch depend on
    (seed, epoch) only)."""
    data = str(sentiment_tsv(tmp_path))
    flags = ["--cell", "lstm", "--hidden", "6", "--embed-dim", "5", "--lr", "0.05", "--batch-size", "8",
             "--patience", "0", "--seed", "4", "--no-plots"]
    assert main(["train", "--data", data, "--out", str(tmp_path / "a"), "--epochs", "1", *flags]) == 0
    assert main(["train", "--data", data, "--out", str(tmp_path / "a"), "--resume", "--epochs", "2"]) == 0
    assert main(["train", "--data", data, "--out", str(tmp_path / "b"), "--epochs", "2", *flags]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / name / "config.json").read_text()) for name in "ab")
    assert a == b and a["cell"] == "lstm" and a["epochs"] == 2
    wa, wb = (torch.load(tmp_path / name / "last.pt", weights_only=True)["weights"] for name in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert main(["train", "--data", data, "--out", str(tmp_path / "a"), "--resume", "--lr", "0.1"]) == 2
    assert "cannot resume with different settings (lr)" in one_error_line(capsys, "train")


def test_abbreviated_flags_are_not_guessed(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--epoch", "3"])
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def test_the_encoding_hint_names_a_flag_that_works(run, tmp_path, capsys):
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("café noir\tpos\nbad film\tneg\n".encode("latin-1"))
    for command in (["evaluate", "--checkpoint", str(run.out_dir)], ["train", "--out", str(tmp_path / "r")]):
        assert main([*command, "--data", str(latin1)]) == 2
        line = one_error_line(capsys, command[0])
        assert "latin1.tsv:1:" in line and "pass --encoding cp1252" in line
    assert main(["evaluate", "--checkpoint", str(run.out_dir), "--data", str(latin1), "--encoding", "cp1252",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


def test_a_run_stopped_before_its_first_validation_is_read_from_last_pt(run, tmp_path, capsys):
    import shutil

    stopped = tmp_path / "stopped"
    shutil.copytree(run.out_dir, stopped)
    (stopped / "model.pt").unlink()
    assert main(["predict", "--checkpoint", str(stopped), "--json", "a great film"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["text"] == "a great film"
    assert err.splitlines() == [f"rnnlab: {stopped} has no model.pt yet (the run stopped before its first "
                                "validation); using last.pt"]
    (stopped / "last.pt").unlink()
    assert main(["predict", "--checkpoint", str(stopped), "a great film"]) == 2
    assert "no checkpoint here" in one_error_line(capsys, "predict")


def test_scoring_draws_a_progress_bar_only_when_asked(run, capsys):
    from rnnlab.evaluate import predict_ids

    ids = [[1, 2, 3]] * 600  # three batches of 256
    quiet_probs = predict_ids(run.model, ids, progress=False)
    assert capsys.readouterr().err == ""
    assert torch.equal(predict_ids(run.model, ids, progress=True), quiet_probs)
    assert "scoring" in capsys.readouterr().err  # tqdm writes to stderr, where train's bar goes too


def test_every_choice_comes_from_choices_py():
    """One list per setting (issue 14): the parser, Config.validate and the library read the same names."""
    from rnnlab import cells, choices, memory, optim

    sub = build_parser()._subparsers._group_actions[0].choices
    flags = {(cmd, a.option_strings[0]): a.choices for cmd, p in sub.items() for a in p._actions
             if a.choices and a.option_strings}
    assert flags[("train", "--cell")] == flags[("lab", "--cell")] == flags[("memory", "--cells")] == choices.CELLS
    assert flags[("train", "--optimizer")] == flags[("memory", "--optimizer")] == choices.OPTIMIZERS
    assert flags[("train", "--backward")] == flags[("lab", "--backward")] == choices.BACKWARDS
    assert flags[("train", "--schedule")] == choices.SCHEDULES and flags[("train", "--level")] == choices.LEVELS
    assert tuple(cells.CELLS) == memory.CELLS == choices.CELLS and optim.OPTIMIZERS == choices.OPTIMIZERS
    for name in choices.CELLS:  # every name builds its cell, and Config accepts it
        assert cells.make_cell(name, 3, 2).name == name
        Config(cell=name).validate()
    with pytest.raises(UserError, match="choose rnn, lstm or gru"):
        Config(cell="transformer").validate()


def test_bench_checks_its_device_like_train(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the device is available")  # the CI machines have none
    assert main(["bench", "--tiny", "--device", "cuda"]) == 2
    assert "--device cuda: not available here" in one_error_line(capsys, "bench")


def test_explain_checks_its_out_before_the_work(run, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["explain", "--checkpoint", str(run.out_dir), "a great film", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not an rnnlab run" in err  # nothing printed before the refusal


def test_the_script_freezes_the_heap_before_exit_and_main_leaves_the_collector_alone(run, capsys):
    """`run` (the `rnnlab` script, `python -m rnnlab`) hands every live object to gc.freeze() once the command
    has returned, so the shutdown's collections skip them; `main`, which this process calls, must not."""
    import gc
    import subprocess

    import rnnlab.cli as cli

    frozen = gc.get_freeze_count()
    assert main(["predict", "--checkpoint", str(run.out_dir), "--json", "a fine film"]) == 0
    assert gc.get_freeze_count() == frozen
    capsys.readouterr()
    assert '\nrnnlab = "rnnlab.cli:run"\n' in (Path(cli.__file__).parents[2] / "pyproject.toml").read_text()
    assert "sys.exit(run())" in Path(cli.__file__).with_name("__main__.py").read_text()
    code = ("import gc, rnnlab.cli as c\nc.main = lambda: 3\nassert gc.get_freeze_count() == 0\n"
            "print(c.run(), gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "3" and int(out[1]) > 10_000, out  # main's return code passes through; torch's objects frozen

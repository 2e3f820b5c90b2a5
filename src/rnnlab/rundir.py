"""Output folders that never overwrite what the user had: `prepare(path, command, force)`.

Every command that writes files (`lab`, `train`, `explain`, `gradflow`, `memory`, `report`) gets its
folder from here before any work is done:

- a new or empty folder is made (with its parents) and marked with a `.rnnlab` file naming the command;
- a folder that already holds a run of the same command is reused (its files are replaced; `train`
  itself then refuses a folder with a checkpoint unless `--resume`);
- a folder with anything else in it (another command's run, the user's own files) is refused unless
  `--force`;
- a source tree is refused always, `--force` or not: the rnnlab package itself, the folder holding it,
  or a folder with a `pyproject.toml`, `setup.py`, `__init__.py` or other `.py` files in it.

Runs written before the marker existed are recognised by the files each command writes.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab.errors import UserError

MARKER = ".rnnlab"  # holds the name of the command that made the folder
# the files each command writes, for folders made before the marker (lab before train: both write config.json)
SIGNATURES = {"lab": ("loss_curve.png",), "train": ("config.json", "model.pt", "last.pt"),
              "explain": ("explain.json",), "gradflow": ("gradflow.json",), "memory": ("memory.json",),
              "report": ("report.html",)}
SOURCE_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "__init__.py")


def made_by(folder: Path) -> str | None:
    """The command whose run this folder holds, or None if it is not an rnnlab run."""
    marker = folder / MARKER
    if marker.is_file():
        return marker.read_text(encoding="utf-8", errors="replace").strip() or None
    return next((command for command, names in SIGNATURES.items() if any((folder / n).is_file() for n in names)),
                None)


def _is_source_tree(folder: Path) -> bool:
    import rnnlab

    package = Path(rnnlab.__file__).resolve().parent
    target = folder.resolve()
    if target in (package, package.parent) or package in target.parents:
        return True
    return target.is_dir() and (any((target / name).exists() for name in SOURCE_FILES) or
                                any(target.glob("*.py")))


def prepare(path: str | Path, command: str, force: bool = False, create: bool = True) -> Path:
    """The output folder of `command`, checked and created now, so that nothing is lost and a bad --out is an
    error before any work is done. With create=False it is only checked (`train` makes its folder once
    its data has loaded, and recognises its runs by their config.json)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError("this is a file, not a folder; pass a folder to --out", path=out)
    if _is_source_tree(out):
        raise UserError("this is a source folder, and rnnlab never writes into code; pass --out runs/NAME",
                        path=out)
    if out.is_dir() and any(out.iterdir()):
        owner = made_by(out)
        if owner != command and not force:
            what = f"a `rnnlab {owner}` run" if owner else "files that are not an rnnlab run"
            raise UserError(f"this folder holds {what}; pass a new or empty --out, or --force to write into it "
                            "anyway", path=out)
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).exists():
            (out / MARKER).write_text(command + "\n", encoding="utf-8")
    except (NotADirectoryError, FileExistsError, PermissionError) as e:
        raise UserError(f"cannot make this folder ({e.strerror}); pass another --out", path=out) from None
    return out

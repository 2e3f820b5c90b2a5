"""User-facing errors.

A `UserError` is bad input that the user can fix: a malformed data row, an unknown word, a negative
learning rate, a corrupt checkpoint. The CLI catches it and prints its one-line message to stderr,
exits with code 2 and shows no traceback. Library callers get an ordinary exception.

Messages name the file and line where there is one, say what is wrong, and say how to fix it:
    "data.tsv:17: expected 2 columns, found 1; separate text and label with a TAB"
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input with a one-line explanation and a fix; the CLI exits 2 without a traceback."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)

"""Errors that sccohort raises for bad input, with where and how to fix it."""

from __future__ import annotations

from pathlib import Path


class SccohortError(Exception):
    """Base class of every error sccohort raises on purpose."""


class InputError(SccohortError):
    """Bad user input: a file, a table row or column, a config key, a sample.

    The message reads ``<file>, row R, column 'C', sample 'S': <problem>. <hint>``;
    the command-line interface prints it without a traceback and exits with code 2.

    Parameters
    ----------
    problem
        What is wrong, in one sentence.
    file, row, column, sample, key
        Where it is wrong; ``row`` is the 1-based line number in the file as a user
        sees it in an editor (the header is line 1), ``key`` a config key.
    hint
        How to fix it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        sample: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.row = row
        self.column = column
        self.sample = sample
        self.key = key
        self.hint = hint
        super().__init__(self._format())

    def __reduce__(self) -> tuple:
        # keep the keyword-only fields when pickled (errors raised on Dask workers)
        fields = ("file", "row", "column", "sample", "key", "hint")
        return (_rebuild_input_error, (self.problem, {f: getattr(self, f) for f in fields}))

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"line {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.key is not None:
            where.append(f"key '{self.key}'")
        if self.sample is not None:
            where.append(f"sample '{self.sample}'")
        text = (", ".join(where) + ": " if where else "") + self.problem.rstrip(".") + "."
        if self.hint:
            text += " " + self.hint.rstrip(".") + "."
        return text


def _rebuild_input_error(problem: str, fields: dict) -> InputError:
    return InputError(problem, **fields)

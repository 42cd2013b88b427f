"""Errors and warnings that sccohort raises on purpose, with where and how to fix them.

Warnings: every warning meant for the user derives from :class:`SccohortWarning` (a plain
``UserWarning`` raised by code of the package counts as one too, see `is_own_warning`).
The ``sccohort`` command prints each as one line ``warning: <message>``; every other
warning (numpy, pandas, anndata, mudata, dask ...) stays off the console and is recorded in
``run.json`` under ``"warnings"`` by :func:`sccohort.pipeline.run_pipeline`.
"""

from __future__ import annotations

from pathlib import Path

#: The package's folder: a plain ``UserWarning`` raised from a file inside it is ours.
PACKAGE_DIR = Path(__file__).resolve().parent


class SccohortWarning(UserWarning):
    """Base class of every warning sccohort raises for the user to read.

    Parameters
    ----------
    message
        One sentence: what happened and what it means for the results.
    details
        Optional longer text kept in ``run.json`` but not printed (e.g. a traceback).
    """

    def __init__(self, message: str = "", *, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details

    def __reduce__(self) -> tuple:
        # keep ``details`` when pickled (warnings sent back from Dask workers)
        return (_rebuild_warning, (type(self), str(self), self.details))


def _rebuild_warning(cls: type, message: str, details: str | None) -> SccohortWarning:
    return cls(message, details=details)


def is_own_warning(category: type[Warning], filename: str | None) -> bool:
    """Whether a warning is sccohort's own, for the console to show.

    It is when its category is a `SccohortWarning`, or a plain ``UserWarning`` raised from
    a file of the package (``filename`` as :mod:`warnings` reports it).
    """
    if issubclass(category, SccohortWarning):
        return True
    if category is not UserWarning or not filename:
        return False
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


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

"""CSV tables with line numbers, control-character checks and path kinds (cohort inputs)."""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sccohort.errors import InputError

FORMATS = ("10x_h5", "10x_mtx", "h5ad", "h5mu", "rhapsody_csv", "cosmx", "xenium", "spatial")
#: Formats of imaging-based spatial panels (`sccohort.io.spatial`): slides, not suspensions.
SPATIAL_FORMATS = ("cosmx", "xenium", "spatial")
#: Formats whose ``path`` is a folder.
FOLDER_FORMATS = ("10x_mtx", "cosmx", "xenium")
SAMPLE_REQUIRED = ("sample_id", "donor_id", "path")
SAMPLE_OPTIONAL = ("raw_path", "batch", "timepoint", "tissue", "format", "modality")
#: Values of the sample sheet's ``modality`` column (see `sccohort.io.read.read_sample`).
MODALITIES = ("rna", "prot")
DEFAULT_TIMEPOINT = "baseline"
DEFAULT_TISSUE = "blood"
VARIABLE_TYPES = ("binary", "categorical", "continuous")
#: Cell texts read as a missing value in the clinical table (after stripping spaces).
MISSING_TOKENS = frozenset({"", "NA", "N/A", "na", "n/a", "NaN", "nan", "null", "NULL", "None"})
INTERCEPT = "intercept"

VariableType = Literal["binary", "categorical", "continuous"]
Level = str | int | float | bool


def raise_all(problems: Sequence[InputError], what: str = "the inputs") -> None:
    """Raise the problems found, if any, as one :class:`InputError`.

    One problem is raised as it is; several are joined, one per line, into an ``InputError``
    whose ``problems`` attribute lists them.

    Parameters
    ----------
    problems
        The problems found, in the order a user should read them.
    what
        What was checked, for the joined message (``"<n> problems in <what>"``).
    """
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0]
    lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, start=1))
    err = InputError(f"{len(problems)} problems in {what}:\n{lines}")
    err.problems = list(problems)
    raise err


# ---------------------------------------------------------------------------------------
# CSV reading with line numbers


@dataclass
class _Csv:
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # editor line where each row starts

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j] for row in self.rows]


def _read_csv(path: str | Path, what: str) -> _Csv:
    """Read a comma-separated file into stripped strings, keeping each row's line number."""
    path = Path(path)
    if not path.is_file():
        kind = special_file_kind(path)
        if kind is not None:
            raise InputError(f"{what} is {kind}, not a file", file=path, hint="Give a CSV file")
        hint = "It is a folder; give the CSV file inside it" if path.is_dir() else None
        raise InputError(f"{what} not found", file=path, hint=hint or "Check the path")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{what} is not UTF-8 text (byte {exc.object[exc.start]:#04x})",
            file=path,
            row=line,
            hint="Save it as UTF-8 CSV (in Excel: 'CSV UTF-8')",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    last = 0
    try:
        for record in reader:
            start, last = last + 1, reader.line_num
            if not record or all(not c.strip() for c in record):
                continue
            cells = [c.strip() for c in record]
            _refuse_control_characters(cells, header, path, what, start)
            if header is None:
                header, header_line = cells, start
                continue
            if len(cells) != len(header):
                raise InputError(
                    f"this row has {len(cells)} fields but the header (line {header_line}) has "
                    f"{len(header)}",
                    file=path,
                    row=start,
                    hint="Quote fields that contain commas and give every row the same columns",
                )
            rows.append(cells)
            lines.append(start)
    except csv.Error as exc:
        raise InputError(
            f"{what} is not valid CSV ({exc})", file=path, row=reader.line_num
        ) from None
    if header is None:
        raise InputError(f"{what} is empty", file=path, hint="Add a header line and rows")
    for j, name in enumerate(header):
        if not name:
            raise InputError(
                f"header field {j + 1} is empty", file=path, row=header_line, hint="Name it"
            )
        if header.index(name) != j:
            raise InputError(
                f"column '{name}' appears twice in the header", file=path, row=header_line
            )
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t")):
        raise InputError(
            f"the header has a single column '{header[0]}'",
            file=path,
            row=header_line,
            hint="Separate columns with commas, not semicolons or tabs",
        )
    return _Csv(path, header, rows, lines)


#: Control characters (C0, DEL, C1): no cell of a table may hold one. A NUL cannot be
#: stored in HDF5 strings, and the others garble file names, tables and the console.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _refuse_control_characters(
    cells: list[str], header: list[str] | None, path: Path, what: str, line: int
) -> None:
    """Raise an :class:`InputError` naming the first cell of a row with a control character.

    ``header`` is ``None`` while ``cells`` is the header itself.
    """
    for j, cell in enumerate(cells):
        found = CONTROL_CHARACTERS.search(cell)
        if found is None:
            continue
        if header is None:
            column, where = f"header field {j + 1}", "the header"
        else:
            column = header[j] if j < len(header) else f"field {j + 1}"
            where = "this cell"
        raise InputError(
            f"{where} of the {what} holds the control character "
            f"{_visible(found.group())} ({_visible(cell)})",
            file=path,
            row=line,
            column=_visible(column),
            hint="Remove it: cells hold plain text (a line break inside a quoted cell counts too)",
        )


def _visible(text: str) -> str:
    r"""``text`` with each control character written as an escape (``\x00``)."""
    return CONTROL_CHARACTERS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _require_columns(data: _Csv, required: Iterable[str], what: str) -> None:
    missing = [c for c in required if c not in data.header]
    if missing:
        raise InputError(
            f"{what} lacks required column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns found: {', '.join(repr(c) for c in data.header)}",
            file=data.path,
            row=1,
            hint=f"The header must name {', '.join(required)}",
        )


def _absolute(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else base / p))


#: Kinds of path that are neither a regular file nor a folder, as `special_file_kind` names them.
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: str | Path) -> str | None:
    """What a path is when it is neither a regular file nor a folder, judged by ``stat``.

    A count path must be a regular file or a folder (symbolic links are followed). Anything
    else is refused by its type, without opening it: a named pipe blocks its reader until
    something writes into it, and a device such as ``/dev/zero`` never ends.

    Parameters
    ----------
    path
        The path.

    Returns
    -------
    ``"a named pipe (FIFO)"``, ``"a character device"``, ``"a block device"``, ``"a socket"``
    or ``"neither a file nor a folder"``; None for a regular file, a folder, or a path that
    cannot be ``stat``-ed (missing: the caller says so).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = (kind for test, kind in _SPECIAL_KINDS if test(mode))
    return next(kinds, "neither a file nor a folder")

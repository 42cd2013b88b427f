"""Validated donor-level facts: the sample sheet, the clinical table and contrast designs.

A cohort is described by two CSV files. The **sample sheet** lists one row per sample (a
donor at a timepoint in a tissue) and where its counts are; the **clinical table** lists one
row per donor with any clinical variables. A :class:`Contrast` names a clinical comparison
(SRC yes vs no within SSc, say) and :meth:`Contrast.design` turns it into the donor-level
design matrix that every statistics module fits.

Every problem with these inputs raises :class:`~sccohort.errors.InputError` naming the file,
the line as an editor shows it (header = line 1), the column and a hint. Row-level problems
of one file are collected and raised together (:func:`raise_all`), so a user fixes a sheet in
one pass.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sccohort.errors import InputError

FORMATS = ("10x_h5", "10x_mtx", "h5ad", "h5mu", "rhapsody_csv")
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


# ---------------------------------------------------------------------------------------
# Sample sheet


class SampleSheet:
    """The validated sample sheet: one row per sample.

    Attributes
    ----------
    table
        ``DataFrame`` indexed by ``sample_id`` in file order, columns ``donor_id``, ``path``
        (absolute ``Path``), ``raw_path`` (absolute ``Path`` or ``None``), ``batch`` (default:
        the sample id, i.e. one batch per sample), ``timepoint`` (default ``"baseline"``),
        ``tissue`` (default ``"blood"``), ``format`` (one of :data:`FORMATS`, or ``""`` to
        detect it from the path), ``modality`` (one of :data:`MODALITIES`, or ``""``: what a
        count file without feature types holds, or the one modality to read from a file
        that declares several; see `sccohort.io.read.read_sample`).
    path
        The CSV file it was read from (absolute), or ``None``.
    lines
        ``Series`` sample_id -> line of the CSV the sample is on.
    """

    def __init__(self, table: pd.DataFrame, path: Path | None, lines: pd.Series) -> None:
        self.table = table
        self.path = path
        self.lines = lines

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"SampleSheet({len(self)} samples, {self.table['donor_id'].nunique()} donors, "
            f"timepoints {self.timepoints}, file={self.path})"
        )

    @classmethod
    def from_csv(cls, path: str | Path) -> SampleSheet:
        """Read and validate a sample sheet CSV.

        Parameters
        ----------
        path
            CSV with columns ``sample_id, donor_id, path`` and optionally ``raw_path, batch,
            timepoint, tissue, format, modality``.

        Returns
        -------
        SampleSheet
            One row per CSV row, in file order.

        Notes
        -----
        The path rule: a relative ``path`` / ``raw_path`` is relative to the CSV's folder;
        absolute paths and paths that leave that folder (``..``, symbolic links) are
        accepted, since count files often sit on shared storage. What a path names is
        checked instead: it must exist and be a regular file or a folder, judged by
        ``stat`` without opening it (a named pipe, a device such as ``/dev/zero`` or a
        socket is refused here); that the file holds counts of its format (its signature,
        header, arrays) is checked before a run by `sccohort.io.probe.probe_samples`, so
        ``/etc/passwd`` is refused as "not a count file", quickly.
        """
        path = Path(os.path.abspath(Path(path).expanduser()))
        data = _read_csv(path, "sample sheet")
        _check_sheet_header(data, path)
        allowed = SAMPLE_REQUIRED + SAMPLE_OPTIONAL
        get = {c: (data.header.index(c) if c in data.header else None) for c in allowed}
        problems: list[InputError] = []
        records: list[dict] = []
        first_line: dict[str, int] = {}
        seen_visit: dict[tuple[str, str, str], tuple[str, int]] = {}
        for row, line in zip(data.rows, data.lines, strict=True):
            cells = {c: ("" if j is None else row[j]) for c, j in get.items()}
            where = {"file": path, "row": line}
            sid = cells["sample_id"]
            if not sid:
                problems.append(InputError("empty sample_id", column="sample_id", **where))
                continue
            problems += _sample_id_problems(sid, where)
            if sid in first_line:
                problems.append(
                    InputError(
                        f"duplicate sample_id '{sid}' (also on line {first_line[sid]})",
                        column="sample_id",
                        sample=sid,
                        hint="Give every sample a unique id",
                        **where,
                    )
                )
                continue
            first_line[sid] = line
            record = _sample_record(cells, path.parent)
            problems += _record_problems(cells, record, where)
            if record["donor_id"]:
                visit = (record["donor_id"], record["timepoint"], record["tissue"])
                if visit in seen_visit:
                    problems.append(_repeat_visit(visit, seen_visit[visit], sid, where))
                else:
                    seen_visit[visit] = (sid, line)
            records.append(record | {"line": line})
        raise_all(problems)
        table = pd.DataFrame.from_records(records).set_index("sample_id")
        lines = table.pop("line").astype(int)
        table = table[
            ["donor_id", "path", "raw_path", "batch", "timepoint", "tissue", "format", "modality"]
        ]
        return cls(table, path, lines)

    @property
    def sample_ids(self) -> pd.Index:
        """Sample ids in file order."""
        return self.table.index

    @property
    def donors(self) -> pd.Index:
        """Distinct donor ids in order of first appearance."""
        return pd.Index(self.table["donor_id"].unique(), name="donor_id")

    @property
    def timepoints(self) -> list[str]:
        """Distinct timepoints in order of first appearance."""
        return list(self.table["timepoint"].unique())

    def line_of(self, sample_id: str) -> int | None:
        """Line of the sample sheet that a sample is on (``None`` if built in memory)."""
        return int(self.lines[sample_id]) if sample_id in self.lines.index else None

    def samples_at(self, timepoint: str, tissue: str | None = None) -> pd.DataFrame:
        """Rows of :attr:`table` at one timepoint (and tissue, when given), in file order."""
        mask = self.table["timepoint"] == timepoint
        if tissue is not None:
            mask &= self.table["tissue"] == tissue
        return self.table[mask]

    def primary_samples(
        self, timepoint: str = DEFAULT_TIMEPOINT, tissue: str = DEFAULT_TISSUE
    ) -> pd.DataFrame:
        """The samples used for the cross-sectional analyses: one per donor.

        Parameters
        ----------
        timepoint, tissue
            The visit that represents each donor (the study: untreated blood at baseline).

        Returns
        -------
        pandas.DataFrame
            Rows of :attr:`table`, one per donor that has a sample at that visit.
        """
        rows = self.samples_at(timepoint, tissue)
        if rows.empty:
            visits = sorted(set(zip(self.table["timepoint"], self.table["tissue"], strict=True)))
            raise InputError(
                f"no sample has timepoint '{timepoint}' and tissue '{tissue}'",
                file=self.path,
                column="timepoint",
                key="run.primary_timepoint",
                hint="Set run.primary_timepoint / run.primary_tissue to one of the visits in "
                "the sheet: " + ", ".join(f"{t}/{s}" for t, s in visits),
            )
        return rows


# ---------------------------------------------------------------------------------------
# Clinical table


def _check_sheet_header(data: _Csv, path: Path) -> None:
    """The sample sheet has the required columns, no unknown one, and rows."""
    _require_columns(data, SAMPLE_REQUIRED, "the sample sheet")
    allowed = SAMPLE_REQUIRED + SAMPLE_OPTIONAL
    unknown = [c for c in data.header if c not in allowed]
    if unknown:
        raise InputError(
            f"unknown column(s) {', '.join(repr(c) for c in unknown)}",
            file=path,
            row=1,
            column=unknown[0],
            hint=f"Allowed columns: {', '.join(allowed)}; clinical variables belong in "
            "the clinical table",
        )
    if not data.rows:
        raise InputError(
            "the sample sheet has a header but no samples",
            file=path,
            hint="Add one row per sample",
        )


def _sample_record(cells: dict[str, str], base: Path) -> dict[str, Any]:
    """One sample sheet row as the table holds it (defaults filled, paths made absolute)."""
    sid = cells["sample_id"]
    return {
        "sample_id": sid,
        "donor_id": cells["donor_id"],
        "path": _absolute(cells["path"], base) if cells["path"] else None,
        "raw_path": _absolute(cells["raw_path"], base) if cells["raw_path"] else None,
        "batch": cells["batch"] or sid,
        "timepoint": cells["timepoint"] or DEFAULT_TIMEPOINT,
        "tissue": cells["tissue"] or DEFAULT_TISSUE,
        "format": cells["format"].lower(),
        "modality": cells["modality"].lower(),
    }


def _sample_id_problems(sid: str, where: dict[str, Any]) -> list[InputError]:
    if ":" not in sid and "/" not in sid:
        return []
    return [
        InputError(
            f"sample_id '{sid}' contains ':' or '/'",
            column="sample_id",
            sample=sid,
            hint="Cell ids are '<sample_id>:<barcode>' and sample ids name files; "
            "use letters, digits, '_', '-' or '.'",
            **where,
        )
    ]


def _record_problems(
    cells: dict[str, str], record: dict[str, Any], where: dict[str, Any]
) -> list[InputError]:
    """What is wrong with one sample's donor, format, modality and paths."""
    sid, fmt, problems = record["sample_id"], record["format"], []
    if not record["donor_id"]:
        problems.append(InputError("empty donor_id", column="donor_id", sample=sid, **where))
    if fmt and fmt not in FORMATS:
        problems.append(
            InputError(
                f"unknown format '{cells['format']}'",
                column="format",
                sample=sid,
                hint=f"Use one of {', '.join(FORMATS)}, or leave it empty to detect it",
                **where,
            )
        )
    if record["modality"] and record["modality"] not in MODALITIES:
        problems.append(
            InputError(
                f"unknown modality '{cells['modality']}'",
                column="modality",
                sample=sid,
                hint=f"Use one of {', '.join(MODALITIES)} (what a count file without "
                "feature types holds, or the one modality to read from a file with "
                "several), or leave it empty to let the file decide",
                **where,
            )
        )
    for col in ("path", "raw_path"):
        problems += _path_problems(col, cells[col], record[col], fmt, sid, where)
    return problems


def _path_problems(
    col: str, value: str, p: Path | None, fmt: str, sid: str, where: dict[str, Any]
) -> list[InputError]:
    """What is wrong with a sample's ``path`` or ``raw_path`` (judged by ``stat``)."""
    if p is None:
        if col != "path":
            return []
        return [
            InputError(
                "empty path",
                column=col,
                sample=sid,
                hint="Give the counts file or folder of this sample",
                **where,
            )
        ]
    if not p.exists():
        return [
            InputError(
                f"{col} '{value}' does not exist (looked for {p})",
                column=col,
                sample=sid,
                hint="Relative paths are relative to the sample sheet's folder",
                **where,
            )
        ]
    if (kind := special_file_kind(p)) is not None:
        return [
            InputError(
                f"{col} '{value}' is {kind}, not a count file or folder",
                column=col,
                sample=sid,
                hint="Give the count file (or folder) itself; pipes, devices and "
                "sockets are refused without being opened",
                **where,
            )
        ]
    if col == "path" and fmt in FORMATS and p.is_dir() != (fmt == "10x_mtx"):
        kind = "a folder" if p.is_dir() else "a file"
        return [
            InputError(
                f"path {p} is {kind}, which does not fit format '{fmt}'",
                column=col,
                sample=sid,
                hint="10x_mtx is a folder, the other formats are files",
                **where,
            )
        ]
    return []


def _repeat_visit(
    visit: tuple[str, str, str], first: tuple[str, int], sid: str, where: dict[str, Any]
) -> InputError:
    (donor, timepoint, tissue), (other, other_line) = visit, first
    return InputError(
        f"donor '{donor}' has two samples at timepoint '{timepoint}' in "
        f"tissue '{tissue}': '{other}' (line {other_line}) and '{sid}'",
        column="timepoint",
        sample=sid,
        hint="Give each visit its own timepoint, or drop the repeat sample",
        **where,
    )


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _level_sort_key(level: str) -> tuple[int, float, str]:
    number = _parse_float(level)
    return (0, number, "") if number is not None else (1, 0.0, level)


class ClinicalTable:
    """The validated clinical table: one row per donor.

    Attributes
    ----------
    table
        ``DataFrame`` indexed by ``donor_id`` in file order, one column per variable.
        Continuous variables are ``float64``; binary and categorical ones keep their text
        (``object``), missing values are ``NaN``.
    types
        Variable -> ``"binary"``, ``"categorical"`` or ``"continuous"``.
    path
        The CSV file it was read from, or ``None``.
    lines
        ``Series`` donor_id -> line of the CSV.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        types: dict[str, VariableType],
        path: Path | None = None,
        lines: pd.Series | None = None,
    ) -> None:
        self.table = table
        self.types = types
        self.path = path
        self.lines = lines if lines is not None else pd.Series(dtype=int)

    def __repr__(self) -> str:
        return f"ClinicalTable({len(self.table)} donors, types={self.types}, file={self.path})"

    @classmethod
    def from_csv(cls, path: str | Path, types: Mapping[str, str] | None = None) -> ClinicalTable:
        """Read and validate a clinical table CSV.

        Parameters
        ----------
        path
            CSV with a ``donor_id`` column and one column per clinical variable. Empty cells
            and ``NA``-like texts (:data:`MISSING_TOKENS`) are missing values.
        types
            Overrides of the inferred variable types (config ``[clinical.types]``), e.g.
            ``{"age": "continuous"}``. Inference: numeric with more than two distinct values
            -> continuous; two distinct values -> binary; otherwise categorical.

        Returns
        -------
        ClinicalTable
            One row per donor, in file order.
        """
        path = Path(os.path.abspath(Path(path).expanduser()))
        data = _read_csv(path, "clinical table")
        _require_columns(data, ("donor_id",), "the clinical table")
        if not data.rows:
            raise InputError("the clinical table has a header but no donors", file=path)
        problems: list[InputError] = []
        first_line: dict[str, int] = {}
        keep: list[int] = []
        for i, (donor, line) in enumerate(zip(data.column("donor_id"), data.lines, strict=True)):
            if not donor:
                problems.append(
                    InputError("empty donor_id", file=path, row=line, column="donor_id")
                )
            elif donor in first_line:
                problems.append(
                    InputError(
                        f"duplicate donor_id '{donor}' (also on line {first_line[donor]})",
                        file=path,
                        row=line,
                        column="donor_id",
                        hint="One row per donor; per-sample facts belong in the sample sheet",
                    )
                )
            else:
                first_line[donor] = line
                keep.append(i)
        overrides = dict(types or {})
        for name, kind in overrides.items():
            key = f"clinical.types.{name}"
            if name not in data.header or name == "donor_id":
                variables = [c for c in data.header if c != "donor_id"]
                problems.append(
                    InputError(
                        f"type override for '{name}', which is not a variable of the table",
                        file=path,
                        key=key,
                        hint=f"Variables: {', '.join(variables)}",
                    )
                )
            elif kind not in VARIABLE_TYPES:
                problems.append(
                    InputError(
                        f"unknown variable type '{kind}'",
                        file=path,
                        column=name,
                        key=key,
                        hint=f"Use one of {', '.join(VARIABLE_TYPES)}",
                    )
                )
        raise_all(problems)

        lines = [data.lines[i] for i in keep]
        donors = pd.Index([data.rows[i][data.header.index("donor_id")] for i in keep])
        donors.name = "donor_id"
        columns: dict[str, pd.Series] = {}
        inferred: dict[str, VariableType] = {}
        for name in data.header:
            if name == "donor_id":
                continue
            raw = [data.rows[i][data.header.index(name)] for i in keep]
            values, kind, problem = _typed_column(raw, lines, overrides.get(name))
            if problem is not None:
                problems.append(
                    InputError(
                        problem[0],
                        file=path,
                        row=problem[1],
                        column=name,
                        key=f"clinical.types.{name}",
                        hint=problem[2],
                    )
                )
                continue
            columns[name] = pd.Series(values, index=donors, name=name)
            inferred[name] = kind
        raise_all(problems)
        table = pd.DataFrame(columns, index=donors)
        return cls(table, inferred, path, pd.Series(lines, index=donors, dtype=int))

    @property
    def donors(self) -> pd.Index:
        """Donor ids in file order."""
        return self.table.index

    def levels(self, variable: str, donors: Iterable[str] | None = None) -> list[str]:
        """Distinct non-missing levels of a binary or categorical variable, sorted.

        Numbers sort numerically before texts; texts sort alphabetically (the first level
        is the reference level of a categorical covariate).
        """
        values = self.table[variable]
        if donors is not None:
            values = values.loc[list(donors)]
        return sorted((str(v) for v in values.dropna().unique()), key=_level_sort_key)

    def line_of(self, donor: str) -> int | None:
        """Line of the clinical CSV that a donor is on (``None`` if built in memory)."""
        return int(self.lines[donor]) if donor in self.lines.index else None


def _typed_column(
    raw: list[str], lines: list[int], override: str | None
) -> tuple[list, VariableType, tuple[str, int | None, str] | None]:
    """Parse one clinical column; return (values, type, problem or None)."""
    present = [
        (text, line) for text, line in zip(raw, lines, strict=True) if text not in MISSING_TOKENS
    ]
    numbers = [_parse_float(text) for text, _ in present]
    numeric = all(n is not None for n in numbers)
    distinct = list(dict.fromkeys(text for text, _ in present))
    parsed = [n for n in numbers if n is not None]
    if (
        override is None
        and not numeric
        and len(set(parsed)) > 2
        and len(parsed) >= 0.8 * len(numbers)
    ):
        # a numeric column with a stray word ('eighty', 'n/a ', '>80') is a typo, not categories
        text, line = next(p for p, n in zip(present, numbers, strict=True) if n is None)
        return (
            [],
            "continuous",
            (
                f"is numeric except the value '{text}'",
                line,
                "Fix the value, leave it empty if unknown, or declare the variable categorical "
                "in the config's [clinical.types]",
            ),
        )
    if override is None:
        if numeric and len(set(numbers)) > 2:
            kind: VariableType = "continuous"
        elif len(distinct) == 2:
            kind = "binary"
        else:
            kind = "categorical"
    else:
        kind = override  # type: ignore[assignment]
    if kind == "continuous":
        for (text, line), number in zip(present, numbers, strict=True):
            if number is None:
                return (
                    [],
                    kind,
                    (
                        f"declared continuous but holds the non-numeric value '{text}'",
                        line,
                        "Fix the value, leave it empty if unknown, or declare the variable "
                        "categorical",
                    ),
                )
        it = iter(numbers)
        values = [np.nan if text in MISSING_TOKENS else next(it) for text in raw]
        return values, kind, None
    if kind == "binary" and len(distinct) > 2:
        third = next(line for text, line in present if text == distinct[2])
        return (
            [],
            kind,
            (
                f"declared binary but has {len(distinct)} levels: {', '.join(distinct)}",
                third,
                "Declare it categorical, or recode it to two levels",
            ),
        )
    values = [np.nan if text in MISSING_TOKENS else text for text in raw]
    return values, kind, None


def check_donors(sample_sheet: SampleSheet, clinical: ClinicalTable) -> list[str]:
    """Check that every donor of the sample sheet has a row in the clinical table.

    Parameters
    ----------
    sample_sheet, clinical
        The validated tables.

    Returns
    -------
    list of str
        Donors of the clinical table without any sample (a ``UserWarning`` names them).

    Raises
    ------
    InputError
        One problem per sample whose donor is not in the clinical table.
    """
    known = set(clinical.donors)
    problems = [
        InputError(
            f"donor '{donor}' is not in the clinical table {clinical.path}",
            file=sample_sheet.path,
            row=sample_sheet.line_of(sid),
            column="donor_id",
            sample=sid,
            hint="Add a row for this donor to the clinical table, or fix the donor id",
        )
        for sid, donor in sample_sheet.table["donor_id"].items()
        if donor not in known
    ]
    raise_all(problems)
    with_samples = set(sample_sheet.table["donor_id"])
    orphans = [d for d in clinical.donors if d not in with_samples]
    if orphans:
        warnings.warn(
            f"{len(orphans)} donor(s) of the clinical table {clinical.path} have no sample and "
            f"are ignored: {', '.join(orphans)}",
            UserWarning,
            stacklevel=2,
        )
    return orphans


# ---------------------------------------------------------------------------------------
# Contrasts


def _match_level(value: Level, levels: Sequence[str]) -> str | None:
    """The level of ``levels`` that a config value means: exact text, number, or any case."""
    text = str(value)
    if text in levels:
        return text
    if isinstance(value, int | float) and not isinstance(value, bool):
        hits = [lv for lv in levels if _parse_float(lv) == float(value)]
        if len(hits) == 1:
            return hits[0]
    hits = [lv for lv in levels if lv.lower() == text.lower()]
    return hits[0] if len(hits) == 1 else None


def _as_list(value: Level | Sequence[Level] | None) -> list[Level]:
    if value is None:
        return []
    if isinstance(value, str | int | float | bool):
        return [value]
    return list(value)


@dataclass
class ContrastDesign:
    """The donor-level design of one contrast.

    Attributes
    ----------
    contrast
        The :class:`Contrast` it was built from.
    kind
        Type of the tested variable: ``"binary"``, ``"categorical"`` or ``"continuous"``.
    donors
        The donors in the design (``Index``, length n).
    group
        ``Series`` (n,): ``"case"`` / ``"control"``, or the continuous value (``float``).
    matrix
        ``DataFrame`` (n x p): ``intercept``, the tested column :attr:`term` (0/1 indicator
        of the case group, or the continuous value), then the covariates (continuous as
        float; categorical one-hot as ``"<covariate>[<level>]"`` without the reference level,
        the first of :meth:`ClinicalTable.levels`).
    n_case, n_control
        Donors per group; for a continuous variable ``n_case`` is the number of donors and
        ``n_control`` 0.
    term
        Column of :attr:`matrix` whose coefficient is tested: ``"<variable>[<case>]"``, or
        ``"<variable>"`` (effect per unit) for a continuous variable.
    case_levels, control_levels
        The levels in each group (empty for a continuous variable).
    dropped
        Donor -> why it left the design after the ``within`` restriction (missing phenotype,
        or a level in neither group).
    """

    contrast: Contrast
    kind: VariableType
    donors: pd.Index
    group: pd.Series
    matrix: pd.DataFrame
    n_case: int
    n_control: int
    term: str
    case_levels: list[str] = field(default_factory=list)
    control_levels: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def is_continuous(self) -> bool:
        """Whether the tested variable is continuous (effect per unit)."""
        return self.kind == "continuous"

    def donor_table(self) -> pd.DataFrame:
        """One row per donor of the design: ``contrast, variable, kind, donor_id, group, arm``.

        ``group``: ``"case"`` / ``"control"``, or the value of a continuous variable (as text);
        ``arm``: the levels of the donor's group (``"yes"``, ``"SSc, HD"``), empty for a
        continuous variable. The run writes it as ``tables/contrast_donors.csv``.
        """
        if self.is_continuous:
            arm = pd.Series("", index=self.group.index)
        else:
            labels = {
                "case": ", ".join(map(str, self.case_levels)) or "case",
                "control": ", ".join(map(str, self.control_levels)) or "control",
            }
            arm = self.group.astype(str).map(labels)
        return pd.DataFrame(
            {
                "contrast": self.contrast.name,
                "variable": self.contrast.variable,
                "kind": self.kind,
                "donor_id": self.donors.astype(str),
                "group": self.group.astype(str).to_numpy(),
                "arm": arm.to_numpy(),
            }
        )

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``SRC: yes (n=4) vs no (n=17) within ...``."""
        c = self.contrast
        within = "".join(f", within {k} = {v}" for k, v in c.within.items())
        covs = f", adjusted for {', '.join(c.covariates)}" if c.covariates else ""
        if self.is_continuous:
            head = f"{c.name}: {c.variable} per unit (n={self.n_case})"
        else:
            head = (
                f"{c.name}: {c.variable} {'/'.join(self.case_levels)} (n={self.n_case}) vs "
                f"{'/'.join(self.control_levels)} (n={self.n_control})"
            )
        dropped = f", {len(self.dropped)} donor(s) dropped" if self.dropped else ""
        return head + within + covs + dropped


@dataclass
class Contrast:
    """A declared clinical comparison (one ``[contrasts.<name>]`` table of the config).

    Parameters
    ----------
    name
        The contrast's name, used in tables and file names.
    variable
        Clinical variable tested.
    case
        Binary/categorical variable: the case level. Continuous variable: ``None``.
    control
        The control level(s); ``None`` = every other level. ``None`` for a continuous one.
    within
        Restriction to donors with these levels, e.g. ``{"group": "SSc"}``; a list value
        keeps donors with any of the levels.
    covariates
        Clinical variables adjusted for (categorical ones are one-hot encoded).
    """

    name: str
    variable: str
    case: Level | None = None
    control: Level | list[Level] | None = None
    within: dict[str, Level | list[Level]] = field(default_factory=dict)
    covariates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The contrast as plain data (config / ``run.json`` form, without the name)."""
        control = self.control if not isinstance(self.control, tuple) else list(self.control)
        return {
            "variable": self.variable,
            "case": self.case,
            "control": control,
            "within": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.within.items()},
            "covariates": list(self.covariates),
        }

    def design(
        self, clinical: ClinicalTable, donors: Iterable[str] | None = None
    ) -> ContrastDesign:
        """Build and validate the donor-level design of this contrast.

        Parameters
        ----------
        clinical
            The clinical table.
        donors
            The donors to use (those with a sample); ``None`` = every donor of the table.

        Returns
        -------
        ContrastDesign
            Donors, groups and an n x p design matrix of full column rank.
        """
        fail = self._failure(clinical)
        table = clinical.table
        if self.variable not in table.columns:
            raise fail(
                f"unknown variable '{self.variable}'",
                "variable",
                hint=f"Variables of the clinical table: {', '.join(table.columns)}",
            )
        kind = clinical.types[self.variable]
        chosen, restriction = self._restrict(clinical, donors, fail)
        values = table.loc[chosen, self.variable]
        dropped = {d: f"missing {self.variable}" for d in values.index[values.isna()]}
        case_levels, control_levels = self._levels(clinical, kind, fail)
        if kind != "continuous":
            for d, v in values.items():
                if d not in dropped and v not in case_levels and v not in control_levels:
                    dropped[d] = f"{self.variable} = {v}, in neither group"
        kept = [d for d in chosen if d not in dropped]
        missing = [d for d, why in dropped.items() if why.startswith("missing")]
        missing_note = (
            f"; dropped for missing {self.variable}: {', '.join(missing)}" if missing else ""
        )
        how = "; ".join(restriction) + missing_note
        group, term, tested = self._tested(
            table, kind, kept, case_levels, control_levels, how, fail
        )
        if dropped:
            warnings.warn(
                f"contrast '{self.name}': {len(dropped)} donor(s) left out: "
                + ", ".join(f"{d} ({why})" for d, why in dropped.items()),
                UserWarning,
                stacklevel=2,
            )
        columns = {INTERCEPT: np.ones(len(kept)), term: tested}
        columns |= self._covariate_columns(clinical, kept, how, fail)
        index = pd.Index(kept, name="donor_id")
        matrix = pd.DataFrame(columns, index=index)
        _check_rank(matrix, term, fail)
        n_case = len(kept) if kind == "continuous" else int((group == "case").sum())
        return ContrastDesign(
            contrast=self,
            kind=kind,
            donors=index,
            group=group,
            matrix=matrix,
            n_case=n_case,
            n_control=len(kept) - n_case if kind != "continuous" else 0,
            term=term,
            case_levels=case_levels,
            control_levels=control_levels,
            dropped=dropped,
        )

    def _failure(self, clinical: ClinicalTable) -> Callable[..., InputError]:
        """An `InputError` factory naming the clinical table and ``contrasts.<name>.<field>``."""

        def fail(problem: str, field_: str, column: str | None = None, hint: str | None = None):
            return InputError(
                problem,
                file=clinical.path,
                column=column,
                key=f"contrasts.{self.name}.{field_}",
                hint=hint,
            )

        return fail

    def _restrict(
        self, clinical: ClinicalTable, donors: Iterable[str] | None, fail: Callable
    ) -> tuple[list[str], list[str]]:
        """The donors given (default: all), restricted by `within`; and how, in words."""
        table = clinical.table
        if donors is None:
            chosen = list(table.index)
            restriction = [f"all {len(chosen)} donors of the clinical table"]
        else:
            chosen = list(dict.fromkeys(donors))
            unknown = [d for d in chosen if d not in table.index]
            if unknown:
                raise fail(
                    f"donor(s) {', '.join(unknown)} are not in the clinical table",
                    "variable",
                    hint="Add them to the clinical table",
                )
            restriction = [f"{len(chosen)} donors with samples"]
        for col, wanted in self.within.items():
            if col not in table.columns:
                raise fail(
                    f"unknown within column '{col}'",
                    "within",
                    column=col,
                    hint=f"Variables of the clinical table: {', '.join(table.columns)}",
                )
            if clinical.types[col] == "continuous":
                raise fail(
                    f"within column '{col}' is continuous; within needs levels",
                    "within",
                    column=col,
                    hint="Restrict on a binary or categorical variable",
                )
            keep_levels = _matched_levels(
                wanted, clinical.levels(col), lambda value, levels, col=col: fail(
                    f"within level '{value}' does not occur in column '{col}'",
                    "within",
                    column=col,
                    hint=f"Levels: {', '.join(levels)}",
                ),
            )  # fmt: skip
            chosen = [d for d in chosen if table.at[d, col] in keep_levels]
            restriction.append(f"within {col} = {'/'.join(keep_levels)}: {len(chosen)} left")
        return chosen, restriction

    def _levels(
        self, clinical: ClinicalTable, kind: str, fail: Callable
    ) -> tuple[list[str], list[str]]:
        """The case and control levels of the tested variable (both empty if continuous)."""
        if kind == "continuous":
            for name in ("case", "control"):
                if getattr(self, name) is not None:
                    raise fail(
                        f"'{self.variable}' is continuous, so {name} must not be set",
                        name,
                        column=self.variable,
                        hint="Remove case and control: the effect is per unit of the variable",
                    )
            return [], []
        levels = clinical.levels(self.variable)
        if self.case is None:
            raise fail(
                f"'{self.variable}' is {kind}; the contrast needs a case level",
                "case",
                column=self.variable,
                hint=f"Set case to one of {', '.join(levels)}",
            )
        case = _match_level(self.case, levels)
        if case is None:
            raise fail(
                f"case level '{self.case}' does not occur in column '{self.variable}'",
                "case",
                column=self.variable,
                hint=f"Levels: {', '.join(levels)}",
            )
        if self.control is None:
            return [case], [lv for lv in levels if lv != case]
        controls = _matched_levels(
            self.control, levels, lambda value, levels: fail(
                f"control level '{value}' does not occur in column '{self.variable}'",
                "control",
                column=self.variable,
                hint=f"Levels: {', '.join(levels)}",
            ),
        )  # fmt: skip
        if case in controls:
            raise fail(
                f"level '{case}' is both case and control",
                "control",
                column=self.variable,
                hint="The control must be other level(s) than the case",
            )
        return [case], controls

    def _tested(
        self,
        table: pd.DataFrame,
        kind: str,
        kept: list[str],
        case_levels: list[str],
        control_levels: list[str],
        how: str,
        fail: Callable,
    ) -> tuple[pd.Series, str, np.ndarray]:
        """The group of each kept donor, the tested column's name and its values."""
        if kind == "continuous":
            group = table.loc[kept, self.variable].astype(float).rename(self.variable)
            if len(kept) < 3 or group.nunique() < 2:
                raise fail(
                    f"only {len(kept)} donor(s) with {group.nunique()} distinct value(s) of "
                    f"'{self.variable}' after restriction ({how})",
                    "variable",
                    column=self.variable,
                    hint="A continuous contrast needs at least 3 donors with 2 distinct values",
                )
            return group, self.variable, group.to_numpy(dtype=float)
        is_case = table.loc[kept, self.variable].isin(case_levels)
        index = pd.Index(kept, name="donor_id")
        group = pd.Series(np.where(is_case, "case", "control"), index=index, name="group")
        n_case, n_control = int(is_case.sum()), int((~is_case).sum())
        if n_case < 2 or n_control < 2:
            small = "case" if n_case < 2 else "control"
            raise fail(
                f"after restriction ({how}) the case group "
                f"({'/'.join(case_levels)}) has {n_case} donor(s) and the control group "
                f"({'/'.join(control_levels) or 'none'}) has {n_control}",
                small,
                column=self.variable,
                hint="Each group needs at least 2 donors; check the levels, the within "
                "restriction and the samples",
            )
        return group, f"{self.variable}[{case_levels[0]}]", is_case.to_numpy(dtype=float)

    def _covariate_columns(
        self, clinical: ClinicalTable, kept: list[str], how: str, fail: Callable
    ) -> dict[str, np.ndarray]:
        """Design columns of the covariates: continuous as is, categorical one-hot."""
        table, columns = clinical.table, {}
        for cov in self.covariates:
            if cov not in table.columns:
                raise fail(
                    f"unknown covariate '{cov}'",
                    "covariates",
                    column=cov,
                    hint=f"Variables of the clinical table: {', '.join(table.columns)}",
                )
            if cov == self.variable:
                raise fail(
                    f"covariate '{cov}' is the tested variable",
                    "covariates",
                    column=cov,
                    hint="Remove it from covariates",
                )
            cov_values = table.loc[kept, cov]
            if cov_values.isna().any():
                missing = list(cov_values.index[cov_values.isna()])
                raise fail(
                    f"covariate '{cov}' is missing for donor(s) {', '.join(missing)}",
                    "covariates",
                    column=cov,
                    hint=f"Fill in '{cov}' for them in the clinical table, or remove '{cov}' "
                    "from covariates",
                )
            if clinical.types[cov] == "continuous":
                columns[cov] = cov_values.to_numpy(dtype=float)
                continue
            cov_levels = clinical.levels(cov, kept)
            for level in cov_levels[1:]:
                columns[f"{cov}[{level}]"] = (cov_values == level).to_numpy(dtype=float)
            if len(cov_levels) == 1:
                raise fail(
                    f"covariate '{cov}' has the single level '{cov_levels[0]}' among the "
                    f"{len(kept)} donors of this contrast ({how}), so it is collinear with "
                    "the intercept",
                    "covariates",
                    column=cov,
                    hint="Remove it from covariates",
                )
        return columns


def _matched_levels(
    wanted: Level | Sequence[Level], levels: list[str], unknown: Callable[..., InputError]
) -> list[str]:
    """The levels of ``levels`` that ``wanted`` names; ``unknown(value, levels)`` is raised."""
    matched = []
    for value in _as_list(wanted):
        level = _match_level(value, levels)
        if level is None:
            raise unknown(value, levels)
        matched.append(level)
    return matched


def _check_rank(matrix: pd.DataFrame, term: str, fail) -> None:
    """Raise, naming the culprit column, if the design matrix is not of full column rank."""
    n, p = matrix.shape
    x = matrix.to_numpy(dtype=float)
    if n <= p:
        raise fail(
            f"the design has {p} columns ({', '.join(matrix.columns)}) but only {n} donors",
            "covariates",
            hint="Use fewer covariates: a model needs more donors than columns",
        )

    def rank(cols: list[int]) -> int:
        return int(np.linalg.matrix_rank(x[:, cols]))

    for j in range(2, p):
        if rank(list(range(j + 1))) == j + 1:
            continue
        col = matrix.columns[j]
        cov = re.sub(r"\[.*\]$", "", col)
        if rank([0, j]) < 2:
            partner = "the intercept (it is constant)"
        elif rank([0, 1, j]) < 3:
            partner = f"the tested group column '{term}'"
        else:
            partner = "the columns before it: " + ", ".join(matrix.columns[:j])
        raise fail(
            f"design column '{col}' is collinear with {partner}; the design matrix is rank "
            "deficient",
            "covariates",
            column=cov,
            hint=f"Remove '{cov}' from covariates",
        )
    if rank(list(range(p))) < p:  # pragma: no cover - the loop above finds every case
        raise fail("the design matrix is rank deficient", "covariates")

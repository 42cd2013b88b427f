"""The sample sheet: one row per sample (a donor at a timepoint in a tissue) and its counts."""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccohort.cohort._tables import (
    CONTROL_CHARACTERS,
    DEFAULT_TIMEPOINT,
    DEFAULT_TISSUE,
    FOLDER_FORMATS,
    FORMATS,
    MODALITIES,
    SAMPLE_OPTIONAL,
    SAMPLE_REQUIRED,
    SPATIAL_FORMATS,
    _absolute,
    _Csv,
    _read_csv,
    _require_columns,
    raise_all,
    special_file_kind,
)
from sccohort.errors import InputError

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
        that declares several; see `sccohort.io.read.read_sample`), then any further column
        of the CSV (a sample-level variable such as ``condition`` or ``treatment``: text,
        ``""`` where not given), listed in :attr:`variables`.
    path
        The CSV file it was read from (absolute), or ``None``.
    lines
        ``Series`` sample_id -> line of the CSV the sample is on.

    Examples
    --------
    >>> from sccohort.io import SampleSheet
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> sheet = SampleSheet.from_csv(samples)
    >>> len(sheet), list(sheet.donors)
    (4, ['SSc1', 'SSc2', 'SSc19', 'HD1'])
    """

    def __init__(self, table: pd.DataFrame, path: Path | None, lines: pd.Series) -> None:
        self.table = table
        self.path = path
        self.lines = lines

    def __len__(self) -> int:
        return len(self.table)

    def other_tissues(self, tissue: str) -> SampleSheet | None:
        """The samples of other tissues than ``tissue`` (None when there are none).

        Examples
        --------
        >>> from sccohort.io import SampleSheet
        >>> table = pd.DataFrame({"donor_id": ["D1", "D1"], "tissue": ["blood", "kidney"]},
        ...                      index=pd.Index(["D1", "D1_k"], name="sample_id"))
        >>> list(SampleSheet(table, None, pd.Series([2, 3], index=table.index))
        ...      .other_tissues("blood").table.index)
        ['D1_k']
        """
        other = (self.table["tissue"] != tissue).to_numpy() & ~self._is_spatial()
        if not other.any() or other.all():
            return None
        keep = self.table.index[other]
        return SampleSheet(self.table[other], self.path, self.lines[self.lines.index.isin(keep)])

    def _is_spatial(self) -> np.ndarray:
        if "format" not in self.table:
            return np.zeros(len(self.table), dtype=bool)
        return self.table["format"].astype(str).isin(SPATIAL_FORMATS).to_numpy()

    def slides(self) -> SampleSheet | None:
        """The spatial slides (rows of a format in `SPATIAL_FORMATS`; None when none).

        Examples
        --------
        >>> from sccohort.io import SampleSheet
        >>> table = pd.DataFrame({"donor_id": ["D1", "D1"], "tissue": ["blood", "kidney"],
        ...                       "format": ["10x_h5", "cosmx"]},
        ...                      index=pd.Index(["D1", "D1_s"], name="sample_id"))
        >>> list(SampleSheet(table, None, pd.Series([2, 3], index=table.index))
        ...      .slides().table.index)
        ['D1_s']
        """
        spatial = self._is_spatial()
        if not spatial.any():
            return None
        keep = self.table.index[spatial]
        return SampleSheet(self.table[spatial], self.path, self.lines[self.lines.index.isin(keep)])

    def of_tissue(self, tissue: str) -> SampleSheet:
        """The samples of ``tissue`` only, with a warning naming the others set aside.

        A run analyses one tissue, the primary one (``[run] primary_tissue``): cells of
        kidney or lung would otherwise be clustered and counted with the blood. A sheet
        with no sample of ``tissue`` comes back whole (`primary_samples` says what is wrong).

        Examples
        --------
        >>> from sccohort.io import SampleSheet
        >>> table = pd.DataFrame({"donor_id": ["D1", "D1", "D2"],
        ...                       "tissue": ["blood", "kidney", "blood"]},
        ...                      index=pd.Index(["D1", "D1_k", "D2"], name="sample_id"))
        >>> sheet = SampleSheet(table, None, pd.Series([2, 3, 4], index=table.index))
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     blood = sheet.of_tissue("blood")
        >>> list(blood.table.index), "D1_k" in str(caught[0].message)
        (['D1', 'D2'], True)
        """
        slides = self._is_spatial()
        other = (self.table["tissue"] != tissue).to_numpy() | slides
        if not other.any() or other.all():
            return self
        ids = list(self.table.index[other].astype(str))
        kinds = ", ".join(sorted(set(self.table.loc[other & ~slides, "tissue"].astype(str))))
        what, where = [], []
        if kinds:
            what.append(f"{int((other & ~slides).sum())} sample(s) of tissue {kinds}")
            where.append("those go to the tissue stages (integration, trajectory, cell-cell "
                         "communication; [tissue] analyse)")  # fmt: skip
        if slides.any():
            what.append(f"{int(slides.sum())} spatial slide(s)")
            where.append("slides go to the spatial stage ([spatial] analyse)")
        warnings.warn(
            f"{' and '.join(what)} set aside ({', '.join(ids[:6])}"
            f"{', ...' if len(ids) > 6 else ''}): the run analyses tissue '{tissue}' ([run] "
            f"primary_tissue) in the donor-level tests; {'; '.join(where)}",
            UserWarning,
            stacklevel=2,
        )
        keep = ~other
        return SampleSheet(
            self.table[keep], self.path, self.lines[self.lines.index.isin(self.table.index[keep])]
        )

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
            CSV with columns ``sample_id, donor_id, path``, optionally ``raw_path, batch,
            timepoint, tissue, format, modality``, and any sample-level variables (a
            column whose name is close to one of those, e.g. ``timpoint``, is refused as a
            typo).

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
        extra = [c for c in data.header if c not in SAMPLE_REQUIRED + SAMPLE_OPTIONAL]
        allowed = SAMPLE_REQUIRED + SAMPLE_OPTIONAL + tuple(extra)
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
            record = _sample_record(cells, path.parent) | {c: cells[c] for c in extra}
            problems += _record_problems(cells, record, where)
            if record["donor_id"] and record["format"] not in SPATIAL_FORMATS:  # slides: many
                visit = (record["donor_id"], record["timepoint"], record["tissue"])
                visit += tuple(record[c] for c in extra)
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
            + extra
        ]
        return cls(table, path, lines)

    @property
    def variables_and_visits(self) -> list[str]:
        """The columns a contrast may compare samples by: timepoint, tissue, the variables."""
        return ["timepoint", "tissue", *self.variables]

    @property
    def variables(self) -> list[str]:
        """The sample-level variables: the sheet's columns beyond its own (e.g. condition)."""
        return [c for c in self.table.columns if c not in SAMPLE_REQUIRED + SAMPLE_OPTIONAL]

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
        repeated = rows["donor_id"].duplicated(keep=False)
        if repeated.any():
            donor = str(rows.loc[repeated, "donor_id"].iloc[0])
            ids = list(rows.index[rows["donor_id"] == donor])
            raise InputError(
                f"donor '{donor}' has {len(ids)} samples at the primary visit "
                f"({timepoint}/{tissue}): {', '.join(ids)}; donor-level analyses take one",
                file=self.path,
                sample=ids[1],
                key="run.primary_timepoint",
                hint="Give these samples different timepoints (e.g. ctrl / stim) and set "
                "run.primary_timepoint to one of them",
            )
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


def _check_sheet_header(data: _Csv, path: Path) -> None:
    """The required columns; no typo of a known one (other columns are variables); rows."""
    _require_columns(data, SAMPLE_REQUIRED, "the sample sheet")
    allowed = SAMPLE_REQUIRED + SAMPLE_OPTIONAL
    for column in data.header:
        if column in allowed:
            continue
        close = difflib.get_close_matches(column.lower(), allowed, n=1, cutoff=0.8)
        if close or not column.strip() or CONTROL_CHARACTERS.search(column):
            guess = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(
                f"unknown column {column!r}{guess}",
                file=path,
                row=1,
                column=column,
                hint=f"Allowed columns: {', '.join(allowed)}, and sample-level variables "
                "(e.g. condition, treatment) named unlike these; clinical variables belong "
                "in the clinical table",
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
    if col == "path" and fmt in FORMATS and p.is_dir() != (fmt in FOLDER_FORMATS):
        kind = "a folder" if p.is_dir() else "a file"
        return [
            InputError(
                f"path {p} is {kind}, which does not fit format '{fmt}'",
                column=col,
                sample=sid,
                hint=f"{', '.join(FOLDER_FORMATS)} are folders, the other formats are files",
                **where,
            )
        ]
    return []


def _repeat_visit(
    visit: tuple[str, str, str], first: tuple[str, int], sid: str, where: dict[str, Any]
) -> InputError:
    (donor, timepoint, tissue), (other, other_line) = visit[:3], first
    return InputError(
        f"donor '{donor}' has two samples at timepoint '{timepoint}' in "
        f"tissue '{tissue}': '{other}' (line {other_line}) and '{sid}'",
        column="timepoint",
        sample=sid,
        hint="Give each visit its own timepoint, or drop the repeat sample",
        **where,
    )

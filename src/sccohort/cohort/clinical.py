"""The clinical table: one row per donor, each variable typed (binary, categorical, continuous)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort._tables import (
    MISSING_TOKENS,
    VARIABLE_TYPES,
    VariableType,
    _read_csv,
    _require_columns,
    raise_all,
)
from sccohort.cohort.samples import SampleSheet
from sccohort.errors import InputError


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

    Examples
    --------
    >>> from sccohort.io import ClinicalTable
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> clinical = ClinicalTable.from_csv(samples.parent / "clinical.csv")
    >>> clinical.types["SRC"], clinical.types["age"], clinical.levels("group")
    ('binary', 'continuous', ['HD', 'SSc'])
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

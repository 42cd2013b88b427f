"""Designs on samples: a contrast on a variable of the sample sheet (timepoint, condition...).

The rows of such a design are samples. When donors have samples on both sides (before /
after, control / stimulated) the comparison is **paired within donor** unless the contrast
says ``paired = false``: donors without a sample on both sides leave the design (each donor
is its own control), the matrix gets one column per donor but the first (``donor[<id>]``),
and permutation tests exchange labels only within a donor. Covariates may be sample-level
variables; a donor-level (clinical) covariate is constant within donor, so a paired design
refuses it (the donor columns already adjust for every difference between donors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from sccohort.cohort._tables import INTERCEPT
from sccohort.cohort.clinical import ClinicalTable
from sccohort.cohort.contrast import Contrast, _matched_levels, case_and_controls
from sccohort.cohort.design import ContrastDesign, _check_rank
from sccohort.cohort.samples import SampleSheet
from sccohort.errors import InputError

__all__ = ["sample_design"]


def sample_design(
    contrast: Contrast,
    sheet: SampleSheet,
    clinical: ClinicalTable | None = None,
    donors: Iterable[str] | None = None,
    *,
    tissue: str | None = None,
) -> ContrastDesign:
    """The sample-level design of a contrast whose variable is a column of the sample sheet.

    Parameters
    ----------
    contrast
        The contrast (``variable`` a column of ``sheet.table``, ``case`` and optionally
        ``control`` levels, ``within`` on sheet or clinical columns, ``paired``).
    sheet
        The sample sheet.
    clinical
        The clinical table, for ``within`` / covariates on donor-level variables.
    donors
        The donors whose samples may enter (e.g. those with enough cells); default all.
    tissue
        Only samples of this tissue (the run's primary tissue), unless the contrast compares
        tissues or restricts them with ``within``; ``None``: every tissue.

    Returns
    -------
    ContrastDesign
        ``unit = "sample"``; ``units`` the samples (donor by donor, in sheet order),
        ``donor_of`` their donors, ``paired`` as decided.

    Raises
    ------
    InputError
        Unknown levels or columns, fewer than 2 units per side (paired: fewer than 2 donors
        with samples on both sides), a clinical covariate in a paired design, or a rank
        deficient matrix.

    Examples
    --------
    >>> from sccohort.cohort import Contrast, SampleSheet
    >>> from sccohort.cohort.sample_design import sample_design
    >>> donors, timepoints = ["D1", "D1", "D2", "D2", "D3"], ["ctrl", "stim"] * 2 + ["ctrl"]
    >>> table = pd.DataFrame(
    ...     {"donor_id": donors, "timepoint": timepoints},
    ...     index=pd.Index(["A1", "A2", "B1", "B2", "C1"], name="sample_id"),
    ... )
    >>> sheet = SampleSheet(table, None, pd.Series(range(2, 7), index=table.index))
    >>> design = sample_design(Contrast("stim", "timepoint", case="stim", control="ctrl"), sheet)
    >>> design.describe()
    'stim: timepoint stim (n=2) vs ctrl (n=2), paired within donor (2 donors), 1 sample(s) dropped'
    >>> design.dropped
    {'C1': 'donor D3 has no sample on the other side'}
    >>> design.matrix.columns.tolist()
    ['intercept', 'timepoint[stim]', 'donor[D2]']
    """
    fail = _failure(contrast, sheet)
    table = sheet.table
    rows = _restricted(contrast, sheet, clinical, donors, tissue, fail)
    values = table.loc[rows, contrast.variable].astype(str).str.strip()
    levels = sorted(v for v in values.unique() if v)
    case, controls = case_and_controls(contrast, levels, "a sample-level variable", fail)
    dropped = {s: f"no {contrast.variable}" for s in rows if not values[s]}
    dropped |= {
        s: f"{contrast.variable} = {values[s]}, in neither group"
        for s in rows
        if values[s] and values[s] != case and values[s] not in controls
    }
    kept = [s for s in rows if s not in dropped]
    is_case = values.loc[kept] == case
    donor_of = table.loc[kept, "donor_id"].astype(str)
    both = _donors_on_both_sides(donor_of, is_case)
    paired = bool(both) if contrast.paired is None else bool(contrast.paired)
    if paired:
        for s in kept:
            if donor_of[s] not in both:
                dropped[s] = f"donor {donor_of[s]} has no sample on the other side"
        kept = [s for s in kept if s not in dropped]
        is_case, donor_of = is_case.loc[kept], donor_of.loc[kept]
    _check_sizes(contrast, case, controls, is_case, donor_of, paired, fail)
    index = pd.Index(kept, name="sample_id")
    term = f"{contrast.variable}[{case}]"
    columns = {INTERCEPT: np.ones(len(kept)), term: is_case.to_numpy(dtype=float)}
    if paired:
        for donor in list(dict.fromkeys(donor_of))[1:]:
            columns[f"donor[{donor}]"] = (donor_of == donor).to_numpy(dtype=float)
    columns |= _covariates(contrast, sheet, clinical, kept, paired, fail)
    matrix = pd.DataFrame(columns, index=index)
    _check_rank(matrix, term, fail)
    group = pd.Series(np.where(is_case, "case", "control"), index=index, name="group")
    return ContrastDesign(
        contrast=contrast,
        kind="binary" if len(levels) == 2 else "categorical",
        units=index,
        group=group,
        matrix=matrix,
        n_case=int(is_case.sum()),
        n_control=int((~is_case).sum()),
        term=term,
        case_levels=[case],
        control_levels=controls,
        dropped=dropped,
        unit="sample",
        donor_of=pd.Series(donor_of.to_numpy(), index=index, name="donor_id"),
        paired=paired,
    )


def _failure(contrast: Contrast, sheet: SampleSheet) -> Callable[..., InputError]:
    """An `InputError` factory naming the sample sheet and ``contrasts.<name>.<field>``."""

    def fail(problem: str, field_: str, column: str | None = None, hint: str | None = None):
        return InputError(
            problem, file=sheet.path, column=column, key=f"contrasts.{contrast.name}.{field_}",
            hint=hint,
        )  # fmt: skip

    return fail


def _restricted(
    contrast: Contrast,
    sheet: SampleSheet,
    clinical: ClinicalTable | None,
    donors: Iterable[str] | None,
    tissue: str | None,
    fail: Callable[..., InputError],
) -> list[str]:
    """The samples of the given donors (and tissue) that pass ``within``."""
    table = sheet.table
    allowed = None if donors is None else set(map(str, donors))
    rows = [s for s in table.index if allowed is None or str(table.at[s, "donor_id"]) in allowed]
    if tissue is not None and "tissue" not in (contrast.variable, *contrast.within):
        rows = [s for s in rows if table.at[s, "tissue"] == tissue]
    for column, wanted in contrast.within.items():
        if column in table.columns:
            levels = sorted(table[column].astype(str).unique())
            keep = _matched_levels(wanted, levels, _unknown_level(fail, "within", column))
            rows = [s for s in rows if str(table.at[s, column]) in keep]
        elif clinical is not None and column in clinical.table.columns:
            keep = _matched_levels(
                wanted, clinical.levels(column), _unknown_level(fail, "within", column)
            )
            donor_values = clinical.table[column]
            rows = [s for s in rows if donor_values.get(table.at[s, "donor_id"]) in keep]
        else:
            raise fail(
                f"unknown within column '{column}'",
                "within",
                column=column,
                hint="Restrict on a column of the sample sheet or of the clinical table",
            )
    return rows


def _unknown_level(fail: Callable[..., InputError], field_: str, column: str) -> Callable:
    def unknown(value: object, levels: list[str]) -> InputError:
        return fail(
            f"{field_} level '{value}' does not occur in column '{column}'",
            field_,
            column=column,
            hint=f"Levels: {', '.join(levels)}",
        )

    return unknown


def _donors_on_both_sides(donor_of: pd.Series, is_case: pd.Series) -> set[str]:
    """Donors with at least one case and one control sample."""
    sides = pd.DataFrame({"donor": donor_of.to_numpy(), "case": is_case.to_numpy()})
    per_donor = sides.groupby("donor")["case"].agg(["min", "max"])
    return set(per_donor.index[(per_donor["min"] == 0) & (per_donor["max"] == 1)])


def _check_sizes(
    contrast: Contrast,
    case: str,
    controls: list[str],
    is_case: pd.Series,
    donor_of: pd.Series,
    paired: bool,
    fail: Callable[..., InputError],
) -> None:
    n_case, n_control = int(is_case.sum()), int((~is_case).sum())
    if paired:
        n_donors = donor_of.nunique()
        if n_donors < 2:
            raise fail(
                f"{n_donors} donor(s) have samples at both {case} and "
                f"{'/'.join(controls)}; a paired comparison needs 2 or more",
                "variable",
                column=contrast.variable,
                hint="Add the other side's samples, or set paired = false",
            )
        return
    if n_case < 2 or n_control < 2:
        raise fail(
            f"the case group ({case}) has {n_case} sample(s) and the control group "
            f"({'/'.join(controls) or 'none'}) has {n_control}",
            "case" if n_case < 2 else "control",
            column=contrast.variable,
            hint="Each group needs at least 2 samples; check the levels and the within restriction",
        )
    if donor_of.duplicated().any():
        twice = list(donor_of[donor_of.duplicated()].unique())
        raise fail(
            f"donor(s) {', '.join(twice)} have several samples in this unpaired comparison: "
            "an unpaired test needs independent samples, one per donor",
            "paired",
            column=contrast.variable,
            hint="Restrict the contrast (within) to one sample per donor"
            + ("" if contrast.paired is None else ", or remove paired = false"),
        )


def _covariates(
    contrast: Contrast,
    sheet: SampleSheet,
    clinical: ClinicalTable | None,
    kept: list[str],
    paired: bool,
    fail: Callable[..., InputError],
) -> dict[str, np.ndarray]:
    """Design columns of the covariates: sample-level ones one-hot; clinical ones if unpaired."""
    table, columns = sheet.table, {}
    for cov in contrast.covariates:
        if cov == contrast.variable:
            raise fail(f"covariate '{cov}' is the tested variable", "covariates", column=cov)
        if cov in table.columns:
            values = table.loc[kept, cov].astype(str)
            for level in sorted(values.unique())[1:]:
                columns[f"{cov}[{level}]"] = (values == level).to_numpy(dtype=float)
            continue
        if clinical is None or cov not in clinical.table.columns:
            raise fail(
                f"unknown covariate '{cov}'",
                "covariates",
                column=cov,
                hint="Name a column of the sample sheet or of the clinical table",
            )
        if paired:
            raise fail(
                f"covariate '{cov}' is a donor-level variable, constant within each donor of "
                "this paired design",
                "covariates",
                column=cov,
                hint="Remove it: the paired design compares each donor with itself",
            )
        donor_values = clinical.table.loc[table.loc[kept, "donor_id"], cov]
        if clinical.types[cov] == "continuous":
            columns[cov] = donor_values.to_numpy(dtype=float)
        else:
            for level in clinical.levels(cov)[1:]:
                columns[f"{cov}[{level}]"] = (donor_values == level).to_numpy(dtype=float)
    return columns

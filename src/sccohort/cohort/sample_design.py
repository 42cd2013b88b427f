"""Designs on samples: a contrast on a variable of the sample sheet (timepoint, condition...).

The rows of such a design are samples. Which comparison, by the shape of the samples:

- every donor sampled once: **unpaired**, samples as independent units;
- every donor sampled on both sides (before / after, control / stimulated): **paired within
  donor**: the matrix gets one column per donor but the first (``donor[<id>]``), and
  permutation tests exchange labels only within a donor (each donor is its own control);
- otherwise (unbalanced repeated samples: some donors sampled on one side only, or several
  times on one side): a **mixed model** with a donor random intercept, which uses every
  sample (donors sampled once inform the between-donor variance) where a paired design
  would drop them.

``paired = true`` forces the paired design (donors without both sides leave it), ``paired =
false`` the unpaired one (refused when a donor has several samples). Covariates may be
sample-level variables; a donor-level (clinical) covariate is constant within donor, so a
paired design refuses it (the donor columns already adjust for every difference between
donors); the unpaired and mixed designs take it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from sccohort.cohort._tables import INTERCEPT
from sccohort.cohort.clinical import ClinicalTable
from sccohort.cohort.contrast import (
    Contrast,
    _matched_levels,
    case_and_controls,
    order_scores,
)
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
        ``donor_of`` their donors, ``paired`` and ``mixed`` as decided.

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
    'stim: timepoint stim (n=2) vs ctrl (n=3), mixed model (3 donors, 2 on both sides)'
    >>> design.matrix.columns.tolist()
    ['intercept', 'timepoint[stim]']
    >>> paired = Contrast("stim", "timepoint", case="stim", control="ctrl", paired=True)
    >>> design = sample_design(paired, sheet)
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
    scores = _scores(contrast, levels, fail)
    dropped = {s: f"no {contrast.variable}" for s in rows if not values[s]}
    dropped |= {
        s: f"{contrast.variable} = {values[s]}, "
        + ("not in order" if contrast.order is not None else "in neither group")
        for s in rows
        if values[s] and values[s] not in scores
    }
    kept = [s for s in rows if s not in dropped]
    score = values.loc[kept].map(scores)
    donor_of = table.loc[kept, "donor_id"].astype(str)
    both = _donors_on_both_sides(donor_of, score)
    repeated = bool(donor_of.duplicated().any())
    if contrast.paired is None:
        paired = repeated and set(donor_of) == both
        mixed = repeated and not paired
    else:
        paired, mixed = bool(contrast.paired), False
    if paired:
        for s in kept:
            if donor_of[s] not in both:
                dropped[s] = f"donor {donor_of[s]} has no sample on the other side"
        kept = [s for s in kept if s not in dropped]
        score, donor_of = score.loc[kept], donor_of.loc[kept]
    _check_sizes(contrast, scores, score, donor_of, paired, mixed, fail)
    index = pd.Index(kept, name="sample_id")
    trend = contrast.order is not None
    case, controls = ([], []) if trend else _sides(scores)
    term = contrast.variable if trend else f"{contrast.variable}[{case[0]}]"
    columns = {INTERCEPT: np.ones(len(kept)), term: score.to_numpy(dtype=float)}
    if paired:
        for donor in list(dict.fromkeys(donor_of))[1:]:
            columns[f"donor[{donor}]"] = (donor_of == donor).to_numpy(dtype=float)
    columns |= _covariates(contrast, sheet, clinical, kept, paired, fail)
    matrix = pd.DataFrame(columns, index=index)
    _check_rank(matrix, term, fail)
    if trend:
        group = pd.Series(score.to_numpy(dtype=float), index=index, name=contrast.variable)
    else:
        group = pd.Series(np.where(score == 1, "case", "control"), index=index, name="group")
    n_case = len(kept) if trend else int((score == 1).sum())
    return ContrastDesign(
        contrast=contrast,
        kind="continuous" if trend else "binary" if len(levels) == 2 else "categorical",
        units=index,
        group=group,
        matrix=matrix,
        n_case=n_case,
        n_control=len(kept) - n_case,
        term=term,
        case_levels=case,
        control_levels=controls,
        dropped=dropped,
        unit="sample",
        donor_of=pd.Series(donor_of.to_numpy(), index=index, name="donor_id"),
        paired=paired,
        mixed=mixed,
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


def _scores(contrast: Contrast, levels: list[str], fail: Callable) -> dict[str, float]:
    """Level -> tested value: 1 / 0 for the case / control levels, or positions in ``order``.

    With ``order`` the contrast is a trend over ordered levels (e.g. timepoints).
    """
    if contrast.order is None:
        case, controls = case_and_controls(contrast, levels, "a sample-level variable", fail)
        return {case: 1.0} | {c: 0.0 for c in controls}
    return order_scores(contrast, levels, fail)


def _sides(scores: dict[str, float]) -> tuple[list[str], list[str]]:
    """The case level and the control levels of a two-sided contrast's scores."""
    return [k for k, v in scores.items() if v == 1], [k for k, v in scores.items() if v == 0]


def _donors_on_both_sides(donor_of: pd.Series, score: pd.Series) -> set[str]:
    """Donors with samples at two or more values (a case and a control sample)."""
    per_donor = score.groupby(donor_of.to_numpy()).nunique()
    return set(per_donor.index[per_donor > 1])


def _check_sizes(
    contrast: Contrast,
    scores: dict[str, float],
    score: pd.Series,
    donor_of: pd.Series,
    paired: bool,
    mixed: bool,
    fail: Callable[..., InputError],
) -> None:
    trend = contrast.order is not None
    case, controls = ([], []) if trend else _sides(scores)
    sides = " < ".join(scores) if trend else f"both {case[0]} and {'/'.join(controls)}"
    if paired:
        n_donors = donor_of.nunique()
        if n_donors < 2:
            raise fail(
                f"{n_donors} donor(s) have samples at {sides}; a paired comparison needs 2 or more",
                "variable",
                column=contrast.variable,
                hint="Add the other side's samples, or set paired = false",
            )
        return
    if trend and (len(score) < 3 or score.nunique() < 2):
        raise fail(
            f"{len(score)} sample(s) at {score.nunique()} of the levels {sides}",
            "order",
            column=contrast.variable,
            hint="A trend needs at least 3 samples at 2 or more of the levels",
        )
    n_case, n_control = int((score == 1).sum()), int((score == 0).sum())
    if not trend and (n_case < 2 or n_control < 2):
        raise fail(
            f"the case group ({case[0]}) has {n_case} sample(s) and the control group "
            f"({'/'.join(controls) or 'none'}) has {n_control}",
            "case" if n_case < 2 else "control",
            column=contrast.variable,
            hint="Each group needs at least 2 samples; check the levels and the within restriction",
        )
    if donor_of.duplicated().any() and not mixed:
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

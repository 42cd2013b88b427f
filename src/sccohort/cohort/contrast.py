"""Contrasts: a declared comparison and the design it makes (see .design, .sample_design)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sccohort.cohort._tables import INTERCEPT, Level
from sccohort.cohort.clinical import ClinicalTable, _parse_float
from sccohort.cohort.design import ContrastDesign, _check_rank
from sccohort.cohort.samples import SampleSheet
from sccohort.errors import InputError

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
        Clinical variables adjusted for (categorical ones are one-hot encoded); for a
        sample-level variable also columns of the sample sheet.
    paired
        For a variable of the sample sheet: ``None`` (default) pairs within donor when every
        donor has samples on both sides and fits a mixed model (donor random intercept) to
        unbalanced repeated samples; ``True`` forces the paired design (donors without both
        sides leave it), ``False`` the unpaired one
        (:func:`~sccohort.cohort.sample_design.sample_design`).
    order
        For a categorical variable whose levels are ordered (disease stage, severity
        grade): the levels in order, e.g. ``["mild", "moderate", "severe"]``. The contrast then
        tests a trend: each donor is scored by the position of its level (0, 1, 2, ...) and
        the variable is fitted as continuous, the effect being per step; donors at other
        levels leave the design. ``case`` and ``control`` must not be set.

    Examples
    --------
    >>> from sccohort.datasets import toy
    >>> from sccohort.stats import Contrast
    >>> design = Contrast("SRC", "SRC", case="yes", control="no").design(toy().clinical)
    >>> design.describe()
    'SRC: SRC yes (n=4) vs no (n=4)'
    >>> design.matrix.columns.tolist()
    ['intercept', 'SRC[yes]']
    """

    name: str
    variable: str
    case: Level | None = None
    control: Level | list[Level] | None = None
    within: dict[str, Level | list[Level]] = field(default_factory=dict)
    covariates: list[str] = field(default_factory=list)
    paired: bool | None = None
    order: list[Level] | None = None

    def to_dict(self) -> dict:
        """The contrast as plain data (config / ``run.json`` form, without the name)."""
        control = self.control if not isinstance(self.control, tuple) else list(self.control)
        return {
            "variable": self.variable,
            "case": self.case,
            "control": control,
            "within": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.within.items()},
            "covariates": list(self.covariates),
            "paired": self.paired,
            "order": None if self.order is None else list(self.order),
        }

    def design(
        self,
        clinical: ClinicalTable | None,
        donors: Iterable[str] | None = None,
        *,
        samples: SampleSheet | None = None,
        tissue: str | None = None,
    ) -> ContrastDesign:
        """Build and validate the design of this contrast.

        Parameters
        ----------
        clinical
            The clinical table (``None`` only for a contrast on a sample sheet column).
        donors
            The donors to use (those with a sample); ``None`` = every donor of the table.
        samples
            The sample sheet: a variable that is one of its columns (and not a clinical
            variable) makes a design on samples: paired within donor, or a mixed model for
            unbalanced repeats (:func:`~sccohort.cohort.sample_design.sample_design`).
        tissue
            A sample-level contrast compares the samples of this tissue (the primary one)
            unless it compares or restricts tissues itself; ``None``: every tissue.

        Returns
        -------
        ContrastDesign
            Units (donors, or samples), groups and an n x p design matrix of full column
            rank.
        """
        if samples is not None and self.variable in samples.table.columns:
            if clinical is None or self.variable not in clinical.table.columns:
                from sccohort.cohort.sample_design import sample_design

                return sample_design(self, samples, clinical, donors, tissue=tissue)
        self._check_donor_level(clinical, samples)
        fail = self._failure(clinical)
        table = clinical.table
        kind = clinical.types[self.variable]
        chosen, restriction = self._restrict(clinical, donors, fail)
        values = table.loc[chosen, self.variable]
        dropped = {d: f"missing {self.variable}" for d in values.index[values.isna()]}
        if self.order is not None:  # a trend over ordered levels: their positions, continuous
            scores = self._order_scores(clinical, kind, fail)
            dropped |= {
                d: f"{self.variable} = {v}, not in order"
                for d, v in values.items()
                if d not in dropped and str(v) not in scores
            }
            table = table.assign(**{self.variable: table[self.variable].astype(str).map(scores)})
            kind = "continuous"
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
            units=index,
            group=group,
            matrix=matrix,
            n_case=n_case,
            n_control=len(kept) - n_case if kind != "continuous" else 0,
            term=term,
            case_levels=case_levels,
            control_levels=control_levels,
            dropped=dropped,
        )

    def _check_donor_level(
        self, clinical: ClinicalTable | None, samples: SampleSheet | None
    ) -> None:
        """Refuse a donor-level contrast without its variable, or one asked to pair."""
        if clinical is None:
            raise InputError(
                f"contrast '{self.name}': '{self.variable}' is not a column of the sample "
                "sheet, and there is no clinical table",
                key=f"contrasts.{self.name}.variable",
                hint="Give the clinical table, or compare by a sample sheet column",
            )
        fail = self._failure(clinical)
        table = clinical.table
        if self.variable not in table.columns:
            sheet = (
                f"; of the sample sheet: {', '.join(samples.variables_and_visits)}"
                if samples is not None
                else ""
            )
            raise fail(
                f"unknown variable '{self.variable}'",
                "variable",
                hint=f"Variables of the clinical table: {', '.join(table.columns)}{sheet}",
            )
        if self.paired is not None:
            raise fail(
                f"'{self.variable}' is a donor-level variable: each donor is on one side, so "
                "there is nothing to pair",
                "paired",
                hint="Remove paired; it applies to sample-level variables (timepoint, ...)",
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

    def _order_scores(self, clinical: ClinicalTable, kind: str, fail: Callable) -> dict[str, float]:
        """Level -> position of the ``order`` of an ordered categorical variable."""
        if kind == "continuous":
            raise fail(
                f"order applies to a categorical variable; '{self.variable}' is continuous",
                "order",
                column=self.variable,
                hint="Remove order: a continuous variable is tested per unit already",
            )
        return order_scores(self, clinical.levels(self.variable), fail)

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
        case, controls = case_and_controls(self, clinical.levels(self.variable), kind, fail)
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


def order_scores(
    contrast: Contrast, levels: list[str], fail: Callable[..., InputError]
) -> dict[str, float]:
    """Level -> position (0, 1, 2, ...) of each level of ``contrast.order`` among ``levels``.

    The one rule of ordered contrasts (donor- and sample-level): 3 or more distinct, known
    levels, and no ``case`` / ``control``. ``fail`` makes the errors, as in
    `case_and_controls`.
    """
    order = [str(v) for v in contrast.order or []]
    if contrast.case is not None or contrast.control is not None:
        raise fail(
            "order tests a trend over the levels, so case and control must not be set",
            "order",
            column=contrast.variable,
            hint="Remove case and control, or remove order to compare two groups",
        )
    unknown = [v for v in order if v not in levels]
    if unknown or len(order) < 3 or len(set(order)) < len(order):
        raise fail(
            f"order {order} must name 3 or more distinct levels of '{contrast.variable}'"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            "order",
            column=contrast.variable,
            hint=f"Levels: {', '.join(levels)} (two levels: use case and control)",
        )
    return {v: float(i) for i, v in enumerate(order)}


def case_and_controls(
    contrast: Contrast, levels: list[str], kind: str, fail: Callable[..., InputError]
) -> tuple[str, list[str]]:
    """The case level and the control levels (default: every other level) among ``levels``.

    ``kind`` names the variable's kind in the message when no case is set (``"binary"``,
    ``"a sample-level variable"``); ``fail(problem, field, column=, hint=)`` makes the errors.
    """
    variable = contrast.variable
    if contrast.case is None:
        raise fail(
            f"'{variable}' is {kind}; the contrast needs a case level",
            "case",
            column=variable,
            hint=f"Set case to one of {', '.join(levels)}",
        )
    case = _match_level(contrast.case, levels)
    if case is None:
        raise fail(
            f"case level '{contrast.case}' does not occur in column '{variable}'",
            "case",
            column=variable,
            hint=f"Levels: {', '.join(levels)}",
        )
    if contrast.control is None:
        return case, [lv for lv in levels if lv != case]
    controls = _matched_levels(
        contrast.control, levels, lambda value, levels: fail(
            f"control level '{value}' does not occur in column '{variable}'",
            "control",
            column=variable,
            hint=f"Levels: {', '.join(levels)}",
        ),
    )  # fmt: skip
    if case in controls:
        raise fail(
            f"level '{case}' is both case and control",
            "control",
            column=variable,
            hint="The control must be other level(s) than the case",
        )
    return case, controls


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

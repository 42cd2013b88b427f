"""The design of a contrast: its units (donors or samples), groups and model matrix.

:meth:`sccohort.cohort.Contrast.design` builds a `ContrastDesign`; every statistics function
fits its ``matrix`` and tests its ``term``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sccohort.cohort._tables import INTERCEPT, VariableType
from sccohort.errors import InputError

if TYPE_CHECKING:
    from sccohort.cohort.contrast import Contrast


@dataclass
class ContrastDesign:
    """The donor-level design of one contrast.

    Attributes
    ----------
    contrast
        The :class:`Contrast` it was built from.
    kind
        Type of the tested variable: ``"binary"``, ``"categorical"`` or ``"continuous"``.
    units
        The design's rows (``Index``, length n): donor ids (``unit = "donor"``, a variable of
        the clinical table) or sample ids (``unit = "sample"``, a variable of the sample
        sheet such as ``timepoint``).
    group
        ``Series`` (n,): ``"case"`` / ``"control"``, or the continuous value (``float``).
    matrix
        ``DataFrame`` (n x p): ``intercept``, the tested column :attr:`term` (0/1 indicator
        of the case group, or the continuous value), then the covariates (continuous as
        float; categorical one-hot as ``"<covariate>[<level>]"`` without the reference level,
        the first of :meth:`ClinicalTable.levels`).
    n_case, n_control
        Units (donors, or samples) per group; for a continuous variable ``n_case`` is the
        number of units and ``n_control`` 0.
    term
        Column of :attr:`matrix` whose coefficient is tested: ``"<variable>[<case>]"``, or
        ``"<variable>"`` (effect per unit) for a continuous variable.
    case_levels, control_levels
        The levels in each group (empty for a continuous variable).
    dropped
        Unit -> why it left the design after the ``within`` restriction (missing phenotype,
        a level in neither group, or no sample on the other side of a paired design).
    unit
        ``"donor"`` or ``"sample"``: what a row of the design is.
    donor_of
        Sample -> donor of every row (``unit = "sample"``); ``None`` for donor designs.
    paired
        Whether the comparison is within donor: each donor has samples on both sides, the
        matrix has one column per donor but the first (``donor[<id>]``), and permutation
        tests exchange labels only within a donor.
    mixed
        Whether the samples are unbalanced repeats (some donors sampled on one side only, or
        several times on one side), tested with a donor random intercept (the donor of each
        row in :attr:`donor_codes`) instead of donor columns.

    Examples
    --------
    >>> from sccohort.datasets import toy
    >>> design = toy().design
    >>> design.n_case, design.n_control, design.term
    (4, 4, 'SRC[yes]')
    >>> design.donor_table()["arm"].tolist()[:2]
    ['yes', 'yes']
    """

    contrast: Contrast
    kind: VariableType
    units: pd.Index
    group: pd.Series
    matrix: pd.DataFrame
    n_case: int
    n_control: int
    term: str
    case_levels: list[str] = field(default_factory=list)
    control_levels: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    unit: str = "donor"
    donor_of: pd.Series | None = None
    paired: bool = False
    mixed: bool = False

    @property
    def donors(self) -> pd.Index:
        """The donors of the design (its rows for a donor design), in order of appearance."""
        if self.donor_of is None:
            return self.units
        return pd.Index(pd.unique(self.donor_of.astype(str)), name="donor_id")

    @property
    def blocks(self) -> np.ndarray | None:
        """The donor of each row as integer codes (paired designs), else None."""
        return self.donor_codes if self.paired else None

    @property
    def donor_codes(self) -> np.ndarray | None:
        """The donor of each row as integer codes (sample designs), else None."""
        if self.donor_of is None:
            return None
        return pd.factorize(self.donor_of.loc[self.units].astype(str))[0]

    def without(self, donors: Iterable[str] = (), *, units: Iterable[str] = ()) -> ContrastDesign:
        """The design without ``donors`` (their samples, in a sample design) and ``units``.

        Design columns that become constant (a covariate level, a left-out donor's column)
        are dropped. Raises `InputError` when what is left cannot be tested: a side with
        fewer than 2 units (3 for a continuous variable), or a rank-deficient matrix.
        """
        drop, gone = set(map(str, donors)), set(map(str, units))
        donor_of = (
            self.donor_of
            if self.donor_of is not None
            else pd.Series(self.units.astype(str), index=self.units)
        )
        keep = [u for u in self.units if str(donor_of[u]) not in drop and str(u) not in gone]
        matrix = self.matrix.loc[keep]
        fixed = (INTERCEPT, self.term)
        matrix = matrix[[c for c in matrix.columns if c in fixed or matrix[c].nunique() > 1]]
        donor_columns = [c for c in matrix.columns if c.startswith("donor[")]
        if donor_columns and (matrix[donor_columns].sum(axis=1) == 1).all():
            matrix = matrix.drop(columns=donor_columns[0])  # the reference donor left
        group = self.group.loc[keep]
        n_case = len(keep) if self.is_continuous else int((group == "case").sum())
        n_control = 0 if self.is_continuous else len(keep) - n_case
        if (n_case < 3) if self.is_continuous else min(n_case, n_control) < 2:
            raise InputError(
                f"contrast '{self.contrast.name}' without {', '.join(sorted(drop | gone))}: "
                f"{n_case} case / {n_control} control {self.unit}s left",
                key=f"contrasts.{self.contrast.name}",
            )
        _check_rank(matrix, self.term, lambda problem, *_, **__: InputError(problem))
        return replace(
            self,
            units=pd.Index(keep, name=self.units.name),
            group=group,
            matrix=matrix,
            n_case=n_case,
            n_control=n_control,
            donor_of=None if self.donor_of is None else self.donor_of.loc[keep],
        )

    @property
    def is_continuous(self) -> bool:
        """Whether the tested variable is continuous (effect per unit)."""
        return self.kind == "continuous"

    def donor_table(self) -> pd.DataFrame:
        """One row per unit: ``contrast, variable, kind, unit, donor_id, sample_id, group, arm``.

        ``group``: ``"case"`` / ``"control"``, or the value of a continuous variable (as text);
        ``arm``: the levels of the unit's group (``"yes"``, ``"SSc, HD"``), empty for a
        continuous variable; ``sample_id`` is empty for a donor design. The run writes it as
        ``tables/contrast_donors.csv``.
        """
        if self.is_continuous:
            arm = pd.Series("", index=self.group.index)
        else:
            labels = {
                "case": ", ".join(map(str, self.case_levels)) or "case",
                "control": ", ".join(map(str, self.control_levels)) or "control",
            }
            arm = self.group.astype(str).map(labels)
        by_sample = self.donor_of is not None
        return pd.DataFrame(
            {
                "contrast": self.contrast.name,
                "variable": self.contrast.variable,
                "kind": self.kind,
                "unit": self.unit,
                "donor_id": (self.donor_of.loc[self.units] if by_sample else self.units)
                .astype(str)
                .to_numpy(),
                "sample_id": self.units.astype(str) if by_sample else "",
                "group": self.group.loc[self.units].astype(str).to_numpy(),
                "arm": arm.loc[self.units].to_numpy(),
            }
        )

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``SRC: yes (n=4) vs no (n=17) within ...``."""
        c = self.contrast
        within = "".join(f", within {k} = {v}" for k, v in c.within.items())
        covs = f", adjusted for {', '.join(c.covariates)}" if c.covariates else ""
        if self.is_continuous:
            unit = "unit" if c.order is None else f"step of {' < '.join(map(str, c.order))}"
            head = f"{c.name}: {c.variable} per {unit} (n={self.n_case})"
        else:
            head = (
                f"{c.name}: {c.variable} {'/'.join(self.case_levels)} (n={self.n_case}) vs "
                f"{'/'.join(self.control_levels)} (n={self.n_control})"
            )
        what = "donor(s)" if self.unit == "donor" else "sample(s)"
        dropped = f", {len(self.dropped)} {what} dropped" if self.dropped else ""
        paired = f", paired within donor ({len(self.donors)} donors)" if self.paired else ""
        if self.mixed:
            paired = (
                f", mixed model ({len(self.donors)} donors, {self.n_paired_donors} on both sides)"
            )
        return head + paired + within + covs + dropped

    @property
    def n_paired_donors(self) -> int:
        """Donors with units on both sides, or at 2+ values of a trend (0: a donor design)."""
        if self.donor_of is None:
            return 0
        sides = self.group.loc[self.units].groupby(self.donor_of.loc[self.units].to_numpy())
        return int((sides.nunique() > 1).sum())


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

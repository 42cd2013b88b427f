"""Donor influence: whether one donor carries an association.

`leave_one_donor_out` reruns the default test once per donor of the design with that donor
(all its samples) left out, and reports for every significant subset the largest padj it
gets, and which donor's absence gives it. A result that one donor carries shows a large
``loo_padj``; where leaving a donor out leaves too few donors to test at all, ``loo_padj``
is 1 and that donor is named.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sccohort.cohort import ContrastDesign
from sccohort.errors import InputError
from sccohort.stats.abundance import compare_abundance

__all__ = ["leave_one_donor_out"]


def leave_one_donor_out(
    counts: pd.DataFrame,
    totals: pd.DataFrame,
    design: ContrastDesign,
    tests: pd.DataFrame,
    *,
    level: str,
    alpha: float = 0.05,
    n_perm: int = 10_000,
    max_exact: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """``tests`` with the largest padj of each significant subset when one donor is left out.

    Parameters
    ----------
    counts, totals, design, level, n_perm, max_exact, seed
        As given to :func:`~sccohort.stats.compare_abundance` for ``tests``.
    tests
        Its result (one row per subset).
    alpha
        Rows with ``padj < alpha`` are checked.

    Returns
    -------
    pandas.DataFrame
        ``tests`` plus ``loo_padj`` (the largest padj over the donors left out one at a time;
        1 when some donor's absence leaves the contrast untestable; NaN for rows not
        checked) and ``loo_donor`` (the donor whose absence gives it; ``""`` if unchecked).

    Examples
    --------
    >>> from sccohort.stats import compare_abundance, leave_one_donor_out
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> tests = compare_abundance(data.counts, data.totals, data.design, level="subset")
    >>> loo = leave_one_donor_out(
    ...     data.counts, data.totals, data.design, tests, level="subset", alpha=0.1
    ... )
    >>> row = loo.iloc[0]  # Mono_A, padj 0.057: without any one donor still at most 0.057
    >>> float(row["padj"].round(3)), float(row["loo_padj"].round(3)), row["loo_donor"]
    (0.057, 0.057, 'D1')
    >>> bool(np.isnan(loo.iloc[1]["loo_padj"]))  # T_B is not significant: not checked
    True
    """
    padj = tests["padj"].to_numpy(dtype=float)
    checked = np.flatnonzero(padj < alpha)
    worst = np.full(len(tests), np.nan)
    donor_of_worst = np.full(len(tests), "", dtype=object)
    if len(checked):
        worst[checked] = -1.0
    for donor in design.donors.astype(str) if len(checked) else []:
        try:
            reduced = design.without([donor])
        except InputError:
            left_out = np.ones(len(tests))
        else:
            rerun = compare_abundance(
                counts, totals, reduced, level=level, n_perm=n_perm, max_exact=max_exact,
                seed=seed,
            )  # fmt: skip
            left_out = rerun["padj"].fillna(1.0).to_numpy(dtype=float)
        higher = checked[left_out[checked] > worst[checked]]
        worst[higher] = left_out[higher]
        donor_of_worst[higher] = donor
    return tests.assign(loo_padj=worst, loo_donor=donor_of_worst)

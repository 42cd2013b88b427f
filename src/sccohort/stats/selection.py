"""Which subsets are associated with a contrast: the one selection the pipeline and report use.

`associated_subsets` turns ``tables/association.csv`` into one row per subset x contrast
(the default test at the subset levels, significant rows first, then nominal candidates);
`characterised_subsets` picks from it the subsets the pipeline characterises in detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sccohort.stats.abundance import DEFAULT_METHOD
from sccohort.stats.composition import SUBSET_LEVELS

__all__ = [
    "CLASSIC_METHOD",
    "MAX_CHARACTERISED",
    "associated_subsets",
    "characterised_subsets",
    "default_test_rows",
]

#: The classic test's ``method`` whose padj is shown beside the default test's.
CLASSIC_METHOD = "ks_bonferroni"
#: Most subsets characterised in detail.
MAX_CHARACTERISED = 6


def default_test_rows(
    association: pd.DataFrame, method: str = DEFAULT_METHOD, levels: Sequence[str] = SUBSET_LEVELS
) -> pd.DataFrame:
    """Rows of ``method`` (else the table's first method) at the ``levels`` present (else all).

    Adds ``_rank``: the position of each row's level in ``levels`` (0 when ``level`` is absent).
    """
    data = association
    if "method" in data.columns:
        methods = data["method"].astype(str)
        chosen = method if (methods == method).any() else methods.iloc[0]
        data = data[methods == chosen]
    if "level" in data.columns:
        present = [lv for lv in levels if (data["level"].astype(str) == lv).any()]
        if present:
            data = data[data["level"].astype(str).isin(present)]
            rank = {lv: i for i, lv in enumerate(present)}
            data = data.assign(_rank=data["level"].astype(str).map(rank))
    if "_rank" not in data.columns:
        data = data.assign(_rank=0)
    return data


def associated_subsets(
    association: pd.DataFrame | None,
    *,
    alpha: float = 0.05,
    method: str = DEFAULT_METHOD,
    levels: Sequence[str] = SUBSET_LEVELS,
    n_candidates: int = 5,
) -> pd.DataFrame:
    """Subset x contrast associations: the significant ones first, then the best candidates.

    For every subset and contrast the row of the default test (``method``) with the smallest
    padj among ``levels`` is taken (ties: the first level). Rows with ``padj < alpha`` come
    first, by padj; then up to ``n_candidates`` rows with nominal ``pvalue < alpha`` that did
    not survive the multiple-testing correction, marked ``significant = False``.

    What the pipeline characterises (`characterised_subsets`) and what the report shows both
    come from this table.

    Parameters
    ----------
    association
        ``tables/association.csv`` (core columns; ``method``, ``level``; optionally
        ``mean_share_case``, ``mean_share_control``); ``None`` gives an empty table.
    alpha
        Significance threshold on padj (and on the nominal p of candidates).
    method
        The default test's ``method`` (falls back to the first method of the table).
    levels
        Composition levels considered, in order of preference.
    n_candidates
        Most non-significant rows listed after the significant ones.

    Returns
    -------
    pandas.DataFrame
        Columns ``subset, contrast, level, significant, fold_change, fc_ci_low, fc_ci_high,
        ci`` (text), ``effect`` (log2), ``pvalue, padj, ks_padj`` (the classic test, when
        run), ``n_case, n_control, mean_share_case, mean_share_control, method``, and
        ``loo_padj, loo_donor`` (`leave_one_donor_out`, when the table has them).

    Examples
    --------
    >>> from sccohort.stats import associated_subsets, compare_abundance
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> design, counts, totals = data.design, data.counts, data.totals
    >>> tests = compare_abundance(counts, totals, design, level="subset", seed=0)
    >>> associated_subsets(tests, alpha=0.1)[["contrast", "subset", "fold_change", "padj"]].round(3)
      contrast  subset  fold_change   padj
    0      SRC  Mono_A        2.472  0.057
    """
    columns = [
        "subset", "contrast", "level", "significant", "fold_change", "fc_ci_low", "fc_ci_high",
        "ci", "effect", "pvalue", "padj", "ks_padj", "n_case", "n_control", "mean_share_case",
        "mean_share_control", "method", "loo_padj", "loo_donor",
    ]  # fmt: skip
    need = ("contrast", "subset", "effect", "padj")
    if association is None or association.empty or any(c not in association for c in need):
        return pd.DataFrame(columns=columns)
    data = default_test_rows(association, method, levels).copy()
    data = data.dropna(subset=["padj"])
    if data.empty:
        return pd.DataFrame(columns=columns)
    for c in ("subset", "contrast"):
        data[c] = data[c].astype(str)
    if "level" not in data:
        data["level"] = ""
    data = data.sort_values(["padj", "_rank"], kind="stable")
    best = data.drop_duplicates(["contrast", "subset"], keep="first").copy()
    best["significant"] = best["padj"] < alpha
    pvalue = best["pvalue"] if "pvalue" in best else best["padj"]
    best["pvalue"] = pvalue
    order = ["padj", "pvalue", "subset"]
    significant = best[best["significant"]].sort_values(order, kind="stable")
    rest = best[~best["significant"] & (best["pvalue"] < alpha)]
    rest = rest.sort_values(order, kind="stable").head(n_candidates)
    table = pd.concat([significant, rest], ignore_index=True)
    table["fold_change"] = np.exp2(table["effect"].astype(float))
    for side in ("ci_low", "ci_high"):
        values = table[side] if side in table else pd.Series(np.nan, index=table.index)
        table[f"fc_{side}"] = np.exp2(values.astype(float))
    table["ci"] = [
        f"{lo:.2f} to {hi:.2f}" if np.isfinite(lo) and np.isfinite(hi) else ""
        for lo, hi in zip(table["fc_ci_low"], table["fc_ci_high"], strict=True)
    ]
    table["ks_padj"] = np.nan
    if "method" in association and (association["method"].astype(str) == CLASSIC_METHOD).any():
        ks = association[association["method"].astype(str) == CLASSIC_METHOD]
        key = ["contrast", "level", "subset"] if "level" in ks else ["contrast", "subset"]
        ks = ks.assign(**{k: ks[k].astype(str) for k in key}).drop_duplicates(key)
        lookup = ks.set_index(key)["padj"]
        table["ks_padj"] = [
            lookup.get(tuple(str(r[k]) for k in key) if len(key) > 1 else str(r[key[0]]))
            for _, r in table.iterrows()
        ]
    for c in columns:
        if c not in table:
            table[c] = np.nan
    return table[columns].reset_index(drop=True)


def characterised_subsets(
    associated: pd.DataFrame, *, max_subsets: int = MAX_CHARACTERISED, candidates: int = 3
) -> tuple[list[str], bool]:
    """The subsets characterised in detail and whether they are significant.

    Parameters
    ----------
    associated
        From :func:`associated_subsets`.
    max_subsets
        Most subsets returned.
    candidates
        Most candidates returned when no subset is significant (0: none).

    Returns
    -------
    subsets : list of str
        Significant subsets by their smallest padj (at most ``max_subsets``); when none is
        significant, the candidates (at most ``candidates``).
    significant : bool
        Whether the subsets are significant (False: exploratory candidates).

    Examples
    --------
    >>> from sccohort.stats import characterised_subsets
    >>> table = pd.DataFrame({"subset": ["A", "B", "A"], "significant": [True, True, False]})
    >>> characterised_subsets(table, max_subsets=6)
    (['A', 'B'], True)
    """
    if associated.empty:
        return [], False
    sig = associated[associated["significant"].astype(bool)]
    if len(sig):
        return list(pd.unique(sig["subset"].astype(str)))[:max_subsets], True
    return list(pd.unique(associated["subset"].astype(str)))[: min(candidates, max_subsets)], False

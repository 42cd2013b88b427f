"""The default donor-level test of subset abundance: a permutation-calibrated moderated t.

Per donor and subset the share ``count / total`` is arcsine-square-root transformed (the
propeller default; ``transform="log2"`` uses ``log2((count + 0.5) / (total + 1))``). One linear
model on the design matrix (intercept, the tested term, covariates) is fitted for all subsets at
once, the residual variances are squeezed towards a common prior across subsets as in limma's
``eBayes``, and the moderated t of the term is referred to its permutation distribution, the
moderation re-estimated in every permutation. The effect is the term's coefficient in the same
model fitted to the log2 shares: the log2 fold change of the share (case vs control, or per
unit of a continuous variable), with the moderated-t 95% CI.

Why arcsine-sqrt for the test: with few cases an expansion in the cases widens only the
cases' spread, which the pooled variance mostly ignores, so a scale less compressive than log
finds expansions more often (and depletions less often); both scales are calibrated by the
permutations. The permutations cost some power against propeller's parametric p-values on
well-behaved Dirichlet-multinomial data; they are the default because their validity needs
only exchangeable donors, not normal residuals. The measured calibration and power are in
``benchmarks/bench_association_calibration.py`` and the README.

Why by hand: limma/propeller are R-only; Python peers (statsmodels, pertpy) offer neither a
moderated t nor an exact or Freedman-Lane permutation engine. The matrix algebra here computes
every permutation's statistics for all subsets with a few matrix products.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from sccohort.cohort import ContrastDesign
from sccohort.errors import InputError
from sccohort.io.tables import CORE_COLUMNS
from sccohort.multitest import adjust_pvalues
from sccohort.stats.permutation import (
    _permutation_test,
    precision_weights,
)

__all__ = ["DEFAULT_METHOD", "PSEUDOCOUNT", "compare_abundance", "compare_donor_values"]

#: Added to every count (and twice to every total) before the log2 share.
PSEUDOCOUNT = 0.5
#: ``method`` of the default test's rows (moderated, arcsine-square-root scale).
DEFAULT_METHOD = "perm_lm_asin_log2share"

_COLUMNS = [
    *CORE_COLUMNS,
    "statistic",
    "se",
    "df_prior",
    "scheme",
    "n_perm",
    "exact",
    "mean_share",
    "mean_share_case",
    "mean_share_control",
    "note",
]


def compare_abundance(
    counts: pd.DataFrame,
    totals: pd.DataFrame,
    design: ContrastDesign,
    *,
    level: str,
    n_perm: int = 10_000,
    max_exact: int = 20_000,
    seed: int = 0,
    transform: Literal["asin", "log2"] = "asin",
    moderate: bool = True,
    weighted: bool = True,
) -> pd.DataFrame:
    """Test every subset's share for association with the contrast's clinical variable.

    Test scale: ``arcsin(sqrt(count / total))`` (``transform="asin"``) or
    ``log2((count + 0.5) / (total + 1))`` (``"log2"``) per donor and subset. Model: least
    squares on ``design.matrix`` for all subsets at once; residual variances squeezed towards a
    prior fitted across the subsets (limma ``fitFDist``/``squeezeVar``, not robust; no
    squeezing with fewer than 3 subsets or ``moderate=False``); statistic: the (moderated) t of
    ``design.term``. Two-sided p-values come from permutations, with the moderation re-fitted
    in every permutation (the same permutation for all subsets, which keeps their
    correlation):

    - no covariates (intercept + term): the distinct relabellings of the donors, i.e. the
      distinct arrangements of the term's values (binary: the ``C(n, n_case)`` choices of
      cases, 5,985 for 4 of 21; continuous: permutations of its values). All of them are
      enumerated when there are at most ``max_exact`` (``scheme = "exact"``, ``p = b / N``
      with the observed labelling among the ``N``), otherwise ``n_perm`` random ones
      (``scheme = "random"``, ``p = (1 + b) / (1 + n_perm)``);
    - covariates: Freedman-Lane, i.e. residuals of the reduced model (every column but the
      term) permuted among donors and the full model refitted; all ``n!`` permutations when
      ``n! <= max_exact`` (``"freedman-lane-exact"``), otherwise ``n_perm`` random ones
      (``"freedman-lane"``).

    ``effect``: the term's coefficient of the same (moderated) model on the log2 shares, with the
    parametric 95% CI of its moderated t (``t`` quantile on ``d + d0`` degrees of freedom); the
    p-value is the permutation one of the test scale, so with ``transform="asin"`` a CI may
    touch 0 while p < 0.05 or the reverse near the threshold. ``padj``: Benjamini-Hochberg over
    the tested subsets of this call (one contrast, one level).

    Parameters
    ----------
    counts
        Donors x subsets, cells of each subset per donor (non-negative integers). Must hold
        every donor of ``design``; other donors are ignored.
    totals
        Same labels as ``counts``: the denominator of each share (all cells of the donor, or
        the cells of the subset's parent lineage); ``counts <= totals``.
    design
        The contrast's design (:meth:`sccohort.cohort.Contrast.design`).
    level
        Annotation level the subsets come from (``l1``, ``l2``, ``subset``, ...), copied into
        the ``level`` column.
    n_perm
        Random permutations when enumeration is not used.
    max_exact
        Largest number of permutations that is enumerated instead of sampled.
    seed
        Seed of the random permutations.
    transform
        Scale of the test: ``"asin"`` (default) or ``"log2"``; the effect is log2 either way.
    moderate
        Squeeze the residual variances (default); ``False`` gives the ordinary t.
    weighted
        Precision weights (default): each unit's share weighs ``1 / (between-unit variance +
        sampling variance)``, the sampling variance from its cell numbers (``1 / (4 total)`` on
        the arcsine scale, ``(1 / (count + 0.5) - 1 / (total + 1)) / ln(2)^2`` on the log2
        one), the between-unit variance estimated per subset from the model without the tested
        term. A donor with 3 cells then weighs next to nothing against one with 3,000, while
        donors with thousands of cells each weigh about equally. ``False``: equal weights.

    Returns
    -------
    DataFrame
        One row per subset (column order of ``counts``) with ``contrast, level, subset, effect
        (log2 fold change of the share; per unit for a continuous variable), ci_low, ci_high,
        pvalue, padj, method, n_case, n_control`` (``method`` e.g. ``perm_lm_asin_log2share``: test
        and effect scales) and ``statistic`` (moderated t on the test scale), ``se`` (of the
        effect),
        ``df_prior`` (test scale; ``inf`` = variances pooled completely, 0 = none), ``scheme``,
        ``n_perm`` (permutations evaluated, the observed one included when exact), ``exact``,
        ``mean_share`` (mean over donors of count / total; per group for binary and
        categorical contrasts, NaN for continuous ones) and ``note``. A subset without cells in
        any donor of the design, whose total is 0 for some donor (its share is undefined
        there), or whose share is the same in every donor (e.g. the only child of its parent)
        is not tested: its row has ``note`` saying why, NaN statistics and no part in ``padj``.

    Raises
    ------
    InputError
        Donors of the design missing from ``counts``; ``counts`` and ``totals`` with different
        labels; missing, negative or non-integer values; a count above its total; a donor
        without any cell (all totals 0).

    Examples
    --------
    >>> from sccohort.stats import compare_abundance
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> design, counts, totals = data.design, data.counts, data.totals
    >>> result = compare_abundance(counts, totals, design, level="subset", seed=0)
    >>> result[["subset", "effect", "pvalue", "padj"]].round(4)
       subset  effect  pvalue    padj
    0  Mono_A  1.3057  0.0286  0.0571
    1     T_B  0.0063  0.9143  0.9143
    """
    name = design.contrast.name
    n_perm, max_exact = _checked_options(name, transform, n_perm, max_exact)
    count_values, total_values = _validated(counts, totals, design, level)
    subsets = list(counts.columns)
    notes, share = _untested_notes(count_values, total_values, design.units, design.unit)
    tested = np.flatnonzero(notes == "")

    x = design.matrix.loc[design.units].to_numpy(dtype=float)
    term = list(design.matrix.columns).index(design.term)
    covariates = x.shape[1] > 2
    n_subsets = len(subsets)
    columns: dict[str, object] = {
        "contrast": name,
        "level": level,
        "subset": subsets,
        "method": f"perm_{'lm' if moderate else 't'}_{transform}_log2share",
        "n_case": design.n_case,
        "n_control": design.n_control,
        "mean_share": share.mean(axis=0),
        "mean_share_case": np.full(n_subsets, np.nan),
        "mean_share_control": np.full(n_subsets, np.nan),
        "scheme": np.full(n_subsets, "", dtype=object),
        "n_perm": np.zeros(n_subsets, dtype=int),
        "exact": np.zeros(n_subsets, dtype=bool),
        "note": notes,
    }
    for col in ("effect", "ci_low", "ci_high", "pvalue", "padj", "statistic", "se", "df_prior"):
        columns[col] = np.full(n_subsets, np.nan)
    if not design.is_continuous:
        is_case = (design.group.loc[design.units] == "case").to_numpy()
        columns["mean_share_case"] = share[is_case].mean(axis=0)
        columns["mean_share_control"] = share[~is_case].mean(axis=0)
    if tested.size:
        c, t = count_values[:, tested], total_values[:, tested]
        log2_share = np.log2((c + PSEUDOCOUNT) / (t + 2 * PSEUDOCOUNT))
        y_test = np.arcsin(np.sqrt(c / t)) if transform == "asin" else log2_share
        weights = _share_weights(c, t, y_test, log2_share, x, term, transform) if weighted else None
        fit = _permutation_test(
            y_test,
            log2_share,
            x,
            term,
            covariates,
            n_perm,
            max_exact,
            seed,
            moderate,
            blocks=design.blocks,
            weights=weights,
            groups=design.donor_codes if design.mixed else None,
        )
        fit["padj"] = adjust_pvalues(fit["pvalue"])
        for col, values in fit.items():
            columns[col][tested] = values  # type: ignore[index]
    return pd.DataFrame(columns)[_COLUMNS]


def _share_weights(
    c: np.ndarray,
    t: np.ndarray,
    y_test: np.ndarray,
    log2_share: np.ndarray,
    x: np.ndarray,
    term: int,
    transform: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision weights (units x subsets) of the test scale and of the log2 share."""
    reduced = np.delete(x, term, axis=1)
    log2_var = (1 / (c + PSEUDOCOUNT) - 1 / (t + 2 * PSEUDOCOUNT)) / np.log(2) ** 2
    test_var = 1 / (4 * t) if transform == "asin" else log2_var
    return (
        precision_weights(y_test, test_var, reduced),
        precision_weights(log2_share, log2_var, reduced),
    )


def _checked_options(name: str, transform: str, n_perm: int, max_exact: int) -> tuple[int, int]:
    """Check the test scale and permutation counts; return the counts as ints."""
    if transform not in ("asin", "log2"):
        raise InputError(
            f"unknown transform '{transform}'",
            key=f"contrasts.{name}",
            hint="Use 'asin' (the default) or 'log2'",
        )
    n_perm, max_exact = int(n_perm), int(max_exact)
    if n_perm < 1 or max_exact < 0:
        raise InputError(
            f"n_perm must be >= 1 and max_exact >= 0 (got {n_perm}, {max_exact})",
            key=f"contrasts.{name}",
            hint="Use e.g. n_perm = 10000, max_exact = 20000",
        )
    return n_perm, max_exact


def _untested_notes(
    count_values: np.ndarray, total_values: np.ndarray, donors: pd.Index, unit: str = "donor"
) -> tuple[np.ndarray, np.ndarray]:
    """Why each subset is not tested ("" if it is), and the units x subsets shares."""
    n_donors = len(donors)
    notes = np.full(count_values.shape[1], "", dtype=object)
    absent = count_values.sum(axis=0) == 0
    zero_total = (total_values == 0).any(axis=0)
    for g in np.flatnonzero(absent):
        notes[g] = f"not tested: no cells in any of the {n_donors} {unit}s"
    for g in np.flatnonzero(zero_total & ~absent):
        zero = list(donors[total_values[:, g] == 0])
        notes[g] = f"not tested: total is 0 (share undefined) in {unit}(s) {', '.join(zero)}"
    share = np.divide(
        count_values, total_values, out=np.zeros_like(count_values), where=total_values > 0
    )
    constant = (share.max(axis=0) == share.min(axis=0)) & ~absent & ~zero_total
    for g in np.flatnonzero(constant):
        notes[g] = f"not tested: the share is {share[0, g]:.4g} in every {unit}"
    return notes, share


#: ``method`` of `compare_donor_values` rows.
VALUES_METHOD = "perm_lm_difference"


def compare_donor_values(
    values: pd.DataFrame,
    design: ContrastDesign,
    *,
    level: str,
    n_perm: int = 10_000,
    max_exact: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The default test's model and permutations for donor-level values other than shares.

    Each column (e.g. a signature score of one subset, averaged per donor) is tested with
    the design's linear model and the permutation scheme of `compare_abundance` (exact
    relabellings, or Freedman-Lane with covariates); variances are moderated across the
    columns that share the same donors. A donor without a value in a column (too few cells)
    leaves that column's test; columns left with fewer than 2 donors per group (3 for a
    continuous variable), a rank-deficient design, or one value everywhere are not tested.

    Parameters
    ----------
    values
        Donors x features (index ``donor_id``), floats (NaN: no value); every donor of
        ``design`` is a row.
    design
        The contrast's design.
    level
        Copied into the ``level`` column (e.g. ``"signature:CD14_EGR1"``).
    n_perm, max_exact, seed
        As for `compare_abundance`.

    Returns
    -------
    pandas.DataFrame
        One row per column of ``values``: the core columns (``subset`` = the column name;
        ``effect`` = difference of means case - control, or per unit of a continuous
        variable, with its moderated-t 95% CI; permutation ``pvalue``; ``padj`` BH over the
        tested columns; ``n_case`` / ``n_control`` the donors used), plus ``statistic``,
        ``scheme``, ``n_perm``, ``mean_case``, ``mean_control`` and ``note``.

    Examples
    --------
    >>> from sccohort.stats import compare_donor_values
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> values = pd.DataFrame({"score": np.linspace(0, 1, 8)}, index=data.design.units)
    >>> compare_donor_values(values, data.design, level="signature", seed=0)[
    ...     ["subset", "effect", "pvalue"]
    ... ].round(3)
      subset  effect  pvalue
    0  score  -0.571   0.029
    """
    name = design.contrast.name
    missing = [d for d in design.units if d not in values.index]
    if missing:
        raise InputError(
            f"donor(s) {', '.join(map(str, missing))} of contrast '{name}' have no row in "
            f"the values of '{level}'",
            key=f"contrasts.{name}",
        )
    y = values.loc[design.units].to_numpy(dtype=float)
    is_case = (design.group.loc[design.units] == "case").to_numpy()
    columns = _value_columns(name, level, list(values.columns))
    present = np.isfinite(y)
    x_all = design.matrix.loc[design.units].to_numpy(dtype=float)
    term = list(design.matrix.columns).index(design.term)
    patterns: dict[bytes, list[int]] = {}
    for g in range(y.shape[1]):
        patterns.setdefault(present[:, g].tobytes(), []).append(g)
    for key, cols in patterns.items():
        rows = np.frombuffer(key, dtype=bool)
        n_case, n_control = _arm_summaries(columns, y, rows, cols, is_case, design.is_continuous)
        x = x_all[rows]
        lacking = ", ".join(map(str, design.units[~rows]))
        too_few = (n_case < 3) if design.is_continuous else min(n_case, n_control) < 2
        if too_few or np.linalg.matrix_rank(x) < x.shape[1] or rows.sum() <= x.shape[1]:
            columns["note"][cols] = f"not tested: too few donors with a value (none for {lacking})"  # type: ignore[index]
            continue
        sub = y[np.ix_(rows, cols)]
        constant = sub.max(axis=0) == sub.min(axis=0)
        for c in np.asarray(cols)[constant]:
            columns["note"][c] = "not tested: the same value in every donor"  # type: ignore[index]
        use = [c for c, same in zip(cols, constant, strict=True) if not same]
        if not use:
            continue
        blocks = None if design.blocks is None else design.blocks[rows]
        groups = design.donor_codes[rows] if design.mixed else None  # type: ignore[index]
        fit = _permutation_test(
            y[np.ix_(rows, use)], y[np.ix_(rows, use)], x, term, x.shape[1] > 2, n_perm,
            max_exact, seed, True, blocks=blocks, groups=groups,
        )  # fmt: skip
        for col in ("effect", "ci_low", "ci_high", "pvalue", "statistic"):
            columns[col][use] = fit[col]  # type: ignore[index]
        columns["scheme"][use] = fit["scheme"]  # type: ignore[index]
        columns["n_perm"][use] = fit["n_perm"]  # type: ignore[index]
        if lacking:
            columns["note"][use] = f"without donor(s) {lacking} (no value)"  # type: ignore[index]
    p = columns["pvalue"]
    tested = np.isfinite(p)  # type: ignore[arg-type]
    if tested.any():
        columns["padj"][tested] = adjust_pvalues(p[tested])  # type: ignore[index]
    order = [*CORE_COLUMNS, "statistic", "scheme", "n_perm", "mean_case", "mean_control", "note"]
    return pd.DataFrame(columns)[order]


def _value_columns(name: str, level: str, subsets: list) -> dict[str, object]:
    """The columns of `compare_donor_values`, before any test (NaN statistics, no notes)."""
    k = len(subsets)
    columns: dict[str, object] = {
        "contrast": name,
        "level": level,
        "subset": subsets,
        "method": VALUES_METHOD,
        "n_case": np.zeros(k, dtype=int),
        "n_control": np.zeros(k, dtype=int),
        "mean_case": np.full(k, np.nan),
        "mean_control": np.full(k, np.nan),
        "scheme": np.full(k, "", dtype=object),
        "n_perm": np.zeros(k, dtype=int),
        "note": np.full(k, "", dtype=object),
    }
    for col in ("effect", "ci_low", "ci_high", "pvalue", "padj", "statistic"):
        columns[col] = np.full(k, np.nan)
    return columns


def _arm_summaries(
    columns: dict[str, object],
    y: np.ndarray,
    rows: np.ndarray,
    cols: list[int],
    is_case: np.ndarray,
    continuous: bool,
) -> tuple[int, int]:
    """Fill the donor counts and arm means of the columns ``cols`` with donors ``rows``."""
    n_case, n_control = int((rows & is_case).sum()), int((rows & ~is_case).sum())
    if continuous:
        n_case, n_control = int(rows.sum()), 0
    columns["n_case"][cols] = n_case  # type: ignore[index]
    columns["n_control"][cols] = n_control  # type: ignore[index]
    if not continuous:
        for arm, members in (("mean_case", rows & is_case), ("mean_control", rows & ~is_case)):
            if members.any():  # an arm without donors keeps NaN (no mean of nothing)
                columns[arm][cols] = y[members][:, cols].mean(axis=0)  # type: ignore[index]
    return n_case, n_control


def _validated(
    counts: pd.DataFrame, totals: pd.DataFrame, design: ContrastDesign, level: str
) -> tuple[np.ndarray, np.ndarray]:
    """The design donors' rows of ``counts`` and ``totals`` as float arrays, checked."""
    name = design.contrast.name
    key = f"contrasts.{name}"
    for what, frame in (("counts", counts), ("totals", totals)):
        if not isinstance(frame, pd.DataFrame):
            raise InputError(
                f"{what} of level '{level}' must be a DataFrame (donors x subsets), "
                f"not {type(frame).__name__}",
                key=key,
            )
    if not counts.columns.equals(totals.columns) or not counts.index.equals(totals.index):
        raise InputError(
            f"counts and totals of level '{level}' have different donors or subsets",
            key=key,
            hint="Build both tables with the same rows (donors) and columns (subsets)",
        )
    if counts.shape[1] == 0:
        raise InputError(f"no subsets at level '{level}'", key=key, hint="Check the annotation")
    if counts.columns.duplicated().any() or counts.index.duplicated().any():
        dup = list(counts.columns[counts.columns.duplicated()]) + list(
            counts.index[counts.index.duplicated()]
        )
        raise InputError(
            f"duplicated donor or subset label(s) at level '{level}': {', '.join(map(str, dup))}",
            key=key,
        )
    missing = [d for d in design.units if d not in counts.index]
    if missing:
        raise InputError(
            f"{design.unit}(s) {', '.join(map(str, missing))} of contrast '{name}' have no row "
            f"in the cell counts of level '{level}'",
            key=key,
            hint="Every donor of the design needs a sample of the primary timepoint and tissue; "
            "add the samples or restrict the contrast",
        )
    arrays = []
    for what, frame in (("counts", counts), ("totals", totals)):
        sub = frame.loc[design.units]
        try:
            values = sub.to_numpy(dtype=float)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"{what} of level '{level}' are not numeric ({err})", key=key
            ) from None
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
        if bad.any():
            i, g = np.argwhere(bad)[0]
            value = "missing" if np.isnan(values[i, g]) else f"{values[i, g]:g}"
            raise InputError(
                f"{what} of {design.unit} '{sub.index[i]}', subset '{sub.columns[g]}' at level "
                f"'{level}' is {value}; cell counts must be non-negative integers",
                key=key,
                hint=f"{int(bad.sum())} bad value(s) in all; fill missing counts with 0 if "
                "the donor truly has no such cells",
            )
        arrays.append(values)
    count_values, total_values = arrays
    over = count_values > total_values
    if over.any():
        i, g = np.argwhere(over)[0]
        raise InputError(
            f"{design.unit} '{design.units[i]}', subset '{counts.columns[g]}' at level "
            f"'{level}' has {int(count_values[i, g])} cells but a total of "
            f"{int(total_values[i, g])}",
            key=key,
            hint="totals must count every cell of the share's denominator (all cells of the "
            "donor, or of the parent lineage)",
        )
    empty = (total_values == 0).all(axis=1)
    if empty.any():
        donors = list(design.units[empty])
        raise InputError(
            f"{design.unit}(s) {', '.join(map(str, donors))} have no cells at level '{level}' "
            f"(all totals 0)",
            key=key,
            hint="Check their samples' QC, or leave them out of the contrast",
        )
    return count_values, total_values

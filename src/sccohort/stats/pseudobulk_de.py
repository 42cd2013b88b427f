"""Pseudobulk differential expression: DESeq2 per group on the pseudobulks of a contrast.

`pseudobulk_de` tests one group's units x genes matrix (donors, or the samples of a
sample-level design) for the tested term of the contrast's design (covariates, and in a
paired design one column per donor, included) with DESeq2's negative binomial Wald test,
after edgeR's ``filterByExpr`` (`filter_by_expr`); `pseudobulk_de_all` runs every group
with enough donors and lists the skipped ones. The counts come from
:func:`sccohort.stats.pseudobulk.pseudobulk`.

Engines, chosen by measurement (benchmarks/bench_pseudobulk_deseq2.py, results in
benchmarks/results/pseudobulk_deseq2.csv): ``"deseq2"`` (default) is DESeq2's algorithm with
R's defaults, vectorised over genes (:mod:`sccohort.stats.deseq2`); ``"pydeseq2"`` runs the
pydeseq2 package, which fits genes one at a time in Python. Both reproduce R DESeq2 on the
benchmark's pseudobulks; ``deseq2`` is one to two orders of magnitude faster than pydeseq2
and than R (the README quotes the numbers). Written by hand because no maintained Python
package runs DESeq2 at array speed; edgeR's quasi-likelihood F-test (our
:mod:`sccohort.stats.nb_ql`, used for neighbourhoods) is a different test (its GPL Python port,
edgepython, is measured in the benchmark as an optional peer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sccohort.cohort import ContrastDesign
from sccohort.errors import InputError
from sccohort.io.tables import CORE_COLUMNS
from sccohort.multitest import adjust_pvalues
from sccohort.stats.deseq2 import deseq2_wald, pydeseq2_wald
from sccohort.stats.mixed_model import random_intercept, voom_weights
from sccohort.stats.nb_ql import tmm_factors

__all__ = ["DE_COLUMNS", "ENGINES", "filter_by_expr", "pseudobulk_de", "pseudobulk_de_all"]

#: Engines of `pseudobulk_de`.
ENGINES = ("deseq2", "pydeseq2")


_GENE_AT = CORE_COLUMNS.index("subset") + 1


#: Columns of a pseudobulk DE table, in order: the DESIGN core columns with ``gene`` after
#: ``subset``, then the extras.
DE_COLUMNS = [
    *CORE_COLUMNS[:_GENE_AT],
    "gene",
    *CORE_COLUMNS[_GENE_AT:],
    "base_mean",
    "stat",
    "lfc_se",
]


_SKIP_COLUMNS = ["contrast", "level", "subset", "n_case", "n_control", "reason"]


_Z975 = float(stats.norm.ppf(0.975))


def filter_by_expr(
    counts: pd.DataFrame,
    design: pd.DataFrame,
    min_count: float = 10,
    min_total_count: float = 15,
    large_n: int = 10,
    min_prop: float = 0.7,
) -> pd.Series:
    """Genes with enough counts to be tested: edgeR's ``filterByExpr`` rule.

    A gene is kept if its counts per million reach ``min_count`` reads at the median library
    size (CPM >= min_count / median library size x 1e6) in at least ``m`` donors, and its
    total count is at least ``min_total_count``. ``m`` is the smallest group size implied by
    the design (1 / the largest hat value; for a two-group design the smaller group); above
    ``large_n`` it grows only by ``min_prop`` per donor, as in edgeR.

    Parameters
    ----------
    counts
        Donors x genes raw counts.
    design
        Donors x p design matrix (same donors, same order).
    min_count, min_total_count, large_n, min_prop
        edgeR's ``filterByExpr`` parameters (edgeR's defaults).

    Returns
    -------
    pandas.Series
        Boolean per gene (index = genes).

    Examples
    --------
    >>> from sccohort.stats import filter_by_expr
    >>> from sccohort.datasets import toy, toy_counts
    >>> design, counts = toy().design, toy_counts()  # G0 up in the 4 cases
    >>> int(filter_by_expr(counts, design.matrix).sum())  # genes kept
    60
    """
    y = counts.to_numpy(dtype=float)
    x = design.to_numpy(dtype=float)
    hat = np.einsum("ij,jk,ik->i", x, np.linalg.pinv(x.T @ x), x)
    min_n = 1.0 / hat.max()
    if min_n > large_n:
        min_n = large_n + (min_n - large_n) * min_prop
    lib = y.sum(axis=1)
    median_lib = float(np.median(lib))
    if median_lib <= 0:
        return pd.Series(False, index=counts.columns)
    cutoff = min_count / median_lib * 1e6
    cpm = y / np.where(lib > 0, lib, 1.0)[:, None] * 1e6
    keep = (cpm >= cutoff).sum(axis=0) >= min_n - 1e-14
    keep &= y.sum(axis=0) >= min_total_count - 1e-14
    return pd.Series(keep, index=counts.columns)


def _full_rank(matrix: pd.DataFrame) -> bool:
    return np.linalg.matrix_rank(matrix.to_numpy(dtype=float)) == matrix.shape[1]


def _check_counts(counts: pd.DataFrame, group: str) -> None:
    values = counts.to_numpy()
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(
            f"pseudobulk counts of '{group}' are not numeric",
            key=group,
            hint="Pass the raw summed counts from pseudobulk()",
        )
    if values.size and (np.any(values < 0) or np.any(np.mod(values, 1) != 0)):
        raise InputError(
            f"pseudobulk counts of '{group}' hold negative or non-integer values",
            key=group,
            hint="DE needs raw integer counts summed per donor; never normalised or "
            "batch-corrected values",
        )


def _align(
    counts: pd.DataFrame, design: ContrastDesign, group: str, min_donors: int
) -> tuple[pd.DataFrame, pd.DataFrame, int, int, str | None]:
    """Units of the design that have counts; the reason to skip, or None.

    A paired design needs ``min(min_donors, 2)`` donors with counts on both sides (each donor
    is its own control); the others ``min_donors`` donors per side.
    """
    name = design.contrast.name
    donors = [d for d in design.units if d in counts.index]
    index = "sample_id" if design.unit == "sample" else "donor_id"
    if not donors:
        how = "samples=None (every sample)" if design.unit == "sample" else "samples= one per donor"
        raise InputError(
            f"no {design.unit} of contrast '{name}' has pseudobulk counts for '{group}' "
            f"(the counts are indexed by {', '.join(map(str, counts.index[:3]))}, ...)",
            key=group,
            hint=f"Index the counts by {index}: call pseudobulk() with {how}",
        )
    if counts.index.duplicated().any():
        raise InputError(
            f"pseudobulk counts of '{group}' have several rows per {design.unit}",
            key=group,
            hint=f"Index the counts by {index}",
        )
    matrix = design.matrix.loc[donors]
    if design.paired:
        return _align_paired(counts, design, donors, min_donors)
    if design.is_continuous:
        n_case, n_control = len(donors), 0
        small = n_case < min_donors + 1
        need = f"{min_donors + 1} donors"
    else:
        is_case = design.group.loc[donors] == "case"
        n_case, n_control = int(is_case.sum()), int((~is_case).sum())
        per_side = [n_control, n_case]
        if design.mixed:  # distinct donors per side
            owners = design.donor_of.loc[donors].to_numpy()  # type: ignore[union-attr]
            per_side = [len(set(owners[~is_case.to_numpy()])), len(set(owners[is_case.to_numpy()]))]
        small = min(per_side) < min_donors
        need = f"{min_donors} donors per side"
    reason = None
    if small:
        reason = f"{per_side[1]} case / {per_side[0]} control donors with counts; needs {need}"
    elif len(donors) <= matrix.shape[1]:
        reason = f"{len(donors)} donors for {matrix.shape[1]} design columns"
    elif not _full_rank(matrix):
        reason = "the design restricted to the donors with counts is not of full rank"
    return counts.loc[donors], matrix, n_case, n_control, reason


def _align_paired(
    counts: pd.DataFrame,
    design: ContrastDesign,
    units: list[str],
    min_donors: int,
) -> tuple[pd.DataFrame, pd.DataFrame, int, int, str | None]:
    """`_align` for a paired design: only donors with counts on both sides stay."""
    sides = pd.DataFrame(
        {"donor": design.donor_of.loc[units].astype(str), "case": design.group.loc[units]}
    )
    both = sides.groupby("donor")["case"].nunique()
    paired = set(both.index[both == 2])
    need = min(min_donors, 2)
    reason = None
    if len(paired) < need:
        reason = f"{len(paired)} donor(s) with counts on both sides; needs {need}"
        return counts.iloc[:0], design.matrix.iloc[:0], 0, 0, reason
    try:
        missing = [u for u in design.units if u not in set(units)]
        reduced = design.without(set(design.donors.astype(str)) - paired, units=missing)
    except InputError as exc:
        return counts.iloc[:0], design.matrix.iloc[:0], 0, 0, exc.problem
    if len(reduced.units) <= reduced.matrix.shape[1]:
        reason = f"{len(reduced.units)} samples for {reduced.matrix.shape[1]} design columns"
    rows = list(reduced.units)
    return counts.loc[rows], reduced.matrix, reduced.n_case, reduced.n_control, reason


def pseudobulk_de(
    counts: pd.DataFrame,
    design: ContrastDesign,
    *,
    group: str,
    level: str = "subset",
    min_count: float = 10,
    min_donors: int = 3,
    engine: str = "deseq2",
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Differential expression of one group's pseudobulk between the groups of a contrast.

    Low-count genes are removed with edgeR's ``filterByExpr`` rule (`filter_by_expr`), then
    DESeq2 (median-of-ratios size factors, Cox-Reid gene-wise dispersions, parametric trend
    and empirical Bayes shrinkage, negative binomial GLM on the design matrix with its
    covariates, Wald test of the tested term, Cook's distance filtering) gives the unshrunk
    (MLE) log2 fold change per gene; ``padj`` is Benjamini-Hochberg over the tested genes
    (no independent filtering: the expression filter already did that job). Differences
    from R DESeq2 with the ``"deseq2"`` engine: dispersions climb from R's start values to
    the local maximum on a grid, refined by a root search on the analytic derivative (R: a
    line search; the estimates agree to ~1e-4 in log, less in flat near-Poisson regions);
    DESeq2's outlier replacement (for design cells of >= 7 donors) is not done, so such
    genes keep p = NaN; the prior variance uses trigamma((n - p) / 2) also when n - p <= 3
    (R simulates it); if the parametric trend fails, the mean dispersion is used (R: a
    local fit). Wald p-values of low-count genes are conservative (as in DESeq2).

    Parameters
    ----------
    counts
        Donors x genes raw summed counts (``pseudobulk(..., samples=...)``), or samples x
        genes for a sample-level design (``pseudobulk(...)``); rows outside the design are
        ignored, design rows without counts are left out.
    design
        The contrast's donor-level design.
    group
        Name of the pseudobulked group (the ``subset`` column of the result).
    level
        ``"subset"`` or ``"l2"``: which labelling the group comes from.
    min_count
        ``filterByExpr``'s ``min.count``.
    min_donors
        Fewest donors per side (continuous variable: more than this many donors); a paired
        design needs ``min(min_donors, 2)`` donors with counts on both sides.
    engine
        ``"deseq2"`` (vectorised, default) or ``"pydeseq2"`` (the pydeseq2 package).
    n_jobs
        Processes the pydeseq2 engine may use (1: deterministic and polite on shared
        machines); the ``"deseq2"`` engine runs in this process.

    Returns
    -------
    pandas.DataFrame
        One row per tested gene, columns `DE_COLUMNS`: ``effect`` is the log2 fold change
        of case vs control (continuous variable: per unit), ``ci_low``/``ci_high`` its Wald
        95% interval, ``stat`` the Wald statistic, ``base_mean`` DESeq2's mean of normalised
        counts. ``pvalue``/``padj`` are NaN for genes DESeq2 flags as count outliers.
        Sorted by p-value (ties, such as p-values that underflow to 0, by |stat|).

    Raises
    ------
    InputError
        Unknown engine, non-integer counts, counts not indexed by the design's donors, or
        too few donors per side (`pseudobulk_de_all` records those as skips instead).

    Examples
    --------
    >>> from sccohort.stats import pseudobulk_de
    >>> from sccohort.datasets import toy, toy_counts
    >>> design, counts = toy().design, toy_counts()  # G0 up in the 4 cases
    >>> de = pseudobulk_de(counts, design, group="Mono_A")
    >>> de.iloc[0]["gene"], bool(de.iloc[0]["padj"] < 0.01)
    ('G0', True)
    """
    if engine not in ENGINES:
        raise InputError(
            f"unknown pseudobulk DE engine '{engine}'",
            key="engine",
            hint=f"Engines: {', '.join(ENGINES)}",
        )
    _check_counts(counts, group)
    y, matrix, n_case, n_control, reason = _align(counts, design, group, min_donors)
    if reason is not None:
        raise InputError(
            f"contrast '{design.contrast.name}', {level} '{group}': {reason}",
            key=group,
            hint="Lower min_donors or min_cells, or skip this group (pseudobulk_de_all does)",
        )
    keep = filter_by_expr(y, matrix, min_count=min_count)
    y = y.loc[:, keep.to_numpy()].astype(np.int64)
    name = design.contrast.name
    if y.shape[1] == 0:
        return pd.DataFrame(columns=DE_COLUMNS)
    if design.mixed:
        groups = design.donor_of.loc[y.index].astype(str).to_numpy()  # type: ignore[union-attr]
        res, engine = _dream(y, matrix, groups, design.term), "dream"
    elif engine == "deseq2":
        res = deseq2_wald(y, matrix, design.term)
    else:
        res = pydeseq2_wald(y, matrix, design.term, n_jobs)
    lfc = res["log2FoldChange"].to_numpy(dtype=float)
    se = res["lfcSE"].to_numpy(dtype=float)
    pvalue = res["pvalue"].to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "contrast": name,
            "level": level,
            "subset": group,
            "gene": y.columns.to_numpy(),
            "effect": lfc,
            "ci_low": lfc - _Z975 * se,
            "ci_high": lfc + _Z975 * se,
            "pvalue": pvalue,
            "padj": adjust_pvalues(pvalue),
            "method": (
                "pseudobulk dream (voom weights, donor random intercept, Satterthwaite t)"
                if engine == "dream"
                else f"pseudobulk DESeq2 Wald ({engine})"
            )
            + ", log2 fold change"
            + (" per unit" if design.is_continuous else ""),
            "n_case": n_case,
            "n_control": n_control,
            "base_mean": res["baseMean"].to_numpy(dtype=float),
            "stat": res["stat"].to_numpy(dtype=float),
            "lfc_se": se,
        }
    )
    # p-values that underflow to 0 are ordered by the size of their Wald statistic
    order = np.lexsort((out["gene"].to_numpy(), -np.abs(out["stat"].fillna(0).to_numpy()),
                        out["pvalue"].fillna(np.inf).to_numpy()))  # fmt: skip
    return out.iloc[order].reset_index(drop=True)[DE_COLUMNS]


def _dream(y: pd.DataFrame, matrix: pd.DataFrame, groups: np.ndarray, term: str) -> pd.DataFrame:
    """The ``dream`` recipe (variancePartition) on samples x genes counts, DESeq2-like columns.

    voom log-CPM and weights (TMM library sizes), a donor random intercept per gene (REML),
    Satterthwaite t of the term; ``baseMean`` is the mean TMM-normalised count.
    """
    counts = y.to_numpy(dtype=float)
    lib = counts.sum(axis=1) * tmm_factors(counts.T)
    logcpm, weights = voom_weights(counts, matrix.to_numpy(dtype=float), lib)
    fit = random_intercept(logcpm, matrix, groups, term, weights=weights)
    return pd.DataFrame(
        {
            "baseMean": (counts / lib[:, None] * lib.mean()).mean(axis=0),
            "log2FoldChange": fit["effect"],
            "lfcSE": fit["se"],
            "stat": fit["statistic"],
            "pvalue": fit["pvalue"],
        },
        index=y.columns,
    )


def pseudobulk_de_all(
    counts: dict[str, pd.DataFrame],
    design: ContrastDesign,
    *,
    level: str = "subset",
    groups: Sequence[str] | None = None,
    min_count: float = 10,
    min_donors: int = 3,
    engine: str = "deseq2",
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`pseudobulk_de` for every group with enough donors per side.

    Parameters
    ----------
    counts
        Group -> donors x genes counts, from ``pseudobulk(..., samples=...)``.
    design
        The contrast's donor-level design.
    level
        ``"subset"`` or ``"l2"``.
    groups
        Groups to test (default: every key of ``counts``, sorted).
    min_count, min_donors, engine, n_jobs
        As in `pseudobulk_de`.

    Returns
    -------
    results
        The concatenated DE tables (`DE_COLUMNS`), groups in order.
    skipped
        One row per skipped group: ``contrast, level, subset, n_case, n_control, reason``.

    Examples
    --------
    >>> from sccohort.stats import pseudobulk_de_all
    >>> from sccohort.datasets import toy, toy_counts
    >>> design, counts = toy().design, toy_counts()  # G0 up in the 4 cases
    >>> result, skipped = pseudobulk_de_all({"Mono_A": counts}, design)
    >>> result.iloc[0]["gene"], len(skipped)
    ('G0', 0)
    """
    names = sorted(counts) if groups is None else list(groups)
    tables: list[pd.DataFrame] = []
    skips: list[dict] = []
    for group in names:
        if group not in counts:
            skips.append(
                {
                    "contrast": design.contrast.name,
                    "level": level,
                    "subset": group,
                    "n_case": 0,
                    "n_control": 0,
                    "reason": "no pseudobulk counts (too few cells in every sample)",
                }
            )
            continue
        frame = counts[group]
        if not any(d in frame.index for d in design.units):
            reason, n_case, n_control = "no donor of the design has counts", 0, 0
        else:
            _, _, n_case, n_control, reason = _align(frame, design, group, min_donors)
        if reason is not None:
            skips.append(
                {
                    "contrast": design.contrast.name,
                    "level": level,
                    "subset": group,
                    "n_case": n_case,
                    "n_control": n_control,
                    "reason": reason,
                }
            )
            continue
        tables.append(
            pseudobulk_de(
                frame,
                design,
                group=group,
                level=level,
                min_count=min_count,
                min_donors=min_donors,
                engine=engine,
                n_jobs=n_jobs,
            )
        )
    results = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=DE_COLUMNS)
    return results, pd.DataFrame(skips, columns=_SKIP_COLUMNS)

"""Pseudobulk differential expression: raw counts summed per donor x subset, DESeq2 per subset.

`pseudobulk` sums the raw RNA counts (never normalised or batch-corrected values) of every
sample x group combination in one pass over the CSR counts; `pseudobulk_de` tests one group's
donors x genes matrix for the tested term of a contrast's design (covariates included, the
donor is the unit) with DESeq2's negative binomial Wald test;
`pseudobulk_de_all` runs every group with enough donors per side and lists the skipped ones.

Engines, chosen by measurement (benchmarks/bench_pseudobulk_deseq2.py, results in
benchmarks/results/pseudobulk_deseq2.csv): ``"deseq2"`` (default) is DESeq2's algorithm with
R's defaults, vectorised over genes (:mod:`sccohort.stats.deseq2`); ``"pydeseq2"``
runs the pydeseq2 package, which fits genes one at a time in Python. Both reproduce R
DESeq2 on the benchmark's pseudobulks; ``deseq2`` is one to two orders of magnitude faster
than pydeseq2 and than R (the README quotes the numbers).
Written by hand because no maintained Python package runs DESeq2 at array speed; edgeR's
quasi-likelihood port (edgepython) is fast but is a different test (measured in the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from sccohort.cohort import ContrastDesign
from sccohort.cohort.keys import cell_columns
from sccohort.errors import InputError
from sccohort.io.tables import CORE_COLUMNS
from sccohort.multitest import adjust_pvalues
from sccohort.pp.store import rna_blocks, store_of
from sccohort.stats.deseq2 import deseq2_wald, pydeseq2_wald

__all__ = [
    "DE_COLUMNS",
    "ENGINES",
    "filter_by_expr",
    "pseudobulk",
    "pseudobulk_de",
    "pseudobulk_de_all",
]

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


def _counts_matrix(adata: AnnData) -> sp.csr_matrix | np.ndarray:
    if "counts" not in adata.layers:
        raise InputError(
            "the RNA data has no layers['counts'] (raw counts)",
            key="layers",
            hint="Pseudobulk DE needs the raw integer UMI counts; never normalised or "
            "batch-corrected values",
        )
    x = adata.layers["counts"]
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        values = x.data
    else:
        x = np.asarray(x)
        values = x.ravel()
    if not _are_counts(values):
        raise InputError(
            "layers['counts'] holds negative or non-integer values",
            key="layers",
            hint="Store the raw UMI counts in layers['counts']",
        )
    return x


def _are_counts(values: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Whether every value is a non-negative integer (finite); integer arrays need no rounding."""
    if values.size == 0:
        return True
    if values.dtype.kind in "biu":
        return bool(values.min() >= 0)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: not a count
        for start in range(0, values.size, chunk):  # bounded temporary memory
            part = values[start : start + chunk]
            if np.any(part < 0) or np.any(part - np.floor(part) != 0):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _sum_rows(indptr, indices, data, rows, groups, out):  # pragma: no cover - compiled
    """``out[groups[k]] += row rows[k]`` of a CSR matrix; rows sorted by group (cache-local)."""
    for k in range(rows.size):
        g = groups[k]
        for j in range(indptr[rows[k]], indptr[rows[k] + 1]):
            out[g, indices[j]] += data[j]
    return out


def _group_sums(x: sp.csr_matrix | np.ndarray, cells: np.ndarray, codes: np.ndarray, n: int):
    """Sums (n x genes, int64) of the rows ``cells`` of x by group ``codes`` (0..n-1)."""
    if not sp.issparse(x):
        indicator = sp.csr_matrix((np.ones(cells.size), (codes, cells)), shape=(n, x.shape[0]))
        return np.rint(indicator @ x).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    integer = x.dtype.kind in "biu"
    out = np.zeros((n, x.shape[1]), dtype=np.int64 if integer else np.float64)
    _sum_rows(x.indptr, x.indices, x.data, cells[order], codes[order], out)
    return out if integer else np.rint(out).astype(np.int64)


def _rna_and_obs(adata: AnnData) -> tuple[AnnData, pd.DataFrame]:
    """The RNA AnnData and its cells' obs (a MuData's ``"rna"`` with the MuData's labels)."""
    if not hasattr(adata, "mod"):
        return adata, adata.obs
    if "rna" not in adata.mod:
        raise InputError("the MuData has no 'rna' modality", key="mod", hint="Pass the RNA")
    obs = adata.obs
    rna = adata.mod["rna"]
    if not obs.index.equals(rna.obs_names):
        obs = obs.reindex(rna.obs_names)
    return rna, obs


def _chosen_samples(samples: Sequence[str], donor_of: pd.Series) -> list[str]:
    """The given samples, deduplicated; each must have cells and a donor of its own."""
    chosen = list(dict.fromkeys(samples))
    unknown = [s for s in chosen if s not in donor_of.index]
    if unknown:
        raise InputError(
            f"sample(s) {', '.join(unknown)} have no cells",
            sample=unknown[0],
            hint=f"Samples with cells: {', '.join(donor_of.index)}",
        )
    donors = donor_of.loc[chosen]
    twice = donors[donors.duplicated(keep=False)]
    if len(twice):
        raise InputError(
            f"donor '{twice.iloc[0]}' has several of the given samples "
            f"({', '.join(twice.index[twice == twice.iloc[0]])})",
            sample=twice.index[0],
            hint="Give one sample per donor (e.g. SampleSheet.primary_samples())",
        )
    return chosen


def pseudobulk(
    adata: AnnData,
    groupby: str = "subset",
    *,
    samples: Sequence[str] | None = None,
    min_cells: int = 10,
    sample_key: str = "sample_id",
    donor_key: str = "donor_id",
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Sum the raw counts of every sample x group combination.

    Parameters
    ----------
    adata
        Cells x genes with ``layers["counts"]`` (raw integer counts, sparse or dense) and
        ``obs`` columns ``sample_key``, ``donor_key`` and ``groupby`` (cells with a missing
        label are left out). A MuData is read as its ``"rna"`` modality with labels from
        the MuData's ``obs``.
    groupby
        The ``obs`` column whose levels are pseudobulked separately (``"subset"``, ``"l2"``).
    samples
        Samples to use, at most one per donor (e.g. the primary samples); the matrices are
        then indexed by ``donor_id``. ``None``: every sample, indexed by ``sample_id``.
    min_cells
        Combinations with fewer cells are dropped (listed in ``meta`` with ``kept=False``).
    sample_key, donor_key
        The ``obs`` columns naming each cell's sample and donor.

    Returns
    -------
    counts
        Group -> DataFrame (samples or donors x genes, ``int64``) of the kept combinations.
    meta
        One row per sample x group combination with at least one cell: ``group, sample_id,
        donor_id, n_cells, kept``.

    Examples
    --------
    >>> from sccohort.stats import pseudobulk
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> counts, meta = pseudobulk(mdata, "l1", min_cells=10)
    >>> counts["Mono"].shape  # 4 samples x genes, summed raw counts
    (4, 19409)
    >>> meta.columns.tolist()
    ['group', 'sample_id', 'donor_id', 'n_cells', 'kept']
    """
    adata, obs = _rna_and_obs(adata)
    obs = cell_columns(
        obs,
        {"sample_id": sample_key, "donor_id": donor_key, "group": groupby},
        hint="Pseudobulk needs each cell's sample, donor and group",
    )
    if min_cells < 1:
        raise InputError(f"min_cells must be >= 1, got {min_cells}", key="min_cells")
    store = store_of(adata)
    x = None if store is not None else _counts_matrix(adata)
    sample = obs["sample_id"].astype(str)
    donor_of = obs.groupby(sample.values, observed=True)["donor_id"].first().astype(str)
    use = obs["group"].notna().to_numpy()
    by_donor = samples is not None
    if by_donor:
        chosen = _chosen_samples(samples, donor_of)
        use &= sample.isin(chosen).to_numpy()

    cells = np.flatnonzero(use)
    label_codes, label_names = pd.factorize(obs["group"].to_numpy()[cells].astype(str), sort=True)
    sample_codes, sample_names = pd.factorize(sample.to_numpy()[cells], sort=True)
    n_samples = max(len(sample_names), 1)
    combos, codes = np.unique(
        label_codes.astype(np.int64) * n_samples + sample_codes, return_inverse=True
    )
    codes = codes.ravel()
    if store is None:
        summed = _group_sums(x, cells, codes, len(combos))
    else:  # raw counts on disk: summed block of genes by block (integers: exact either way)
        summed = np.hstack(
            [_group_sums(b, cells, codes, len(combos)) for _, _, b in rna_blocks(adata, True)]
        )
    n_cells = np.bincount(codes, minlength=len(combos))

    meta = pd.DataFrame(
        {
            "group": np.asarray(label_names)[combos // n_samples],
            "sample_id": np.asarray(sample_names)[combos % n_samples],
            "n_cells": n_cells,
        }
    )
    meta.insert(2, "donor_id", donor_of.reindex(meta["sample_id"]).to_numpy())
    meta["kept"] = meta["n_cells"] >= min_cells
    genes = pd.Index(adata.var_names.astype(str), name="gene")
    counts: dict[str, pd.DataFrame] = {}
    for group, rows in meta[meta["kept"]].groupby("group", sort=True).groups.items():
        idx = meta.loc[rows, "donor_id" if by_donor else "sample_id"]
        frame = pd.DataFrame(summed[rows.to_numpy()], index=idx.to_numpy(), columns=genes)
        frame.index.name = "donor_id" if by_donor else "sample_id"
        counts[str(group)] = frame
    return counts, meta.reset_index(drop=True)


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
        return _align_paired(counts, design, donors, matrix, min_donors)
    if design.is_continuous:
        n_case, n_control = len(donors), 0
        small = n_case < min_donors + 1
        need = f"{min_donors + 1} donors"
    else:
        is_case = design.group.loc[donors] == "case"
        n_case, n_control = int(is_case.sum()), int((~is_case).sum())
        small = min(n_case, n_control) < min_donors
        need = f"{min_donors} donors per side"
    reason = None
    if small:
        reason = f"{n_case} case / {n_control} control donors with counts; needs {need}"
    elif len(donors) <= matrix.shape[1]:
        reason = f"{len(donors)} donors for {matrix.shape[1]} design columns"
    elif not _full_rank(matrix):
        reason = "the design restricted to the donors with counts is not of full rank"
    return counts.loc[donors], matrix, n_case, n_control, reason


def _align_paired(
    counts: pd.DataFrame,
    design: ContrastDesign,
    units: list[str],
    matrix: pd.DataFrame,
    min_donors: int,
) -> tuple[pd.DataFrame, pd.DataFrame, int, int, str | None]:
    """`_align` for a paired design: only donors with counts on both sides stay."""
    is_case = design.group.loc[units] == "case"
    donor_of = design.donor_of.loc[units].astype(str)
    sides = pd.DataFrame({"donor": donor_of.to_numpy(), "case": is_case.to_numpy()})
    both = sides.groupby("donor")["case"].nunique()
    paired = set(both.index[both == 2])
    units = [u for u in units if donor_of[u] in paired]
    is_case = is_case.loc[units]
    matrix = matrix.loc[units]
    matrix = matrix.loc[:, (matrix != 0).any(axis=0)]  # donors without counts leave no column
    donor_columns = [c for c in matrix.columns if c.startswith("donor[")]
    if donor_columns and (matrix[donor_columns].sum(axis=1) == 1).all():
        matrix = matrix.drop(columns=donor_columns[0])  # the reference donor had no counts
    n_case, n_control = int(is_case.sum()), int((~is_case).sum())
    need = min(min_donors, 2)
    reason = None
    if len(paired) < need:
        reason = f"{len(paired)} donor(s) with counts on both sides; needs {need}"
    elif len(units) <= matrix.shape[1]:
        reason = f"{len(units)} samples for {matrix.shape[1]} design columns"
    elif not _full_rank(matrix):
        reason = "the design restricted to the samples with counts is not of full rank"
    return counts.loc[units], matrix, n_case, n_control, reason


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
    if engine == "deseq2":
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
            "method": f"pseudobulk DESeq2 Wald ({engine}), log2 fold change"
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

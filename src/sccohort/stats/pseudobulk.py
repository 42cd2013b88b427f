"""Pseudobulk differential expression: raw counts summed per donor x subset, DESeq2 per subset.

`pseudobulk` sums the raw RNA counts (never normalised or batch-corrected values) of every
sample x group combination with a sparse indicator-matrix product; `pseudobulk_de` tests one
group's donors x genes matrix for the tested term of a contrast's design (covariates included,
the donor is the unit) with DESeq2's negative binomial Wald test;
`pseudobulk_de_all` runs every group with enough donors per side and lists the skipped ones.

Engines, chosen by measurement (benchmarks/bench_pseudobulk_deseq2.py, results in
benchmarks/results/pseudobulk_deseq2.csv): ``"deseq2"`` (default) is DESeq2's algorithm with
R's defaults written here with every step vectorised over genes (numpy/scipy); ``"pydeseq2"``
runs the pydeseq2 package, which fits genes one at a time in Python. On the dev cohort's
pseudobulks (18-54 donors x 700-6,700 genes) both reproduce R DESeq2 (Spearman of log2 fold
changes 1.000, largest difference < 0.002, same significant genes), but ``deseq2`` took
0.5-6 s per subset, pydeseq2 5-77 s and R 3-9 s.
Written by hand because no maintained Python package runs DESeq2 at array speed; edgeR's
quasi-likelihood port (edgepython) is fast but is a different test (measured in the benchmark).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import special, stats

from sccohort.cohort import ContrastDesign
from sccohort.errors import InputError

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

#: Columns of a pseudobulk DE table, in order (the DESIGN core columns, then the extras).
DE_COLUMNS = [
    "contrast",
    "level",
    "subset",
    "gene",
    "effect",
    "ci_low",
    "ci_high",
    "pvalue",
    "padj",
    "method",
    "n_case",
    "n_control",
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
    if values.size and (np.any(values < 0) or np.any(np.mod(values, 1) != 0)):
        raise InputError(
            "layers['counts'] holds negative or non-integer values",
            key="layers",
            hint="Store the raw UMI counts in layers['counts']",
        )
    return x


def pseudobulk(
    adata: AnnData,
    groupby: str = "subset",
    samples: Sequence[str] | None = None,
    min_cells: int = 10,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Sum the raw counts of every sample x group combination.

    Parameters
    ----------
    adata
        Cells x genes with ``layers["counts"]`` (raw integer counts, sparse or dense) and
        ``obs`` columns ``sample_id``, ``donor_id`` and ``groupby`` (cells with a missing
        label are left out). A MuData is read as its ``"rna"`` modality with labels from
        the MuData's ``obs``.
    groupby
        The ``obs`` column whose levels are pseudobulked separately (``"subset"``, ``"l2"``).
    samples
        Samples to use, at most one per donor (e.g. the primary samples); the matrices are
        then indexed by ``donor_id``. ``None``: every sample, indexed by ``sample_id``.
    min_cells
        Combinations with fewer cells are dropped (listed in ``meta`` with ``kept=False``).

    Returns
    -------
    counts
        Group -> DataFrame (samples or donors x genes, ``int64``) of the kept combinations.
    meta
        One row per sample x group combination with at least one cell: ``group, sample_id,
        donor_id, n_cells, kept``.
    """
    if hasattr(adata, "mod"):
        if "rna" not in adata.mod:
            raise InputError("the MuData has no 'rna' modality", key="mod", hint="Pass the RNA")
        obs = adata.obs
        rna = adata.mod["rna"]
        if not obs.index.equals(rna.obs_names):
            obs = obs.reindex(rna.obs_names)
        adata = rna
    else:
        obs = adata.obs
    for column in ("sample_id", "donor_id", groupby):
        if column not in obs.columns:
            raise InputError(
                f"obs has no column '{column}'",
                column=column,
                hint="Pseudobulk needs sample_id, donor_id and the grouping column per cell",
            )
    if min_cells < 1:
        raise InputError(f"min_cells must be >= 1, got {min_cells}", key="min_cells")
    x = _counts_matrix(adata)
    sample = obs["sample_id"].astype(str)
    donor_of = obs.groupby(sample.values, observed=True)["donor_id"].first().astype(str)
    use = obs[groupby].notna().to_numpy()
    by_donor = samples is not None
    if by_donor:
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
        use &= sample.isin(chosen).to_numpy()

    cells = np.flatnonzero(use)
    labels = obs[groupby].to_numpy()[cells].astype(str)
    keys = pd.MultiIndex.from_arrays([labels, sample.to_numpy()[cells]])
    codes, combos = pd.factorize(keys, sort=True)
    indicator = sp.csr_matrix(
        (np.ones(cells.size), (codes, cells)), shape=(len(combos), adata.n_obs)
    )
    summed = indicator @ x
    summed = summed.toarray() if sp.issparse(summed) else np.asarray(summed)
    summed = np.rint(summed).astype(np.int64)
    n_cells = np.bincount(codes, minlength=len(combos))

    meta = pd.DataFrame(
        {
            "group": combos.get_level_values(0),
            "sample_id": combos.get_level_values(1),
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
    """Donors of the design that have counts; the reason to skip, or None."""
    name = design.contrast.name
    donors = [d for d in design.donors if d in counts.index]
    if not donors:
        raise InputError(
            f"no donor of contrast '{name}' has pseudobulk counts for '{group}' "
            f"(the counts are indexed by {', '.join(map(str, counts.index[:3]))}, ...)",
            key=group,
            hint="Index the counts by donor_id: call pseudobulk() with samples= one per donor",
        )
    if counts.index.duplicated().any():
        raise InputError(
            f"pseudobulk counts of '{group}' have several rows per donor",
            key=group,
            hint="Call pseudobulk() with samples= one per donor",
        )
    matrix = design.matrix.loc[donors]
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


# ---------------------------------------------------------------------------------------
# DESeq2, vectorised over genes (the "deseq2" engine)

_MIN_DISP = 1e-8
_MIN_MU = 0.5
_RIDGE = 1e-6 / np.log(2) ** 2  # DESeq2's lambda (log2 scale) on the natural-log scale


def _size_factors(y: np.ndarray) -> np.ndarray:
    """Median-of-ratios size factors (donors,) from counts (donors x genes)."""
    with np.errstate(divide="ignore"):
        logs = np.log(y)
    geo = logs.mean(axis=0)
    usable = np.isfinite(geo)
    if not usable.any():
        raise InputError(
            "every gene has a zero count in some donor, so DESeq2 size factors are undefined",
            hint="Raise min_cells so that each kept donor has enough cells in the group",
        )
    sf = np.exp(np.median(logs[:, usable] - geo[usable], axis=1))
    return sf


def _nb_loglik(y: np.ndarray, mu: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """NB log-likelihood per gene; y, mu (genes x donors), alpha (genes,)."""
    r = 1.0 / alpha[:, None]
    return (
        special.gammaln(y + r)
        - special.gammaln(r)
        - special.gammaln(y + 1)
        + r * np.log(r / (r + mu))
        + y * np.log(mu / (r + mu))
    ).sum(axis=1)


def _irls(
    y: np.ndarray, x: np.ndarray, sf: np.ndarray, alpha: np.ndarray, maxit: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NB GLM fits of every gene (DESeq2's fitBeta): beta (genes x p), mu, weights."""
    n_genes, p = y.shape[0], x.shape[1]
    ridge = np.eye(p) * _RIDGE
    beta = np.linalg.lstsq(x, np.log(y / sf + 0.1).T, rcond=None)[0].T
    mu = np.maximum(sf * np.exp(beta @ x.T), _MIN_MU)
    dev_old = np.full(n_genes, np.inf)
    active = np.ones(n_genes, dtype=bool)
    for _ in range(maxit):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        m = mu[idx]
        w = m / (1.0 + alpha[idx, None] * m)
        z = np.log(m / sf) + (y[idx] - m) / m
        xtwx = np.einsum("gm,mi,mj->gij", w, x, x) + ridge
        xtwz = np.einsum("gm,mi->gi", w * z, x)
        b = np.linalg.solve(xtwx, xtwz[..., None])[..., 0]
        beta[idx] = b
        m = np.maximum(sf * np.exp(b @ x.T), _MIN_MU)
        mu[idx] = m
        dev = -2.0 * _nb_loglik(y[idx], m, alpha[idx])
        done = np.abs(dev - dev_old[idx]) / (np.abs(dev) + 0.1) < 1e-8
        done |= np.abs(b).max(axis=1) > 30
        dev_old[idx] = dev
        active[idx[done]] = False
    w = mu / (1.0 + alpha[:, None] * mu)
    return beta, mu, w


def _log_posterior(
    log_alpha: np.ndarray,
    y: np.ndarray,
    mu: np.ndarray,
    x: np.ndarray,
    prior_mean: np.ndarray | None,
    prior_var: float,
) -> np.ndarray:
    """Cox-Reid adjusted NB log-likelihood (+ log-normal prior) of dispersions, per gene."""
    alpha = np.exp(log_alpha)
    r = 1.0 / alpha[:, None]
    ll = (
        special.gammaln(y + r).sum(axis=1)
        - y.shape[1] * special.gammaln(r[:, 0])
        - (y * np.log(mu + r)).sum(axis=1)
        - r[:, 0] * np.log1p(mu * alpha[:, None]).sum(axis=1)
    )
    w = 1.0 / (1.0 / mu + alpha[:, None])
    xtwx = np.einsum("gm,mi,mj->gij", w, x, x)
    ll -= 0.5 * np.linalg.slogdet(xtwx)[1]
    if prior_mean is not None:
        ll -= 0.5 * (log_alpha - prior_mean) ** 2 / prior_var
    return ll


def _fit_dispersion(
    y: np.ndarray,
    mu: np.ndarray,
    x: np.ndarray,
    max_disp: float,
    start: np.ndarray,
    prior_mean: np.ndarray | None = None,
    prior_var: float = 1.0,
) -> np.ndarray:
    """Maximise `_log_posterior` in log(alpha) per gene, uphill from ``start`` (genes,).

    Like DESeq2's line search, the estimate is the local maximum reached by climbing from
    the start (found on a grid, then refined by golden-section search); a gene starting at
    the lower bound, where the likelihood is flat, stays there as in R.
    """
    n_genes = y.shape[0]
    grid = np.linspace(np.log(_MIN_DISP / 10), np.log(max_disp), 60)
    values = np.stack([
        _log_posterior(np.full(n_genes, g), y, mu, x, prior_mean, prior_var) for g in grid
    ])  # fmt: skip
    k = np.arange(grid.size)[:, None]
    peak = np.ones(values.shape, dtype=bool)
    peak[1:] &= values[1:] >= values[:-1]
    peak[:-1] &= values[:-1] >= values[1:]
    next_peak = np.minimum.accumulate(np.where(peak, k, grid.size)[::-1], axis=0)[::-1]
    prev_peak = np.maximum.accumulate(np.where(peak, k, -1), axis=0)
    genes = np.arange(n_genes)
    s = np.clip(np.searchsorted(grid, np.log(start)), 0, grid.size - 1)
    right = values[np.minimum(s + 1, grid.size - 1), genes] > values[s, genes]
    best = np.where(right, next_peak[s, genes], prev_peak[s, genes])
    best = np.where((best < 0) | (best >= grid.size), np.argmax(values, axis=0), best)
    step = grid[1] - grid[0]
    lo, hi = grid[best] - step, grid[best] + step
    ratio = (np.sqrt(5.0) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc = _log_posterior(c, y, mu, x, prior_mean, prior_var)
    fd = _log_posterior(d, y, mu, x, prior_mean, prior_var)
    for _ in range(40):
        left = fc > fd  # the maximum lies in [lo, d]
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        new = np.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        f_new = _log_posterior(new, y, mu, x, prior_mean, prior_var)
        c, fc, d, fd = (
            np.where(left, new, d),
            np.where(left, f_new, fd),
            np.where(left, c, new),
            np.where(left, fc, f_new),
        )
    fitted = np.clip(np.exp((lo + hi) / 2), _MIN_DISP, max_disp)
    if prior_mean is None:
        fitted = np.where(start <= _MIN_DISP * (1 + 1e-9), _MIN_DISP, fitted)
    return fitted


def _parametric_trend(means: np.ndarray, disps: np.ndarray) -> np.ndarray | None:
    """DESeq2's parametric dispersion trend a + b / mean (Gamma GLM, identity link)."""
    coefs = np.array([0.1, 1.0])
    for _ in range(11):
        resid = disps / (coefs[0] + coefs[1] / means)
        good = (resid > 1e-4) & (resid < 15)
        xg = np.column_stack([np.ones(good.sum()), 1.0 / means[good]])
        yg = disps[good]
        beta = coefs.copy()
        dev_old = np.inf
        for _ in range(100):
            mu = xg @ beta
            if np.any(mu <= 0):
                return None
            w = 1.0 / mu**2
            beta = np.linalg.solve(xg.T @ (xg * w[:, None]), xg.T @ (w * yg))
            mu = xg @ beta
            if np.any(mu <= 0):
                return None
            dev = -2.0 * np.sum(np.log(yg / mu) - (yg - mu) / mu)
            if abs(dev - dev_old) / (abs(dev) + 0.1) < 1e-8:
                break
            dev_old = dev
        old, coefs = coefs, beta
        if not np.all(coefs > 0):
            return None
        if np.sum(np.log(coefs / old) ** 2) < 1e-6:
            return coefs
    return None


def _trim_mean(a: np.ndarray, trim: float) -> np.ndarray:
    return stats.trim_mean(a, trim, axis=1)


def _robust_disp(norm: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """DESeq2's robust method-of-moments dispersion for Cook's distances (genes,)."""
    levels, sizes = np.unique(cells, return_counts=True)
    big = levels[sizes >= 3]
    variances = []
    for level in big:
        sub = norm[:, cells == level]
        n = sub.shape[1]
        k = 0 if n <= 3.5 else (1 if n <= 23.5 else 2)
        trim = (1 / 3, 1 / 4, 1 / 8)[k]
        centre = _trim_mean(sub, trim)
        sq = (sub - centre[:, None]) ** 2
        variances.append((2.04, 1.86, 1.51)[k] * _trim_mean(sq, trim))
    v = np.max(variances, axis=0)
    mean = norm.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum((v - mean) / mean**2, 0.04)


def _run_deseq2(counts: pd.DataFrame, matrix: pd.DataFrame, term: str) -> pd.DataFrame:
    """DESeq2's Wald test of ``term``, vectorised over genes (R DESeq2 defaults).

    Median-of-ratios size factors; gene-wise Cox-Reid dispersions from the rough moments
    start; parametric trend; MAP dispersions with the log-normal prior (gene-wise kept for
    dispersion outliers); ridge-stabilised NB GLM (DESeq2's IRLS) and Wald test; Cook's
    distance filtering over donors whose design row is shared by >= 3 donors.
    """
    y = counts.to_numpy(dtype=float).T
    x = matrix.to_numpy(dtype=float)
    m, p = x.shape
    sf = _size_factors(y.T)
    norm = y / sf
    base_mean = norm.mean(axis=1)
    max_disp = max(10.0, float(m))

    hat = x @ np.linalg.pinv(x.T @ x) @ x.T
    mu_lm = np.maximum(norm @ hat, 1.0)
    rough = np.maximum((((norm - mu_lm) ** 2 - mu_lm) / mu_lm**2).sum(axis=1) / (m - p), 0)
    moments = (norm.var(axis=1, ddof=1) - np.mean(1.0 / sf) * base_mean) / base_mean**2
    alpha_init = np.clip(np.minimum(rough, moments), _MIN_DISP, max_disp)
    _, mu, _ = _irls(y, x, sf, alpha_init)
    mu = np.maximum(mu, _MIN_MU)
    disp_gene = _fit_dispersion(y, mu, x, max_disp, alpha_init)

    use = disp_gene >= 100 * _MIN_DISP
    coefs = _parametric_trend(base_mean[use], disp_gene[use]) if use.sum() >= 3 else None
    if coefs is None:
        trend = np.full(y.shape[0], stats.trim_mean(disp_gene[use], 0.001) if use.any() else 0.1)
    else:
        trend = coefs[0] + coefs[1] / base_mean
    resid = np.log(disp_gene) - np.log(trend)
    var_log = stats.median_abs_deviation(resid[use], scale="normal") ** 2 if use.any() else 1.0
    prior_var = max(var_log - float(special.polygamma(1, (m - p) / 2)), 0.25)
    map_start = np.where(disp_gene > 0.1 * trend, disp_gene, trend)
    disp_map = _fit_dispersion(y, mu, x, max_disp, map_start, np.log(trend), prior_var)
    outlier = np.log(disp_gene) > np.log(trend) + 2 * np.sqrt(var_log)
    disp = np.clip(np.where(outlier, disp_gene, disp_map), _MIN_DISP, max_disp)

    beta, mu, w = _irls(y, x, sf, disp)
    xtwx = np.einsum("gm,mi,mj->gij", w, x, x)
    inv = np.linalg.inv(xtwx + np.eye(p) * _RIDGE)
    cov = inv @ xtwx @ inv
    j = list(matrix.columns).index(term)
    lfc = beta[:, j] / np.log(2)
    se = np.sqrt(cov[:, j, j]) / np.log(2)
    stat = lfc / se
    pvalue = 2 * stats.norm.sf(np.abs(stat))

    # Cook's distances over donors in design cells of >= 3 (DESeq2's minReplicatesForCooks)
    _, cells, sizes = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    cells = cells.ravel()
    in_cook = sizes[cells] >= 3
    if in_cook.any() and m > p:
        h = w * np.einsum("mi,gij,mj->gm", x, np.linalg.inv(xtwx), x)
        v = mu + _robust_disp(norm[:, in_cook], cells[in_cook])[:, None] * mu**2
        cooks = (y - mu) ** 2 / v / p * h / (1 - h) ** 2
        flagged = cooks[:, in_cook].max(axis=1) > stats.f.ppf(0.99, p, m - p)
        # DESeq2's heuristic: keep genes where >= 3 counts exceed the outlying count
        out_count = y[np.arange(y.shape[0]), cooks.argmax(axis=1)]
        flagged &= (y > out_count[:, None]).sum(axis=1) < 3
        pvalue = np.where(flagged, np.nan, pvalue)
    return pd.DataFrame(
        {
            "baseMean": base_mean,
            "log2FoldChange": lfc,
            "lfcSE": se,
            "stat": stat,
            "pvalue": pvalue,
        },
        index=counts.columns,
    )


def _run_pydeseq2(y: pd.DataFrame, matrix: pd.DataFrame, term: str, n_cpus: int) -> pd.DataFrame:
    """DESeq2 Wald test of ``term`` (pydeseq2); columns baseMean, log2FoldChange, lfcSE, ..."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    safe = pd.DataFrame(
        matrix.to_numpy(dtype=float),
        index=y.index.astype(str),
        columns=[f"x{i}" for i in range(matrix.shape[1])],
    )
    contrast = np.zeros(matrix.shape[1])
    contrast[list(matrix.columns).index(term)] = 1.0
    inference = DefaultInference(n_cpus=n_cpus)
    py_logger = logging.getLogger("pydeseq2")
    level = py_logger.level
    py_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dds = DeseqDataSet(
                counts=pd.DataFrame(y.to_numpy(), index=safe.index, columns=y.columns),
                metadata=safe,
                design=safe,
                refit_cooks=True,
                inference=inference,
                quiet=True,
            )
            dds.deseq2()
            res = DeseqStats(
                dds,
                contrast=contrast,
                cooks_filter=True,
                independent_filter=False,
                inference=inference,
                quiet=True,
            )
            res.summary()
    finally:
        py_logger.setLevel(level)
    return res.results_df


def _bh(p: np.ndarray) -> np.ndarray:
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def pseudobulk_de(
    counts: pd.DataFrame,
    design: ContrastDesign,
    *,
    group: str,
    level: str = "subset",
    min_count: float = 10,
    min_donors: int = 3,
    engine: str = "deseq2",
    n_cpus: int = 1,
) -> pd.DataFrame:
    """Differential expression of one group's pseudobulk between the groups of a contrast.

    Low-count genes are removed with edgeR's ``filterByExpr`` rule (`filter_by_expr`), then
    DESeq2 (median-of-ratios size factors, Cox-Reid gene-wise dispersions, parametric trend
    and empirical Bayes shrinkage, negative binomial GLM on the design matrix with its
    covariates, Wald test of the tested term, Cook's distance filtering) gives the unshrunk
    (MLE) log2 fold change per gene; ``padj`` is Benjamini-Hochberg over the tested genes
    (no independent filtering: the expression filter already did that job). Differences
    from R DESeq2 with the ``"deseq2"`` engine: dispersions climb from R's start values to
    the local maximum on a grid, refined by golden-section search (R: a line search; the
    estimates agree to ~1e-4 in log, less in flat near-Poisson regions); DESeq2's outlier
    replacement (for design cells of >= 7 donors) is not done, so such genes keep
    p = NaN; the prior variance uses trigamma((n - p) / 2) also when n - p <= 3 (R
    simulates it); if the parametric trend fails, the mean dispersion is used (R: a
    local fit). Wald p-values of low-count genes are conservative (as in DESeq2).

    Parameters
    ----------
    counts
        Donors x genes raw summed counts (``pseudobulk(..., samples=...)``); donors outside
        the design are ignored, design donors without a row are left out.
    design
        The contrast's donor-level design.
    group
        Name of the pseudobulked group (the ``subset`` column of the result).
    level
        ``"subset"`` or ``"l2"``: which labelling the group comes from.
    min_count
        ``filterByExpr``'s ``min.count``.
    min_donors
        Fewest donors per side (continuous variable: more than this many donors).
    engine
        ``"deseq2"`` (vectorised, default) or ``"pydeseq2"`` (the pydeseq2 package).
    n_cpus
        Processes the pydeseq2 engine may use (1: deterministic and polite on shared
        machines); the ``"deseq2"`` engine runs in this process.

    Returns
    -------
    pandas.DataFrame
        One row per tested gene, columns `DE_COLUMNS`: ``effect`` is the log2 fold change
        of case vs control (continuous variable: per unit), ``ci_low``/``ci_high`` its Wald
        95% interval, ``stat`` the Wald statistic, ``base_mean`` DESeq2's mean of normalised
        counts. ``pvalue``/``padj`` are NaN for genes DESeq2 flags as count outliers.
        Sorted by p-value.

    Raises
    ------
    InputError
        Unknown engine, non-integer counts, counts not indexed by the design's donors, or
        too few donors per side (`pseudobulk_de_all` records those as skips instead).
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
        res = _run_deseq2(y, matrix, design.term)
    else:
        res = _run_pydeseq2(y, matrix, design.term, n_cpus)
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
            "padj": _bh(pvalue),
            "method": f"pseudobulk DESeq2 Wald ({engine}), log2 fold change"
            + (" per unit" if design.is_continuous else ""),
            "n_case": n_case,
            "n_control": n_control,
            "base_mean": res["baseMean"].to_numpy(dtype=float),
            "stat": res["stat"].to_numpy(dtype=float),
            "lfc_se": se,
        }
    )
    out = out.sort_values(["pvalue", "gene"], na_position="last", kind="stable")
    return out.reset_index(drop=True)[DE_COLUMNS]


def pseudobulk_de_all(
    counts: dict[str, pd.DataFrame],
    design: ContrastDesign,
    *,
    level: str = "subset",
    groups: Sequence[str] | None = None,
    min_count: float = 10,
    min_donors: int = 3,
    engine: str = "deseq2",
    n_cpus: int = 1,
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
    min_count, min_donors, engine, n_cpus
        As in `pseudobulk_de`.

    Returns
    -------
    results
        The concatenated DE tables (`DE_COLUMNS`), groups in order.
    skipped
        One row per skipped group: ``contrast, level, subset, n_case, n_control, reason``.
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
        if not any(d in frame.index for d in design.donors):
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
                n_cpus=n_cpus,
            )
        )
    results = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=DE_COLUMNS)
    return results, pd.DataFrame(skips, columns=_SKIP_COLUMNS)

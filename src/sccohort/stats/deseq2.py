"""DESeq2's negative binomial Wald test, vectorised over genes (R DESeq2's defaults).

`deseq2_wald` follows DESeq2 step by step on whole arrays: median-of-ratios size factors,
Cox-Reid gene-wise dispersions from R's rough starting values, the parametric dispersion
trend, MAP dispersions with the log-normal prior (gene-wise kept for outliers), the
ridge-stabilised IRLS and Wald test, and Cook's distance filtering. `pydeseq2_wald` runs the
same test with the pydeseq2 package (optional, 10x slower). Known differences from R: no
outlier replacement for design cells of 7 or more donors, a trigamma approximation when
n - p <= 3, and a mean-dispersion fallback if the trend fit fails. Agreement with R DESeq2:
benchmarks/bench_pseudobulk_deseq2.py.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy import special, stats

from sccohort.errors import InputError

__all__ = ["deseq2_wald", "pydeseq2_wald"]

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


def deseq2_wald(counts: pd.DataFrame, matrix: pd.DataFrame, term: str) -> pd.DataFrame:
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


def pydeseq2_wald(y: pd.DataFrame, matrix: pd.DataFrame, term: str, n_cpus: int) -> pd.DataFrame:
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

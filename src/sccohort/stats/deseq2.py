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
from scipy.optimize.elementwise import find_root

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


class _SymStack:
    """Symmetric positive definite p x p matrices, one per gene, as their Cholesky factors.

    Built from the upper-triangle entries ``{(i, j): (genes,)}`` (i <= j). The factorisation
    is unrolled over the p (p + 1) / 2 entries with whole-gene vectors: for the small p of
    a donor design this is several times faster than LAPACK called per 3 x 3 matrix.
    """

    def __init__(self, entries: dict[tuple[int, int], np.ndarray], p: int) -> None:
        low: dict[tuple[int, int], np.ndarray] = {}
        for j in range(p):
            low[j, j] = np.sqrt(entries[j, j] - sum(low[j, k] ** 2 for k in range(j)))
            for i in range(j + 1, p):
                cross = sum(low[i, k] * low[j, k] for k in range(j))
                low[i, j] = (entries[j, i] - cross) / low[j, j]
        self.low, self.p = low, p

    def logdet(self) -> np.ndarray:
        """Log-determinant per gene (genes,)."""
        return 2.0 * sum(np.log(self.low[j, j]) for j in range(self.p))

    def solve(self, rhs: list[np.ndarray]) -> list[np.ndarray]:
        """A b = rhs per gene; rhs and b as p vectors (genes,)."""
        low, p = self.low, self.p
        v: list[np.ndarray] = []
        for i in range(p):
            v.append((rhs[i] - sum(low[i, k] * v[k] for k in range(i))) / low[i, i])
        b: list[np.ndarray] = [np.empty(0)] * p
        for i in reversed(range(p)):
            b[i] = (v[i] - sum(low[k, i] * b[k] for k in range(i + 1, p))) / low[i, i]
        return b

    def inverse(self) -> dict[tuple[int, int], np.ndarray]:
        """Upper-triangle entries of the inverse, ``{(i, j): (genes,)}``."""
        low, p = self.low, self.p
        m: dict[tuple[int, int], np.ndarray] = {}  # the inverse of the factor (lower)
        for i in range(p):
            m[i, i] = 1.0 / low[i, i]
            for j in range(i):
                m[i, j] = -sum(low[i, k] * m[k, j] for k in range(j, i)) / low[i, i]
        return {
            (i, j): sum(m[k, i] * m[k, j] for k in range(j, p))
            for i in range(p)
            for j in range(i, p)
        }


def _gram(w: np.ndarray, x: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Upper-triangle entries of X'WX per gene from weights w (genes x donors), x (donors x p)."""
    p = x.shape[1]
    return {(i, j): w @ (x[:, i] * x[:, j]) for i in range(p) for j in range(i, p)}


def _linear(beta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear predictors (genes x donors) of coefficients (genes x p), design (donors x p)."""
    return np.einsum("gi,mi->gm", beta, x)  # BLAS is slow for this skinny product


def _irls(
    y: np.ndarray, x: np.ndarray, sf: np.ndarray, alpha: np.ndarray, maxit: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NB GLM fits of every gene (DESeq2's fitBeta): beta (genes x p), mu, weights."""
    n_genes, p = y.shape[0], x.shape[1]
    r = 1.0 / alpha[:, None]
    # the part of the log-likelihood that does not depend on mu, once per gene
    const = (special.gammaln(y + r) - special.gammaln(r) - special.gammaln(y + 1)).sum(axis=1)
    const += y.shape[1] * (r * np.log(r))[:, 0]
    log_sf, log_min = np.log(sf), np.log(_MIN_MU)
    start = np.log(y / sf + 0.1)
    beta = np.column_stack([start @ row for row in np.linalg.pinv(x)])  # least squares
    log_mu = np.maximum(log_sf + _linear(beta, x), log_min)
    mu = np.exp(log_mu)
    dev_old = np.full(n_genes, np.inf)
    active = np.ones(n_genes, dtype=bool)
    for _ in range(maxit):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        m, yi, ri = mu[idx], y[idx], r[idx]
        w = m / (1.0 + alpha[idx, None] * m)
        wz = w * (log_mu[idx] - log_sf + (yi - m) / m)
        xtwx = _gram(w, x)
        for i in range(p):
            xtwx[i, i] = xtwx[i, i] + _RIDGE
        b = np.column_stack(_SymStack(xtwx, p).solve([wz @ x[:, i] for i in range(p)]))
        beta[idx] = b
        lm = np.maximum(log_sf + _linear(b, x), log_min)
        m = np.exp(lm)
        log_mu[idx], mu[idx] = lm, m
        dev = -2.0 * (const[idx] + (yi * lm - (ri + yi) * np.log(ri + m)).sum(axis=1))
        done = np.abs(dev - dev_old[idx]) / (np.abs(dev) + 0.1) < 1e-8
        done |= np.abs(b).max(axis=1) > 30
        dev_old[idx] = dev
        active[idx[done]] = False
    w = mu / (1.0 + alpha[:, None] * mu)
    return beta, mu, w


class _Posterior:
    """Cox-Reid adjusted NB log-likelihood (+ log-normal prior) of log dispersions, per gene.

    ``value(log_alpha, genes)`` and its derivative ``slope(log_alpha, genes)`` for the genes
    (rows of y, mu: genes x donors) indexed by ``genes``, one log dispersion each.
    """

    def __init__(
        self,
        y: np.ndarray,
        mu: np.ndarray,
        x: np.ndarray,
        prior_mean: np.ndarray | None,
        prior_var: float,
    ) -> None:
        self.y, self.mu, self.x = y, mu, x
        self.inv_mu, self.resid = 1.0 / mu, mu - y
        self.prior_mean, self.prior_var = prior_mean, prior_var

    def value(self, log_alpha: np.ndarray, genes: np.ndarray) -> np.ndarray:
        y, mu = self.y[genes], self.mu[genes]
        alpha = np.exp(log_alpha)
        r = 1.0 / alpha
        ll = (
            special.gammaln(y + r[:, None]).sum(axis=1)
            - y.shape[1] * special.gammaln(r)
            - (y * np.log(mu + r[:, None])).sum(axis=1)
            - r * np.log1p(mu * alpha[:, None]).sum(axis=1)
        )
        w = 1.0 / (self.inv_mu[genes] + alpha[:, None])
        ll -= 0.5 * _SymStack(_gram(w, self.x), self.x.shape[1]).logdet()
        if self.prior_mean is not None:
            ll -= 0.5 * (log_alpha - self.prior_mean[genes]) ** 2 / self.prior_var
        return ll

    def slope(self, log_alpha: np.ndarray, genes: np.ndarray) -> np.ndarray:
        y, mu = self.y[genes], self.mu[genes]
        m, p = y.shape[1], self.x.shape[1]
        alpha = np.exp(log_alpha)
        r = 1.0 / alpha
        mu_r = mu + r[:, None]
        # d loglik / d r; log1p(mu alpha) = log(mu + r) - log(r)
        d_r = (
            special.digamma(y + r[:, None]).sum(axis=1)
            - m * special.digamma(r)
            - np.log(mu_r).sum(axis=1)
            + m * np.log(r)
            + (self.resid[genes] / mu_r).sum(axis=1)
        )
        # Cox-Reid: d(-0.5 log det X'WX)/d alpha = 0.5 tr((X'WX)^-1 X'W^2X)
        w = 1.0 / (self.inv_mu[genes] + alpha[:, None])
        inv = _SymStack(_gram(w, self.x), p).inverse()
        w2 = _gram(w * w, self.x)
        trace = sum((1.0 if i == j else 2.0) * inv[i, j] * w2[i, j] for i, j in inv)
        d = -r * d_r + 0.5 * alpha * trace
        if self.prior_mean is not None:
            d -= (log_alpha - self.prior_mean[genes]) / self.prior_var
        return d


def _climb(post: _Posterior, grid: np.ndarray, start: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Grid index of the local maximum reached by climbing from ``start`` (genes,).

    The first step goes right if that is uphill, else the climb goes left; it stops before
    the first point that is not strictly higher. Only the grid points on the way are
    evaluated.
    """
    size = grid.size
    s = np.clip(np.searchsorted(grid, np.log(start[genes])), 0, size - 1)
    s1 = np.minimum(s + 1, size - 1)
    f_s = post.value(grid[s], genes)
    f_s1 = post.value(grid[s1], genes)
    right = f_s1 > f_s
    best = np.where(right, s1, s)
    f_best = np.where(right, f_s1, f_s)
    step = np.where(right, 1, -1)
    active = (best + step >= 0) & (best + step < size)
    while active.any():
        i = np.flatnonzero(active)
        k = best[i] + step[i]
        f_k = post.value(grid[k], genes[i])
        up = f_k > f_best[i]
        best[i[up]], f_best[i[up]] = k[up], f_k[up]
        nxt = best[i] + step[i]
        active[i] = up & (nxt >= 0) & (nxt < size)
    return best


def _golden(post: _Posterior, lo: np.ndarray, hi: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Golden-section search for the maximum in [lo, hi] of each gene (40 steps)."""
    ratio = (np.sqrt(5.0) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = post.value(c, genes), post.value(d, genes)
    for _ in range(40):
        left = fc > fd  # the maximum lies in [lo, d]
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        new = np.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        f_new = post.value(new, genes)
        c, fc, d, fd = (
            np.where(left, new, d),
            np.where(left, f_new, fd),
            np.where(left, c, new),
            np.where(left, fc, f_new),
        )
    return (lo + hi) / 2


def _fit_dispersion(
    y: np.ndarray,
    mu: np.ndarray,
    x: np.ndarray,
    max_disp: float,
    start: np.ndarray,
    prior_mean: np.ndarray | None = None,
    prior_var: float = 1.0,
) -> np.ndarray:
    """Maximise the Cox-Reid log posterior in log(alpha) per gene, uphill from ``start``.

    Like DESeq2's line search, the estimate is the local maximum reached by climbing from
    the start on a 60-point grid (`_climb`); it is then refined within one grid step by
    Chandrupatla's bracketing root search (:func:`scipy.optimize.elementwise.find_root`) on
    the analytic derivative, or by golden-section search where the derivative does not
    change sign there. A gene starting at the lower bound, where the likelihood is flat,
    stays there as in R. Returns dispersions (genes,).
    """
    n_genes = y.shape[0]
    post = _Posterior(y, mu, x, prior_mean, prior_var)
    grid = np.linspace(np.log(_MIN_DISP / 10), np.log(max_disp), 60)
    step = grid[1] - grid[0]
    fitted = np.full(n_genes, _MIN_DISP)
    at_floor = start <= _MIN_DISP * (1 + 1e-9)
    genes = np.flatnonzero(~at_floor) if prior_mean is None else np.arange(n_genes)
    if genes.size == 0:
        return fitted
    best = _climb(post, grid, start, genes)
    lo, hi = grid[best] - step, grid[best] + step
    # a maximum within one step of a grid point below log(_MIN_DISP) is clipped to it
    low = hi <= np.log(_MIN_DISP)
    genes, lo, hi = genes[~low], lo[~low], hi[~low]
    log_fit = np.full(genes.size, np.nan)
    if genes.size:
        res = find_root(
            lambda t, g: post.slope(t, g.astype(np.intp)),
            (lo, hi),
            args=(genes,),
            tolerances={"xatol": 1e-8},
            maxiter=100,
        )
        # a maximum: the slope falls through zero (a rise would be a minimum)
        ok = res.success & (res.f_bracket[0] >= res.f_bracket[1])
        log_fit[ok] = res.x[ok]
        if not ok.all():
            log_fit[~ok] = _golden(post, lo[~ok], hi[~ok], genes[~ok])
        fitted[genes] = np.clip(np.exp(log_fit), _MIN_DISP, max_disp)
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

    Examples
    --------
    >>> from sccohort.stats import deseq2_wald
    >>> from sccohort.datasets import toy, toy_counts
    >>> design, counts = toy().design, toy_counts()  # G0 up in the 4 cases
    >>> wald = deseq2_wald(counts, design.matrix, design.term)
    >>> wald.columns.tolist()[:4], round(float(wald.loc["G0", "log2FoldChange"]), 1)
    (['baseMean', 'log2FoldChange', 'lfcSE', 'stat'], 1.6)
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


def pydeseq2_wald(y: pd.DataFrame, matrix: pd.DataFrame, term: str, n_jobs: int) -> pd.DataFrame:
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
    inference = DefaultInference(n_cpus=n_jobs)
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

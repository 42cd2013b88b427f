"""Empirical Bayes squeezing of variances as limma 3.x's ``squeezeVar`` (robust, with trend).

:func:`squeeze_var` is ``squeezeVar(var, df, covariate, robust = TRUE)`` as edgeR's
``glmQLFit(robust = TRUE)`` calls it: limma's ``fitFDist`` (a natural-spline trend of the
log variances in the covariate, moments of the log F distribution) and
``fitFDistRobustly`` (a lowess trend, Winsorised moments matched by Gauss-Legendre
quadrature, per-row prior df shrunk for outliers). Rows with no residual df take the prior
interpolated in the covariate. Used by :mod:`sccohort.stats.nb_ql`.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

from sccohort.stats.special_functions import trigamma_inverse

__all__ = ["lowess", "squeeze_var"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(128)
_NODES, _WEIGHTS = (_NODES + 1) / 2, _WEIGHTS / 2  # statmod's gauss.quad.prob(128, "uniform")


def lowess(x: np.ndarray, y: np.ndarray, span: float, iterations: int = 3) -> np.ndarray:
    """R's ``lowess(x, y, f = span, iter = iterations)`` fitted values, in the order of ``x``.

    Cleveland's algorithm as R's ``clowess``: local lines on the ``span * n`` nearest points
    with tricube weights, fitted only at points more than 1 % of the range of ``x`` apart and
    interpolated between them, then bisquare robustness iterations.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order].astype(float), y[order].astype(float)
    n = len(xs)
    if n < 2:
        return y.astype(float)
    window = _lowess_schedule(xs, max(2, min(n, int(span * n + 1e-7))))
    robust = None
    for it in range(iterations + 1):
        fitted = np.interp(xs, xs[window[0]], _lowess_fit(xs, ys, *window, robust))
        resid = np.abs(ys - fitted)
        cmad = 6 * np.median(resid)
        if it == iterations or cmad < 1e-7 * resid.mean():
            break
        robust = np.where(resid <= 0.999 * cmad, (1 - (resid / cmad) ** 2) ** 2, 0.0)
        robust[resid <= 0.001 * cmad] = 1.0
    out = np.empty(n)
    out[order] = fitted
    return out


def _lowess_schedule(xs: np.ndarray, ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where clowess fits (positions in sorted ``xs``) and each fit's window (first, last)."""
    n = len(xs)
    delta = 0.01 * (xs[-1] - xs[0])
    anchors, lefts, rights = [], [], []
    left, right, i = 0, ns - 1, 0
    while True:
        if right < n - 1 and xs[i] - xs[left] > xs[right + 1] - xs[i]:
            left, right = left + 1, right + 1
            continue
        anchors.append(i)
        lefts.append(left)
        rights.append(right)
        last, j = i, i + 1
        while j < n and xs[j] <= xs[last] + delta:
            if xs[j] == xs[last]:
                last = j
            j += 1
        if last >= n - 1:
            break
        i = max(last + 1, j - 1)
    return np.array(anchors), np.array(lefts), np.array(rights)


def _lowess_fit(
    xs: np.ndarray,
    ys: np.ndarray,
    anchors: np.ndarray,
    lefts: np.ndarray,
    rights: np.ndarray,
    robust: np.ndarray | None,
) -> np.ndarray:
    """The weighted local line of clowess (``lowest``) at every anchor at once."""
    x0 = xs[anchors][:, None]
    h = np.maximum(x0[:, 0] - xs[lefts], xs[rights] - x0[:, 0])[:, None]
    dist = np.abs(xs[None, :] - x0)
    inside = (np.arange(len(xs))[None, :] >= lefts[:, None]) & (dist <= 0.999 * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(dist <= 0.001 * h, 1.0, (1 - (dist / h) ** 3) ** 3)
    w = np.where(inside, w, 0.0)
    if robust is not None:
        w = w * robust[None, :]
    total = w.sum(axis=1, keepdims=True)
    ok = total[:, 0] > 0
    w = w / np.where(ok[:, None], total, 1.0)
    centre = (w * xs).sum(axis=1, keepdims=True)
    spread = (w * (xs - centre) ** 2).sum(axis=1, keepdims=True)
    sloped = (h > 0) & (np.sqrt(spread) > 0.001 * (xs[-1] - xs[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(sloped, (x0 - centre) / spread * (xs - centre) + 1, 1.0)
    return np.where(ok, (w * factor * ys).sum(axis=1), ys[anchors])


# ---------------------------------------------------------------------------------------
# limma's fitFDist: moments of log variances around a natural-spline trend


def _natural_spline(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """A basis (len(x) x len(knots)) of the natural cubic splines with these knots.

    Spans the columns of R's ``splines::ns(x, knots = inner, Boundary.knots = ends,
    intercept = TRUE)`` (ESL's truncated-power construction, on x scaled to the knots' range).
    """
    lo, hi = knots[0], knots[-1]
    scale = hi - lo if hi > lo else 1.0
    t, k = (x - lo) / scale, (knots - lo) / scale

    def d(j: int) -> np.ndarray:
        return (np.maximum(t - k[j], 0) ** 3 - np.maximum(t - k[-1], 0) ** 3) / (k[-1] - k[j])

    cols = [np.ones_like(t), t] + [d(j) - d(len(k) - 2) for j in range(len(k) - 2)]
    return np.column_stack(cols)


def fit_f_dist(x: np.ndarray, df1: np.ndarray, covariate: np.ndarray) -> tuple[np.ndarray, float]:
    """Prior scale (n,) and prior df as limma's ``fitFDist(x, df1, covariate)``.

    Fits ``x ~ scale * F(df1, df2)`` with ``log(scale)`` a natural cubic spline in the
    covariate (up to 4 df, knots at quantiles), by the moments of ``log(x)``.
    """
    n = len(x)
    df1 = np.broadcast_to(np.asarray(df1, dtype=float), (n,))
    ok = np.isfinite(df1) & (df1 > 1e-15) & np.isfinite(x) & (x > -1e-15)
    nok = int(ok.sum())
    if nok <= 1:
        return np.where(ok, x, np.nan) if nok else np.full(n, np.nan), 0.0
    xo, d1, cov = np.maximum(x[ok], 0), df1[ok], covariate[ok]
    spline_df = min(1 + (nok >= 3) + (nok >= 6) + (nok >= 30), len(np.unique(cov)))
    m = np.median(xo)
    xo = np.maximum(xo, 1e-5 * (m if m > 0 else 1.0))
    e = np.log(xo) - special.digamma(d1 / 2) + np.log(d1 / 2)
    if spline_df < 2:
        emean, evar = np.full(n, e.mean()), e.var(ddof=1)
    else:
        inner = np.quantile(cov, np.linspace(0, 1, spline_df)[1:-1])
        knots = np.r_[cov.min(), inner, cov.max()]
        coef, _, rank, _ = np.linalg.lstsq(_natural_spline(cov, knots), e, rcond=None)
        resid = e - _natural_spline(cov, knots) @ coef
        emean = _natural_spline(covariate, knots) @ coef
        evar = float(resid @ resid / (nok - rank))
    evar -= float(np.mean(special.polygamma(1, d1 / 2)))
    if evar > 0:
        df2 = 2 * float(trigamma_inverse(evar))
        return np.exp(emean + special.digamma(df2 / 2) - np.log(df2 / 2)), df2
    return (np.full(n, xo.mean()) if spline_df < 2 else np.exp(emean)), np.inf


# ---------------------------------------------------------------------------------------
# limma's fitFDistRobustly: Winsorised moments, outlier-shrunk prior df


def _f_logsf(f: np.ndarray, df1: np.ndarray, df2: float) -> np.ndarray:
    """Log P(F > f) for F(df1, df2); df2 may be infinite (then chi-square / df1)."""
    if np.isinf(df2):
        return stats.chi2.logsf(f * df1, df1)
    return stats.f.logsf(f, df1, df2)


def _f_logcdf(f: np.ndarray, df1: np.ndarray, df2: float) -> np.ndarray:
    """Log P(F <= f) for F(df1, df2); df2 may be infinite."""
    if np.isinf(df2):
        return stats.chi2.logcdf(f * df1, df1)
    return stats.f.logcdf(f, df1, df2)


def _f_ppf(p: np.ndarray, df1: float, df2: float, *, upper: bool = False) -> np.ndarray:
    """Quantile of F(df1, df2) at probability ``p`` (of the upper tail if ``upper``)."""
    dist = stats.chi2(df1, scale=1 / df1) if np.isinf(df2) else stats.f(df1, df2)
    return dist.isf(p) if upper else dist.ppf(p)


def _winsorized_moments(df1: float, df2: float, tail: np.ndarray) -> tuple[float, float]:
    """Mean and variance of log F(df1, df2) Winsorised at the ``tail`` probabilities."""
    fq = _f_ppf(np.array([tail[0], 1 - tail[1]]), df1, df2)
    zq = np.log(fq)
    q = fq / (1 + fq)
    nodes = q[0] + (q[1] - q[0]) * _NODES
    fnodes = nodes / (1 - nodes)
    if np.isinf(df2):
        dens = df1 * stats.chi2.pdf(df1 * fnodes, df1)
    else:
        dens = stats.f.pdf(fnodes, df1, df2)
    dens = dens / (1 - nodes) ** 2
    width = q[1] - q[0]
    mean = width * np.sum(_WEIGHTS * dens * np.log(fnodes)) + np.sum(zq * tail)
    var = width * np.sum(_WEIGHTS * dens * (np.log(fnodes) - mean) ** 2)
    return float(mean), float(var + np.sum((zq - mean) ** 2 * tail))


def _equalise_df1(
    x: np.ndarray, df1: np.ndarray, scale: np.ndarray, df2: float
) -> tuple[np.ndarray, float]:
    """Move rows with fewer df to the same tail probability at the largest df1."""
    df1max = float(df1.max())
    i = df1 < df1max - 1e-14
    if not i.any():
        return x, float(df1[0])
    f = x[i] / scale[i]
    upper, lower = _f_logsf(f, df1[i], df2), _f_logcdf(f, df1[i], df2)
    up = upper < lower
    with np.errstate(under="ignore"):
        f = np.where(
            up,
            _f_ppf(np.exp(upper), df1max, df2, upper=True),
            _f_ppf(np.exp(lower), df1max, df2),
        )
    x = x.copy()
    x[i] = f * scale[i]
    return x, df1max


def _shrunk_df(log_tail: np.ndarray, fstat: np.ndarray, df1: float, df2: float) -> np.ndarray:
    """Per-row prior df, shrunk towards an outlier df by each row's outlier probability."""
    n = len(fstat)
    log_emp = np.log(n - stats.rankdata(fstat) + 0.5) - np.log(n)
    log_not = np.minimum(log_tail - log_emp, 0)
    if not (log_not < 0).any():
        return np.full(n, df2)
    min_tail = log_tail.min()
    if min_tail == -np.inf:
        shrunk = np.exp(log_not) * df2
    else:
        outlier = np.log(0.5) / min_tail * df2
        outlier = np.log(0.5) / float(_f_logsf(fstat.max(), df1, outlier)) * outlier
        shrunk = np.exp(log_not) * df2 - np.expm1(log_not) * outlier
    order = np.argsort(log_tail, kind="stable")
    ordered = shrunk[order]
    running = np.cumsum(ordered) / np.arange(1, n + 1)
    imin = int(np.argmin(running))
    ordered[: imin + 1] = running[imin]
    shrunk[order] = np.maximum.accumulate(ordered)
    return shrunk


def fit_f_dist_robustly(
    x: np.ndarray,
    df1: np.ndarray,
    covariate: np.ndarray,
    winsor_tail_p: tuple[float, float] = (0.05, 0.1),
) -> tuple[np.ndarray, float, np.ndarray]:
    """Prior scale (n,), df and outlier-shrunk df (n,) as limma's ``fitFDistRobustly``.

    Rows with no df (or a missing variance) are left out of the fit; they take the prior df
    and the prior scale interpolated in the covariate.
    """
    n = len(x)
    df1 = np.broadcast_to(np.asarray(df1, dtype=float), (n,))
    tail = np.asarray(winsor_tail_p, dtype=float)
    ok = np.isfinite(x) & np.isfinite(df1) & (df1 > 1e-6)
    if ok.all():
        return _fit_robust(x, df1, covariate, tail)
    if not ok.any():
        return np.full(n, np.nan), np.nan, np.full(n, np.nan)
    scale, df2, shrunk = _fit_robust(x[ok], df1[ok], covariate[ok], tail)
    out_shrunk = np.full(n, df2)
    out_shrunk[ok] = shrunk
    out_scale = np.empty(n)
    out_scale[ok] = scale
    cov, log_scale = _mean_over_ties(covariate[ok], np.log(scale))
    out_scale[~ok] = np.exp(np.interp(covariate[~ok], cov, log_scale))
    return out_scale, df2, out_shrunk


def _fit_robust(
    x: np.ndarray, df1: np.ndarray, covariate: np.ndarray, tail: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray]:
    """``fitFDistRobustly`` on rows that all have df: Winsorised log-F moments, lowess trend."""
    n = len(x)
    m = float(np.median(x))
    x = np.maximum(x, m * 1e-12)
    scale0, df2_0 = fit_f_dist(x, df1, covariate)
    if n <= 2 or m <= 0 or (tail < 1 / n).all():  # limma stops when m <= 0; keep the plain fit
        return scale0, df2_0, np.full(n, df2_0)
    x, d1 = _equalise_df1(x, df1, scale0, df2_0)
    z = np.log(x)
    ztrend = lowess(covariate, z, 0.4)
    lo, hi = np.quantile(z - ztrend, [tail[0], 1 - tail[1]])
    zwins = np.clip(z - ztrend, lo, hi)
    zwvar = np.mean((zwins - zwins.mean()) ** 2) * n / (n - 1)
    mean_inf, var_inf = _winsorized_moments(d1, np.inf, tail)
    if np.log(zwvar / var_inf) <= 0:
        return _chisq_prior(z, ztrend + zwins.mean() - mean_inf, d1)
    if np.isinf(df2_0):
        return scale0, df2_0, np.full(n, df2_0)

    def gap(u: float) -> float:
        df2 = np.inf if u >= 1 else u / (1 - u)
        return float(np.log(zwvar / _winsorized_moments(d1, df2, tail)[1]))

    low, df2 = df2_0 / (1 + df2_0), df2_0
    if gap(low) < 0:  # R's uniroot(tol = 1e-8) on the same bracket, here to 1e-12
        root = optimize.brentq(gap, low, 1.0, xtol=1e-12)
        df2 = root / (1 - root) if root < 1 else np.inf
    corrected = ztrend + zwins.mean() - _winsorized_moments(d1, df2, tail)[0]
    fstat = np.exp(z - corrected)
    log_tail = _f_logsf(fstat, np.full(n, d1), df2)
    return np.exp(corrected), df2, _shrunk_df(log_tail, fstat, d1, df2)


def _chisq_prior(
    z: np.ndarray, corrected: np.ndarray, df1: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """The infinite-prior-df case of ``fitFDistRobustly``: df shrunk for chi-square outliers."""
    n = len(z)
    fstat = np.exp(z - corrected)
    tail_p = stats.chi2.sf(fstat * df1, df1)
    not_outlier = np.minimum(tail_p / ((n - stats.rankdata(fstat) + 0.5) / n), 1)
    shrunk = np.where(not_outlier < 1, not_outlier * n * df1, np.inf)
    order = np.argsort(tail_p, kind="stable")
    shrunk[order] = np.maximum.accumulate(shrunk[order])
    return np.exp(corrected), np.inf, shrunk


def _mean_over_ties(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``x`` and the mean ``y`` at each (R's ``approx(ties = mean)``)."""
    ux, inverse = np.unique(x, return_inverse=True)
    return ux, np.bincount(inverse, weights=y) / np.bincount(inverse)


def squeeze_var(
    var: np.ndarray, df: np.ndarray, covariate: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior variances as limma's ``squeezeVar(var, df, covariate, robust = TRUE)``.

    Parameters
    ----------
    var, df
        Residual variances and their df (n,); rows with ``df == 0`` take the prior.
    covariate
        Abundance (n,) the prior variance trends with.

    Returns
    -------
    tuple
        Prior df (n,), prior variance (n,), posterior variance (n,).
    """
    var = np.where(df == 0, 0.0, var)
    scale, _, df_prior = fit_f_dist_robustly(var, df, covariate)
    with np.errstate(invalid="ignore"):
        post = (df * var + df_prior * scale) / (df + df_prior)
    post = np.where(np.isfinite(df_prior), post, scale)
    return df_prior, scale, post

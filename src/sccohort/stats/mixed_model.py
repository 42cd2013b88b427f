"""A linear mixed model with a donor random intercept, fitted to many features at once.

For cohorts with repeated, unbalanced samples per donor (as R's dreamlet / crumblr fit with
variancePartition's ``dream``). Per feature (a transformed subset share, a gene's log-CPM)::

    y = x b + u[donor] + e,    u ~ N(0, tau2),    e_i ~ N(0, sigma2 / w_i)

`random_intercept` estimates (sigma2, tau2) by REML (``tau2 = 0`` allowed, lme4's singular
fit), the fixed effects by GLS, and tests one of them with Satterthwaite's degrees of freedom
(lmerTest's default). Only the ratio ``lambda = tau2 / sigma2`` needs a search: the REML
criterion with sigma2 profiled out is a function of lambda alone, evaluated for every feature
at once from per-donor sums (the model's covariance is block diagonal and each block is a
rank-one update of a diagonal), on a grid of log(lambda) and refined by golden section. The
Satterthwaite variance of the variance parameters uses the analytic observed Hessian of the
REML deviance in (sigma, tau), as lmerTest does numerically in (theta, sigma).

`voom_weights` gives limma's voom log-CPM and precision weights, the weights ``dream`` uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.nonparametric.smoothers_lowess import lowess

from ..errors import InputError

__all__ = ["random_intercept", "voom_weights"]

#: Grid of log(lambda), lambda = tau2 / sigma2 at the mean weight, before golden section.
_GRID = np.arange(-10.0, 10.01, 0.5)
#: Search range of log(lambda) beyond the grid; at the top residual variance is ~0.
_BEYOND = 4.0
_GOLDEN_STEPS = 32
_CHUNK = 4096
_RATIO = (np.sqrt(5.0) - 1.0) / 2.0
KEYS = ("effect", "se", "df", "statistic", "pvalue", "ci_low", "ci_high", "sigma2", "tau2")
_INFERENCE = ("df", "statistic", "pvalue", "ci_low", "ci_high")


def _matrix(values: Any, name: str, rows: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be numeric", key=name) from err
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D or 2-D array", key=name)
    if rows is not None and arr.shape[0] != rows:
        raise InputError(
            f"{name} has {arr.shape[0]} rows, y has {rows}",
            key=name,
            hint="Give one row per sample, in the order of y",
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{name} has NaN or infinite values", key=name, hint="Drop them first")
    return arr


def _term_index(x: Any, term: int | str, p: int) -> int:
    if isinstance(term, str):
        if not isinstance(x, pd.DataFrame) or term not in x.columns:
            raise InputError(f"term '{term}' is not a column of x", key="term")
        return int(x.columns.get_loc(term))
    if not isinstance(term, int | np.integer) or not -p <= term < p:
        raise InputError(f"term {term!r} is not a column index of x ({p} columns)", key="term")
    return int(term) % p


def _check(y, x, groups, term, weights) -> tuple:
    """Arrays y (n, G), x (n, p), donor codes (n,), term index, weights (n, 1 or G)."""
    yy = _matrix(y, "y")
    n, n_features = yy.shape
    xx = _matrix(x, "x", n)
    p = xx.shape[1]
    if n <= p or np.linalg.matrix_rank(xx) < p:
        raise InputError(
            f"x ({n} x {p}) must have full column rank and fewer columns than samples",
            key="x",
            hint="Drop constant or collinear columns",
        )
    grp = pd.Series(np.asarray(groups).ravel())
    if len(grp) != n or grp.isna().any():
        raise InputError(f"groups must give a donor for each of the {n} samples", key="groups")
    codes = pd.factorize(grp)[0]
    w = np.ones((n, 1)) if weights is None else _matrix(weights, "weights", n)
    if w.shape[1] not in (1, n_features) or (w <= 0).any():
        raise InputError(
            f"weights must be positive, of shape ({n},) or ({n}, {n_features})", key="weights"
        )
    return yy, xx, codes, _term_index(x, term, p), w


class _Sums:
    """Per-donor weighted sums of one chunk of features; leading axis G or 1 (shared)."""

    def __init__(self, y: np.ndarray, x: np.ndarray, onehot: np.ndarray, w: np.ndarray):
        n, p = x.shape
        self.n, self.p = n, p
        wn = w / w.mean(axis=0)  # lambda on the scale of the mean weight
        self.scale = w.mean(axis=0)  # (1 or G,): sigma2 at weight 1 = sigma2 here * scale
        self.s = (onehot.T @ wn).T  # (G|1, m)
        xw = x[:, :, None] * wn[:, None, :]  # (n, p, G|1)
        self.xwx = np.einsum("ipg,iq->gpq", xw, x).reshape(wn.shape[1], p * p)
        self.sx = np.einsum("ipg,im->gmp", xw, onehot)  # (G|1, m, p)
        self.mxx = (self.sx[:, :, :, None] * self.sx[:, :, None, :]).reshape(*self.sx.shape[:2], -1)
        yw = y * wn
        self.sy = (onehot.T @ yw).T  # (G, m)
        self.xwy = np.einsum("ip,ig->gp", x, yw)
        self.yy = (y * yw).sum(axis=0)

    def combine(self, c: np.ndarray, per_donor: np.ndarray) -> np.ndarray:
        """Sum over donors of c (G, m) times per_donor (G|1, m, k): (G, k)."""
        if per_donor.shape[0] == 1:
            return c @ per_donor[0]
        return np.einsum("gm,gmk->gk", c, per_donor)

    def _system(self, lam: np.ndarray) -> tuple[np.ndarray, ...]:
        """A = x'H^-1 x (G, p, p), b = x'H^-1 y (G, p) and y'H^-1 y (G,) at lambda (G,)."""
        c = lam[:, None] / (1.0 + lam[:, None] * self.s)
        a = (self.xwx - self.combine(c, self.mxx)).reshape(-1, self.p, self.p)
        b = self.xwy - self.combine(c * self.sy, self.sx)
        return a, b, self.yy - (c * self.sy**2).sum(axis=1)

    def _crit(self, lam: np.ndarray, logdet: np.ndarray, q: np.ndarray) -> np.ndarray:
        """REML criterion (-2 log restricted likelihood, sigma2 profiled, up to a constant)."""
        hdet = np.log1p(lam[:, None] * self.s).sum(axis=1)
        return hdet + logdet + (self.n - self.p) * np.log(np.maximum(q, 1e-300))

    def crit(self, lam: np.ndarray) -> np.ndarray:
        """The REML criterion at lambda (G,), by a Cholesky factor written out for small p."""
        a, b, yy = self._system(lam)
        logdet, quad = _cholesky_terms(a, b)
        return self._crit(lam, logdet, yy - quad)

    def fit(self, lam: np.ndarray) -> dict[str, np.ndarray]:
        """GLS fit at lambda (G,): A, its inverse, beta, q = r'H^-1 r (floored above 0)."""
        a, b, yy = self._system(lam)
        a_inv = np.linalg.inv(a)
        beta = np.einsum("gpq,gq->gp", a_inv, b)
        q = np.maximum(yy - (b * beta).sum(axis=1), 1e-300)
        return {"a": a, "a_inv": a_inv, "beta": beta, "q": q}


def _cholesky_terms(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-determinant of A and b' A^-1 b, for stacks of small SPD a (G, p, p) and b (G, p)."""
    p = a.shape[1]
    low = np.zeros_like(a)
    z = np.zeros_like(b)
    for j in range(p):
        low[:, j, j] = np.sqrt(a[:, j, j] - (low[:, j, :j] ** 2).sum(axis=1))
        for i in range(j + 1, p):
            dot = (low[:, i, :j] * low[:, j, :j]).sum(axis=1)
            low[:, i, j] = (a[:, i, j] - dot) / low[:, j, j]
        z[:, j] = (b[:, j] - (low[:, j, :j] * z[:, :j]).sum(axis=1)) / low[:, j, j]
    diag = np.diagonal(low, axis1=1, axis2=2)
    return 2.0 * np.log(diag).sum(axis=1), (z**2).sum(axis=1)


def _golden(sums: _Sums, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Golden-section minimum of the criterion over log(lambda) in [lo, hi], per feature."""
    x1, x2 = hi - _RATIO * (hi - lo), lo + _RATIO * (hi - lo)
    f1, f2 = sums.crit(np.exp(x1)), sums.crit(np.exp(x2))
    for _ in range(_GOLDEN_STEPS):
        left = f1 < f2
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        new_x = np.where(left, hi - _RATIO * (hi - lo), lo + _RATIO * (hi - lo))
        f_new = sums.crit(np.exp(new_x))
        x1, x2 = np.where(left, new_x, x2), np.where(left, x1, new_x)
        f1, f2 = np.where(left, f_new, f2), np.where(left, f1, f_new)
    best = np.where(f1 < f2, x1, x2)
    return best, np.minimum(f1, f2)


def _optimise(sums: _Sums, n_features: int) -> np.ndarray:
    """REML lambda per feature: grid over log(lambda), golden section, then lambda = 0."""
    crits = np.stack([sums.crit(np.full(n_features, np.exp(t))) for t in _GRID])
    k = crits.argmin(axis=0)
    step = _GRID[1] - _GRID[0]
    lo = np.where(k == 0, _GRID[0] - _BEYOND, _GRID[np.maximum(k - 1, 0)])
    hi = np.where(
        k == len(_GRID) - 1, _GRID[-1] + _BEYOND, _GRID[np.minimum(k + 1, len(_GRID) - 1)]
    )
    hi = np.maximum(hi, lo + step)
    theta, crit = _golden(sums, lo, hi)
    at_zero = sums.crit(np.zeros(n_features))
    return np.where(at_zero <= crit, 0.0, np.exp(theta))


def _satterthwaite(sums: _Sums, lam: np.ndarray, fit: dict, term: int) -> np.ndarray:
    """Satterthwaite df of the term: Var(varpar) from the observed REML Hessian in (sigma, tau)."""
    n_p = sums.n - sums.p
    lam_ = lam[:, None]
    s = sums.s
    c1, c2 = 1.0 / (1.0 + lam_ * s) ** 2, -2.0 * s / (1.0 + lam_ * s) ** 3
    a_inv, beta, q = fit["a_inv"], fit["beta"], fit["q"]
    p = sums.p
    a1 = -sums.combine(c1, sums.mxx).reshape(-1, p, p)
    a2 = -sums.combine(c2, sums.mxx).reshape(-1, p, p)
    ai_a1 = a_inv @ a1
    d1 = np.trace(ai_a1, axis1=1, axis2=2)
    d2 = np.trace(a_inv @ a2, axis1=1, axis2=2) - np.einsum("gpq,gqp->g", ai_a1, ai_a1)
    resid = sums.sy - (sums.sx @ beta[:, :, None])[:, :, 0]  # (G, m)
    q1 = -(c1 * resid**2).sum(axis=1)
    u = sums.combine(c1 * resid, sums.sx)
    q2 = -(c2 * resid**2).sum(axis=1) - 2.0 * np.einsum("gp,gpq,gq->g", u, a_inv, u)
    sig2 = q / n_p
    # REML deviance d(sigma2, lambda): gradient and Hessian
    g_s = n_p / sig2 - q / sig2**2
    g_l = (s / (1.0 + lam_ * s)).sum(axis=1) + d1 + q1 / sig2
    h_ss = -n_p / sig2**2 + 2.0 * q / sig2**3
    h_sl = -q1 / sig2**2
    h_ll = -((s / (1.0 + lam_ * s)) ** 2).sum(axis=1) + d2 + q2 / sig2
    # to (sigma, tau): sigma2 = sigma^2, lambda = tau^2 / sigma^2
    sig, tau = np.sqrt(sig2), np.sqrt(lam * sig2)
    j = np.zeros((len(lam), 2, 2))  # rows (sigma2, lambda), columns (sigma, tau)
    j[:, 0, 0] = 2.0 * sig
    j[:, 1, 0] = -2.0 * tau**2 / sig**3
    j[:, 1, 1] = 2.0 * tau / sig2
    h_phi = np.stack([np.stack([h_ss, h_sl], -1), np.stack([h_sl, h_ll], -1)], -2)
    h = np.einsum("gki,gkl,glj->gij", j, h_phi, j)
    h[:, 0, 0] += 2.0 * g_s + g_l * 6.0 * tau**2 / sig**4
    h[:, 0, 1] -= g_l * 4.0 * tau / sig**3
    h[:, 1, 0] -= g_l * 4.0 * tau / sig**3
    h[:, 1, 1] += g_l * 2.0 / sig2
    var_t = sig2 * a_inv[:, term, term]
    grad_phi = np.stack([a_inv[:, term, term], -sig2 * (a_inv @ a1 @ a_inv)[:, term, term]], -1)
    grad = np.einsum("gki,gk->gi", j, grad_phi)
    det = h[:, 0, 0] * h[:, 1, 1] - h[:, 0, 1] ** 2
    quad = (
        h[:, 1, 1] * grad[:, 0] ** 2 - 2 * h[:, 0, 1] * grad[:, 0] * grad[:, 1]
        + h[:, 0, 0] * grad[:, 1] ** 2
    ) / det  # fmt: skip
    quad = np.where(lam > 0, quad, grad[:, 0] ** 2 / h[:, 0, 0])  # at tau = 0: sigma only
    return var_t**2 / quad


def _fit_chunk(y, x, onehot, w, term, mixed: bool) -> dict[str, np.ndarray]:
    """REML fit of the features of one chunk (y standardised by the caller)."""
    sums = _Sums(y, x, onehot, w)
    n_features = y.shape[1]
    lam = _optimise(sums, n_features) if mixed else np.zeros(n_features)
    fit = sums.fit(lam)
    sig2 = fit["q"] / (sums.n - sums.p)
    df = _satterthwaite(sums, lam, fit, term) if mixed else np.full(n_features, sums.n - sums.p)
    return {
        "effect": fit["beta"][:, term],
        "se": np.sqrt(sig2 * fit["a_inv"][:, term, term]),
        "df": df,
        "sigma2": sig2 * sums.scale,
        "tau2": lam * sig2,
        # y (standardised) fitted without residual, or lambda at the top of its range
        "exact": (fit["q"] < 1e-12 * sums.n) | (lam > np.exp(_GRID[-1] + _BEYOND - 1e-3)),
    }


def random_intercept(
    y: Any, x: Any, groups: Any, term: int | str, *, weights: Any = None
) -> dict[str, np.ndarray]:
    """Test one fixed effect in ``y = x b + u[group] + e`` per feature (REML, Satterthwaite).

    Parameters
    ----------
    y
        Responses, samples x features (n x G) or (n,); each feature is fitted on its own.
    x
        Fixed-effect design (n x p), intercept included, full column rank (array or
        DataFrame).
    groups
        Donor of each sample (n,), any labels; donors with one sample are fine.
    term
        Column of ``x`` tested: an index, or a column name when ``x`` is a DataFrame.
    weights
        Precision weights, (n,) or (n x G), positive: the residual variance of sample i is
        ``sigma2 / w_i`` (lme4's ``weights``, voom's weights in dream); None: all 1.

    Returns
    -------
    dict of numpy.ndarray
        Arrays of length G: ``effect`` (the term's GLS coefficient), ``se``, ``df``
        (Satterthwaite), ``statistic`` (t), ``pvalue`` (two-sided), ``ci_low`` / ``ci_high``
        (95 %), ``sigma2`` (residual variance at weight 1), ``tau2`` (donor variance, 0 at a
        singular fit); booleans ``singular`` (tau2 = 0) and ``fixed_only`` (every donor has
        one sample, so tau2 is not identifiable: the fixed-effects model was fitted, df = n - p).
        A constant feature gets NaN everywhere; one fitted exactly (residual variance 0)
        gets NaN df, statistic, pvalue and interval.

    Examples
    --------
    >>> from sccohort.stats.mixed_model import random_intercept
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(8), [1, 2, 3, 1, 2, 3, 2, 2])
    >>> time = np.tile([0.0, 1.0], 8)
    >>> y = rng.normal(size=8)[groups] + 0.8 * time + rng.normal(scale=0.3, size=16)
    >>> res = random_intercept(y, np.column_stack([np.ones(16), time]), groups, term=1)
    >>> sorted(res)[:5]
    ['ci_high', 'ci_low', 'df', 'effect', 'fixed_only']
    >>> bool(res["pvalue"][0] < 0.01), bool(res["tau2"][0] > res["sigma2"][0])
    (True, True)
    """
    yy, xx, codes, t, w = _check(y, x, groups, term, weights)
    n, n_features = yy.shape
    onehot = np.eye(codes.max() + 1)[codes]
    mixed = codes.max() + 1 < n
    centre, spread = yy.mean(axis=0), yy.std(axis=0)
    constant = spread <= 1e-12 * np.maximum(np.abs(centre), 1.0)
    spread = np.where(constant, 1.0, spread)
    z = (yy - centre) / spread
    parts = []
    with np.errstate(all="ignore"):
        for start in range(0, n_features, _CHUNK):
            cols = slice(start, start + _CHUNK)
            wc = w if w.shape[1] == 1 else w[:, cols]
            parts.append(_fit_chunk(z[:, cols], xx, onehot, wc, t, mixed))
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        out["effect"] = out["effect"] * spread
        out["se"] = out["se"] * spread
        out["sigma2"] = out["sigma2"] * spread**2
        out["tau2"] = out["tau2"] * spread**2
        out["statistic"] = out["effect"] / out["se"]
        out["pvalue"] = 2.0 * stats.t.sf(np.abs(out["statistic"]), out["df"])
        half = stats.t.ppf(0.975, out["df"]) * out["se"]
    out["ci_low"], out["ci_high"] = out["effect"] - half, out["effect"] + half
    for key in KEYS:
        out[key] = np.where(out["exact"] & (key in _INFERENCE), np.nan, out[key])
        out[key] = np.where(constant, np.nan, out[key])
    out["singular"] = out["tau2"] == 0
    out["fixed_only"] = np.full(n_features, not mixed)
    return {key: out[key] for key in (*KEYS, "singular", "fixed_only")}


def _trend(sx: np.ndarray, sy: np.ndarray, span: float):
    """R's ``approxfun(lowess(sx, sy, f = span), rule = 2)``: a function of log-count."""
    delta = 0.01 * float(np.ptp(sx))
    fitted = lowess(sy, sx, frac=span, it=3, delta=delta, return_sorted=True)
    xs, inverse = np.unique(fitted[:, 0], return_inverse=True)
    ys = np.bincount(inverse, weights=fitted[:, 1]) / np.bincount(inverse)
    return lambda values: np.interp(values, xs, ys)


def voom_weights(
    counts: Any, x: Any, lib_size: Any = None, *, span: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Log2-CPM and precision weights from the mean-variance trend, as limma's ``voom``.

    Parameters
    ----------
    counts
        Raw counts, samples x genes (n x G), the orientation of `random_intercept`'s ``y``
        (limma takes genes x samples: transpose to compare).
    x
        Design (n x p), full column rank, as given to ``voom(design = )``.
    lib_size
        Library size of each sample (n,), e.g. times edgeR's normalisation factors; None:
        the column sums of ``counts``.
    span
        Lowess span of the trend (voom's default 0.5).

    Returns
    -------
    logcpm, weights : numpy.ndarray
        Both n x G: ``log2((counts + 0.5) / (lib_size + 1) * 1e6)`` and
        ``1 / trend(fitted log2 count)^4``, the trend being the lowess of sqrt(residual SD)
        on the mean log2 count of each gene (genes with no counts left out of the trend).

    Examples
    --------
    >>> from sccohort.stats.mixed_model import voom_weights
    >>> rng = np.random.default_rng(1)
    >>> counts = rng.poisson(rng.gamma(2.0, 50.0, size=200), size=(6, 200))
    >>> design = np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1]])
    >>> logcpm, weights = voom_weights(counts, design)
    >>> logcpm.shape, weights.shape, bool((weights > 0).all())
    ((6, 200), (6, 200), True)
    """
    y = _matrix(counts, "counts")
    n = y.shape[0]
    xx = _matrix(x, "x", n)
    if (y < 0).any():
        raise InputError("counts must not be negative", key="counts")
    if n <= xx.shape[1] or np.linalg.matrix_rank(xx) < xx.shape[1]:
        raise InputError("x must have full column rank and fewer columns than samples", key="x")
    lib = y.sum(axis=1) if lib_size is None else _matrix(lib_size, "lib_size", n)[:, 0]
    if (lib <= 0).any():
        raise InputError("every library size must be positive", key="lib_size")
    logcpm = np.log2((y + 0.5) / (lib[:, None] + 1.0) * 1e6)
    coef, *_ = np.linalg.lstsq(xx, logcpm, rcond=None)
    fitted = xx @ coef
    sigma = np.sqrt(((logcpm - fitted) ** 2).sum(axis=0) / (n - xx.shape[1]))
    sx = logcpm.mean(axis=0) + np.log2(lib + 1.0).mean() - np.log2(1e6)
    used = y.sum(axis=0) > 0
    trend = _trend(sx[used], np.sqrt(sigma[used]), span)
    fitted_logcount = fitted + np.log2(lib[:, None] + 1.0) - np.log2(1e6)
    with np.errstate(divide="ignore"):  # a trend of 0 (genes without variance): weight inf
        return logcpm, 1.0 / trend(fitted_logcount) ** 4

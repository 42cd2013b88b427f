"""Negative-binomial GLM kernels of edgeR 3.x, vectorised over rows (one GLM per row).

Each function reproduces the edgeR routine named in its docstring (its C++ behaviour,
including the constants that decide convergence and zero handling), for the pipeline in
:mod:`sccohort.stats.nb_ql`. A row is a feature (a neighbourhood, a gene) and its columns
are samples; the design (samples x coefficients) and the offsets are shared by the rows.
Rows may leave samples out of their likelihood (``keep``) and coefficients out of their
model (``coef_keep``), which is how edgeR's per-row reduced designs are fitted in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

__all__ = [
    "add_prior_count",
    "ave_log_cpm",
    "fit_nb_glm",
    "fit_one_group",
    "nb_deviance",
    "nb_loglik",
]

_LOW = 1e-10  # edgeR's low_value: a count below it is a zero
_TINY = 1e-13  # edgeR's supremely_low_value (Levenberg damping floor, low-deviance stop)


def nb_unit_deviance(y: np.ndarray, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit NB deviance as edgeR's ``compute_unit_nb_deviance`` (broadcast shapes).

    1e-8 is added to ``y`` and ``mu``; a Poisson expansion below dispersion 1e-4 (with C++'s
    integer ``2/3 == 0`` kept) and the gamma limit above ``mu * phi`` = 1e6, as edgeR.
    """
    y = y + 1e-8
    mu = mu + 1e-8
    phi = np.asarray(phi, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.log(y / mu)
        inv = 1 / phi
        out = 2 * (y * ratio + (y + inv) * np.log((mu + inv) / (y + inv)))
        poisson = phi < 1e-4
        gamma = mu * phi > 1e6
        if poisson.any() or gamma.any():
            resid = y - mu
            small = 2 * (y * ratio - resid - 0.5 * resid * resid * phi * (1 - phi * y))
            large = 2 * (resid / mu - ratio) * mu / (1 + mu * phi)
            out = np.where(poisson, small, np.where(gamma, large, out))
    return out


def nb_deviance(
    y: np.ndarray, mu: np.ndarray, phi: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """Row sums (g,) of the unit deviances of ``y`` (g x n) at ``mu``; ``phi`` (g,) or scalar."""
    unit = nb_unit_deviance(y, mu, np.reshape(phi, (-1, 1)) if np.ndim(phi) else phi)
    if keep is not None:
        unit = np.where(keep, unit, 0.0)
    return unit.sum(axis=1)


def nb_loglik(
    y: np.ndarray, mu: np.ndarray, phi: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """NB log-likelihood per row (g,) as edgeR's ``compute_apl`` (zero means add nothing)."""
    phi = np.reshape(phi, (-1, 1)) if np.ndim(phi) else np.asarray(phi)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1 / phi
        log_mur = np.log(mu + r)
        nb = (
            y * np.log(mu)
            - y * log_mur
            + r * np.log(r)
            - r * log_mur
            + special.gammaln(y + r)
            - special.gammaln(y + 1)
            - special.gammaln(r)
        )
        poisson = y * np.log(mu) - mu - special.gammaln(y + 1)
    terms = np.where(phi > 0, nb, poisson)
    use = mu > 0 if keep is None else (mu > 0) & keep
    return np.where(use, terms, 0.0).sum(axis=1)


def fit_one_group(
    y: np.ndarray,
    offset: np.ndarray,
    phi: np.ndarray,
    keep: np.ndarray | None = None,
    *,
    maxit: int = 50,
    tol: float = 1e-10,
) -> np.ndarray:
    """Intercept-only NB MLE per row (g,) as edgeR's ``mglmOneGroup``; -inf for all-zero rows.

    Newton steps from the gamma-limit start ``log(mean(y / exp(offset)))``, each row stopping
    once its step is below ``tol``.
    """
    w = np.ones_like(y) if keep is None else keep.astype(float)
    lib = np.exp(np.broadcast_to(offset, y.shape))
    phi = np.broadcast_to(np.reshape(phi, (-1, 1)) if np.ndim(phi) else phi, (len(y), 1))
    nonzero = ((y > _LOW) & (w > 0)).any(axis=1)
    with np.errstate(divide="ignore"):
        beta = np.log(np.where(y > _LOW, y / lib * w, 0.0).sum(axis=1) / w.sum(axis=1))
    beta[~nonzero] = -np.inf
    active = np.flatnonzero(nonzero)
    for _ in range(maxit):
        if not len(active):
            break
        mu = np.exp(beta[active, None]) * lib[active]
        denom = 1 + mu * phi[active]
        step = ((y[active] - mu) / denom * w[active]).sum(axis=1) / (
            (mu / denom * w[active]).sum(axis=1)
        )
        beta[active] += step
        active = active[np.abs(step) >= tol]
    return beta


def add_prior_count(
    y: np.ndarray, lib_size: np.ndarray, prior_count: float
) -> tuple[np.ndarray, np.ndarray]:
    """Counts + a prior scaled by library size, and the new offsets (``addPriorCount``).

    The prior of sample j is ``prior_count * lib_j / mean(lib)``; its offset is
    ``log(lib_j + 2 * prior_j)``. Returns (g x n counts, n offsets).
    """
    prior = prior_count * lib_size / lib_size.mean()
    return y + prior, np.log(lib_size + 2 * prior)


def ave_log_cpm(
    y: np.ndarray, lib_size: np.ndarray, dispersion: float, prior_count: float = 2.0
) -> np.ndarray:
    """Average log2 CPM (g,) as edgeR's ``aveLogCPM``: one-group NB fit with a prior count."""
    counts, offset = add_prior_count(y, lib_size, prior_count)
    beta = fit_one_group(counts, offset, np.full(len(y), dispersion))
    return (beta + np.log(1e6)) / np.log(2)


# ---------------------------------------------------------------------------------------
# Levenberg-damped Fisher scoring (edgeR's mglmLevenberg)


def _xtwx(x: np.ndarray, w: np.ndarray, coef_keep: np.ndarray | None) -> np.ndarray:
    """X' diag(w_g) X per row (g x p x p); a left-out coefficient gets a unit diagonal."""
    xtwx = np.matmul((w[:, :, None] * x[None]).transpose(0, 2, 1), x)
    if coef_keep is not None:
        both = coef_keep[:, :, None] & coef_keep[:, None, :]
        xtwx = np.where(both, xtwx, 0.0)
        diag = np.arange(x.shape[1])
        xtwx[:, diag, diag] = np.where(coef_keep, xtwx[:, diag, diag], 1.0)
    return xtwx


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched ``a x = b`` (g x p x p, g x p); least squares where a matrix is singular."""
    try:
        return np.linalg.solve(a, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(m, v, rcond=None)[0] for m, v in zip(a, b, strict=True)])


@dataclass
class _Fit:
    """A batch of row GLMs being fitted: data (shared design) and the current state."""

    y: np.ndarray  # g x n
    x: np.ndarray  # n x p
    offset: np.ndarray  # g x n
    phi: np.ndarray  # g x 1
    w: np.ndarray  # g x n, 1 where the sample is in the row's likelihood
    coef_keep: np.ndarray | None  # g x p
    beta: np.ndarray = field(init=False)
    mu: np.ndarray = field(init=False)
    dev: np.ndarray = field(init=False)
    lam: np.ndarray = field(init=False)
    max_info: np.ndarray = field(init=False)

    def keep_of(self, rows: np.ndarray) -> np.ndarray | None:
        """Coefficient mask of ``rows`` (or None when every row uses every coefficient)."""
        return None if self.coef_keep is None else self.coef_keep[rows]

    def means(self, beta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Fitted means of ``rows`` at coefficients ``beta``."""
        with np.errstate(over="ignore"):
            return np.exp(beta @ self.x.T + self.offset[rows])

    def deviance(self, mu: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Deviance of ``rows`` at means ``mu``."""
        return nb_deviance(self.y[rows], mu, self.phi[rows, 0], self.w[rows] > 0)


def fit_nb_glm(
    y: np.ndarray,
    design: np.ndarray,
    offset: np.ndarray,
    dispersion: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    coef_keep: np.ndarray | None = None,
    start: np.ndarray | None = None,
    tol: float = 1e-6,
    maxit: int = 250,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NB GLM per row by edgeR's Levenberg-damped Fisher scoring (``mglmLevenberg``).

    Parameters
    ----------
    y
        Counts, rows x samples (g x n).
    design
        Samples x coefficients (n x p), shared by the rows.
    offset
        Log library sizes (n,) or (g x n).
    dispersion
        NB dispersion per row (g,) or a scalar; 0 is Poisson.
    keep, coef_keep
        Optional masks (g x n, g x p): samples in each row's likelihood, coefficients in its
        model (the others stay 0).
    start
        Starting coefficients (g x p); default (and for rows with non-finite values) edgeR's
        "null" start.
    tol, maxit
        edgeR's: a row stops when ``dl . dbeta < tol`` (or its deviance is ~0).

    Returns
    -------
    tuple
        Coefficients (g x p, natural log), fitted means (g x n), deviances (g,).
    """
    g = len(y)
    fit = _Fit(
        y=y,
        x=np.asarray(design, dtype=float),
        offset=np.broadcast_to(offset, y.shape),
        phi=np.broadcast_to(np.asarray(dispersion, dtype=float), (g,))[:, None],
        w=np.ones_like(y) if keep is None else keep.astype(float),
        coef_keep=coef_keep,
    )
    beta = np.zeros((g, fit.x.shape[1])) if start is None else np.array(start, dtype=float)
    bad = ~np.isfinite(beta).all(axis=1) if start is not None else np.ones(g, dtype=bool)
    if bad.any():
        beta[bad] = _null_start(fit, np.flatnonzero(bad))
    fit.beta = beta if coef_keep is None else np.where(coef_keep, beta, 0.0)
    rows = np.arange(g)
    fit.mu = fit.means(fit.beta, rows)
    fit.dev = fit.deviance(fit.mu, rows)
    zero = (y * fit.w).max(axis=1) < _LOW
    fit.mu[zero], fit.dev[zero] = 0.0, 0.0
    fit.lam = np.zeros(g)
    fit.max_info = np.full(g, -1.0)
    active = np.flatnonzero(~zero)
    for it in range(maxit):
        if not len(active):
            break
        active = _levenberg_iteration(fit, active, it == 0, tol)
    return fit.beta, fit.mu, fit.dev


def _null_start(fit: _Fit, rows: np.ndarray) -> np.ndarray:
    """Starting coefficients as edgeR's "null" start: a mean rate, projected on the design.

    The rate is ``sum(y w / N) / sum(w)`` with ``w = N / (1 + phi N)``, N the library sizes;
    its log is regressed on the design (unweighted least squares over the kept samples).
    """
    w, lib = fit.w[rows], np.exp(fit.offset[rows])
    weight = w * lib / (1 + fit.phi[rows] * lib)
    with np.errstate(divide="ignore"):
        beta0 = np.log((fit.y[rows] * weight / lib).sum(axis=1) / weight.sum(axis=1))
    rhs = (w * np.where(np.isfinite(beta0), beta0, 0.0)[:, None]) @ fit.x
    coef_keep = fit.keep_of(rows)
    if coef_keep is not None:
        rhs = np.where(coef_keep, rhs, 0.0)
    return _solve(_xtwx(fit.x, w, coef_keep), rhs)


def _levenberg_iteration(fit: _Fit, a: np.ndarray, first: bool, tol: float) -> np.ndarray:
    """One scoring iteration of rows ``a``; returns those still to iterate."""
    denom = 1 + fit.mu[a] * fit.phi[a]
    coef_keep = fit.keep_of(a)
    xtwx = _xtwx(fit.x, fit.mu[a] / denom * fit.w[a], coef_keep)
    dl = ((fit.y[a] - fit.mu[a]) / denom * fit.w[a]) @ fit.x
    diag = np.diagonal(xtwx, axis1=1, axis2=2)
    if coef_keep is not None:
        dl = np.where(coef_keep, dl, 0.0)
        diag = np.where(coef_keep, diag, -1.0)
    fit.max_info[a] = np.maximum(fit.max_info[a], diag.max(axis=1))
    if first:
        fit.lam[a] = np.maximum(fit.max_info[a] * 1e-6, _TINY)
    dbeta, finished, undamped = _damped_steps(fit, a, xtwx, dl)
    finished |= (dl * dbeta).sum(axis=1) < tol
    fit.lam[a[undamped & ~finished]] /= 10
    return a[~finished]


def _damped_steps(
    fit: _Fit, a: np.ndarray, xtwx: np.ndarray, dl: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Take a step for each row of ``a``, doubling its damping until the deviance drops.

    Returns the steps taken (len(a) x p), rows finished (deviance ~0, or damping beyond
    edgeR's limit: failed) and rows whose first step was accepted.
    """
    dbeta = np.zeros_like(dl)
    undamped = np.ones(len(a), dtype=bool)
    finished = np.zeros(len(a), dtype=bool)
    ymax = (fit.y[a] * fit.w[a]).max(axis=1)
    pending = np.arange(len(a))
    diag = np.arange(fit.x.shape[1])
    while len(pending):
        rows = a[pending]
        damped = xtwx[pending].copy()
        damped[:, diag, diag] += fit.lam[rows, None]
        step = _solve(damped, dl[pending])
        beta = fit.beta[rows] + step
        mu = fit.means(beta, rows)
        dev = fit.deviance(mu, rows)
        low = dev / ymax[pending] < _TINY
        good = (dev <= fit.dev[rows]) | low
        took = rows[good]
        fit.beta[took], fit.mu[took], fit.dev[took] = beta[good], mu[good], dev[good]
        dbeta[pending[good]] = step[good]
        finished[pending[good & low]] = True
        bad = pending[~good]
        undamped[bad] = False
        fit.lam[a[bad]] *= 2
        failed = fit.lam[a[bad]] / fit.max_info[a[bad]] > 1 / _TINY
        finished[bad[failed]] = True
        pending = bad[~failed]
    return dbeta, finished, undamped

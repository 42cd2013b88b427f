"""Common and trended NB dispersion as edgeR 3.x's ``estimateDisp(design, tagwise = FALSE)``.

The Cox-Reid adjusted profile likelihood of every row is computed on edgeR's grid of 21
dispersions (``0.1 * 2^(-10..10)``), each row with the samples whose fitted value and count
are both ~0 left out (and the design columns this makes inestimable, chosen as R's
``qr()`` does). The common dispersion maximises the summed likelihood; the trend smooths
the likelihoods over the rows' average log-CPM with locfit's local-constant fit (its
adaptive evaluation tree, linear interpolation between vertices) and maximises each
smoothed row. Maxima are those of edgeR's cubic spline (Forsythe-Malcolm-Moler) through
the grid. Used by :mod:`sccohort.stats.nb_ql`.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from sccohort.stats.nb_glm import ave_log_cpm, fit_nb_glm, nb_loglik

__all__ = ["maximize_interpolant", "residual_df", "trended_dispersion"]

GRID = np.linspace(-10, 10, 21)  # edgeR's spline.pts; dispersion 0.1 * 2^GRID


def kept_columns(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns R's ``qr(x)`` (LINPACK, limited pivoting) keeps, in order: boolean (p,).

    A column is dropped when its residual on the columns kept before it is below ``tol``
    times its norm; at most ``nrow(x)`` are kept.
    """
    n, p = x.shape
    keep = np.zeros(p, dtype=bool)
    basis = np.zeros((n, 0))
    for j in range(p):
        if basis.shape[1] >= n:
            break
        col = x[:, j]
        norm = np.linalg.norm(col) or 1.0
        resid = col - basis @ (basis.T @ col)
        resid -= basis @ (basis.T @ resid)
        size = np.linalg.norm(resid)
        if size >= tol * norm and size > 0:
            keep[j] = True
            basis = np.column_stack([basis, resid / size])
    return keep


def _pattern_columns(zero: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Kept design columns (g x p) of each row's non-zero samples (rows grouped by pattern)."""
    patterns, inverse = np.unique(zero, axis=0, return_inverse=True)
    cols = np.array([kept_columns(design[~pat]) for pat in patterns]).reshape(-1, design.shape[1])
    return cols[np.ravel(inverse)]


def residual_df(zero: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Residual df (g,) as edgeR's ``.residDF``: non-zero samples minus their design rank."""
    cols = _pattern_columns(zero, design)
    return np.maximum((~zero).sum(axis=1) - cols.sum(axis=1), 0).astype(float)


def _cox_reid(x: np.ndarray, w: np.ndarray, coef_keep: np.ndarray) -> np.ndarray:
    """Half the log-determinant of X'WX per row, each pivot floored at 1e-10 as edgeR."""
    xtwx = np.matmul((w[:, :, None] * x[None]).transpose(0, 2, 1), x)
    both = coef_keep[:, :, None] & coef_keep[:, None, :]
    xtwx = np.where(both, xtwx, 0.0)
    diag = np.arange(x.shape[1])
    xtwx[:, diag, diag] = np.where(coef_keep, xtwx[:, diag, diag], 1.0)
    try:
        pivots = np.diagonal(np.linalg.cholesky(xtwx), axis1=1, axis2=2) ** 2
    except np.linalg.LinAlgError:  # singular: LDL' (LAPACK's dsytrf, as edgeR) row by row
        pivots = np.stack([np.diag(linalg.ldl(m)[1]) for m in xtwx])
    pivots = np.where(np.isfinite(pivots) & (pivots >= 1e-10), pivots, 1e-10)
    return 0.5 * np.log(pivots).sum(axis=1)


def adjusted_profile_grid(
    y: np.ndarray, design: np.ndarray, offset: np.ndarray, dispersions: np.ndarray
) -> np.ndarray:
    """Cox-Reid adjusted profile log-likelihood (g x grid) as ``estimateDisp``'s ``l0``.

    Samples with count and fitted value (at dispersion 0.05) below 1e-4 are left out of a
    row; rows left with no residual df keep 0, as edgeR.
    """
    _, mu, _ = fit_nb_glm(y, design, offset, 0.05)
    zero = (y < 1e-4) & (mu < 1e-4)
    keep = ~zero
    coef_keep = _pattern_columns(zero, design)
    usable = keep.sum(axis=1) > coef_keep.sum(axis=1)
    l0 = np.zeros((len(y), len(dispersions)))
    rows = np.flatnonzero(usable)
    yk, kk, ck = y[rows], keep[rows], coef_keep[rows]
    beta = None
    for i, disp in enumerate(dispersions):
        beta, mu, _ = fit_nb_glm(yk, design, offset, disp, keep=kk, coef_keep=ck, start=beta)
        weight = np.where(kk, mu / (1 + disp * mu), 0.0)
        l0[rows, i] = nb_loglik(yk, mu, disp, kk) - _cox_reid(design, weight, ck)
    return l0


# ---------------------------------------------------------------------------------------
# Maximum of a spline through the grid (edgeR's maximizeInterpolant)


def _fmm_spline(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic spline coefficients b, c, d (g x m) through each row of ``y`` (g x m) at ``x``.

    Forsythe, Malcolm and Moler's end conditions (third derivatives of the cubics through
    the four end points), as R's ``spline(method = "fmm")`` and edgeR's interpolator.
    """
    m = len(x)
    h = np.diff(x)  # m - 1
    slope = np.diff(y, axis=1) / h
    diag = np.empty(m)
    rhs = np.zeros_like(y)
    diag[1:-1] = 2 * (h[:-1] + h[1:])
    rhs[:, 1:-1] = slope[:, 1:] - slope[:, :-1]
    diag[0], diag[-1] = -h[0], -h[-1]
    if m > 3:
        rhs[:, 0] = rhs[:, 2] / (x[3] - x[1]) - rhs[:, 1] / (x[2] - x[0])
        rhs[:, 0] *= h[0] ** 2 / (x[3] - x[0])
        rhs[:, -1] = rhs[:, -2] / (x[-1] - x[-3]) - rhs[:, -3] / (x[-2] - x[-4])
        rhs[:, -1] *= -(h[-1] ** 2) / (x[-1] - x[-4])
    for i in range(1, m):  # forward elimination of the tridiagonal system
        t = h[i - 1] / diag[i - 1]
        diag[i] -= t * h[i - 1]
        rhs[:, i] -= t * rhs[:, i - 1]
    sigma = np.empty_like(y)
    sigma[:, -1] = rhs[:, -1] / diag[-1]
    for i in range(m - 2, -1, -1):
        sigma[:, i] = (rhs[:, i] - h[i] * sigma[:, i + 1]) / diag[i]
    b = np.empty_like(y)
    b[:, :-1] = slope - h * (sigma[:, 1:] + 2 * sigma[:, :-1])
    b[:, -1] = slope[:, -1] + h[-1] * (sigma[:, -2] + 2 * sigma[:, -1])
    d = np.empty_like(y)
    d[:, :-1] = (sigma[:, 1:] - sigma[:, :-1]) / h
    d[:, -1] = d[:, -2]
    return b, 3 * sigma, d


def maximize_interpolant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where the spline through each row of ``y`` (g x m) at ``x`` (m,) is largest (g,).

    As edgeR: the best grid point, improved by the stationary point of the spline segment on
    either side of it when that lies inside the segment and is higher.
    """
    b, c, d = _fmm_spline(x, y)
    rows = np.arange(len(y))
    best = np.argmax(y, axis=1)
    x_max = x[best].astype(float)
    y_max = y[rows, best].astype(float)
    for seg in (best - 1, best):  # the segment left, then right, of the best point
        ok = (seg >= 0) & (seg < len(x) - 1)
        s = np.clip(seg, 0, len(x) - 2)
        qa, qb, qc = 3 * d[rows, s], 2 * c[rows, s], b[rows, s]
        with np.errstate(divide="ignore", invalid="ignore"):
            disc = qb * qb - 4 * qa * qc
            t = -qb / (2 * qa) - np.sqrt(disc) / (2 * qa)
            value = ((d[rows, s] * t + c[rows, s]) * t + b[rows, s]) * t + y[rows, s]
            better = ok & (disc >= 0) & (t > 0) & (t < x[s + 1] - x[s]) & (value > y_max)
        x_max = np.where(better, x[s] + t, x_max)
        y_max = np.where(better, value, y_max)
    return x_max


# ---------------------------------------------------------------------------------------
# locfit's local-constant smoother on its adaptive tree (edgeR's locfitByCol, degree 0)


def locfit_constant(x: np.ndarray, y: np.ndarray, span: float, cut: float = 0.8) -> np.ndarray:
    """Smooth each column of ``y`` (g x k) over ``x`` (g,) as ``locfit(deg = 0, alpha = span)``.

    Tricube-weighted means at the vertices of locfit's tree (a cell of the data range is
    halved while wider than ``cut`` times the smaller nearest-neighbour bandwidth of its two
    ends; bandwidth = distance to the ``floor(g * span)``-th nearest point), interpolated
    linearly between vertices. Where locfit would run out of vertex space (it then stops
    with an error) the tree stops growing instead. Returns the fitted values (g x k).
    """
    g = len(x)
    k = max(int(np.floor(g * span + 1e-12)), 1)
    max_vertices = int((5 * (1 / span if span <= 1 else 1) / cut + 1) * 2)

    def bandwidth(v: float) -> float:
        return float(np.partition(np.abs(x - v), k - 1)[k - 1])

    width = {float(x.min()): bandwidth(x.min()), float(x.max()): bandwidth(x.max())}
    cells = [(float(x.min()), float(x.max()))]
    while cells and len(width) < max_vertices:
        lo, hi = cells.pop()
        h = [v for v in (width[lo], width[hi]) if v > 0]
        if not h or hi - lo <= cut * min(h):
            continue
        mid = (lo + hi) / 2
        width[mid] = bandwidth(mid)
        cells += [(lo, mid), (mid, hi)]
    vertices = np.array(sorted(width))
    h = np.array([width[v] for v in vertices])
    dist = np.abs(x[None, :] - vertices[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(h[:, None] > 0, dist / h[:, None], np.where(dist == 0, 0.0, np.inf))
    kernel = np.where(u < 1, (1 - u**3) ** 3, 0.0)
    fit = (kernel @ y) / kernel.sum(axis=1, keepdims=True)
    return np.stack([np.interp(x, vertices, col) for col in fit.T], axis=1)


def trended_dispersion(
    y: np.ndarray, design: np.ndarray, lib_size: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Common and trended dispersion as ``estimateDisp(y, design, tagwise = FALSE)``.

    Parameters
    ----------
    y
        Counts, rows x samples (g x n).
    design
        Samples x coefficients (n x p).
    lib_size
        Effective library sizes (n,): library size x normalisation factor.

    Returns
    -------
    tuple
        Common dispersion, trended dispersion (g,), average log2 CPM (g,) at the common
        dispersion (edgeR's ``AveLogCPM``).
    """
    offset = np.log(lib_size)
    sel = y.sum(axis=1) >= 5
    dispersions = 0.1 * 2.0**GRID
    l0 = adjusted_profile_grid(y[sel], design, offset, dispersions)
    common = float(0.1 * 2 ** maximize_interpolant(GRID, l0.sum(axis=0, keepdims=True))[0])
    logcpm = ave_log_cpm(y, lib_size, common)
    n_sel = int(sel.sum())
    span = 1.0 if n_sel <= 50 else 0.25 + 0.75 * (50 / n_sel) ** 0.5
    if span * n_sel < 2 or n_sel <= 1:
        smooth = l0
    else:
        smooth = locfit_constant(logcpm[sel], l0, span)
    trend = 0.1 * 2 ** maximize_interpolant(GRID, smooth)
    trended = np.full(len(y), trend[np.argmin(logcpm[sel])] if n_sel else common)
    trended[sel] = trend
    return common, trended, logcpm

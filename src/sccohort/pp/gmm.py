"""Vectorised two-component 1-D Gaussian mixtures, one per row (dsb's background mean).

`gmm2_background_mean` fits mclust's equal- and unequal-variance two-component models to
each cell's values by EM (numba kernels over blocks of cells) and returns the mean of the
lower component of the model with the better BIC, as ``dsb`` does with ``mclust``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numba
import numpy as np

from sccohort.pp.normalize import BLOCK_CELLS

# --------------------------------------------------------------------------------------------
# vectorised two-component 1-D Gaussian mixtures (one per row)

_LOG_2PI = float(np.log(2 * np.pi))


def gmm2_background_mean(
    values: np.ndarray,
    *,
    models: Sequence[Literal["E", "V"]] = ("E", "V"),
    max_iter: int = 500,
    tol: float = 1e-5,
) -> np.ndarray:
    """Mean of the lower component of a 2-component Gaussian mixture fitted to each row.

    One independent 1-D mixture per row (cell) over that row's values (proteins), fitted by
    EM for all rows at once in blocks of rows. As ``mclust::Mclust(x, G = 2)``: models ``"E"``
    (equal variances) and ``"V"`` (unequal), each initialised by splitting the row at its median
    (mclust's ``qclass``), the model with the larger BIC ``2 loglik - n_par log(n)`` is kept.
    EM stops per row when the relative log-likelihood change is below ``tol``. Variances are
    floored at ``1e-6`` times the row's variance (mclust would fail on a collapsed component).

    Parameters
    ----------
    values
        ``n_rows x n_values`` finite floats.
    models
        Mixture models to fit and compare by BIC.
    max_iter
        EM iterations at most.
    tol
        Relative log-likelihood tolerance.

    Returns
    -------
    ``n_rows`` lower-component means.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(values.shape[0])
    for start in range(0, values.shape[0], BLOCK_CELLS):
        block = values[start : start + BLOCK_CELLS]
        best_bic = np.full(block.shape[0], -np.inf)
        best_mean = np.full(block.shape[0], np.nan)
        prepared = _EMRows.of(block)
        for model in models:
            low, bic = _em_block(prepared, equal_var=model == "E", max_iter=max_iter, tol=tol)
            better = bic > best_bic
            best_bic[better] = bic[better]
            best_mean[better] = low[better]
        out[start : start + BLOCK_CELLS] = best_mean
    constant = values.min(axis=1) == values.max(axis=1)  # no mixture to fit: the value itself
    out[constant] = values[constant, 0]
    return out


class _EMRows(NamedTuple):
    """Rows to fit, with what the EM of every model reuses.

    Squares, row sums, the variance floor and the moments (``sum r, sum r x, sum r x^2``) of
    the initial split at the row median.
    """

    x: np.ndarray
    xx: np.ndarray
    sum_x: np.ndarray
    sum_xx: np.ndarray
    floor: np.ndarray
    init: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def of(cls, x: np.ndarray) -> _EMRows:
        x = np.ascontiguousarray(x)
        xx = x * x
        floor = 1e-6 * x.var(axis=1) + 1e-12
        r2 = (x > np.median(x, axis=1, keepdims=True)).astype(np.float64)  # P(component 2)
        ties = r2.sum(axis=1) == 0  # rows with at most one value above the median
        if ties.any():
            r2[ties] = (x[ties] >= np.max(x[ties], axis=1, keepdims=True)).astype(np.float64)
        init = (r2.sum(axis=1), np.einsum("ij,ij->i", r2, x), np.einsum("ij,ij->i", r2, xx))
        return cls(x, xx, x.sum(axis=1), xx.sum(axis=1), floor, init)


def _em_block(
    rows_in: _EMRows, *, equal_var: bool, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """EM of a 2-component 1-D mixture per row; (lower mean, BIC) per row.

    Each iteration runs over the rows still iterating: `_em_differences` and `_em_exponents`
    (numba) write the float32 exponents ``-|l2 - l1|``, numpy takes their exp and
    ``log(1 + e)`` (its float32 loops, as before the kernels existed: where the EM stops
    depends on these values), `_em_moments` (numba) sums the log-likelihood terms and the
    responsibilities' moments, and `_em_m_step` (numba) takes the M step and drops the rows
    that converged.
    """
    x, xx, sum_x, sum_xx, floor, init = rows_in
    n_rows, n = x.shape
    params = _m_step(n, *init, sum_x, sum_xx, equal_var, floor)
    coef = np.empty(n_rows)
    sums = np.empty((n_rows, 4))
    diff = np.empty((n_rows, n))
    e = np.empty((n_rows, n), np.float32)
    above = np.empty((n_rows, n), np.float32)
    one_plus = np.empty((n_rows, n), np.float32)
    log_one_plus = np.empty((n_rows, n), np.float32)
    loglik = np.full(n_rows, -np.inf)
    rows = np.arange(n_rows)  # rows still iterating, compacted in place by _em_m_step
    active = n_rows
    for _ in range(max_iter):
        ea, aa, opa, la = e[:active], above[:active], one_plus[:active], log_one_plus[:active]
        _em_differences(x, xx, sum_x, sum_xx, rows[:active], *params, coef, diff)
        _em_exponents(diff[:active], coef, ea, aa)
        np.exp(ea, out=ea)
        np.add(ea, np.float32(1.0), out=opa)
        np.log(opa, out=la)
        _em_moments(x, xx, rows[:active], ea, aa, opa, la, sums)
        active = _em_m_step(
            rows[:active], coef, sums, sum_x, sum_xx, n, floor, equal_var, tol, loglik, *params
        )
        if active == 0:
            break
    rows = np.arange(n_rows)
    _em_differences(x, xx, sum_x, sum_xx, rows, *params, coef, diff)
    _em_exponents(diff, coef, e, above)
    np.exp(e, out=e)
    np.add(e, np.float32(1.0), out=one_plus)
    np.log(one_plus, out=log_one_plus)
    _em_moments(x, xx, rows, e, above, one_plus, log_one_plus, sums)
    loglik = coef + sums[:, 3]
    n_par = 4 if equal_var else 5  # 2 means, 1 or 2 variances, 1 mixing proportion
    bic = 2 * loglik - n_par * np.log(n)
    return np.minimum(params[1], params[2]), bic


def _m_step(
    n: int,
    n2: np.ndarray,
    s2: np.ndarray,
    ss2: np.ndarray,
    sum_x: np.ndarray,
    sum_xx: np.ndarray,
    equal_var: bool,
    floor: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Mixture parameters per row from component 2's moments (``sum r2, sum r2 x, sum r2 x^2``).

    Returns ``(w2, m1, m2, v1, v2)``, each of length ``n_rows``; `_em_m_step` repeats these
    formulas row by row.
    """
    n1 = n - n2
    m1 = (sum_x - s2) / np.maximum(n1, 1e-12)
    m2 = s2 / np.maximum(n2, 1e-12)
    sq1 = np.maximum(sum_xx - ss2 - n1 * m1**2, 0.0)
    sq2 = np.maximum(ss2 - n2 * m2**2, 0.0)
    if equal_var:
        v1 = v2 = (sq1 + sq2) / n
    else:
        v1 = sq1 / np.maximum(n1, 1e-12)
        v2 = sq2 / np.maximum(n2, 1e-12)
    v1 = np.maximum(v1, floor)
    v2 = np.maximum(v2, floor)
    w2 = np.clip(n2 / n, 1e-12, 1 - 1e-12)
    return w2, m1, m2, v1.copy(), v2.copy()


# The numba kernels compute ``l2 - l1`` with IEEE semantics (no fastmath), so the float32
# exponents are those numpy computed before; only sums are reassociated (vectorised), which
# moves them by ~1e-16 relative.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _em_differences(x, xx, sum_x, sum_xx, rows, w2, m1, m2, v1, v2, coef, diff):  # noqa: ANN001, ANN202
    """E step, part 1, for ``rows``: ``diff[a] = l2 - l1`` and ``coef[a, 3] = sum(l1)``.

    With ``l_k = log(w_k) - log(2 pi v_k) / 2 - (x - m_k)^2 / (2 v_k)``, ``l2 - l1`` is the
    quadratic ``c2 x^2 + c1 x + c0``, and ``sum(l1)`` follows from the row sums.
    """
    n = x.shape[1]
    for a in range(rows.size):
        i = rows[a]
        a1 = np.log1p(-w2[i]) - 0.5 * (_LOG_2PI + np.log(v1[i]))
        a2 = np.log(w2[i]) - 0.5 * (_LOG_2PI + np.log(v2[i]))
        b1 = 0.5 / v1[i]
        b2 = 0.5 / v2[i]
        c2 = b1 - b2
        c1 = 2 * (b2 * m2[i] - b1 * m1[i])
        c0 = a2 - a1 - b2 * m2[i] ** 2 + b1 * m1[i] ** 2
        for j in range(n):
            d = c2 * xx[i, j] + c1 * x[i, j]
            diff[a, j] = d + c0
        coef[a] = n * a1 - b1 * (sum_xx[i] - 2 * m1[i] * sum_x[i] + n * m1[i] ** 2)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _em_exponents(diff, coef, e, above):  # noqa: ANN001, ANN202
    """E step, part 2: ``log(e^l1 + e^l2) = l1 + max(d, 0) + log(1 + e)``, ``e = exp(-|d|)``.

    For each row ``a`` of ``diff`` (``d = l2 - l1``): adds ``sum(max(d, 0))`` to
    ``coef[a]``, writes ``e[a] = float32(-min(|d|, 80))`` (the exponent; -80 keeps float32
    subnormals away) and ``above[a] = float32(d > 0)``.
    """
    for a in range(diff.shape[0]):
        positive = 0.0
        for j in range(diff.shape[1]):
            d = diff[a, j]
            positive += max(d, 0.0)
            above[a, j] = np.float32(d > 0)
            e[a, j] = -min(np.float32(abs(d)), np.float32(80.0))
        coef[a] += positive


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _em_moments(x, xx, rows, e, above, one_plus, log_one_plus, sums):  # noqa: ANN001, ANN202
    """E step, part 2: ``sums[a] = (sum r, sum r x, sum r x^2, sum log(1 + e))`` for ``rows``.

    ``r = e^max(d, 0) / (1 + e)``, component 2's responsibility, in float32 (``e`` holds the
    exp of the exponents): the numerator is 1 above 0, else ``e``.
    """
    n = x.shape[1]
    for a in range(rows.size):
        i = rows[a]
        n2 = 0.0
        s2 = 0.0
        ss2 = 0.0
        log_sum = 0.0
        for j in range(n):
            r = np.float64(max(e[a, j], above[a, j]) / one_plus[a, j])
            n2 += r
            s2 += r * x[i, j]
            ss2 += r * xx[i, j]
            log_sum += log_one_plus[a, j]
        sums[a, 0] = n2
        sums[a, 1] = s2
        sums[a, 2] = ss2
        sums[a, 3] = log_sum


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _em_m_step(
    rows, coef, sums, sum_x, sum_xx, n, floor, equal_var, tol, loglik, w2, m1, m2, v1, v2
):  # noqa: ANN001, ANN202, E501
    """Log-likelihood, convergence check and M step (`_m_step`'s formulas) for ``rows``.

    Updates ``loglik`` and the parameters in place; a row whose relative log-likelihood
    change is at most ``tol`` gets this last M step and leaves ``rows``, which is compacted
    in place. Returns how many rows are still iterating.
    """
    keep = 0
    for a in range(rows.size):
        i = rows[a]
        n2, s2, ss2 = sums[a, 0], sums[a, 1], sums[a, 2]
        ll = coef[a] + sums[a, 3]
        done = abs(ll - loglik[i]) <= tol * abs(ll)
        loglik[i] = ll
        n1 = n - n2
        mean1 = (sum_x[i] - s2) / max(n1, 1e-12)
        mean2 = s2 / max(n2, 1e-12)
        sq1 = max(sum_xx[i] - ss2 - n1 * mean1**2, 0.0)
        sq2 = max(ss2 - n2 * mean2**2, 0.0)
        if equal_var:
            var1 = (sq1 + sq2) / n
            var2 = var1
        else:
            var1 = sq1 / max(n1, 1e-12)
            var2 = sq2 / max(n2, 1e-12)
        w2[i] = min(max(n2 / n, 1e-12), 1 - 1e-12)
        m1[i] = mean1
        m2[i] = mean2
        v1[i] = max(var1, floor[i])
        v2[i] = max(var2, floor[i])
        if not done:
            rows[keep] = i
            keep += 1
    return keep

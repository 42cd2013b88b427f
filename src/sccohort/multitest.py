"""Multiple-testing adjustment: the one place for every correction the library applies.

A foundation module (beside ``sccohort.cohort``) because cell-level markers (``tl``) adjust too;
:mod:`sccohort.stats` exports its functions.

One rule for missing values everywhere: a NaN p-value (a test that was not run) stays NaN
and does not count among the tests. Written with numpy rather than statsmodels'
``multipletests``, whose 0.15 release calls ``gc.collect()`` on every call (0.35 s each
inside a loaded process) and which reads NaN as a failure.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sccohort.errors import InputError

__all__ = ["adjust_pvalues", "spatial_fdr"]

Method = Literal["bh", "bonferroni", "holm"]


def adjust_pvalues(pvalues: np.ndarray, method: Method = "bh") -> np.ndarray:
    """Adjusted p-values of ``pvalues`` ((n,)); NaN stays NaN and is not counted.

    Parameters
    ----------
    pvalues
        (n,) p-values in [0, 1] or NaN.
    method
        ``"bh"`` (Benjamini-Hochberg false discovery rate, R's ``p.adjust(method="BH")``),
        ``"bonferroni"`` or ``"holm"`` (family-wise error rate).

    Returns
    -------
    numpy.ndarray
        (n,) float adjusted p-values, capped at 1.

    Examples
    --------
    >>> from sccohort.stats import adjust_pvalues
    >>> adjust_pvalues(np.array([0.01, 0.04, np.nan, 0.03])).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    >>> adjust_pvalues(np.array([0.01, 0.04, 0.03]), method="holm").round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    if method == "bonferroni":
        out[ok] = np.minimum(pv * m, 1.0)
        return out
    if method not in ("bh", "holm"):
        raise InputError(
            f"unknown multiple-testing method {method!r}",
            key="method",
            hint='use "bh", "bonferroni" or "holm"',
        )
    order = np.argsort(pv, kind="stable")
    i = np.arange(1, m + 1, dtype=float)
    if method == "bh":
        # the i-th smallest times m / i, then the running minimum from the largest down
        scaled = pv[order] * (m / i)
        adj = np.minimum.accumulate(scaled[::-1])[::-1]
    else:  # Holm: the i-th smallest times (m - i + 1), then the running maximum
        adj = np.maximum.accumulate(pv[order] * (m - i + 1))
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def spatial_fdr(pvalues: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Milo's spatial FDR: Benjamini-Hochberg with weights (Cydar's weighted BH).

    Parameters
    ----------
    pvalues
        (n,) p-values; NaN stays NaN.
    weights
        (n,) non-negative weights, e.g. 1 / k-th nearest-neighbour distance of the index cell.

    Returns
    -------
    numpy.ndarray
        (n,) adjusted p-values: for the i-th smallest p, ``min_{j >= i} sum(w) p_(j) /
        sum_{l <= j} w_(l)``, capped at 1.

    Examples
    --------
    >>> from sccohort.stats import spatial_fdr
    >>> spatial_fdr(np.array([0.01, 0.04, 0.03]), np.ones(3)).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(pvalues, dtype=float)
    w = np.asarray(weights, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    pv, wv = p[ok], w[ok]
    order = np.argsort(pv, kind="stable")
    cum = np.cumsum(wv[order])
    with np.errstate(divide="ignore", invalid="ignore"):
        adj = np.where(cum > 0, wv.sum() * pv[order] / cum, 1.0)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    res = np.empty_like(pv)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out

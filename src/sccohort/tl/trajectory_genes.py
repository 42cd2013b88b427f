"""Genes that change along a pseudotime: natural cubic spline regression, F test per gene.

For each gene, log-normalised expression is regressed on a natural cubic spline basis of
pseudotime (``df`` functions besides the intercept; ``df + 1`` knots at quantiles of the
pseudotime, the outer ones at its minimum and maximum; Hastie, Tibshirani & Friedman, *The
Elements of Statistical Learning*, eq. 5.4-5.5) and compared with the intercept-only model
by an F test on ``(df, n - df - 1)`` degrees of freedom; Benjamini-Hochberg over the tested
genes. The design is shared by all genes: orthonormalised once (QR, ``Q``), every gene's fit
is a projection on it, so one product ``X.T @ Q`` fits all genes at once and, with the
columns' sums of squares, gives both residual sums of squares. A sparse matrix stays sparse
(no block of genes is densified): memory is the matrix of the tested cells, a transient
float64 copy of its values, and a few numbers per gene.

The fitted curve of each gene is read on a grid between the 5 % and 95 % quantiles of the
pseudotime (its ends rest on few cells): the effect is the change of the fitted log
expression between the two quantiles, in log2 units of ``1 + expression``; the peak is the
grid point of the curve's maximum; the direction is ``transient`` when the curve has an
interior maximum (or minimum) above (below) both ends by more than half its range, and
otherwise ``rising`` or ``falling`` by the sign of the correlation of expression with
pseudotime. The F test assumes independent cells: with cells of several donors it does not
account for donor effects, and its p-values rank genes rather than give donor-level evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from sccohort.multitest import adjust_pvalues

from ..errors import InputError

__all__ = ["trajectory_genes"]

COLUMNS = [
    "gene",
    "effect",
    "statistic",
    "pvalue",
    "padj",
    "direction",
    "peak_pseudotime",
    "mean_expression",
    "n_cells",
]
_GRID = 101
_ENDS = (0.05, 0.95)
_TRANSIENT = 0.5  # an interior extreme beyond both ends by this share of the curve's range


def _natural_spline(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis (len(x), len(knots) - 1) without the constant (ESL 5.4)."""
    k_last = knots[-1]

    def d(k: float) -> np.ndarray:
        return (np.maximum(x - k, 0.0) ** 3 - np.maximum(x - k_last, 0.0) ** 3) / (k_last - k)

    cols = [x]
    if len(knots) > 2:
        d_last = d(knots[-2])
        cols += [d(k) - d_last for k in knots[:-2]]
    return np.column_stack(cols)


def _design(t: np.ndarray, df: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Orthonormal design Q (n, p), the grid's coordinates in it (GRID + 2, p), t's grid, df."""
    lo, hi = np.quantile(t, _ENDS)
    if not hi > lo:
        raise InputError(
            "the pseudotime takes (nearly) one value, so no gene can change along it",
            key="pseudotime_key",
            hint="compute a pseudotime first (sccohort.tl.pseudotime) and pass its obs column",
        )
    knots = np.unique(np.quantile(t, np.linspace(0.0, 1.0, df + 1)))
    scale = knots[-1] - knots[0]
    knots = (knots - knots[0]) / scale
    grid = np.r_[np.linspace(lo, hi, _GRID), lo, hi]

    def basis(v: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(v)), _natural_spline((v - t.min()) / scale, knots)])

    q, r = np.linalg.qr(basis(t))
    grid_q = np.linalg.solve(r.T, basis(grid).T).T
    return q, grid_q, grid[:_GRID], len(knots) - 1


def _checked_input(
    adata: AnnData, pseudotime_key: str, layer: str | None, genes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudotime, the cells with one, and the gene columns to test."""
    if pseudotime_key not in adata.obs.columns:
        raise InputError(
            f"obs has no pseudotime column {pseudotime_key!r}",
            column=pseudotime_key,
            hint="run sccohort.tl.pseudotime first, or pass pseudotime_key=<obs column>",
        )
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"there is no layer {layer!r}",
            key=layer,
            hint=f"use layer=None for .X or one of: {', '.join(adata.layers.keys())}",
        )
    t = pd.to_numeric(adata.obs[pseudotime_key], errors="coerce").to_numpy(dtype=float)
    cells = np.flatnonzero(np.isfinite(t))
    if genes is None:
        cols = np.arange(adata.n_vars)
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        unknown = [g for g in genes if g not in adata.var_names]
        if unknown or not genes:
            raise InputError(
                f"gene(s) {', '.join(unknown)} not in var_names" if unknown else "no gene given",
                key="genes",
                hint="pass var_names of adata, or genes=None for all",
            )
        cols = adata.var_names.get_indexer(genes)
    return t[cells], cells, cols


def _fit(x: np.ndarray | sp.csr_matrix, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per gene (column of x), as rows: expressing cells, mean, RSS0, RSS1, sign, coefficients.

    A CSR matrix is read once per product, its values cast to float64 only transiently.
    """
    coef = np.asarray(x.T @ q, dtype=np.float64).T  # (p, genes)
    if sp.issparse(x):
        values = x.data.astype(np.float64)
        n_vars = x.shape[1]
        n_expr = np.bincount(x.indices[values != 0], minlength=n_vars)
        squares = np.bincount(x.indices, weights=values**2, minlength=n_vars)
    else:
        n_expr = (x != 0).sum(axis=0)
        squares = (np.asarray(x, dtype=np.float64) ** 2).sum(axis=0)
    rss0 = np.maximum(squares - coef[0] ** 2, 0.0)  # Q's first column is the constant
    rss1 = np.maximum(rss0 - (coef[1:] ** 2).sum(axis=0), 0.0)
    sign = np.sign(np.asarray(x.T @ (t - t.mean()), dtype=np.float64).ravel())
    mean = coef[0] * q[0, 0]  # the projection on the constant, times its value
    return np.vstack([n_expr, mean, rss0, rss1, sign, coef])


def _directions(curves: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``rising`` / ``falling`` / ``transient`` of fitted curves (GRID, genes)."""
    top, bottom = curves.max(axis=0), curves.min(axis=0)
    span = np.maximum(top - bottom, 1e-12)
    ends_hi = np.maximum(curves[0], curves[-1])
    ends_lo = np.minimum(curves[0], curves[-1])
    transient = (top - ends_hi > _TRANSIENT * span) | (ends_lo - bottom > _TRANSIENT * span)
    return np.where(transient, "transient", np.where(sign < 0, "falling", "rising"))


def _log_base(adata: AnnData) -> float:
    base = (adata.uns.get("log1p") or {}).get("base")
    return float(np.log(base)) if base is not None else 1.0


def trajectory_genes(
    adata: AnnData,
    *,
    pseudotime_key: str = "pseudotime",
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    df: int = 4,
    min_cells: int = 20,
) -> pd.DataFrame:
    """Genes whose expression changes along a pseudotime: spline regression and F test.

    Each gene's log-normalised expression is regressed on a natural cubic spline of the
    pseudotime with ``df`` degrees of freedom and tested against a constant (F test,
    Benjamini-Hochberg over the tested genes); details in the module's docstring. Cells
    without a finite pseudotime are left out.

    Parameters
    ----------
    adata
        Cells with log-normalised expression (``sc.pp.normalize_total`` + ``log1p``) and a
        pseudotime in ``obs``.
    pseudotime_key
        ``obs`` column of the pseudotime (e.g. from `sccohort.tl.pseudotime`).
    layer
        Layer of log-normalised expression (``None``: ``.X``).
    genes
        Genes to test (``None``: all).
    df
        Spline degrees of freedom besides the intercept (``1``: a straight line).
    min_cells
        Genes expressed (nonzero) in fewer cells are left out.

    Returns
    -------
    pandas.DataFrame
        One row per tested gene, by p-value: ``gene, effect`` (log2 change of the fitted
        ``1 + expression`` from the 5 % to the 95 % pseudotime quantile), ``statistic`` (F),
        ``pvalue, padj, direction`` (``rising``, ``falling``, ``transient``),
        ``peak_pseudotime`` (where the fitted curve is highest), ``mean_expression``,
        ``n_cells`` (cells expressing the gene).

    Examples
    --------
    >>> from anndata import AnnData
    >>> from sccohort.tl import trajectory_genes
    >>> rng = np.random.default_rng(0)
    >>> t = rng.uniform(0, 1, 300)
    >>> x = np.c_[rng.poisson(1 + 4 * t), rng.poisson(2, 300), rng.poisson(5 * np.sin(np.pi * t))]
    >>> obs = pd.DataFrame({"pseudotime": t}, index=[f"cell{i}" for i in range(300)])
    >>> adata = AnnData(np.log1p(x.astype(float)), obs=obs)
    >>> adata.var_names = ["up", "flat", "bump"]
    >>> res = trajectory_genes(adata)
    >>> res[res["padj"] < 0.05][["gene", "direction", "peak_pseudotime"]].round(2)
       gene  direction  peak_pseudotime
    0  bump  transient             0.39
    1    up     rising             0.88
    """
    if int(df) < 1:
        raise InputError(f"df={df} gives no spline", key="df", hint="pass df >= 1 (default 4)")
    t, cells, cols = _checked_input(adata, pseudotime_key, layer, genes)
    if len(t) < int(df) + 3:
        raise InputError(
            f"{len(t)} cells have a finite pseudotime; a spline with df={df} needs {df + 3}",
            column=pseudotime_key,
            hint="pass a smaller df or more cells",
        )
    q, grid_q, grid, df_eff = _design(t, int(df))
    x = adata.X if layer is None else adata.layers[layer]
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        x = x if len(cells) == x.shape[0] else x[cells]
        fit = _fit(x, q, t)[:, cols]  # one pass over the whole matrix beats a column copy
    else:
        fit = _fit(np.asarray(x)[np.ix_(cells, cols)], q, t)
    kept = fit[0] >= min_cells
    n_expr, mean, rss0, rss1, sign = fit[:5, kept]
    curves = grid_q @ fit[5:, kept]
    n = len(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((rss0 - rss1) / df_eff) / (rss1 / (n - df_eff - 1))
    f = np.where(rss0 > 0, np.maximum(f, 0.0), np.nan)
    pvalue = stats.f.sf(f, df_eff, n - df_eff - 1)
    table = pd.DataFrame(
        {
            "gene": adata.var_names[cols[kept]].astype(str),
            "effect": (curves[-1] - curves[-2]) * _log_base(adata) / np.log(2.0),
            "statistic": f,
            "pvalue": pvalue,
            "padj": adjust_pvalues(pvalue),
            "direction": _directions(curves[:_GRID], sign),
            "peak_pseudotime": grid[np.argmax(curves[:_GRID], axis=0)] if kept.any() else [],
            "mean_expression": mean,
            "n_cells": n_expr.astype(int),
        }
    )
    table = table.sort_values(["pvalue", "statistic"], ascending=[True, False], kind="stable")
    return table[COLUMNS].reset_index(drop=True)

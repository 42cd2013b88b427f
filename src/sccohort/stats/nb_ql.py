"""The quasi-likelihood F-test of edgeR 3.x (legacy QL), written for sccohort without edgeR.

:func:`ql_ftest` runs the pipeline of miloR's ``testNhoods`` with edgeR 3.40, on every row
of a count matrix at once (rows = neighbourhoods or genes, columns = samples)::

    y <- DGEList(counts, lib.size = lib_size, norm.factors = norm_factors)
    y <- estimateDisp(y, design, tagwise = FALSE)    # common + trended (locfit) dispersion
    fit <- glmQLFit(y, design, robust = TRUE)        # NB GLM at the trend, QL dispersions
    res <- glmQLFTest(fit, coef = coef)              # squeezed (robust, abundance trend)

:func:`tmm_factors` is ``calcNormFactors(method = "TMM")``. The pieces live in
:mod:`~sccohort.stats.nb_glm` (GLM fits, deviances, abundances),
:mod:`~sccohort.stats.nb_dispersion` (adjusted profile likelihoods, spline maxima, locfit
trend) and :mod:`~sccohort.stats.ql_squeeze` (limma's robust ``squeezeVar``). Each follows
the R and C++ behaviour of edgeR 3.40 / limma 3.54, down to the zero handling (samples with a
zero count and fitted value leave a row's residual df) and the Poisson bound on p-values.

Why written here: edgeR is R-only, and its Python port (edgepython) is GPL-3.0, which a
BSD-3-Clause package cannot depend on. This is an independent implementation from the
published method and R's observable behaviour; agreement with R edgeR 3.40 and with
edgepython is measured in ``benchmarks/bench_nb_ql.py`` (``results/nb_ql_edger.csv``) and
pinned on a small matrix in ``tests/test_nb_ql.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from sccohort.stats.nb_dispersion import residual_df, trended_dispersion
from sccohort.stats.nb_glm import add_prior_count, fit_nb_glm
from sccohort.stats.ql_squeeze import squeeze_var

__all__ = ["ql_ftest", "tmm_factors"]


def tmm_factors(counts: np.ndarray, lib_size: np.ndarray | None = None) -> np.ndarray:
    """TMM normalisation factors (n,) as edgeR's ``calcNormFactors(method = "TMM")``.

    Parameters
    ----------
    counts
        Rows (features) x samples (g x n).
    lib_size
        Library sizes (n,); default the column sums.

    Returns
    -------
    numpy.ndarray
        Factors with geometric mean 1; the reference sample is the one whose upper quartile
        (of counts / library size) is closest to the mean upper quartile.
    """
    x = np.asarray(counts, dtype=float)
    lib = x.sum(axis=0) if lib_size is None else np.asarray(lib_size, dtype=float)
    x = x[(x > 0).any(axis=1)]
    n = x.shape[1]
    if not len(x) or n == 1:
        return np.ones(n)
    f75 = np.quantile(x, 0.75, axis=0) / lib
    if np.median(f75) < 1e-20:
        ref = int(np.argmax(np.sqrt(x).sum(axis=0)))
    else:
        ref = int(np.argmin(np.abs(f75 - f75.mean())))
    f = np.array([_tmm_one(x[:, i], x[:, ref], lib[i], lib[ref]) for i in range(n)])
    return f / np.exp(np.mean(np.log(f)))


def _tmm_one(obs: np.ndarray, ref: np.ndarray, n_obs: float, n_ref: float) -> float:
    """One TMM factor (``.calcFactorTMM``): weighted trimmed mean of log ratios (30 % / 5 %)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log2((obs / n_obs) / (ref / n_ref))
        abs_e = (np.log2(obs / n_obs) + np.log2(ref / n_ref)) / 2
        v = (n_obs - obs) / n_obs / obs + (n_ref - ref) / n_ref / ref
    fin = np.isfinite(log_r) & np.isfinite(abs_e) & (abs_e > -1e10)
    log_r, abs_e, v = log_r[fin], abs_e[fin], v[fin]
    if not len(log_r) or np.abs(log_r).max() < 1e-6:
        return 1.0
    n = len(log_r)
    lo_l, lo_s = np.floor(n * 0.3) + 1, np.floor(n * 0.05) + 1
    rank_r, rank_e = stats.rankdata(log_r), stats.rankdata(abs_e)
    keep = (rank_r >= lo_l) & (rank_r <= n + 1 - lo_l) & (rank_e >= lo_s) & (rank_e <= n + 1 - lo_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.nansum(log_r[keep] / v[keep]) / np.nansum(1 / v[keep])
    return float(2 ** (f if np.isfinite(f) else 0.0))


def ql_ftest(
    counts: np.ndarray,
    design: np.ndarray,
    coef: int,
    *,
    lib_size: np.ndarray,
    norm_factors: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """QL F-test of one design column on every row, as edgeR 3.40 (legacy QL).

    Parameters
    ----------
    counts
        Rows x samples (g x n), non-negative.
    design
        Samples x coefficients (n x p), full column rank.
    coef
        Index of the tested column of ``design``.
    lib_size
        Library sizes (n,).
    norm_factors
        Normalisation factors (n,), e.g. :func:`tmm_factors`; default 1.

    Returns
    -------
    dict
        Arrays (g,): ``logfc`` (log2, shrunk by edgeR's prior count 0.125), ``f`` (QL F),
        ``pvalue``, ``df_total`` (prior + residual df), ``logcpm`` (edgeR's AveLogCPM),
        ``dispersion`` (trended NB dispersion), ``df_prior``, ``var_post`` (squeezed QL
        dispersion); and ``common_dispersion`` (a 0-d array).
    """
    y = np.asarray(counts, dtype=float)
    x = np.asarray(design, dtype=float)
    lib = np.asarray(lib_size, dtype=float)
    lib = lib * (1.0 if norm_factors is None else np.asarray(norm_factors, dtype=float))
    offset = np.log(lib)
    common, disp, logcpm = trended_dispersion(y, x, lib)
    beta, mu, dev = fit_nb_glm(y, x, offset, disp)
    shrunk_y, shrunk_offset = add_prior_count(y, lib, 0.125)
    logfc = fit_nb_glm(shrunk_y, x, shrunk_offset, disp)[0][:, coef] / np.log(2)
    df_res = residual_df((mu < 1e-4) & (y < 1e-4), x)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.where(df_res > 0, dev / df_res, 0.0)
    df_prior, _, var_post = squeeze_var(np.maximum(s2, 0), df_res, logcpm)
    null = np.delete(x, coef, axis=1)
    lr = fit_nb_glm(y, null, offset, disp)[2] - dev
    f = lr / var_post
    df_total = np.minimum(df_prior + df_res, len(y) * (x.shape[0] - x.shape[1]))
    pvalue = stats.f.sf(f, 1, df_total)
    below = ((mu * disp[:, None] + 1) * var_post[:, None] < 1).any(axis=1)
    if below.any():  # never more significant than the Poisson likelihood-ratio test
        rows = np.flatnonzero(below)
        dev_p = fit_nb_glm(y[rows], x, offset, 0.0, start=beta[rows])[2]
        lr_p = fit_nb_glm(y[rows], null, offset, 0.0)[2] - dev_p
        pvalue[rows] = np.maximum(pvalue[rows], stats.chi2.sf(lr_p, 1))
    return {
        "logfc": logfc,
        "f": f,
        "pvalue": pvalue,
        "df_total": df_total,
        "logcpm": logcpm,
        "dispersion": disp,
        "df_prior": df_prior,
        "var_post": var_post,
        "common_dispersion": np.asarray(common),
    }

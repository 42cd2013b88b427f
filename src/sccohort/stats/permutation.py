"""Donor-label permutations of a moderated linear model; the smallest p-value a design allows.

`_permutation_test` refers a moderated t (limma's ``eBayes`` squeeze, re-estimated in every
permutation) to its permutation distribution: every relabelling of the donors when there
are few (`_all_permutations`), seeded random ones otherwise, Freedman-Lane residual
permutations with covariates. `attainable_significance` says how small a p-value (and
padj) a design can reach at all, so that a report can tell "no effect" from "too few donors".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from itertools import combinations, permutations, product

import numpy as np
import pandas as pd
from scipy import special, stats
from threadpoolctl import threadpool_limits

from sccohort.cohort import ContrastDesign
from sccohort.stats.mixed_model import random_intercept
from sccohort.stats.special_functions import trigamma_inverse

__all__ = ["attainable_significance", "describe_attainable", "precision_weights"]

#: Permutations evaluated per matrix product (bounds memory to a few MB).
_BATCH = 2048


#: Relative tolerance when counting permuted statistics as extreme as the observed one.
_TIES = 1e-9


#: Fewest within-donor relabellings a paired design is permuted with (10 donors in pairs:
#: 1,024); below it the moderated t's own distribution gives the p-value.
MIN_WITHIN_DONOR = 1000


def attainable_significance(
    design: ContrastDesign, *, n_perm: int = 10_000, max_exact: int = 20_000, alpha: float = 0.05
) -> dict[str, object]:
    """The smallest p-value the default test can give on a design, before running it.

    A permutation p-value cannot be smaller than one over the number of relabellings of the
    donors: with 2 cases and 2 controls there are 6, two of which (the observed labelling and
    its mirror) give the same |t|, so p >= 1/3 whatever the data. Benjamini-Hochberg cannot
    adjust a p-value below itself, so nothing reaches ``padj < alpha`` when that bound is
    above ``alpha``.

    Parameters
    ----------
    design
        The contrast's design (:meth:`sccohort.cohort.Contrast.design`).
    n_perm, max_exact
        As in `compare_abundance` (they decide between enumeration and random permutations).
    alpha
        The significance threshold the run uses (``[characterise] alpha``).

    Returns
    -------
    dict
        ``contrast, n_case, n_control, covariates, scheme`` (as `compare_abundance` would
        choose it), ``n_relabellings`` (distinct labellings enumerated, or the random
        permutations + 1), ``min_pvalue``, ``min_padj`` (the BH bound: reached only when every
        subset has the smallest p-value) and ``reachable`` (``min_padj < alpha``).

    Examples
    --------
    >>> from sccohort.stats import attainable_significance
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> design, counts, totals = data.design, data.counts, data.totals
    >>> reach = attainable_significance(design)
    >>> reach["n_relabellings"], round(reach["min_pvalue"], 4), reach["reachable"]
    (70, 0.0286, True)
    """
    x = design.matrix.to_numpy(dtype=float)
    term = design.matrix.columns.get_loc(design.term)
    n = x.shape[0]
    covariates = x.shape[1] > 2
    blocks = design.blocks
    parametric = "mixed-model" if design.mixed else "within-donor-t"
    if design.mixed or (blocks is not None and _n_block_permutations(blocks) < MIN_WITHIN_DONOR):
        return {
            "contrast": design.contrast.name, "n_case": design.n_case,
            "n_control": design.n_control, "covariates": ";".join(design.contrast.covariates),
            "scheme": parametric,
            "n_relabellings": 0 if blocks is None else _n_block_permutations(blocks),
            "min_pvalue": 0.0, "min_padj": 0.0, "reachable": True,
        }  # fmt: skip
    if blocks is not None:
        count = _n_block_permutations(blocks)
        exact = count <= max_exact
        scheme = "within-donor-exact" if exact else "within-donor"
        # every donor once on each side: swapping all its pairs flips t, |t| ties
        mirrors = 2 if (np.unique(blocks, return_counts=True)[1] == 2).all() else 1
    elif covariates:
        count = math.factorial(n)
        exact = count <= max_exact
        scheme = "freedman-lane-exact" if exact else "freedman-lane"
        mirrors = 1
    else:
        count = _n_arrangements(x[:, term])
        exact = count <= max_exact
        scheme = "exact" if exact else "random"
        # equal groups: swapping cases and controls flips t, so |t| ties with its mirror
        mirrors = 2 if not design.is_continuous and design.n_case == design.n_control else 1
    if exact:
        min_p, relabellings = mirrors / count, count
    else:
        min_p, relabellings = 1 / (1 + int(n_perm)), int(n_perm) + 1
    return {
        "contrast": design.contrast.name,
        "n_case": design.n_case,
        "n_control": design.n_control,
        "covariates": ";".join(design.contrast.covariates),
        "scheme": scheme,
        "n_relabellings": relabellings,
        "min_pvalue": min(1.0, min_p),
        "min_padj": min(1.0, min_p),
        "reachable": bool(min_p < alpha),
    }


def describe_attainable(row: dict, alpha: float) -> str:
    """A plain sentence on an `attainable_significance` row whose bound is not below ``alpha``.

    Examples
    --------
    >>> from sccohort.stats import attainable_significance, describe_attainable
    >>> from sccohort.datasets import toy
    >>> from sccohort.stats import Contrast
    >>> data = toy()
    >>> six = ["D1", "D2", "D3", "D5", "D6", "D7"]
    >>> three = Contrast("SRC", "SRC", case="yes").design(data.clinical, six)
    >>> text = describe_attainable(attainable_significance(three), alpha=0.05)
    >>> import textwrap
    >>> print(textwrap.fill(text, 88))
    contrast 'SRC': with 3 vs 3 donors the smallest p-value the donor-level test can give is
    0.1 (20 relabellings of the donors), so no subset can reach padj < 0.05 whatever the
    data; add donors, or read its effects as descriptive
    """
    sizes = f"{row['n_case']} vs {row['n_control']}" if row["n_control"] else f"{row['n_case']}"
    paired = str(row.get("scheme", "")).startswith("within-donor")
    units = "samples" if paired else "donors"
    how = "within-donor relabellings" if paired else "relabellings of the donors"
    return (
        f"contrast '{row['contrast']}': with {sizes} {units} the smallest p-value the "
        f"donor-level test can give is {row['min_pvalue']:.3g} "
        f"({int(row['n_relabellings']):,} {how}), so no subset can reach "
        f"padj < {alpha:g} whatever the data; add donors, or read its effects as descriptive"
    )


def _model(
    y: np.ndarray, x: np.ndarray, term: int, moderate: bool
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """Statistics of the term for every column of ``y`` (n x G) under rearrangements.

    The returned function maps index arrays ``order`` (B x n) to the coefficient, the
    (moderated) t, the posterior variance (B x G each) and the prior df (B,). Row b tests the
    design's rows rearranged by ``order[b]`` against the reduced model's residuals, which equals
    refitting the full model to the residuals permuted by the inverse arrangement
    (Freedman-Lane; with the intercept only, a plain relabelling of the donors). The identity
    gives the observed fit.
    """
    n, p = x.shape
    resid_df = n - p
    reduced = np.delete(x, term, axis=1)
    r = y - reduced @ np.linalg.lstsq(reduced, y, rcond=None)[0]
    weights = np.linalg.pinv(x)[term]  # coefficient of the term = weights @ y
    basis = np.linalg.qr(x)[0]  # n x p orthonormal basis of the design's span
    unscaled_var = float(weights @ weights)  # [(X'X)^-1]_term,term
    r_ss = (r**2).sum(axis=0)

    def statistics(order: np.ndarray) -> tuple[np.ndarray, ...]:
        coef = weights[order] @ r
        fitted_ss = ((basis[order].transpose(0, 2, 1) @ r) ** 2).sum(axis=1)
        s2 = np.maximum(r_ss - fitted_ss, 1e-12 * r_ss) / resid_df
        s2_post, d0 = _squeeze(s2, resid_df) if moderate else (s2, np.zeros(len(order)))
        return coef, coef / np.sqrt(s2_post * unscaled_var), s2_post * unscaled_var, d0

    return statistics


def _weighted_model(
    y: np.ndarray,
    x: np.ndarray,
    term: int,
    moderate: bool,
    w: np.ndarray,
    blocks: np.ndarray | None = None,
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """`_model` with precision weights ``w`` (n x G, one column per column of ``y``).

    Weighted least squares per column: the reduced model's weighted residuals stay with their
    units and weights, and row b refits the full model with the design's rows rearranged by
    ``order[b]`` (Freedman-Lane; with the intercept only, a plain relabelling of the units).
    The columns that no rearrangement changes (the intercept, and a paired design's donor
    columns, constant within the ``blocks``) span the block indicators and are absorbed
    (Frisch-Waugh-Lovell: weighted block means subtracted), so each rearrangement solves only
    for the columns that move (the term and sample-level covariates); with the term alone
    moving, every statistic is a ratio of weighted sums (two matrix products per batch).
    """
    n, p = x.shape
    resid_df = n - p
    codes = np.zeros(n, dtype=int) if blocks is None else pd.factorize(blocks)[0]
    onehot = np.eye(codes.max() + 1)[codes]  # n x K
    moving = [c for c in range(p) if not _constant_within(x[:, c], onehot)]
    if term not in moving or np.linalg.matrix_rank(np.delete(x, moving, axis=1)) != onehot.shape[1]:
        raise ValueError("the design's fixed columns must span its blocks (an intercept)")
    at = moving.index(term)
    r = y - _wls_fitted(y, np.delete(x, term, axis=1), w)
    wr = w * r
    r_ss = (wr * r).sum(axis=0)
    block_w = w.T @ onehot  # G x K
    w_by_block = w[:, :, None] * onehot[:, None, :]  # n x G x K

    def moderated(coef, unscaled_var, fitted_ss) -> tuple[np.ndarray, ...]:
        s2 = np.maximum(r_ss - fitted_ss, 1e-12 * r_ss) / resid_df
        s2_post, d0 = _squeeze(s2, resid_df) if moderate else (s2, np.zeros(len(s2)))
        return coef, coef / np.sqrt(s2_post * unscaled_var), s2_post * unscaled_var, d0

    binary = bool(np.isin(x[:, term], (0, 1)).all())

    def term_only(order: np.ndarray) -> tuple[np.ndarray, ...]:
        xt = x[order][:, :, term]  # B x n
        sums = (xt @ w_by_block.reshape(n, -1)).reshape(len(order), *block_w.shape)
        raw = sums.sum(axis=-1) if binary else (xt**2) @ w  # a 0/1 term is its own square
        gram = raw - (sums**2 / block_w).sum(axis=-1)  # B x G
        rhs = xt @ wr
        return moderated(rhs / gram, 1 / gram, rhs**2 / gram)

    if moving == [term]:
        return term_only

    def statistics(order: np.ndarray) -> tuple[np.ndarray, ...]:
        xv = x[order][:, :, moving]  # B x n x v
        raw = np.tensordot(xv[..., :, None] * xv[..., None, :], w, axes=([1], [0]))
        sums = np.tensordot(xv, w_by_block, axes=([1], [0]))  # B x v x G x K
        within = np.einsum("bkgq,blgq->bgkl", sums / block_w, sums)
        gram = raw.transpose(0, 3, 1, 2) - within  # B x G x v x v
        rhs = np.tensordot(xv, wr, axes=([1], [0])).transpose(0, 2, 1)  # B x G x v
        unit = np.zeros((*rhs.shape, 1))
        unit[..., at, 0] = 1.0
        solved = np.linalg.solve(gram, np.concatenate([rhs[..., None], unit], -1))
        coef, unscaled_var = solved[..., at, 0], solved[..., at, 1]
        return moderated(coef, unscaled_var, (solved[..., 0] * rhs).sum(axis=-1))

    return statistics


def _constant_within(column: np.ndarray, onehot: np.ndarray) -> bool:
    """Whether ``column`` takes one value within each block (``onehot``: n x K indicators)."""
    means = onehot @ ((onehot.T @ column) / onehot.sum(axis=0))
    return bool(np.allclose(column, means))


def _wls_fitted(y: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares fit of every column of ``y`` (n x G) on ``z`` with weights ``w``."""
    gram = np.einsum("ni,nj,ng->gij", z, z, w)
    coef = np.linalg.solve(gram, np.einsum("ni,ng->gi", z, w * y)[..., None])[..., 0]
    return z @ coef.T


def precision_weights(y: np.ndarray, sampling_var: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Precision weights ``1 / (between-unit variance + sampling variance)``, n x G.

    ``y`` (n x G) values on the test scale, ``sampling_var`` (n x G) each value's variance from
    counting cells alone, ``z`` (n x q) the reduced design (every column but the tested one).
    The between-unit variance of each column is the method-of-moments estimate (as in a
    random-effects meta-analysis): the reduced model's residual variance less the mean sampling
    variance, at least 0. The weights do not depend on the tested variable, so relabelling the
    units keeps them; each column is scaled to mean 1.

    Examples
    --------
    >>> from sccohort.stats import precision_weights
    >>> cells = np.array([3, 2000, 2500, 1800, 3000])  # one donor with 3 cells
    >>> share = np.array([[0.33], [0.05], [0.04], [0.06], [0.05]])
    >>> y = np.arcsin(np.sqrt(share))
    >>> w = precision_weights(y, 1 / (4 * cells[:, None]), np.ones((5, 1)))
    >>> w.round(2).ravel().tolist()
    [0.17, 1.21, 1.21, 1.21, 1.21]
    """
    n, q = z.shape
    resid = y - z @ np.linalg.lstsq(z, y, rcond=None)[0]
    between = np.maximum((resid**2).sum(axis=0) / max(n - q, 1) - sampling_var.mean(axis=0), 0)
    w = 1 / (between + sampling_var)
    return w / w.mean(axis=0)


def _permutation_test(
    y_test: np.ndarray,
    y_effect: np.ndarray,
    x: np.ndarray,
    term: int,
    covariates: bool,
    n_perm: int,
    max_exact: int,
    seed: int,
    moderate: bool,
    blocks: np.ndarray | None = None,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray | str | int | bool | float]:
    """Permutation p-values of the term's t on ``y_test`` and the effect fitted on ``y_effect``.

    ``weights``: precision weights (n x G each) of ``y_test`` and ``y_effect``
    (`precision_weights`); ``None`` fits ordinary least squares. ``groups`` (n,) donor codes
    of a mixed design: no permutations, the donor random-intercept model's Satterthwaite t
    instead (`_mixed_test`).

    ``blocks`` (n,) integer codes (a paired design's donors): rows are exchanged only within
    a block (Freedman-Lane on the reduced model, which holds the blocks' columns). With fewer
    than `MIN_WITHIN_DONOR` such relabellings (under 10 donors in pairs) a permutation
    p-value is too coarse to test at all (4 donors: at least 1/8), and the moderated t is
    referred to its t distribution instead (``scheme = "within-donor-t"``), as limma and
    propeller do.
    """
    n, p = x.shape
    if groups is not None:
        return _mixed_test(y_test, y_effect, x, term, groups, weights)
    if blocks is not None and _n_block_permutations(blocks) < MIN_WITHIN_DONOR:
        exact, scheme, batches = False, "within-donor-t", iter(())
    elif blocks is not None:
        exact = _n_block_permutations(blocks) <= max_exact
        scheme = "within-donor-exact" if exact else "within-donor"
        batches = (
            _block_permutations(blocks)
            if exact
            else _random_block_permutations(blocks, n_perm, seed)
        )
    elif covariates:
        exact = math.factorial(n) <= max_exact
        scheme = "freedman-lane-exact" if exact else "freedman-lane"
        batches = _all_permutations(n) if exact else _random_permutations(n, n_perm, seed)
    else:
        exact = _n_arrangements(x[:, term]) <= max_exact
        scheme = "exact" if exact else "random"
        batches = _arrangements(x[:, term]) if exact else _random_permutations(n, n_perm, seed)
    identity = np.arange(n)[None, :]
    # Small matrix products: BLAS threads only add overhead (and thrash on a busy machine).
    with threadpool_limits(1, user_api="blas"):
        if weights is None:
            test = _model(y_test, x, term, moderate)
            effect = _model(y_effect, x, term, moderate)
        else:
            test = _weighted_model(y_test, x, term, moderate, weights[0], blocks)
            effect = _weighted_model(y_effect, x, term, moderate, weights[1], blocks)
        t_obs, d0_test = (a[0] for a in test(identity)[1::2])
        coef, _, var, d0 = (a[0] for a in effect(identity))
        threshold = np.abs(t_obs) * (1 - _TIES)
        extreme = np.zeros(y_test.shape[1])
        evaluated = 0
        for order in batches:
            extreme += (np.abs(test(order)[1]) >= threshold).sum(axis=0)
            evaluated += len(order)
    if scheme == "within-donor-t":
        pvalue = 2 * stats.t.sf(np.abs(t_obs), n - p + d0_test)
    else:
        pvalue = extreme / evaluated if exact else (1 + extreme) / (1 + evaluated)

    se = np.sqrt(var)
    df = n - p + d0
    quantile = stats.t.ppf(0.975, df) if np.isfinite(df) else stats.norm.ppf(0.975)
    return {
        "effect": coef,
        "ci_low": coef - quantile * se,
        "ci_high": coef + quantile * se,
        "pvalue": np.minimum(pvalue, 1.0),
        "statistic": t_obs,
        "se": se,
        "df_prior": float(d0_test),
        "scheme": scheme,
        "n_perm": evaluated,
        "exact": exact,
    }


def _mixed_test(
    y_test: np.ndarray,
    y_effect: np.ndarray,
    x: np.ndarray,
    term: int,
    groups: np.ndarray,
    weights: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, np.ndarray | str | int | bool | float]:
    """`_permutation_test`'s result from a donor random-intercept model (REML, Satterthwaite).

    Unbalanced repeated samples have no exchangeable relabelling, so the p-value is the
    parametric one of the term's t (as dream / lmerTest give it), without moderation.
    """
    w_test, w_effect = (None, None) if weights is None else weights
    test = random_intercept(y_test, x, groups, term, weights=w_test)
    effect = random_intercept(y_effect, x, groups, term, weights=w_effect)
    return {
        "effect": effect["effect"],
        "ci_low": effect["ci_low"],
        "ci_high": effect["ci_high"],
        "pvalue": test["pvalue"],
        "statistic": test["statistic"],
        "se": effect["se"],
        "df_prior": float("nan"),
        "scheme": "mixed-model",
        "n_perm": 0,
        "exact": False,
    }


def _squeeze(s2: np.ndarray, df: int) -> tuple[np.ndarray, np.ndarray]:
    """Squeeze each row of ``s2`` (B x G) as limma's ``squeezeVar`` (not robust).

    Returns posterior variances (B x G) and prior degrees of freedom (B,); with fewer than 3
    columns, no squeezing.
    """
    b, g = s2.shape
    if g < 3:
        return s2, np.zeros(b)
    s0, d0 = _prior(s2, df)
    finite = np.isfinite(d0)
    post = np.empty_like(s2)
    post[~finite] = s0[~finite, None]
    w = d0[finite, None]
    post[finite] = (w * s0[finite, None] + df * s2[finite]) / (w + df)
    return post, d0


def _prior(s2: np.ndarray, df: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior values and df (B,) of each row of ``s2`` (B x G, G >= 3), as limma's ``fitFDist``.

    ``df``: the residual df, one for all or one per column (G,).

    Rows spread no more than sampling with ``df`` degrees of freedom gives: ``d0 = inf``
    and the pooled (mean) variance as the prior value (limma since 2017; the limit is larger).
    """
    half = df / 2
    e = np.log(s2) - special.digamma(half) + np.log(half)
    e_var = e.var(axis=1, ddof=1) - np.mean(special.polygamma(1, half))
    finite = e_var > 0
    d0 = np.full(len(s2), np.inf)
    d0[finite] = 2 * trigamma_inverse(e_var[finite])
    s0 = np.exp(e.mean(axis=1))
    s0[finite] *= np.exp(special.digamma(d0[finite] / 2) - np.log(d0[finite] / 2))
    s0[~finite] = s2[~finite].mean(axis=1)
    return s0, d0


def _n_arrangements(values: np.ndarray) -> int:
    """Number of distinct arrangements of ``values`` (a multinomial coefficient)."""
    _, multiplicity = np.unique(values, return_counts=True)
    n = math.factorial(len(values))
    for m in multiplicity:
        n //= math.factorial(int(m))
    return n


def _arrangements(values: np.ndarray) -> Iterator[np.ndarray]:
    """Every distinct arrangement of ``values`` as index arrays ``order`` (``values[order]``).

    Yields batches (rows = arrangements); the identity arrangement is among them.
    """
    uniq, inverse = np.unique(values, return_inverse=True)
    n = len(values)
    rows = np.full((1, n), -1, dtype=np.intp)
    for k in range(len(uniq)):
        members = np.flatnonzero(inverse == k)
        free = np.nonzero(rows == -1)[1].reshape(len(rows), -1)  # sorted free positions
        if k == len(uniq) - 1:
            rows[np.arange(len(rows))[:, None], free] = members
            break
        choices = np.array(list(combinations(range(free.shape[1]), len(members))), dtype=np.intp)
        positions = free[:, choices].reshape(-1, len(members))
        rows = np.repeat(rows, len(choices), axis=0)
        rows[np.arange(len(rows))[:, None], positions] = members
    for start in range(0, len(rows), _BATCH):
        yield rows[start : start + _BATCH]


def _all_permutations(n: int) -> Iterator[np.ndarray]:
    """All ``n!`` permutations of ``range(n)`` in batches."""
    every = np.array(list(permutations(range(n))), dtype=np.intp).reshape(-1, n)
    for start in range(0, len(every), _BATCH):
        yield every[start : start + _BATCH]


def _random_permutations(n: int, n_perm: int, seed: int) -> Iterator[np.ndarray]:
    """``n_perm`` uniformly random permutations of ``range(n)`` in batches (seeded)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_perm, _BATCH):
        size = min(_BATCH, n_perm - start)
        yield rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1)


def _n_block_permutations(blocks: np.ndarray) -> int:
    """Number of permutations that keep every row in its block: the product of sizes!."""
    count = 1
    for size in np.unique(blocks, return_counts=True)[1]:
        count *= math.factorial(int(size))
    return count


def _block_permutations(blocks: np.ndarray) -> Iterator[np.ndarray]:
    """Every permutation of ``range(n)`` that keeps each row in its block, in batches."""
    n = len(blocks)
    members = [np.flatnonzero(blocks == b) for b in np.unique(blocks)]
    choices = [list(permutations(m)) for m in members]
    batch: list[np.ndarray] = []
    for combo in product(*choices):
        order = np.arange(n)
        for m, perm in zip(members, combo, strict=True):
            order[m] = perm
        batch.append(order)
        if len(batch) == _BATCH:
            yield np.array(batch, dtype=np.intp)
            batch = []
    if batch:
        yield np.array(batch, dtype=np.intp)


def _random_block_permutations(blocks: np.ndarray, n_perm: int, seed: int) -> Iterator[np.ndarray]:
    """``n_perm`` random permutations within blocks (each block shuffled on its own), seeded."""
    rng = np.random.default_rng(seed)
    n = len(blocks)
    grouped = np.argsort(blocks, kind="stable")  # positions, block by block
    for start in range(0, n_perm, _BATCH):
        size = min(_BATCH, n_perm - start)
        shuffled = np.argsort(blocks[None, :] + rng.random((size, n)), axis=1)
        order = np.empty((size, n), dtype=np.intp)
        order[:, grouped] = shuffled
        yield order

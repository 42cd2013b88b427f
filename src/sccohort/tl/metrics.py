"""Integration metrics on an embedding: LISI, kBET-style acceptance, silhouette, ARI.

Pure functions of arrays (``n_cells x n_dims`` embeddings, ``(n_cells,)`` labels) returning
floats or per-cell arrays. For large cohorts, evaluate on a random subsample of cells
(`subsample`): the metrics describe local label mixing and need no more than ~20,000 cells.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

from sccohort.errors import InputError


def subsample(n_cells: int, max_cells: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_cells`` of ``n_cells`` cells, drawn without replacement."""
    if n_cells <= max_cells:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, size=max_cells, replace=False))


def _codes(labels: np.ndarray, n: int, what: str) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InputError(
            f"{what} has shape {labels.shape}, expected ({n},): one label per embedded cell",
            key=what,
        )
    uniq, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes, uniq.size


def _knn(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of the ``k`` nearest other cells (self excluded)."""
    emb = np.asarray(emb, dtype=np.float64)
    k = min(k, emb.shape[0] - 1)
    if k < 1:
        raise InputError("an embedding needs at least 2 cells for neighbourhood metrics")
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)
    return dist[:, 1:], idx[:, 1:]


def _perplexity_weights(dist: np.ndarray, perplexity: float, tol: float = 1e-5) -> np.ndarray:
    """Gaussian weights per row whose entropy is ``log(perplexity)`` (binary search on beta).

    Follows the LISI reference implementation (immunogenomics/LISI and harmonypy,
    ``compute_simpson``): ``P = exp(-D * beta) / sum`` on Euclidean distances ``D``, beta
    bisected for 50 steps or until the entropy is within ``tol`` of ``log(perplexity)``.
    """
    n = dist.shape[0]
    d2 = dist
    target = np.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    for _ in range(50):
        d = d2 - d2[:, :1]  # shift for numerical stability; does not change P
        p = np.exp(-d * beta[:, None])
        s = p.sum(axis=1)
        h = np.log(s) + beta * (d * p).sum(axis=1) / s
        p /= s[:, None]
        diff = h - target
        if np.all(np.abs(diff) < tol):
            break
        up = diff > 0  # entropy too high: sharpen (increase beta)
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(
            up,
            np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
            np.where(np.isinf(lo), beta / 2, (beta + lo) / 2),
        )
    return p


def lisi(
    emb: np.ndarray,
    labels: np.ndarray,
    *,
    perplexity: float = 30.0,
) -> np.ndarray:
    """Per-cell Local Inverse Simpson's Index of ``labels`` (Korsunsky et al. 2019).

    For each cell, its ``3 * perplexity`` nearest neighbours are weighted by a Gaussian kernel
    whose bandwidth gives the chosen perplexity (the perplexity-weighted version of the
    Harmony paper and the ``lisi`` R package); the index is ``1 / sum_b p_b**2`` over the
    weighted label shares ``p_b``. It ranges from 1 (one label around each cell) to the
    number of labels (all equally mixed). On batch labels it is iLISI (higher = better
    mixing), on cell-type labels cLISI (lower = types kept apart).

    Parameters
    ----------
    emb
        ``n_cells x n_dims`` embedding.
    labels
        ``(n_cells,)`` batch or cell-type labels.
    perplexity
        Effective number of neighbours (30 as in the paper).

    Returns
    -------
    ``(n_cells,)`` float array.

    Examples
    --------
    >>> from sccohort.tl import lisi
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> x[:100] += 4  # two separate groups of cells
    >>> labels = np.repeat(["a", "b"], 100)
    >>> float(np.round(lisi(x, labels).mean(), 2))  # 1: each cell's neighbours share its label
    1.0
    """
    n = np.asarray(emb).shape[0]
    codes, n_labels = _codes(labels, n, "labels")
    dist, idx = _knn(emb, int(3 * perplexity))
    w = _perplexity_weights(dist, min(perplexity, idx.shape[1] / 3))
    share = np.zeros((n, n_labels))
    rows = np.repeat(np.arange(n), idx.shape[1])
    np.add.at(share, (rows, codes[idx].ravel()), w.ravel())
    return 1.0 / (share**2).sum(axis=1)


def ilisi(emb: np.ndarray, batch: np.ndarray, *, perplexity: float = 30.0) -> float:
    """Median iLISI of ``batch`` labels (see `lisi`); 1 = no mixing, n_batches = perfect.

    Examples
    --------
    >>> from sccohort.tl import ilisi
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> x[:100] += 4  # two separate groups of cells
    >>> labels = np.repeat(["a", "b"], 100)
    >>> round(float(ilisi(x, labels)), 2)  # 1 of 2 batches: not mixed at all
    1.0
    """
    return float(np.median(lisi(emb, batch, perplexity=perplexity)))


def kbet_acceptance(
    emb: np.ndarray,
    batch: np.ndarray,
    *,
    k: int = 25,
    alpha: float = 0.05,
) -> float:
    """kBET-style acceptance rate (Büttner et al. 2019), the simple fixed-k version.

    For each cell, a chi-square test compares the batch counts among its ``k`` nearest
    neighbours with the global batch frequencies; the result is the share of cells whose
    test does not reject at ``alpha`` (1 = locally well mixed, near 0 = batches apart).
    Unlike the kBET package, ``k`` is fixed and every cell is tested.

    Parameters
    ----------
    emb
        ``n_cells x n_dims`` embedding.
    batch
        ``(n_cells,)`` batch labels.
    k
        Neighbourhood size.
    alpha
        Significance level of each test.

    Returns
    -------
    Acceptance rate in [0, 1].

    Examples
    --------
    >>> from sccohort.tl import kbet_acceptance
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> x[:100] += 4  # two separate groups of cells
    >>> labels = np.repeat(["a", "b"], 100)
    >>> kbet_acceptance(x, labels)  # no neighbourhood has the batches' global mix
    0.0
    """
    n = np.asarray(emb).shape[0]
    codes, n_b = _codes(batch, n, "batch")
    if n_b < 2:
        return 1.0
    _, idx = _knn(emb, k)
    kk = idx.shape[1]
    counts = np.zeros((n, n_b))
    np.add.at(counts, (np.repeat(np.arange(n), kk), codes[idx].ravel()), 1.0)
    expected = np.bincount(codes, minlength=n_b) / n * kk
    chi2 = ((counts - expected) ** 2 / expected).sum(axis=1)
    pvals = stats.chi2.sf(chi2, df=n_b - 1)
    return float(np.mean(pvals >= alpha))


def silhouette(
    emb: np.ndarray,
    labels: np.ndarray,
    *,
    max_cells: int = 10_000,
    seed: int = 0,
) -> float:
    """Average silhouette width (ASW) of ``labels`` in ``emb``, on a random subsample.

    Parameters
    ----------
    emb
        ``n_cells x n_dims`` embedding.
    labels
        ``(n_cells,)`` labels, e.g. cell types (higher = types apart).
    max_cells
        Cells used (silhouette is quadratic in cells).
    seed
        Seed of the subsample.

    Returns
    -------
    ASW in [-1, 1].

    Examples
    --------
    >>> from sccohort.tl import silhouette
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> x[:100] += 4  # two separate groups of cells
    >>> labels = np.repeat(["a", "b"], 100)
    >>> round(silhouette(x, labels), 3)
    0.687
    """
    emb = np.asarray(emb)
    codes, n_labels = _codes(labels, emb.shape[0], "labels")
    if n_labels < 2:
        raise InputError("silhouette needs at least 2 distinct labels", key="labels")
    idx = subsample(emb.shape[0], max_cells, seed)
    return float(silhouette_score(emb[idx], codes[idx]))


def ari(labels: np.ndarray, truth: np.ndarray) -> float:
    """Adjusted Rand index of a clustering ``(n_cells,)`` against true labels ``(n_cells,)``.

    Examples
    --------
    >>> from sccohort.tl import ari
    >>> ari(np.array([0, 0, 1, 1]), np.array(["a", "a", "b", "b"]))
    1.0
    """
    labels = np.asarray(labels).astype(str)
    codes, _ = _codes(truth, labels.shape[0], "truth")
    return float(adjusted_rand_score(labels, codes))

"""The subclustering graph of one lineage and the most stable Leiden resolution on it.

Exact kNN up to ``EXACT_MAX_CELLS`` cells, then an inverted-file search; the graph is the
symmetric 0/1 scipy CSR adjacency of the union of the kNN edges, clustered by
`sccohort.tl.clustering.leiden_membership` (objective ``"er"``). Resolutions are tried from the
highest down and the first whose clusterings agree across resamples is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from .clustering import leiden_membership
from .knn import knn_ivf

#: Lineages up to this many cells get the exact kNN graph under ``knn_method = "auto"``.
EXACT_MAX_CELLS = 70_000


#: Lists the inverted-file search probes per query list (recall 0.99 at 66,000 cells).
IVF_PROBES = 64


def _knn(x: np.ndarray, n_neighbors: int, method: str, seed: int) -> np.ndarray:
    """The nearest neighbours (cells x k indices, self excluded) of ``x`` (cells x dims).

    Euclidean; exact (brute force) or, for ``"approximate"`` and for ``"auto"`` above
    :data:`EXACT_MAX_CELLS` cells, the inverted-file search of :mod:`sccohort.tl.knn`
    (recall of the exact neighbours in ``benchmarks/results/subset_knn.csv``).
    """
    k = min(n_neighbors, x.shape[0] - 1)
    if method == "approximate" or (method == "auto" and x.shape[0] > EXACT_MAX_CELLS):
        rng = np.random.default_rng(seed)
        return knn_ivf(x, k, rng, n_probe=IVF_PROBES, metric="euclidean").astype(np.int64)
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    return nn.kneighbors(x, return_distance=False)[:, 1:]


def _graph_from_knn(idx: np.ndarray) -> sp.csr_matrix:
    """Undirected, unweighted graph of kNN indices ``idx`` (cells x k): union of the edges.

    Symmetric ``cells x cells`` CSR, 1.0 for each neighbour pair (both ways), no diagonal.
    """
    n, k = idx.shape
    rows, cols = np.repeat(np.arange(n), k), idx.ravel()
    keep = rows != cols
    a = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    a = (a + a.T).tocsr()
    a.data[:] = 1.0
    a.sort_indices()
    return a


def _subgraph(g: sp.csr_matrix, nodes: np.ndarray) -> sp.csr_matrix:
    """The graph induced by ``nodes`` (sorted indices) on ``g``, nodes renumbered 0.."""
    return g[nodes][:, nodes].tocsr()


def _leiden(g: sp.csr_matrix, resolution: float, seed: int) -> np.ndarray:
    """Leiden membership of ``g`` (`leiden_membership`, ``"er"``), deterministic for ``seed``."""
    return leiden_membership(g, resolution=resolution, objective="er", seed=seed)


def _stable_resolution(
    g: sp.csr_matrix, resolutions: Sequence[float], n_resamples: int, threshold: float, seed: int
) -> tuple[float, np.ndarray, dict[float, float]]:
    """Highest resolution whose mean ARI against 80 % subsample reclusterings is >= threshold.

    Returns the last of ``resolutions`` (low to high) that passes, else the first, its Leiden
    labels and the mean ARIs of the resolutions tried.

    Resolutions are tried from the last: each clustering depends only on the graph, the
    resolution and the seed, so the first that passes is the answer and the others need not
    be clustered; a resolution stops as soon as its remaining resamples cannot reach the
    threshold (the first resolution, chosen when none passes, is always scored in full).
    """
    rng = np.random.default_rng(seed)
    n = g.shape[0]
    subsamples = [np.sort(rng.choice(n, int(0.8 * n), replace=False)) for _ in range(n_resamples)]
    subgraphs = [_subgraph(g, s) for s in subsamples]
    scores: dict[float, float] = {}
    for j in range(len(resolutions) - 1, -1, -1):
        r = resolutions[j]
        full = _leiden(g, r, seed)
        aris: list[float] = []
        for i, (s, sg) in enumerate(zip(subsamples, subgraphs, strict=True)):
            aris.append(adjusted_rand_score(full[s], _leiden(sg, r, seed + 1 + i)))
            best_mean = (sum(aris) + n_resamples - len(aris)) / n_resamples
            if j > 0 and best_mean < threshold - 1e-9:
                break
        if len(aris) < n_resamples:
            continue
        scores[r] = float(np.mean(aris))
        if j == 0 or scores[r] >= threshold:
            return r, full, scores
    raise ValueError("no resolutions given")


def _absorb_small(labels: np.ndarray, x: np.ndarray, min_cells: int) -> np.ndarray:
    """Give clusters under ``min_cells`` to the nearest larger cluster (centroids); relabel 0..k."""
    labels = labels.copy()
    ids, sizes = np.unique(labels, return_counts=True)
    big = ids[sizes >= min_cells]
    if big.size == 0:
        return np.zeros_like(labels)
    cent = np.stack([x[labels == i].mean(axis=0) for i in big])
    for i in ids[sizes < min_cells]:
        c = x[labels == i].mean(axis=0)
        labels[labels == i] = big[np.argmin(((cent - c) ** 2).sum(-1))]
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)

"""Leiden clustering: the one wrapper around a Leiden implementation that the library uses.

The algorithm is graspologic-native's (Rust, MIT licence; Traag et al. 2019: local moving
with a queue, refinement, aggregation), called on the CSR arrays of a scipy sparse matrix.
`leiden` clusters a named neighbour graph of an AnnData with the objective of
``sc.tl.leiden(flavor="igraph")`` (modularity with a resolution; its partitions agree with
igraph's as well as igraph's own with another seed, ``benchmarks/results/leiden.csv``);
`leiden_membership` is the kernel on a symmetric scipy sparse adjacency (also used by
`sccohort.tl.subsets`); `modularity` scores a partition as igraph does.

Loops (the diagonal of the WNN SNN graph) do not count in the optimised objective, as in
igraph's Leiden: python-igraph weighs nodes by their strengths without loops and divides the
resolution by their sum (the partitions equal those with loops left out), and graspologic
leaves loops out of node weights; loops are taken off before the call, so that they do not
count in its total weight either. `modularity` (igraph's ``Graph.modularity``) counts them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError

#: Randomness of the refinement step (igraph's default ``beta``, the one scanpy uses).
RANDOMNESS = 0.01

#: Leiden iterations at most when asked to iterate until the partition is stable.
MAX_ITERATIONS = 50


def _neighbors_entry(adata: AnnData, neighbors_key: str | None) -> tuple[str, dict]:
    key = "neighbors" if neighbors_key is None else neighbors_key
    entry = adata.uns.get(key)
    if entry is None or "connectivities_key" not in entry:
        raise InputError(
            f"uns has no neighbour graph '{key}'",
            key=key,
            hint="compute it first, e.g. sc.pp.neighbors(adata, use_rep='X_harmony', "
            f"key_added='{key}') or the WNN graph",
        )
    if entry["connectivities_key"] not in adata.obsp:
        raise InputError(f"obsp has no '{entry['connectivities_key']}'", key=key)
    return key, entry


def _undirected(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """Symmetric ``n x n`` CSR of the undirected graph that ``sc.tl.leiden`` makes of ``adjacency``.

    scanpy makes one undirected edge per stored entry, so pair i != j weighs
    ``A[i, j] + A[j, i]`` and each loop keeps ``A[i, i]`` (on the diagonal).
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    a.eliminate_zeros()
    both = (a + a.T - sp.diags(a.diagonal())).tocsr()  # 2 d - d == d exactly
    both.eliminate_zeros()
    both.sort_indices()
    return both


def _leiden_csr(
    graph: sp.csr_matrix, resolution: float, iterations: int, seed: int
) -> tuple[float, np.ndarray]:
    """Modularity and Leiden cluster ((n,) int64) of each node of symmetric loop-free ``graph``."""
    import graspologic_native as gn

    quality, clusters = gn.leiden_csr(
        graph.indptr.astype(np.int64),
        graph.indices.astype(np.int32),
        graph.data.astype(np.float64),
        graph.shape[0],
        resolution=resolution,
        randomness=RANDOMNESS,
        iterations=iterations,
        use_modularity=True,
        seed=int(seed) % (1 << 64),
    )
    membership = np.full(graph.shape[0], -1, dtype=np.int64)
    membership[np.fromiter(clusters.keys(), np.int64, len(clusters))] = np.fromiter(
        clusters.values(), np.int64, len(clusters)
    )
    alone = membership < 0  # a node the result leaves out (none seen): a cluster of its own
    membership[alone] = membership.max(initial=-1) + 1 + np.arange(alone.sum())
    return quality, membership


def _by_size(membership: np.ndarray) -> np.ndarray:
    """``membership`` relabelled 0.. by decreasing cluster size (ties: first node first)."""
    ids, first, inverse, sizes = np.unique(
        membership, return_index=True, return_inverse=True, return_counts=True
    )
    rank = np.empty(ids.size, dtype=np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(ids.size)
    return rank[inverse.ravel()]


def leiden_membership(
    graph: sp.spmatrix,
    *,
    resolution: float,
    objective: Literal["modularity", "er"] = "modularity",
    n_iterations: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Leiden cluster of each node of ``graph`` ((n,) int64, 0.. by size), deterministic for seed.

    ``graph`` is a symmetric ``n x n`` sparse adjacency: entry (i, j) = (j, i) = w is one
    undirected edge of weight w; the diagonal (loops) is ignored, as igraph's Leiden ignores
    it. ``objective="modularity"`` maximises modularity with ``resolution`` on the weights (as
    ``sc.tl.leiden(flavor="igraph")``); ``"er"`` does the same with every edge weighing 1, the
    objective of the subsets' stability search (what igraph's ``community_leiden(resolution,
    normalize_resolution=True)`` optimised there: without node weights igraph takes the
    degrees, which makes it modularity, not CPM). ``n_iterations`` Leiden iterations
    (negative: until an iteration leaves the partition as it was, at most
    :data:`MAX_ITERATIONS`).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from sccohort.tl import leiden_membership
    >>> clique = np.ones((5, 5)) - np.eye(5)
    >>> two = np.kron(np.eye(2), clique)
    >>> two[4, 5] = two[5, 4] = 1.0  # one edge between the two cliques
    >>> leiden_membership(sp.csr_matrix(two), resolution=1.0, seed=0)
    array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    """
    graph = sp.csr_matrix(graph, dtype=np.float64)
    graph = (graph - sp.diags(graph.diagonal())).tocsr()  # loops do not count (module doc)
    if objective == "er":
        graph.data[graph.data != 0] = 1.0
    graph.eliminate_zeros()
    graph.sort_indices()
    if graph.nnz == 0:  # no edges (graspologic cannot score that): every node alone
        return np.arange(graph.shape[0], dtype=np.int64)
    if n_iterations >= 0:
        return _by_size(_leiden_csr(graph, resolution, n_iterations, seed)[1])
    before = _by_size(_leiden_csr(graph, resolution, 1, seed)[1])
    for iterations in range(2, MAX_ITERATIONS + 1):  # the same seed repeats the first ones
        after = _by_size(_leiden_csr(graph, resolution, iterations, seed)[1])
        if np.array_equal(after, before):
            break
        before = after
    return before


def modularity(graph: sp.spmatrix, membership: np.ndarray, *, resolution: float = 1.0) -> float:
    """Modularity of ``membership`` ((n,) labels) on symmetric ``graph`` (n x n), as igraph's.

    ``graph`` as in `leiden_membership`, but a diagonal entry counts, as a loop (twice):
    ``Q = sum_c (in_c - resolution * K_c ** 2 / 2m) / 2m`` with ``in_c`` twice the weight
    inside cluster c and ``K_c`` its nodes' strengths.
    """
    graph = sp.csr_matrix(graph, dtype=np.float64)
    labels = np.unique(np.asarray(membership), return_inverse=True)[1].ravel()
    loops = graph.diagonal()
    strength = np.asarray(graph.sum(axis=1)).ravel() + loops
    total = strength.sum()
    coo = graph.tocoo()
    inside = coo.data[labels[coo.row] == labels[coo.col]].sum() + loops.sum()
    k = np.bincount(labels, weights=strength)
    return float((inside - resolution * (k**2).sum() / total) / total)


def leiden(
    adata: AnnData,
    *,
    neighbors_key: str | None = None,
    resolution: float = 1.0,
    key_added: str = "leiden",
    n_iterations: int = 2,
    seed: int = 0,
) -> None:
    """Leiden clustering (modularity with a resolution) of a neighbour graph.

    The objective and graph of ``sc.tl.leiden(flavor="igraph", directed=False)`` (one
    undirected edge per stored entry, see `_undirected`) with graspologic-native's Leiden:
    not igraph's random draws, so not its labels, but partitions as close to igraph's as
    igraph's with another seed, of the same modularity to 0.1 % and as close to the true cell
    types (``benchmarks/results/leiden.csv``).

    Parameters
    ----------
    adata
        Cells x anything with the graph named by ``uns[neighbors_key]``.
    neighbors_key
        Graph to cluster (None: ``"neighbors"``).
    resolution
        Higher values give more clusters.
    key_added
        ``obs`` column of the categorical cluster labels ("0", "1", ... by size).
    n_iterations
        Leiden iterations (2 as scanpy's igraph default; negative: until stable).
    seed
        Random seed.

    Returns
    -------
    None. Writes ``obs[key_added]`` and ``uns[key_added]["params"]``.

    Examples
    --------
    >>> from sccohort.tl import leiden
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata(embedded=True)  # HVGs, PCs and the WNN graph
    >>> leiden(mdata, neighbors_key="wnn_snn", seed=0)
    >>> mdata.obs["leiden"].nunique() > 5
    True
    """
    _, entry = _neighbors_entry(adata, neighbors_key)
    groups = leiden_membership(
        _undirected(adata.obsp[entry["connectivities_key"]]),
        resolution=resolution,
        objective="modularity",
        n_iterations=n_iterations,
        seed=seed,
    )
    adata.obs[key_added] = pd.Categorical(
        groups.astype("U"), categories=[str(g) for g in range(groups.max(initial=-1) + 1)]
    )
    adata.uns[key_added] = {
        "params": {"resolution": resolution, "random_state": seed, "n_iterations": n_iterations}
    }

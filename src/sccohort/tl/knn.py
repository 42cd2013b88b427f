"""k nearest neighbours of cells in an embedding: exact (blocked) or an inverted-file search.

Two metrics: ``"cosine"`` (rows L2-normalised by the caller; most similar = largest inner
product) and ``"euclidean"``. The inverted file (IVF) groups cells into ``sqrt(n)`` k-means
lists and compares the cells of one list with those of the lists whose centroids lie nearest
(one BLAS product per block of queries, a bounded heap per query). It is approximate: the
callers measure its recall against the exact search (tests, ``benchmarks/``). Written by
hand because scikit-learn's searches are exact (brute force is quadratic in cells, and trees
do not prune in 30 to 50 dimensions), and this one costs a few BLAS products per list and is
deterministic for a seed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numba
import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["heap_pop", "heap_push", "heap_sift_down", "knn_exact", "knn_ivf", "top_k_rows"]

#: Lists searched per query list (more where they hold too few cells).
N_PROBE = 16


def knn_exact(x: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Exact ``k`` nearest other cells of each row of L2-normalised ``x``; ``(n, k)`` int32.

    Examples
    --------
    >>> from sccohort.tl import knn_exact
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> knn_exact(x, 5).shape  # neighbour indices, cells x k
    (200, 5)
    """
    n = x.shape[0]
    out = np.empty((n, k), dtype=np.int32)
    xt = np.ascontiguousarray(x.T)
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = -(x[start:stop] @ xt)  # rank by -cosine == rank by euclidean on the unit sphere
        d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out


@numba.njit(cache=True, inline="always")
def heap_sift_down(hs, hi, size, pos, key, val):  # pragma: no cover - numba
    """Put ``key`` / ``val`` at ``pos`` of the min-heap ``hs`` / ``hi`` and sift it down.

    A hole moves down instead of repeated swaps: the same comparisons and final order.
    """
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and hs[left + 1] < hs[left]:
            child = left + 1
        if hs[child] >= key:
            break
        hs[pos] = hs[child]
        hi[pos] = hi[child]
        pos = child
    hs[pos] = key
    hi[pos] = val


@numba.njit(cache=True, inline="always")
def heap_push(hs, hi, size, key, val):  # pragma: no cover - numba
    """Add ``key`` / ``val`` to the min-heap of ``size`` entries (room assumed)."""
    pos = size
    while pos > 0:
        parent = (pos - 1) // 2
        if hs[parent] <= key:
            break
        hs[pos] = hs[parent]
        hi[pos] = hi[parent]
        pos = parent
    hs[pos] = key
    hi[pos] = val


@numba.njit(cache=True, inline="always")
def heap_pop(hs, hi, size):  # pragma: no cover - numba
    """Remove the root of the min-heap of ``size`` entries (``size - 1`` remain)."""
    size -= 1
    heap_sift_down(hs, hi, size, 0, hs[size], hi[size])


@numba.njit(cache=True, nogil=True)
def top_k_rows(sims, self_col, k, cand_ids, out_rows, out):  # pragma: no cover - numba
    """Write the ``k`` most similar candidates of each row of ``sims`` into ``out``.

    ``sims`` (q, m) holds the similarities of q queries with m candidates (original ids
    ``cand_ids``); column ``self_col[r]`` is query r itself and is skipped. Row r of the result,
    most similar first, goes to ``out[out_rows[r]]``. A bounded min-heap of size ``k`` makes
    each candidate cost one comparison, mostly.
    """
    n_q, m = sims.shape
    hs = np.empty(k, dtype=sims.dtype)
    hi = np.empty(k, dtype=np.int64)
    for r in range(n_q):
        size = 0
        skip = self_col[r]
        for t in range(m):
            if t == skip:
                continue
            v = sims[r, t]
            if size < k:
                heap_push(hs, hi, size, v, t)
                size += 1
            elif v > hs[0]:
                heap_sift_down(hs, hi, size, 0, v, t)
        row = out_rows[r]
        while size > 0:  # pop the least similar first: fill the row from the back
            out[row, size - 1] = cand_ids[hi[0]]
            heap_pop(hs, hi, size)
            size -= 1


def _scores(x: np.ndarray, cent: np.ndarray, euclidean: bool) -> np.ndarray:
    """Similarity (rows x centroids): ``x.c``, or ``x.c - |c|^2 / 2`` for ``euclidean``.

    The latter is minus half the squared distance up to a per-row constant.
    """
    s = x @ cent.T
    if euclidean:
        s -= 0.5 * np.einsum("ij,ij->i", cent, cent)
    return s


def _kmeans_centroids(
    x: np.ndarray, n_lists: int, rng: np.random.Generator, euclidean: bool = False
) -> np.ndarray:
    """k-means centroids (Lloyd, 10 rounds; spherical unless ``euclidean``) of a sample of ``x``."""
    n = x.shape[0]
    sample = x[rng.choice(n, size=min(n, 40 * n_lists), replace=False)]
    cent = sample[rng.choice(sample.shape[0], size=n_lists, replace=False)].copy()
    for _ in range(10):
        label = np.argmax(_scores(sample, cent, euclidean), axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, label, sample)
        counts = np.bincount(label, minlength=n_lists)
        empty = counts == 0
        sums[empty] = sample[rng.choice(sample.shape[0], size=int(empty.sum()), replace=False)]
        counts[empty] = 1
        if euclidean:
            cent = (sums / counts[:, None]).astype(x.dtype)
        else:
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            cent = (sums / np.maximum(norms, 1e-12)).astype(x.dtype)
    return cent


def knn_ivf(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    n_probe: int | None = None,
    n_lists: int | None = None,
    return_order: bool = False,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> Any:
    """Approximate ``k`` nearest other cells (inverted file over k-means lists).

    ``x`` (n, d): L2-normalised rows for ``"cosine"``, any rows for ``"euclidean"``; returns
    (n, k) int32 indices, nearest first, and with ``return_order`` also the cells grouped by
    list (n,). Cells are grouped by k-means list; the queries of one list are compared (one
    BLAS product) with all cells of the ``n_probe`` lists whose centroids are nearest to their
    list's centroid (more lists where those hold fewer than ``4 (k + 1)`` cells), and a
    bounded heap keeps each query's ``k`` best. Deterministic for the state of ``rng``.

    Examples
    --------
    >>> from sccohort.tl import knn_ivf
    >>> x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    >>> knn_ivf(x, 5, np.random.default_rng(0)).shape
    (200, 5)
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'euclidean'")
    euclidean = metric == "euclidean"
    n = x.shape[0]
    if n_lists is None:
        n_lists = int(np.clip(round(np.sqrt(n)), 16, 4096))
    n_lists = min(n_lists, n)
    n_probe = min(N_PROBE if n_probe is None else n_probe, n_lists)
    x = np.ascontiguousarray(x, dtype=np.float32)
    cent = _kmeans_centroids(x, n_lists, rng, euclidean)
    label = np.empty(n, dtype=np.int64)
    for start in range(0, n, 8192):
        label[start : start + 8192] = np.argmax(
            _scores(x[start : start + 8192], cent, euclidean), axis=1
        )
    order = np.argsort(label, kind="stable").astype(np.int64)
    xs = np.ascontiguousarray(x[order])
    if euclidean:  # x.y - |y|^2 / 2 as one product: queries (x, 1), candidates (y, -|y|^2 / 2)
        queries = np.hstack([xs, np.ones((n, 1), dtype=np.float32)])
        points = np.hstack([xs, -0.5 * np.einsum("ij,ij->i", xs, xs)[:, None]])
    else:
        queries = points = xs
    sizes = np.bincount(label, minlength=n_lists)
    starts = np.zeros(n_lists + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    near = np.argsort(-_scores(cent, cent, euclidean), axis=1, kind="stable")
    out = np.empty((n, k), dtype=np.int32)

    def search_list(c: int) -> None:
        if sizes[c] == 0:
            return
        lists = near[c]
        if lists[0] != c:  # duplicate centroids: keep the query's own list first
            lists = np.concatenate([[c], lists[lists != c]])
        enough = int(np.searchsorted(np.cumsum(sizes[lists]), 4 * (k + 1))) + 1
        lists = lists[: max(n_probe, enough)]
        rows = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in lists])
        cand = points[rows]
        cand_ids = order[rows]
        for q0 in range(starts[c], starts[c + 1], 2048):
            q1 = min(q0 + 2048, starts[c + 1])
            sims = queries[q0:q1] @ cand.T
            self_col = np.arange(q0 - starts[c], q1 - starts[c], dtype=np.int64)
            top_k_rows(sims, self_col, k, cand_ids, order[q0:q1], out)

    # one list per task on a few threads (BLAS and the numba kernel release the GIL; a pool
    # avoids waking numba's workers once per list); single-threaded BLAS inside each task, as
    # nested BLAS threads on a busy machine cost 10x
    with (
        threadpool_limits(1, user_api="blas"),
        ThreadPoolExecutor(max_workers=numba.get_num_threads()) as pool,
    ):
        list(pool.map(search_list, range(n_lists)))
    return (out, order) if return_order else out

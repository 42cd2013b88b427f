"""Weighted nearest neighbours (WNN) of Hao et al. 2021, with Seurat 4.3 defaults.

The algorithm follows the STAR Methods of Hao et al., Cell 2021 ("Weighted nearest neighbor
analysis") as Seurat 4.3 ``FindMultiModalNeighbors`` runs it:

1. L2-normalise each modality's embedding per cell.
2. Per modality, find each cell's ``n_neighbors`` nearest neighbours (the cell itself first).
3. Predict each cell from the mean of its neighbours (self excluded) found in the same modality
   ("within") and in each other modality ("cross"); distance of the cell to each prediction,
   minus the distance to its nearest other cell, clipped at 0.
4. Per-cell kernel width: mean distance to the ``n_neighbors`` farthest cells among those with
   the smallest non-zero Jaccard overlap of neighbour sets (Seurat's SNN width).
5. Score = exp(-within/width) / (exp(-cross/width) + cross_constant), clipped to [0, 200];
   modality weights = softmax of the scores over modalities.
6. Candidates = union of each modality's ``knn_range`` nearest neighbours (self excluded);
   affinity = sum over modalities of weight * exp(-(distance - nearest) / width); the
   ``n_neighbors`` candidates of highest affinity are the WNN neighbours, at distance
   sqrt((1 - affinity) / 2).
7. The shared-nearest-neighbour graph (Jaccard, pruned below ``prune_snn``) and a UMAP fuzzy
   connectivity graph are built from the WNN neighbours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from scipy import sparse

from sccohort.errors import InputError
from sccohort.tl.knn import heap_pop, heap_push, heap_sift_down, knn_exact, knn_ivf

__all__ = ["WNNInputError", "WNNResult", "wnn", "wnn_graph"]

_EXACT_MAX_CELLS = 20_000


class WNNInputError(InputError, ValueError):
    """Bad embeddings given to WNN (also a ``ValueError``)."""


@dataclass(frozen=True)
class WNNResult:
    """Output of :func:`wnn_graph` for ``n`` cells and ``M`` modalities.

    Attributes
    ----------
    modalities
        Modality names, in the column order of ``weights`` and ``bandwidths``.
    weights
        ``(n, M)`` per-cell modality weights; each row sums to 1.
    knn_indices
        ``(n, k)`` WNN neighbours of each cell (itself excluded), highest affinity first.
    knn_distances
        ``(n, k)`` WNN distances ``sqrt((1 - affinity) / 2)``, ascending.
    connectivities
        ``(n, n)`` CSR, symmetric UMAP fuzzy-set weights of the WNN neighbours (scanpy's
        ``connectivities``: for Leiden and UMAP).
    distances
        ``(n, n)`` CSR, the WNN distances of each cell's ``k`` neighbours (scanpy's ``distances``).
    snn
        ``(n, n)`` CSR, Seurat's ``wsnn`` graph: Jaccard overlap of WNN neighbour sets, entries
        below ``prune_snn`` removed, diagonal 1.
    bandwidths
        ``(n, M)`` per-cell kernel widths of each modality.
    params
        The parameters used.

    Examples
    --------
    >>> from sccohort.tl import wnn_graph
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> result = wnn_graph({"a": x, "b": x[:, :3]}, n_neighbors=10)
    >>> result.modalities, result.snn.shape
    (('a', 'b'), (200, 200))
    """

    modalities: tuple[str, ...]
    weights: np.ndarray
    knn_indices: np.ndarray
    knn_distances: np.ndarray
    connectivities: sparse.csr_matrix
    distances: sparse.csr_matrix
    snn: sparse.csr_matrix
    bandwidths: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# nearest neighbours within one modality
# ---------------------------------------------------------------------------------------------


def _knn(
    x: np.ndarray, k: int, method: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(n, k)`` neighbours of each row and, for the IVF search, its cells grouped by list."""
    if method == "exact" or (method == "auto" and x.shape[0] <= _EXACT_MAX_CELLS):
        return knn_exact(x, k), None
    return knn_ivf(x, k, rng, return_order=True)


# ---------------------------------------------------------------------------------------------
# per-cell kernels (numba)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _dist(x, i, j, lo, hi):  # pragma: no cover - numba
    s = 0.0
    for q in range(lo, hi):
        t = x[i, q] - x[j, q]
        s += t * t
    return np.sqrt(s)


@numba.njit(parallel=True, cache=True)
def _nearest_dist(x, lo, hi, first):  # pragma: no cover - numba
    n = x.shape[0]
    out = np.empty(n)
    for i in numba.prange(n):
        out[i] = _dist(x, i, first[i], lo, hi)
    return out


@numba.njit(parallel=True, cache=True)
def _impute_dist(x, lo, hi, nbrs, nearest):  # pragma: no cover - numba
    """Distance of each cell to the mean of ``nbrs`` rows, minus ``nearest``, clipped at 0."""
    n = x.shape[0]
    kk = nbrs.shape[1]
    out = np.empty(n)
    for i in numba.prange(n):
        s = 0.0
        for q in range(lo, hi):
            m = 0.0
            for t in range(kk):
                m += x[nbrs[i, t], q]
            t2 = x[i, q] - m / kk
            s += t2 * t2
        out[i] = max(np.sqrt(s) - nearest[i], 0.0)
    return out


@numba.njit(cache=True, inline="always")
def _count_shared(i, nn, rev_ptr, rev_idx, count, touched):  # pragma: no cover - numba
    """Count, for every cell j, the neighbours of i that list j (``count[j]``).

    The cells touched go to ``touched[:m]``; returns ``m``. The caller resets ``count``.
    """
    m = 0
    for a in range(nn.shape[1]):
        c = nn[i, a]
        for t in range(rev_ptr[c], rev_ptr[c + 1]):
            j = rev_idx[t]
            if count[j] == 0:
                touched[m] = j
                m += 1
            count[j] += 1
    return m


@numba.njit(cache=True, inline="always")
def _chunk(ch, n_chunks, n):  # pragma: no cover - numba
    """Rows ``[start, stop)`` of chunk ``ch`` of ``n_chunks`` contiguous chunks of ``n`` rows."""
    return ch * n // n_chunks, (ch + 1) * n // n_chunks


@numba.njit(parallel=True, cache=True)
def _snn_width(x, nn, rev_ptr, rev_idx, nearest, n_far, max_touch):  # pragma: no cover - numba
    """Seurat's SNN kernel width of each cell, from one modality's ``(n, d)`` embedding ``x``.

    ``nn`` (n, k) holds each cell's neighbours, itself included. Among the cells sharing at least
    one neighbour with cell i, take those with the ``n_far`` smallest Jaccard overlaps (all ties
    of the last one included) and average the ``n_far`` largest of their distances to cell i.
    The Jaccard overlap s / (2k - s) grows with the shared count s, so the cut is found from a
    histogram of s and the largest distances with a bounded heap (summed in ascending order,
    as a full sort would). ``max_touch`` bounds the cells reached from one row. Rows are
    worked in contiguous chunks: neighbouring rows (renumbered cells) reach the same cells.
    """
    n, k = nn.shape
    d = x.shape[1]
    out = np.empty(n)
    n_chunks = min(n, 64)
    for ch in numba.prange(n_chunks):
        count = np.zeros(n, dtype=np.int32)
        touched = np.empty(max_touch, dtype=np.int64)
        hist = np.zeros(k + 1, dtype=np.int64)
        heap = np.empty(n_far)
        payload = np.empty(n_far, dtype=np.int64)
        start, stop = _chunk(ch, n_chunks, n)
        for i in range(start, stop):
            m = _count_shared(i, nn, rev_ptr, rev_idx, count, touched)
            hist[:] = 0
            for t in range(m):
                hist[min(count[touched[t]], k)] += 1
            n_i = min(n_far, m)
            s_cut = k
            cum = 0
            for sh in range(1, k + 1):
                cum += hist[sh]
                if cum >= n_i:
                    s_cut = sh
                    break
            size = 0
            for t in range(m):
                j = touched[t]
                if count[j] <= s_cut:
                    dv = max(_dist(x, i, j, 0, d) - nearest[i], 0.0)
                    if size < n_i:
                        heap_push(heap, payload, size, dv, j)
                        size += 1
                    elif dv > heap[0]:
                        heap_sift_down(heap, payload, size, 0, dv, j)
            total = 0.0
            while size > 0:  # smallest first: the order of summing a sorted array
                total += heap[0]
                heap_pop(heap, payload, size)
                size -= 1
            out[i] = total / n_i
            for t in range(m):
                count[touched[t]] = 0
    return out


@numba.njit(parallel=True, cache=True)
def _weighted_select(x, bounds, cand, weights, sigma, nearest, k):  # pragma: no cover - numba  # noqa: C901, PLR0912 - numba kernel: one compiled loop per cell
    """WNN neighbours of each cell among its candidates: ``(indices, affinities)``, (n, k).

    Duplicate candidates count once (the first occurrence); the ``k`` highest affinities are
    kept by insertion into a sorted list, ties in the order of first occurrence (as a stable
    sort of all candidates would). The affinity sum_r w_r exp(-d_r / sigma_r) is summed in
    modality order; its terms are computed in order of decreasing weight, and a candidate is
    dropped as soon as the sum with the unknown terms set to their bound w_r (exp <= 1) cannot
    beat the k-th best: rounding is monotone, so the kept set and every affinity are those of
    the full computation. Rows are worked in contiguous chunks (renumbered cells: locality).
    """
    n = x.shape[0]
    n_mod = bounds.shape[0] - 1
    n_cand = cand.shape[1]
    out_idx = np.empty((n, k), dtype=np.int64)
    out_aff = np.empty((n, k))
    n_chunks = min(n, 64)
    for ch in numba.prange(n_chunks):
        stamp = np.full(n, -1, dtype=np.int64)
        best_aff = np.empty(k)
        best_idx = np.empty(k, dtype=np.int64)
        terms = np.empty(n_mod)
        known = np.zeros(n_mod, dtype=np.bool_)
        start, stop = _chunk(ch, n_chunks, n)
        for i in range(start, stop):
            order = np.argsort(-weights[i])
            bounded = True  # exp(-d / sigma) <= 1 needs sigma > 0 (else NaN / inf)
            for r in range(n_mod):
                if not sigma[i, r] > 0.0:
                    bounded = False
            filled = 0
            for t in range(n_cand):
                j = cand[i, t]
                if stamp[j] == i:
                    continue
                stamp[j] = i
                known[:] = False
                dropped = False
                for q in range(n_mod):
                    r = order[q]
                    dd = max(_dist(x, i, j, bounds[r], bounds[r + 1]) - nearest[i, r], 0.0)
                    terms[r] = weights[i, r] * np.exp(-dd / sigma[i, r])
                    known[r] = True
                    if bounded and filled == k and q < n_mod - 1:
                        upper = 0.0
                        for r2 in range(n_mod):
                            upper += terms[r2] if known[r2] else weights[i, r2]
                        if upper <= best_aff[k - 1]:
                            dropped = True
                            break
                if dropped:
                    continue
                aff = 0.0
                for r in range(n_mod):
                    aff += terms[r]
                if filled == k and aff <= best_aff[k - 1]:
                    continue
                pos = filled if filled < k else k - 1
                while pos > 0 and best_aff[pos - 1] < aff:
                    if pos < k:
                        best_aff[pos] = best_aff[pos - 1]
                        best_idx[pos] = best_idx[pos - 1]
                    pos -= 1
                best_aff[pos] = aff
                best_idx[pos] = j
                if filled < k:
                    filled += 1
            for t in range(k):
                out_idx[i, t] = best_idx[t]
                out_aff[i, t] = best_aff[t]
    return out_idx, out_aff


@numba.njit(parallel=True, cache=True)
def _snn_rows(
    nn, rev_ptr, rev_idx, prune, fill, indptr, indices, data, max_touch
):  # pragma: no cover - numba
    """Jaccard SNN of neighbour lists ``nn``: row nnz counts (``fill=False``) or CSR entries."""
    n, k = nn.shape
    nnz = np.zeros(n, dtype=np.int64)
    n_chunks = min(n, 64)
    for ch in numba.prange(n_chunks):
        count = np.zeros(n, dtype=np.int32)
        touched = np.empty(max_touch, dtype=np.int64)
        start, stop = _chunk(ch, n_chunks, n)
        for i in range(start, stop):
            m = _count_shared(i, nn, rev_ptr, rev_idx, count, touched)
            kept = 0
            if fill:
                touched[:m].sort()
            for t in range(m):
                j = touched[t]
                s = count[j]
                v = s / (k + (k - s))
                if v >= prune:
                    if fill:
                        indices[indptr[i] + kept] = j
                        data[indptr[i] + kept] = v
                    kept += 1
            nnz[i] = kept
            for t in range(m):
                count[touched[t]] = 0
    return nnz


def _max_touch(nn: np.ndarray, rev_ptr: np.ndarray) -> int:
    """Most cells one row of ``nn`` reaches through the reverse lists (with repeats)."""
    return int(np.diff(rev_ptr)[nn].sum(axis=1).max())


def _reverse_lists(nn: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each cell c, the rows whose neighbour list holds c (CSR pointer, indices)."""
    flat = nn.ravel()
    order = np.argsort(flat, kind="stable")
    rev_idx = (order // nn.shape[1]).astype(np.int64)
    rev_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=n), out=rev_ptr[1:])
    return rev_ptr, rev_idx


def _snn_graph(nn: np.ndarray, prune: float) -> sparse.csr_matrix:
    """Seurat ``ComputeSNN``: Jaccard overlap s / (2k - s) of neighbour rows, pruned."""
    n = nn.shape[0]
    rev_ptr, rev_idx = _reverse_lists(nn, n)
    dummy_i = np.zeros(1, dtype=np.int64)
    dummy_f = np.zeros(1)
    max_touch = _max_touch(nn, rev_ptr)
    nnz = _snn_rows(nn, rev_ptr, rev_idx, prune, False, dummy_i, dummy_i, dummy_f, max_touch)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nnz, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int64)
    data = np.empty(indptr[-1])
    _snn_rows(nn, rev_ptr, rev_idx, prune, True, indptr, indices, data, max_touch)
    return sparse.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n, n))


@numba.njit(cache=True)
def _fuzzy_weights(dist):  # pragma: no cover - numba
    """UMAP membership strengths of kNN rows ``dist`` (n, k+1), the cell itself in column 0.

    As ``umap.umap_.smooth_knn_dist`` with ``local_connectivity=1``: rho is the nearest non-zero
    distance, sigma solves sum_j exp(-(d_j - rho) / sigma) = log2(k + 1) by bisection.
    """
    n, k1 = dist.shape
    target = np.log2(k1)
    mean_all = dist.mean()
    out = np.zeros((n, k1))
    for i in range(n):
        rho = 0.0
        for j in range(k1):
            if dist[i, j] > 0.0:
                rho = dist[i, j]
                break
        lo, hi, mid = 0.0, np.inf, 1.0
        for _ in range(64):
            psum = 0.0
            for j in range(1, k1):
                d = dist[i, j] - rho
                psum += np.exp(-(d / mid)) if d > 0 else 1.0
            if abs(psum - target) < 1e-5:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                mid = mid * 2 if hi == np.inf else (lo + hi) / 2.0
        row_mean = dist[i].mean()
        floor = 1e-3 * (row_mean if rho > 0.0 else mean_all)
        sigma = max(mid, floor)
        for j in range(1, k1):
            d = dist[i, j] - rho
            out[i, j] = 1.0 if d <= 0.0 or sigma == 0.0 else np.exp(-(d / sigma))
    return out


def _umap_connectivities(knn_indices: np.ndarray, knn_distances: np.ndarray) -> sparse.csr_matrix:
    """UMAP fuzzy-union graph of a kNN graph, as scanpy ``neighbors`` computes it.

    ``knn_indices`` / ``knn_distances`` are ``(n, k)`` without the cell itself; the result is
    the ``(n, n)`` CSR matrix P + P.T - P * P.T of UMAP's membership strengths P.
    """
    n, k = knn_indices.shape
    dist = np.hstack([np.zeros((n, 1)), knn_distances.astype(np.float64)])
    strength = _fuzzy_weights(np.ascontiguousarray(dist))[:, 1:]
    rows = np.repeat(np.arange(n), k)
    p = sparse.csr_matrix((strength.ravel(), (rows, knn_indices.ravel())), shape=(n, n))
    pt = p.T.tocsr()
    graph = (p + pt - p.multiply(pt)).tocsr()
    graph.eliminate_zeros()
    graph.sort_indices()
    return graph


def _distance_matrix(knn_indices: np.ndarray, knn_distances: np.ndarray) -> sparse.csr_matrix:
    n, k = knn_indices.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    mat = sparse.csr_matrix(
        (knn_distances.ravel().astype(np.float64), knn_indices.ravel(), indptr), shape=(n, n)
    )
    mat.sort_indices()
    return mat


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _check_embeddings(embeddings: Mapping[str, Any], n_neighbors: int) -> dict[str, np.ndarray]:
    if not isinstance(embeddings, Mapping) or len(embeddings) < 2:
        raise WNNInputError(
            "WNN needs embeddings of at least two modalities",
            hint="pass a dict such as {'rna': rna_pcs, 'prot': prot_pcs}",
        )
    out: dict[str, np.ndarray] = {}
    n_cells = None
    for name, emb in embeddings.items():
        arr = np.asarray(emb)
        if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.number):
            raise WNNInputError(
                f"the embedding must be a numeric cells x dimensions matrix, got shape "
                f"{arr.shape} of {arr.dtype}",
                key=str(name),
            )
        if n_cells is None:
            n_cells, first = arr.shape[0], name
        elif arr.shape[0] != n_cells:
            raise WNNInputError(
                f"the embedding has {arr.shape[0]} cells but '{first}' has {n_cells}",
                key=str(name),
                hint="give every modality the same cells in the same order",
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise WNNInputError(
                f"the embedding has {int(bad.sum())} NaN or infinite values (first in cell {row})",
                key=str(name),
                hint="remove those cells or recompute the embedding",
            )
        arr = arr.astype(np.float64)
        norms = np.linalg.norm(arr, axis=1)
        if (norms == 0).any():
            row = int(np.flatnonzero(norms == 0)[0])
            raise WNNInputError(
                f"{int((norms == 0).sum())} cells have an all-zero embedding (first: cell {row}), "
                "which cannot be L2-normalised",
                key=str(name),
                hint="remove cells without signal in this modality",
            )
        out[str(name)] = arr / norms[:, None]
    if n_cells <= n_neighbors:
        raise WNNInputError(
            f"WNN with n_neighbors={n_neighbors} needs more than {n_neighbors} cells, "
            f"got {n_cells}",
            hint="lower n_neighbors",
        )
    return out


def _wnn_steps(
    x_all: np.ndarray,
    bounds: np.ndarray,
    names: tuple[str, ...],
    knn_self: dict[str, np.ndarray],
    n_neighbors: int,
    sd_scale: float,
    cross_constant: float,
    prune_snn: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, sparse.csr_matrix]:
    """Steps 3-7 from ``(n, knn_range + 1)`` neighbours per modality (self in column 0).

    Returns weights and widths ``(n, M)``, WNN neighbours and affinities ``(n, k)`` and the SNN.
    """
    n = x_all.shape[0]
    n_mod = len(names)
    nearest = np.column_stack(
        [
            _nearest_dist(x_all, bounds[r], bounds[r + 1], knn_self[m][:, 1])
            for r, m in enumerate(names)
        ]
    )

    # within- and cross-modality prediction distances, kernel widths, scores, weights
    small = {m: np.ascontiguousarray(knn_self[m][:, :n_neighbors]) for m in names}
    sigma = np.empty((n, n_mod))
    for r, m in enumerate(names):
        rev_ptr, rev_idx = _reverse_lists(small[m], n)
        x_m = np.ascontiguousarray(x_all[:, bounds[r] : bounds[r + 1]])
        sigma[:, r] = sd_scale * _snn_width(
            x_m, small[m], rev_ptr, rev_idx, nearest[:, r], n_neighbors,
            _max_touch(small[m], rev_ptr),
        )  # fmt: skip
    exp_score_sum = np.zeros((n, n_mod))
    for r, m in enumerate(names):
        lo, hi = bounds[r], bounds[r + 1]
        within = _impute_dist(x_all, lo, hi, small[m][:, 1:], nearest[:, r])
        k_within = np.exp(-within / sigma[:, r])
        for m2 in names:
            if m2 == m:
                continue
            cross = _impute_dist(x_all, lo, hi, small[m2][:, 1:], nearest[:, r])
            k_cross = np.exp(-cross / sigma[:, r])
            score = np.clip(k_within / (k_cross + cross_constant), 0.0, 200.0)
            exp_score_sum[:, r] += np.exp(score)
    weights = exp_score_sum / exp_score_sum.sum(axis=1, keepdims=True)

    # WNN neighbours among the union of each modality's knn_range neighbours
    cand = np.ascontiguousarray(np.hstack([knn_self[m][:, 1:] for m in names]))
    knn_idx, aff = _weighted_select(x_all, bounds, cand, weights, sigma, nearest, int(n_neighbors))
    snn = _snn_graph(knn_idx, float(prune_snn))
    return weights, sigma, knn_idx, aff, snn


def _modality_knn(
    normed: dict[str, np.ndarray], range_k: int, knn_method: str, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``range_k`` neighbours per modality and the first IVF search's cell order (or 0..n-1)."""
    knn_self = {}
    perm = None
    for m, x in normed.items():
        others, order = _knn(x.astype(np.float32), range_k, knn_method, rng)
        knn_self[m] = others
        perm = order if perm is None else perm
    if perm is None:
        perm = np.arange(next(iter(normed.values())).shape[0], dtype=np.int64)
    return knn_self, perm


def _renumber_knn(
    knn_self: dict[str, np.ndarray], perm: np.ndarray, inv: np.ndarray, range_k: int
) -> None:
    """Renumber each modality's neighbours to the order ``perm`` in place (int32, self first)."""
    n = perm.shape[0]
    inv32 = inv.astype(np.int32)
    for m in list(knn_self):  # int32 (half the memory), renumbered a block at a time
        others = knn_self[m]
        renumbered = np.empty((n, range_k + 1), dtype=np.int32)
        renumbered[:, 0] = np.arange(n, dtype=np.int32)
        for s in range(0, n, 65_536):
            renumbered[s : s + 65_536, 1:] = inv32[others[perm[s : s + 65_536]]]
        knn_self[m] = renumbered
        del others


def wnn_graph(
    embeddings: Mapping[str, np.ndarray],
    *,
    n_neighbors: int = 20,
    knn_range: int = 200,
    prune_snn: float = 1 / 15,
    cross_constant: float = 1e-4,
    sd_scale: float = 1.0,
    knn_method: str = "auto",
    seed: int = 0,
    n_jobs: int | None = None,
) -> WNNResult:
    """Weighted nearest-neighbour graph of several modalities (Hao et al. 2021; Seurat 4.3).

    Parameters
    ----------
    embeddings
        Modality name -> ``(n_cells, d_m)`` embedding (e.g. PCs), the same cells in the same
        order in every modality; at least two modalities.
    n_neighbors
        Neighbours per cell, in each modality and in the WNN graph (Seurat ``k.nn``).
    knn_range
        Nearest neighbours per modality whose union are the WNN candidates (``knn.range``).
    prune_snn
        SNN edges with a Jaccard overlap below this are removed (``prune.SNN``).
    cross_constant
        Added to the cross-modality kernel to avoid dividing by zero (``cross.contant.list``).
    sd_scale
        Scale of the kernel widths (``sd.scale``).
    knn_method
        ``"exact"`` (blocked brute force), ``"ivf"`` (approximate: k-means inverted lists,
        for many cells) or ``"auto"`` (exact up to 20,000 cells).
    seed
        Seed of the approximate search's k-means; the result is deterministic for a seed.
    n_jobs
        Threads for the per-cell work; default: all numba threads.

    Returns
    -------
    WNNResult
        Weights ``(n, M)``, WNN neighbours and distances ``(n, n_neighbors)``, and ``(n, n)``
        connectivity, distance and SNN graphs.

    Examples
    --------
    >>> from sccohort.tl import wnn_graph
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> result = wnn_graph({"a": x, "b": x[:, :3]}, n_neighbors=10)
    >>> result.connectivities.shape, result.weights.shape
    ((200, 200), (200, 2))
    """
    if n_neighbors < 2:
        raise WNNInputError(f"n_neighbors must be at least 2, got {n_neighbors}")
    if knn_method not in {"auto", "exact", "ivf"}:
        raise WNNInputError(
            f"unknown knn_method '{knn_method}'", hint="use 'auto', 'exact' or 'ivf'"
        )
    if not 0 <= prune_snn < 1:
        raise WNNInputError(f"prune_snn must be in [0, 1), got {prune_snn}")
    normed = _check_embeddings(embeddings, n_neighbors)
    names = tuple(normed)
    n = next(iter(normed.values())).shape[0]
    rng = np.random.default_rng(seed)
    range_k = int(min(max(knn_range, n_neighbors), n - 1))

    old_threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_jobs or old_threads, os.cpu_count() or 1, old_threads)))
    try:
        knn_self, perm = _modality_knn(normed, range_k, knn_method, rng)
        # The per-cell steps below read the rows of neighbours: renumber the cells so that
        # neighbours lie close in memory (IVF list order). Every per-cell result is unchanged.
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n, dtype=np.int64)
        x_all = np.ascontiguousarray(np.hstack([normed[m] for m in names])[perm])
        bounds = np.cumsum([0] + [normed[m].shape[1] for m in names]).astype(np.int64)
        _renumber_knn(knn_self, perm, inv, range_k)
        weights, sigma, knn_idx, aff, snn = _wnn_steps(
            x_all, bounds, names, knn_self, n_neighbors, sd_scale, cross_constant, prune_snn
        )
        weights, sigma, aff = weights[inv], sigma[inv], aff[inv]
        knn_idx = perm[knn_idx[inv]]
        snn = snn[inv][:, inv].tocsr()
        snn.sort_indices()
        knn_dist = np.sqrt(np.clip((1.0 - aff) / 2.0, 0.0, 1.0))
    finally:
        numba.set_num_threads(old_threads)
    conn = _umap_connectivities(knn_idx, knn_dist)
    params = {
        "method": "wnn",
        "modalities": list(names),
        "n_neighbors": int(n_neighbors),
        "knn_range": int(knn_range),
        "prune_snn": float(prune_snn),
        "cross_constant": float(cross_constant),
        "sd_scale": float(sd_scale),
        "knn_method": knn_method,
        "seed": int(seed),
    }
    return WNNResult(
        modalities=names,
        weights=weights,
        knn_indices=knn_idx,
        knn_distances=knn_dist,
        connectivities=conn,
        distances=_distance_matrix(knn_idx, knn_dist),
        snn=snn,
        bandwidths=sigma,
        params=params,
    )


def _get_embedding(data: Any, modality: str, key: str) -> np.ndarray:
    """``obsm[key]`` of a MuData (global, or of ``mod[modality]``) or of an AnnData."""
    if key in data.obsm:
        return np.asarray(data.obsm[key])
    mods = getattr(data, "mod", None)
    if mods is not None and modality in mods and key in mods[modality].obsm:
        sub = mods[modality]
        if sub.n_obs != data.n_obs or not sub.obs_names.equals(data.obs_names):
            raise WNNInputError(
                f"modality '{modality}' holds {sub.n_obs} cells, not the {data.n_obs} cells of "
                "the MuData in the same order",
                key=f"mod['{modality}'].obsm['{key}']",
                hint="intersect the modalities first (mudata.pp.intersect_obs)",
            )
        return np.asarray(sub.obsm[key])
    raise WNNInputError(
        f"no embedding '{key}' for modality '{modality}'",
        key=f"obsm['{key}']",
        hint=f"compute it first (e.g. PCA) into obsm['{key}'] or mod['{modality}'].obsm",
    )


def wnn(
    data: Any,
    reps: Mapping[str, str] | None = None,
    *,
    n_dims: Mapping[str, int] | None = None,
    n_neighbors: int = 20,
    knn_range: int = 200,
    prune_snn: float = 1 / 15,
    cross_constant: float = 1e-4,
    knn_method: str = "auto",
    seed: int = 0,
    key_added: str = "wnn",
    copy: bool = False,
) -> Any:
    """WNN graph of a MuData/AnnData, written as scanpy ``neighbors`` writes its graph.

    Parameters
    ----------
    data
        MuData (embeddings in global ``obsm`` or in ``mod[name].obsm``) or AnnData.
    reps
        Modality name -> ``obsm`` key of its ``(n_cells, d)`` embedding; default
        ``{"rna": "X_pca", "prot": "X_pca_prot"}``.
    n_dims
        Modality name -> number of leading dimensions to use (default: all).
    n_neighbors, knn_range, prune_snn, cross_constant, knn_method, seed
        As in :func:`wnn_graph`.
    key_added
        Writes ``obsp[f"{key_added}_connectivities"]``, ``obsp[f"{key_added}_distances"]``,
        ``obsp[f"{key_added}_snn"]``, ``obsm[f"{key_added}_weights"]``, ``obs[f"{m}_weight"]``
        per modality, ``uns[key_added]`` (so ``sc.tl.leiden(..., neighbors_key=key_added)``
        and ``sc.tl.umap(..., neighbors_key=key_added)`` use it) and
        ``uns[f"{key_added}_snn"]`` (the SNN graph, as Seurat clusters on ``"wsnn"``).
    copy
        Work on and return a copy instead of writing into ``data``.

    Returns
    -------
    The copy if ``copy`` is true, else ``None``.

    Examples
    --------
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.tl import highly_variable_genes, pca_prot, pca_rna, wnn
    >>> mdata = toy_mudata()
    >>> highly_variable_genes(mdata["rna"], n_top_genes=500, batch_key=None)
    >>> pca_rna(mdata["rna"], n_comps=20)
    >>> pca_prot(mdata["prot"], n_comps=10)
    >>> wnn(mdata, {"rna": "X_pca", "prot": "X_pca_prot"}, n_neighbors=20, seed=0)
    >>> sorted(mdata.obsp.keys())
    ['wnn_connectivities', 'wnn_distances', 'wnn_snn']
    >>> bool(mdata.obs["rna_weight"].between(0, 1).all())
    True
    """
    reps = dict(reps or {"rna": "X_pca", "prot": "X_pca_prot"})
    data = data.copy() if copy else data
    embeddings = {}
    for modality, key in reps.items():
        emb = _get_embedding(data, modality, key)
        if n_dims and modality in n_dims:
            if n_dims[modality] > emb.shape[1]:
                raise WNNInputError(
                    f"n_dims asks for {n_dims[modality]} dimensions but the embedding has "
                    f"{emb.shape[1]}",
                    key=f"obsm['{key}']",
                )
            emb = emb[:, : n_dims[modality]]
        embeddings[modality] = emb
    res = wnn_graph(
        embeddings,
        n_neighbors=n_neighbors,
        knn_range=knn_range,
        prune_snn=prune_snn,
        cross_constant=cross_constant,
        knn_method=knn_method,
        seed=seed,
    )
    conn_key = f"{key_added}_connectivities"
    dist_key = f"{key_added}_distances"
    data.obsp[conn_key] = res.connectivities
    data.obsp[dist_key] = res.distances
    data.obsp[f"{key_added}_snn"] = res.snn
    data.obsm[f"{key_added}_weights"] = res.weights
    for r, modality in enumerate(res.modalities):
        data.obs[f"{modality}_weight"] = res.weights[:, r]
    params = dict(res.params)
    # scanpy's name for how connectivities were made (UMAP fuzzy union), so sc.tl.umap accepts it
    params.update(
        reps={k: str(v) for k, v in reps.items()}, metric="euclidean", method="umap", graph="wnn"
    )
    data.uns[key_added] = {
        "connectivities_key": conn_key,
        "distances_key": dist_key,
        "params": params,
    }
    # the shared-nearest-neighbour graph as a graph of its own: leiden(neighbors_key=...) on
    # it is Seurat's FindClusters on "wsnn"
    data.uns[f"{key_added}_snn"] = data.uns[key_added] | {"connectivities_key": f"{key_added}_snn"}
    return data if copy else None

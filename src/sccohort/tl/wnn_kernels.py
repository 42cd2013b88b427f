"""The numba kernels of WNN: steps 3 to 7 of :mod:`sccohort.tl.wnn` on neighbour arrays.

`_wnn_steps` runs them in order on the modalities' kNN (cells x k indices and distances): the
within / cross prediction distances, the SNN kernel widths, the modality weights and the
weighted selection of each cell's neighbours; `_snn_graph` and `_umap_connectivities` turn
the chosen neighbours into the two graphs. Cells are split into contiguous chunks that run
in parallel (numba ``prange``).
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import sparse

from sccohort.tl.knn import heap_pop, heap_push, heap_sift_down


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

"""The numba kernels of :mod:`sccohort.tl.harmony_kernel` (Harmony's soft clustering).

Cells are rows: ``dist`` and ``r`` are ``n_cells x n_clusters`` float32; the observed and
expected batch counts ``o`` and ``e`` are ``n_batches x n_clusters`` float64. Cells are
processed one after another on one thread: Harmony's blocks are small (5 % of the cells),
and on a busy machine threads that wait for each other at every block cost more than they
save. ``exp`` is a vectorisable float32 polynomial (Cephes' ``expf``, relative error < 2e-7).
"""

from __future__ import annotations

import numba
import numpy as np

#: LLVM fast-math flags: reassociation lets reductions vectorise; NaN / inf stay honoured.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(cache=True, fastmath=FAST, inline="always")
def _exp_nonpositive(x, out, bits):  # pragma: no cover - numba
    """``out = exp(x)`` for ``x <= 0`` (float32 rows), as mantissa ``out`` times ``2**n``.

    ``bits`` (int32, same length) receives the exponent bits; the caller multiplies ``out`` by
    ``bits.view(float32)``. Below -87 the result is about 1e-38 instead of smaller.
    """
    for q in range(x.shape[0]):
        v = max(x[q], np.float32(-87.0))
        n = np.floor(v * np.float32(1.44269504088896341) + np.float32(0.5))
        v = v - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4) * v + np.float32(1.3981999507e-3)
        p = p * v + np.float32(8.3334519073e-3)
        p = p * v + np.float32(4.1665795894e-2)
        p = p * v + np.float32(1.6666665459e-1)
        p = p * v + np.float32(5.0000001201e-1)
        out[q] = p * (v * v) + v + np.float32(1.0)
        bits[q] = (np.int32(n) + np.int32(127)) << 23


@numba.njit(cache=True, fastmath=FAST, inline="always")
def _softmax(logits, dist, sigma, row, bits):  # pragma: no cover - numba
    """``row = softmax(logits)``; returns (sum row * dist, sum sigma row log row) in float64.

    ``logits`` is overwritten; ``bits`` is int32 scratch of the same length.
    """
    k = logits.shape[0]
    top = logits[0]
    for q in range(1, k):
        top = max(top, logits[q])
    for q in range(k):
        logits[q] = logits[q] - top
    _exp_nonpositive(logits, row, bits)
    scale = bits.view(np.float32)
    total = np.float32(0.0)
    for q in range(k):
        row[q] = row[q] * scale[q]
        total += row[q]
    inv = np.float32(1.0) / total
    error = np.float32(0.0)
    weighted = np.float32(0.0)
    weighted_shifted = np.float32(0.0)
    for q in range(k):
        p = row[q] * inv
        row[q] = p
        error += p * dist[q]
        w = sigma[q] * p
        weighted += w
        weighted_shifted += w * logits[q]
    # log p_q = shifted_q - log(total), so sum sigma p log p needs only these two sums
    return float(error), float(weighted_shifted) - np.log(float(total)) * float(weighted)


@numba.njit(cache=True, fastmath=FAST)
def assign_plain(dist, r, sigma):  # pragma: no cover - numba
    """Turn cosine similarities in ``dist`` into ``2 (1 - s)``; ``r = softmax(-dist / sigma)``.

    Returns (k-means error, sigma-weighted entropy) summed over cells.
    """
    n, k = dist.shape
    inv_sigma = (1.0 / sigma).astype(np.float32)
    logits = np.empty(k, dtype=np.float32)
    bits = np.empty(k, dtype=np.int32)
    error = 0.0
    entropy = 0.0
    for j in range(n):
        d = dist[j]
        for q in range(k):
            d[q] = np.float32(2.0) * (np.float32(1.0) - d[q])
            logits[q] = -d[q] * inv_sigma[q]
        a, b = _softmax(logits, d, sigma, r[j], bits)
        error += a
        entropy += b
    return error, entropy


@numba.njit(cache=True, fastmath=FAST)
def _block_sums(order, lo, hi, r, codes, out, total):  # pragma: no cover - numba
    """Add the rows ``order[lo:hi]`` of ``r`` to ``out`` (per batch) and ``total``."""
    k = r.shape[1]
    for i in range(lo, hi):
        j = order[i]
        row = r[j]
        for q in range(k):
            total[q] += row[q]
        for v in range(codes.shape[1]):
            acc = out[codes[j, v]]
            for q in range(k):
                acc[q] += row[q]


@numba.njit(cache=True, fastmath=FAST)
def _reassign(order, lo, hi, dist, r, codes, sigma, log_div, out, total):  # pragma: no cover
    """Soft-assign the cells ``order[lo:hi]`` with the diversity penalty ``log_div``.

    The new rows are added to ``out`` (per batch) and ``total``, as `_block_sums` does.
    """
    k = r.shape[1]
    inv_sigma = (1.0 / sigma).astype(np.float32)
    logits = np.empty(k, dtype=np.float32)
    bits = np.empty(k, dtype=np.int32)
    error = 0.0
    entropy = 0.0
    for i in range(lo, hi):
        j = order[i]
        d = dist[j]
        penalty = log_div[codes[j, 0]]
        for q in range(k):
            logits[q] = penalty[q] - d[q] * inv_sigma[q]
        for v in range(1, codes.shape[1]):
            penalty = log_div[codes[j, v]]
            for q in range(k):
                logits[q] += penalty[q]
        row = r[j]
        a, b = _softmax(logits, d, sigma, row, bits)
        error += a
        entropy += b
        for q in range(k):
            total[q] += row[q]
        for v in range(codes.shape[1]):
            acc = out[codes[j, v]]
            for q in range(k):
                acc[q] += row[q]
    return error, entropy


@numba.njit(cache=True)
def update_round(order, blocks, dist, r, codes, sigma, theta, pr_b, o, e):  # pragma: no cover
    """One k-means round: reassign ``order``'s blocks of cells with the diversity penalty.

    ``blocks`` is (number of blocks, cells per block); the last block takes the rest, as in R
    harmony. Each block's cells leave ``o`` and ``e``, are reassigned against the others and
    come back. Returns the new (k-means error, sigma-weighted entropy) summed over cells.
    """
    n, k = r.shape
    n_blocks, per_block = blocks
    part = np.empty_like(o)
    total = np.empty(k)
    log_div = np.empty(o.shape, dtype=np.float32)
    error = 0.0
    entropy = 0.0
    for blk in range(n_blocks):
        lo = blk * per_block
        hi = n if blk == n_blocks - 1 else min(n, lo + per_block)
        if lo >= n:
            break
        part[:] = 0.0
        total[:] = 0.0
        _block_sums(order, lo, hi, r, codes, part, total)
        o -= part
        e -= np.outer(pr_b, total)
        for bt in range(o.shape[0]):
            for q in range(k):
                log_div[bt, q] = theta[bt] * (
                    np.log(2.0 * e[bt, q] + 1.0) - np.log(o[bt, q] + e[bt, q] + 1.0)
                )
        part[:] = 0.0
        total[:] = 0.0
        a, b = _reassign(order, lo, hi, dist, r, codes, sigma, log_div, part, total)
        error += a
        entropy += b
        o += part
        e += np.outer(pr_b, total)
    return error, entropy


@numba.njit(cache=True)
def segment_sums(r, starts):  # pragma: no cover - numba
    """Column sums of ``r[starts[g]:starts[g + 1]]`` for each segment ``g``, float64."""
    n_seg = starts.shape[0] - 1
    out = np.zeros((n_seg, r.shape[1]))
    for g in range(n_seg):
        acc = out[g]
        for j in range(starts[g], starts[g + 1]):
            for q in range(r.shape[1]):
                acc[q] += r[j, q]
    return out

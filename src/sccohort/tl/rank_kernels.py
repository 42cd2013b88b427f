"""The numba kernels of `rank_markers`: per-group rank sums from sorted sparse keys.

Each stored value of a block of genes becomes one sortable integer key, ``value code << 16 |
group``, grouped by gene (`_keys_from_csr` / `_keys_from_csc`); one sort per gene, then one
scan (`_scan_sorted_keys`) gives every group's rank sum, nonzero count, value sum and the
gene's tie term, the implicit zeros counted as one tied block. `_group_stats` runs blocks of
at most ``_KEYS_PER_BLOCK`` keys, in threads when ``n_jobs > 1``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.sparse as sp

from sccohort.errors import InputError

_KEYS_PER_BLOCK = 8_000_000  # target stored values per block (~64 MB of keys)


_NEG_LIMIT = np.uint32(0x80000000)  # value codes below this are negative values


_ZERO_CODE = np.uint32(0xFFFFFFFF)  # value code of a stored zero (float64 mode)


@numba.njit(cache=True, nogil=True)
def _code_of(c, float_bits):
    """Order-preserving code of a stored value and its kind: 0 zero, 1 NaN, 2 other.

    With ``float_bits`` ``c`` is the bit pattern of a float32, else a precomputed code.
    """
    if float_bits:
        if (c & np.uint32(0x7FFFFFFF)) == 0:
            return np.uint64(0), 0
        if (c & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (c & np.uint32(0x7FFFFF)):
            return np.uint64(0), 1
        if c & np.uint32(0x80000000):
            return np.uint64(~c & np.uint32(0xFFFFFFFF)), 2
        return np.uint64(c | np.uint32(0x80000000)), 2
    if c == np.uint32(0xFFFFFFFF):
        return np.uint64(0), 0
    return np.uint64(c), 2


@numba.njit(cache=True, nogil=True)
def _row_bounds(indptr, indices, col_bounds):
    """``pos[b, r]``: first stored position of row ``r`` with column ``>= col_bounds[b]``.

    One sequential pass over a CSR matrix with sorted indices; shape
    ``(len(col_bounds), n_rows)``.
    """
    n_rows = indptr.shape[0] - 1
    n_b = col_bounds.shape[0]
    pos = np.empty((n_b, n_rows), dtype=np.int64)
    for r in range(n_rows):
        k = indptr[r]
        end = indptr[r + 1]
        for b in range(n_b):
            while k < end and indices[k] < col_bounds[b]:
                k += 1
            pos[b, r] = k
    return pos


@numba.njit(cache=True, nogil=True)
def _keys_from_csr(starts, stops, indices, vcodes, float_bits, codes, lo, hi):
    """Keys ``value code << 16 | group`` of the nonzeros of columns ``lo:hi`` of a CSR matrix.

    ``starts``/``stops`` delimit each row's stored values in the block. Keys come grouped by
    column: column ``j`` owns ``keys[offsets[j]:offsets[j + 1]]``. Also returns the number
    of NaN values met.
    """
    n_rows = starts.shape[0]
    n_cols = hi - lo
    offsets = np.zeros(n_cols + 1, dtype=np.int64)
    n_nan = 0
    for r in range(n_rows):
        for k in range(starts[r], stops[r]):
            c, kind = _code_of(vcodes[k], float_bits)
            if kind == 2:
                offsets[indices[k] - lo + 1] += 1
            elif kind == 1:
                n_nan += 1
    for j in range(n_cols):
        offsets[j + 1] += offsets[j]
    fill = offsets[:-1].copy()
    keys = np.empty(offsets[n_cols], dtype=np.uint64)
    for r in range(n_rows):
        g = np.uint64(codes[r])
        for k in range(starts[r], stops[r]):
            c, kind = _code_of(vcodes[k], float_bits)
            if kind == 2:
                j = indices[k] - lo
                keys[fill[j]] = (c << np.uint64(16)) | g
                fill[j] += 1
    return keys, offsets, n_nan


@numba.njit(cache=True, nogil=True)
def _keys_from_csc(indptr, indices, vcodes, float_bits, codes, lo, hi):
    """As ``_keys_from_csr`` for a CSC matrix."""
    n_cols = hi - lo
    keys = np.empty(indptr[hi] - indptr[lo], dtype=np.uint64)
    offsets = np.zeros(n_cols + 1, dtype=np.int64)
    n = 0
    n_nan = 0
    for j in range(lo, hi):
        for k in range(indptr[j], indptr[j + 1]):
            c, kind = _code_of(vcodes[k], float_bits)
            if kind == 2:
                keys[n] = (c << np.uint64(16)) | np.uint64(codes[indices[k]])
                n += 1
            elif kind == 1:
                n_nan += 1
        offsets[j - lo + 1] = n
    return keys[:n], offsets, n_nan


@numba.njit(cache=True, nogil=True)
def _sort_columns(keys, offsets):
    """Sort each column's keys by their value code (bits 16..47): LSD radix, 11 bits a pass."""
    buf = np.empty_like(keys)
    hist = np.empty(2048, dtype=np.int64)
    for j in range(offsets.shape[0] - 1):
        s, e = offsets[j], offsets[j + 1]
        n = e - s
        if n < 2:
            continue
        src = keys[s:e]
        dst = buf[s:e]
        in_keys = True
        for shift in range(16, 48, 11):
            sh = np.uint64(shift)
            hist[:] = 0
            for k in range(n):
                hist[(src[k] >> sh) & np.uint64(0x7FF)] += 1
            if hist.max() == n:  # all share this digit
                continue
            total = 0
            for d in range(2048):
                c = hist[d]
                hist[d] = total
                total += c
            for k in range(n):
                d = (src[k] >> sh) & np.uint64(0x7FF)
                dst[hist[d]] = src[k]
                hist[d] += 1
            src, dst = dst, src
            in_keys = not in_keys
        if not in_keys:
            keys[s:e] = src


@numba.njit(cache=True, nogil=True)
def _scan_sorted_keys(keys, offsets, n_codes, group_sizes, n_cells, float_bits, neg_vals, pos_vals):
    """Per-group rank sums, nonzero counts and value sums of column-sorted keys.

    Returns ``rank_sum``, ``nnz``, ``value_sum`` of shape ``(n_codes, n_cols)`` (the last
    code collects cells in no group) and ``tie_term`` of shape ``(n_cols,)``, the sum of
    ``t**3 - t`` over the groups of tied values of each column, zeros included.
    """
    n_cols = offsets.shape[0] - 1
    rank_sum = np.zeros((n_codes, n_cols), dtype=np.float64)
    nnz = np.zeros((n_codes, n_cols), dtype=np.int64)
    value_sum = np.zeros((n_codes, n_cols), dtype=np.float64)
    tie_term = np.zeros(n_cols, dtype=np.float64)
    ubuf = np.zeros(1, dtype=np.uint32)
    fbuf = ubuf.view(np.float32)
    g_rank = np.zeros(n_codes, dtype=np.float64)
    g_nnz = np.zeros(n_codes, dtype=np.int64)
    g_sum = np.zeros(n_codes, dtype=np.float64)
    mask16 = np.uint64(0xFFFF)
    mask32 = np.uint64(0xFFFFFFFF)
    neg_limit = np.uint64(0x80000000)
    for j in range(n_cols):
        start, stop = offsets[j], offsets[j + 1]
        n_zero = n_cells - (stop - start)
        n_neg = 0
        for k in range(start, stop):
            if ((keys[k] >> np.uint64(16)) & mask32) < neg_limit:
                n_neg += 1
            else:
                break
        g_rank[:] = 0.0
        g_nnz[:] = 0
        g_sum[:] = 0.0
        a = start
        while a < stop:
            code = (keys[a] >> np.uint64(16)) & mask32
            b = a + 1
            while b < stop and ((keys[b] >> np.uint64(16)) & mask32) == code:
                b += 1
            # 1-based average rank of positions a..b-1 among the stored values
            rank = 0.5 * ((a - start) + (b - start) + 1)
            if a - start >= n_neg:
                rank += n_zero
            if float_bits:
                if code >= neg_limit:
                    ubuf[0] = np.uint32(code & np.uint64(0x7FFFFFFF))
                else:
                    ubuf[0] = ~np.uint32(code) & np.uint32(0xFFFFFFFF)
                value = np.float64(fbuf[0])
            elif code >= neg_limit:
                value = pos_vals[code - neg_limit]
            else:
                value = neg_vals[code]
            t = np.float64(b - a)
            tie_term[j] += t * t * t - t
            for k in range(a, b):
                g = keys[k] & mask16
                g_rank[g] += rank
                g_nnz[g] += 1
                g_sum[g] += value
            a = b
        zero_rank = n_neg + 0.5 * (n_zero + 1)
        for g in range(n_codes):
            rank_sum[g, j] = g_rank[g] + zero_rank * (group_sizes[g] - g_nnz[g])
            nnz[g, j] = g_nnz[g]
            value_sum[g, j] = g_sum[g]
        tz = np.float64(n_zero)
        tie_term[j] += tz * tz * tz - tz
    return rank_sum, nnz, value_sum, tie_term


def _value_codes(data: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """Order-preserving uint32 codes of stored values, whether they are float32 bits, tables.

    float32 data are used through their bit patterns (no copy). Other dtypes get codes from
    their sorted distinct values: negatives ``0..``, positives ``2**31..``, zeros
    ``2**32 - 1``; the tables map codes back to values.
    """
    empty = np.zeros(1)
    if data.dtype == np.float32:
        return data.view(np.uint32), True, empty, empty
    data = np.asarray(data, dtype=np.float64)
    if np.isnan(data).any():
        raise InputError(
            f"the matrix holds {int(np.isnan(data).sum())} NaN values",
            hint="replace missing values before ranking markers",
        )
    neg = np.unique(data[data < 0])
    pos = np.unique(data[data > 0])
    if max(neg.size, pos.size) >= 2**31 - 1:
        raise InputError("too many distinct values to rank", hint="use float32 values")
    codes = np.full(data.shape, 0xFFFFFFFF, dtype=np.uint32)
    is_neg, is_pos = data < 0, data > 0
    codes[is_neg] = np.searchsorted(neg, data[is_neg])
    codes[is_pos] = np.searchsorted(pos, data[is_pos]) + 0x80000000
    return codes, False, (neg if neg.size else empty), (pos if pos.size else empty)


def _block_stats(
    x: sp.csr_matrix | sp.csc_matrix,
    values: tuple[np.ndarray, bool, np.ndarray, np.ndarray],
    codes: np.ndarray,
    n_codes: int,
    lo: int,
    hi: int,
    row_pos: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    vcodes, float_bits, neg_vals, pos_vals = values
    if x.format == "csr":
        starts, stops = row_pos
        keys, offsets, n_nan = _keys_from_csr(
            starts, stops, x.indices, vcodes, float_bits, codes, lo, hi
        )
    else:
        keys, offsets, n_nan = _keys_from_csc(
            x.indptr, x.indices, vcodes, float_bits, codes, lo, hi
        )
    if n_nan:
        raise InputError(
            f"the matrix holds {n_nan} NaN values in features {lo}..{hi - 1}",
            hint="replace missing values before ranking markers",
        )
    _sort_columns(keys, offsets)
    sizes = np.bincount(codes, minlength=n_codes).astype(np.int64)
    return _scan_sorted_keys(
        keys, offsets, n_codes, sizes, x.shape[0], float_bits, neg_vals, pos_vals
    )


def _group_stats(
    x: sp.csr_matrix | sp.csc_matrix,
    codes: np.ndarray,
    n_codes: int,
    chunk_genes: int | None,
    n_jobs: int,
) -> dict[str, np.ndarray]:
    """Rank sums, nonzero counts and value sums per group code for all columns of ``x``."""
    n_genes = x.shape[1]
    if chunk_genes is None:
        per_gene = max(x.nnz / max(n_genes, 1), 1.0)
        chunk_genes = int(_KEYS_PER_BLOCK / per_gene)
    chunk_genes = max(int(chunk_genes), 1)
    bounds = [(lo, min(lo + chunk_genes, n_genes)) for lo in range(0, n_genes, chunk_genes)]
    codes = codes.astype(np.int64)
    values = _value_codes(x.data)
    pos = None
    if x.format == "csr":
        edges = np.array([lo for lo, _ in bounds] + [n_genes], dtype=np.int64)
        pos = _row_bounds(x.indptr, x.indices, edges)

    def run(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = bounds[i]
        row_pos = None if pos is None else (pos[i], pos[i + 1])
        return _block_stats(x, values, codes, n_codes, lo, hi, row_pos)

    if n_jobs > 1 and len(bounds) > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            parts = list(pool.map(run, range(len(bounds))))
    else:
        parts = [run(i) for i in range(len(bounds))]
    if not parts:
        empty = np.zeros((n_codes, 0))
        return {"rank_sum": empty, "nnz": empty, "value_sum": empty, "tie_term": np.zeros(0)}
    return {
        "rank_sum": np.concatenate([p[0] for p in parts], axis=1),
        "nnz": np.concatenate([p[1] for p in parts], axis=1),
        "value_sum": np.concatenate([p[2] for p in parts], axis=1),
        "tie_term": np.concatenate([p[3] for p in parts]),
    }

"""Per-cluster RNA sums of one lineage, and the merge of clusters that are not distinct.

The sums are computed once per lineage (numba kernels over CSR rows) and added when clusters
merge, so merging and marker ranking never re-read the cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..pp.store import CompactRows
from .markers import rank_markers


@dataclass
class _Sums:
    """Additive per-cluster statistics: value sums, nonzero counts (k x genes), sizes (k)."""

    total: np.ndarray
    nonzero: np.ndarray
    size: np.ndarray

    def mean_pct(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.size[i], 1.0)
        return self.total[i] / n, self.nonzero[i] / n

    def merge(self, keep: int, drop: int) -> None:
        for a in (self.total, self.nonzero, self.size):
            a[keep] += a[drop]
            a[drop] = 0


@numba.njit(cache=True, nogil=True)
def _sums_kernel(indptr, indices, data, rows, labels, k, n_genes):  # pragma: no cover - numba
    """Per-cluster value sums and nonzero counts (k x genes, float64) of CSR rows ``rows``.

    Each sum adds its cells' values in the order of ``rows``, as the sparse product
    ``indicator @ x[rows]`` does, so the sums are bit for bit those of that product.
    """
    total = np.zeros((k, n_genes))
    nonzero = np.zeros((k, n_genes))
    for i in range(rows.shape[0]):
        r = rows[i]
        c = labels[i]
        for j in range(indptr[r], indptr[r + 1]):
            v = data[j]
            total[c, indices[j]] += np.float64(v)
            if v != 0:
                nonzero[c, indices[j]] += 1.0
    return total, nonzero


@numba.njit(cache=True, nogil=True)
def _take_kernel(indptr, indices, data, rows, position, lo, hi, out_ptr):  # pragma: no cover
    """CSC row indices and values of CSR rows ``rows`` x the mapped columns, nonzeros only.

    ``position[g]`` is column ``g``'s place in the result, or -1 to leave it out; every
    mapped column lies in ``[lo, hi]``, and each row's column indices are sorted, so a row is
    read from its first column >= ``lo`` (binary search) up to ``hi``. Result row ``i`` is
    ``rows[i]``; ``out_ptr`` the result's column pointers (its nonzero counts). Raises if the
    counts do not match the values found.
    """
    fill = out_ptr[:-1].copy()
    out_rows = np.empty(out_ptr[-1], dtype=np.int32)
    out_data = np.empty(out_ptr[-1], dtype=data.dtype)
    for i in range(rows.shape[0]):
        r = rows[i]
        j = indptr[r] + np.searchsorted(indices[indptr[r] : indptr[r + 1]], lo)
        while j < indptr[r + 1] and indices[j] <= hi:
            c = position[indices[j]]
            if c >= 0 and data[j] != 0:
                p = fill[c]
                if p >= out_ptr[c + 1]:
                    raise ValueError("more nonzero values than counted")
                out_rows[p] = i
                out_data[p] = data[j]
                fill[c] = p + 1
            j += 1
    for c in range(fill.shape[0]):
        if fill[c] != out_ptr[c + 1]:
            raise ValueError("fewer nonzero values than counted")
    return out_rows, out_data


@dataclass
class _LineageRNA:
    """A lineage's cells ``rows`` (ascending) of the cohort's RNA (cells x genes, CSR).

    ``x`` is a scipy matrix or the store's `CompactRows`. The cohort matrix is read in
    place: a lineage never holds a copy of its cells' whole rows, only the cells x genes
    blocks a test needs (`take`). In a forked worker the cohort matrix is the parent's
    memory, shared. With the RNA on disk, ``x`` holds just the lineage's rows.
    """

    x: sp.csr_matrix | CompactRows
    rows: np.ndarray

    def __post_init__(self) -> None:
        if not self.x.has_sorted_indices:  # `take` reads each row from a column on
            self.x = self.x.sorted_indices()

    @property
    def n_genes(self) -> int:
        return int(self.x.shape[1])

    def sums(self, labels: np.ndarray, k: int) -> _Sums:
        """Per-cluster sums, nonzero counts (k x genes) and sizes (k) of clusters ``labels``."""
        x = self.x
        total, nonzero = _sums_kernel(
            x.indptr, x.indices, x.data, self.rows.astype(np.int64), labels.astype(np.int64),
            k, x.shape[1],
        )  # fmt: skip
        return _Sums(total, nonzero, np.bincount(labels, minlength=k).astype(np.float64))

    def take(self, cells: np.ndarray, genes: np.ndarray, counts: np.ndarray) -> sp.csc_matrix:
        """Lineage cells ``cells`` (local positions) x ``genes`` (column positions), CSC.

        ``counts`` (genes): nonzero values of each gene among these cells, as `_Sums`
        counts them. Equals ``x[rows][cells][:, genes]`` stored by column with sorted row
        indices, less stored zeros (which every statistic here reads as zeros anyway).
        """
        x = self.x
        position = np.full(x.shape[1], -1, dtype=np.int64)
        position[genes] = np.arange(genes.size)
        ptr = np.zeros(genes.size + 1, dtype=np.int64)
        np.cumsum(np.rint(counts).astype(np.int64), out=ptr[1:])
        lo, hi = (int(genes.min()), int(genes.max())) if genes.size else (0, -1)
        idx, data = _take_kernel(
            x.indptr, x.indices, x.data, self.rows[cells].astype(np.int64), position, lo, hi, ptr
        )
        return sp.csc_matrix((data, idx, ptr), shape=(cells.size, genes.size))


def _log2fc(mean_a: np.ndarray, mean_b: np.ndarray, linear: bool) -> np.ndarray:
    """log2 fold change of mean log1p values, or (``linear``) of mean CLR / dsb values."""
    if linear:
        return (mean_a - mean_b) / np.log(2.0)
    return np.log2((np.expm1(mean_a) + 1e-9) / (np.expm1(mean_b) + 1e-9))


def _distinct_genes(
    x: _LineageRNA,
    columns: np.ndarray,
    labels: np.ndarray,
    stats: _Sums,
    a: int,
    b: int,
    min_auroc: float,
    min_lfc: float,
    linear: bool = False,
) -> int:
    """Informative genes up in either cluster against the other: AUROC and log2 FC above.

    ``x`` is the lineage's RNA; ``columns`` every informative gene expressed in more than 40 %
    of some cluster (the candidates); ``stats`` the clusters' sums over all genes. Only
    genes whose fold change passes and whose fraction of expressing cells permits the AUROC
    (> 0.4 in the higher cluster) are tested with :func:`rank_markers`. ``linear``: values
    are CLR / dsb antibodies, whose fold change is the difference of means / ln 2.
    """
    (mean_a, pct_a), (mean_b, pct_b) = stats.mean_pct(a), stats.mean_pct(b)
    mean_a, pct_a, mean_b, pct_b = mean_a[columns], pct_a[columns], mean_b[columns], pct_b[columns]
    lfc = _log2fc(mean_a, mean_b, linear)
    cand = ((lfc > min_lfc) & (pct_a > 0.4)) | ((lfc < -min_lfc) & (pct_b > 0.4))
    cols = np.flatnonzero(cand)
    if cols.size == 0:
        return 0
    rows = np.flatnonzero((labels == a) | (labels == b))
    sub = ad.AnnData(
        x.take(rows, columns[cols], stats.nonzero[[a, b]].sum(axis=0)[columns[cols]]),
        var=pd.DataFrame(index=np.arange(cols.size).astype(str)),
    )
    sub.obs["g"] = pd.Categorical(np.where(labels[rows] == a, "a", "b"))
    res = rank_markers(sub, "g", groups=["a"], reference="b")
    if linear:  # rank_markers' fold change reads the values as log1p
        res["logfoldchange"] = lfc[cols][res["feature"].astype(np.int64).to_numpy()]
    up = (res["auroc"] > min_auroc) & (res["logfoldchange"] > min_lfc)
    down = (res["auroc"] < 1 - min_auroc) & (res["logfoldchange"] < -min_lfc)
    return int((up | down).sum())


def _merge_indistinct(
    x: _LineageRNA,
    informative: np.ndarray,
    emb: np.ndarray,
    labels: np.ndarray,
    min_genes: int,
    min_auroc: float,
    min_lfc: float,
    linear: bool = False,
) -> tuple[np.ndarray, _Sums]:
    """Merge each cluster with its nearest sibling (centroid distance) until all are distinct.

    ``x`` the lineage's log-normalised RNA, ``informative`` (genes) mask, ``emb`` (cells x
    dims), ``labels`` 0..k-1. Returns the
    merged labels 0..m-1 and their statistics (m rows): the per-cluster sums are computed
    once and merged by addition.
    """
    labels = labels.copy()
    tested: dict[tuple[int, int], int] = {}
    stats = x.sums(labels, int(labels.max()) + 1)
    # merged clusters express a gene in a fraction of cells at most that of their best part,
    # so every future candidate gene is among these
    columns = np.flatnonzero(
        informative & (stats.nonzero / np.maximum(stats.size, 1.0)[:, None] > 0.4).any(axis=0)
    )
    while True:
        ids = np.unique(labels)
        if ids.size < 2:
            break
        cent = np.stack([emb[labels == i].mean(axis=0) for i in ids])
        d = ((cent[:, None, :] - cent[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        worst = None
        for i, c in enumerate(ids):
            pair = tuple(sorted((int(c), int(ids[np.argmin(d[i])]))))
            if pair not in tested:
                tested[pair] = _distinct_genes(
                    x, columns, labels, stats, *pair, min_auroc, min_lfc, linear
                )
            if tested[pair] < min_genes and (worst is None or tested[pair] < tested[worst]):
                worst = pair
        if worst is None:
            break
        labels[labels == worst[1]] = worst[0]
        stats.merge(*worst)
        tested = {p: v for p, v in tested.items() if worst[0] not in p and worst[1] not in p}
    ids, labels = np.unique(labels, return_inverse=True)
    merged = _Sums(stats.total[ids], stats.nonzero[ids], stats.size[ids])
    return labels.astype(np.int64), merged

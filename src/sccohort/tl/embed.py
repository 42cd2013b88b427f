"""Cohort embedding: batch-aware HVGs, memory-bounded PCA, Harmony, Leiden and UMAP.

Functions follow scanpy's conventions: they take an AnnData, write named slots
(``key_added=``) and return None. Nothing here densifies a cells x genes matrix:

- `highly_variable_genes`: Seurat-flavour dispersion ranking per batch (scanpy's
  ``flavor="seurat"`` with ``batch_key``) on the log-normalised ``.X``, QC genes excluded.
  ``seurat_v3`` (on counts) needs ``scikit-misc``, which sccohort does not depend on.
- `pca_rna`: exactly ``sc.pp.scale(max_value=10)`` + ``sc.pp.pca`` on the HVGs, computed from
  the gene x gene covariance, accumulated over dense blocks of ``block_cells`` cells
  (``block_cells x n_hvg``, 80 MB by default) and eigendecomposed; the scaled
  ``n_cells x n_hvg`` matrix never exists.
- `pca_prot`: PCA of the scaled CLR protein values (dense is fine: ~150 antibodies),
  isotype controls excluded.
- `harmony`: harmonypy 2.x on any embedding, seeded.
- `leiden`, `umap`: scanpy on a named neighbour graph; `umap` lays out a random subsample
  of very large cohorts and places the other cells from their neighbours.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.pp.store import rna_blocks, rna_columns, store_of

if TYPE_CHECKING:
    import igraph

#: Gene-name patterns never taken as HVGs by default: mitochondrial, ribosomal protein and
#: haemoglobin genes. Their variation tracks cell stress, library quality and red-cell or
#: ambient contamination (removed by QC), not immune cell identity.
QC_GENE_PATTERNS = {
    "mito": r"^MT-",
    "ribo": r"^RP[SL]\d+[A-Z]?\d*$|^RP[SL]P\d$",
    "hb": r"^HB[ABDEGMQZ]\d?$",
}
#: Cells per dense block in `pca_rna` (block_cells x n_hvg float32: 80 MB for 2,000 HVGs).
BLOCK_CELLS = 10_000
#: Edges converted to Python objects at a time when building igraph graphs (~450 MB).
_EDGE_CHUNK = 1 << 22
#: Above this many cells `umap` lays out a random subsample (see `umap`).
UMAP_MAX_CELLS = 100_000


# --------------------------------------------------------------------------------------------
# highly variable genes


def qc_gene_mask(var_names: Sequence[str], exclude: Sequence[str]) -> np.ndarray:
    """Boolean mask (n_genes,) of the genes matched by the `QC_GENE_PATTERNS` in ``exclude``."""
    unknown = [e for e in exclude if e not in QC_GENE_PATTERNS]
    if unknown:
        raise InputError(
            f"unknown gene group(s) to exclude: {unknown}",
            key="exclude",
            hint=f"use any of {sorted(QC_GENE_PATTERNS)}",
        )
    if not exclude:
        return np.zeros(len(var_names), dtype=bool)
    pattern = re.compile("|".join(f"(?:{QC_GENE_PATTERNS[e]})" for e in exclude))
    return np.array([bool(pattern.search(str(g))) for g in var_names], dtype=bool)


#: HVGs of ``n_top_genes = "auto"`` (a smaller panel takes every gene it can).
AUTO_HVG = 2000


def hvg_count(
    n_top_genes: int | str,
    var_names: Sequence[str],
    exclude: Sequence[str] = ("mito", "ribo", "hb"),
) -> int:
    """The number of HVGs to select: ``n_top_genes``, or 2,000 for ``"auto"``.

    A panel with fewer genes (not ``exclude``d) than that selects every one of them.
    """
    if n_top_genes != "auto":
        return int(n_top_genes)
    return int(min(AUTO_HVG, np.count_nonzero(~qc_gene_mask(var_names, exclude))))


@numba.njit(parallel=True, cache=True)
def _batch_sums(data, indices, indptr, rows, batch_ptr, col, n_cols, n_threads):  # pragma: no cover
    """Per batch: sums of expm1(x), of its float32 squares, and positive counts per column.

    ``rows`` lists the CSR rows batch by batch (``batch_ptr``); ``col`` maps each column to
    its output column (-1: skipped). As scanpy's ``sparse_mean_var_minor_axis`` on each batch,
    the j-th row of a batch adds into accumulator ``j % n_threads`` (in row order), so the
    sums are bit for bit those of ``sc.pp.highly_variable_genes(flavor="seurat")``.
    Returns ``(n_batches, n_threads, n_cols)`` sums and squares and ``(n_batches, n_cols)``
    counts of positive entries.
    """
    n_batches = batch_ptr.shape[0] - 1
    sums = np.zeros((n_batches, n_threads, n_cols))
    squares = np.zeros((n_batches, n_threads, n_cols))
    positive = np.zeros((n_batches, n_cols), dtype=np.int64)
    for b in numba.prange(n_batches):
        for p in range(batch_ptr[b], batch_ptr[b + 1]):
            r = rows[p]
            t = (p - batch_ptr[b]) % n_threads
            for q in range(indptr[r], indptr[r + 1]):
                c = col[indices[q]]
                if c < 0:
                    continue
                value = np.expm1(data[q])
                sums[b, t, c] += value
                squares[b, t, c] += value * value
                if data[q] > 0:
                    positive[b, c] += 1
    return sums, squares, positive


def _thread_total(parts: np.ndarray) -> np.ndarray:
    """Sum over the accumulator axis (1) in order, as numba's ``arr.sum()`` loop does."""
    total = np.zeros(parts.shape[:1] + parts.shape[2:])
    for t in range(parts.shape[1]):
        total = total + parts[:, t]
    return total


def _seurat_dispersions(mean: np.ndarray, var: np.ndarray, n_top_genes: int) -> dict:
    """Per-batch ``flavor="seurat"`` statistics of scanpy from expm1 means and variances.

    The same pandas kernels as scanpy (``pd.cut`` into 20 mean bins; grouped mean and std of
    the log dispersions), grouped by integer bin codes instead of interval categories.
    """
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(dispersion)
    log_mean = np.log1p(mean)
    codes = np.asarray(pd.cut(log_mean, bins=20, labels=False))
    grouped = pd.Series(dispersion).groupby(codes)
    avg, dev = grouped.mean(), grouped.std()
    single = dev.isnull().to_numpy()  # one gene in the bin: normalised dispersion 1
    avg, dev = avg.to_numpy().copy(), dev.to_numpy().copy()
    dev[single] = avg[single]
    avg[single] = 0
    pos = np.searchsorted(grouped.mean().index.to_numpy(), codes)
    norm = (dispersion - avg[pos]) / dev[pos]
    finite = norm[~np.isnan(norm)]
    n_top = min(n_top_genes, finite.size)
    cut = np.sort(finite)[::-1][n_top - 1] if n_top else np.inf
    return {
        "means": log_mean,
        "dispersions": dispersion,
        "dispersions_norm": norm,
        "highly_variable": np.nan_to_num(norm, nan=-np.inf) >= cut,
    }


def _seurat_hvg(
    blocks: Iterable[tuple[int, sp.csr_matrix]],
    n_cells: int,
    names: np.ndarray,
    batch: pd.Categorical | None,
    genes: np.ndarray,
    n_top_genes: int,
) -> pd.DataFrame:
    """``sc.pp.highly_variable_genes(flavor="seurat", batch_key=...)`` on the columns ``genes``.

    ``blocks``: ``(first column, cells x columns CSR)`` covering every column of ``genes``
    (the whole matrix, or the gene blocks of an on-disk store: each gene's sums are the
    same either way). One pass over the CSR data for all batches (scanpy copies,
    column-subsets and expm1-transforms each batch). Returns a frame in ``genes`` order with
    ``means``, ``dispersions_norm``, ``highly_variable`` and ``highly_variable_nbatches``.
    """
    codes = np.zeros(n_cells, dtype=np.int64) if batch is None else batch.codes.astype(np.int64)
    n_batches = 1 if batch is None else len(batch.categories)
    rows = np.argsort(codes, kind="stable").astype(np.int64)
    batch_ptr = np.zeros(n_batches + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=n_batches), out=batch_ptr[1:])
    n_threads = numba.get_num_threads()
    sums = np.zeros((n_batches, n_threads, genes.size))
    squares = np.zeros_like(sums)
    positive = np.zeros((n_batches, genes.size), dtype=np.int64)
    for lo, x in blocks:
        col = np.full(x.shape[1], -1, dtype=np.int64)
        inside = (genes >= lo) & (genes < lo + x.shape[1])
        if not inside.any():
            continue
        col[genes[inside] - lo] = np.flatnonzero(inside)
        part = _batch_sums(x.data, x.indices, x.indptr, rows, batch_ptr, col, genes.size, n_threads)
        sums += part[0]  # each gene is in one block: the others add zeros
        squares += part[1]
        positive += part[2]
    sums, squares = _thread_total(sums), _thread_total(squares)
    columns = ("means", "dispersions", "dispersions_norm", "highly_variable")
    per_batch = {c: np.zeros((n_batches, genes.size)) for c in columns}
    for b in range(n_batches):
        size = int(batch_ptr[b + 1] - batch_ptr[b])
        # with a batch key scanpy drops the genes a batch does not express (0 in every column)
        use = positive[b] > 0 if batch is not None else np.ones(genes.size, dtype=bool)
        if size == 0 or not use.any():
            continue
        mean = sums[b, use] / size
        var = squares[b, use] / size - mean**2
        if size != 1:
            var *= size / (size - 1)
        df = _seurat_dispersions(mean, var, n_top_genes)
        for c in columns:
            per_batch[c][b, use] = df[c]
    if batch is None:
        out = pd.DataFrame({c: per_batch[c][0] for c in columns})
        out["highly_variable"] = out["highly_variable"].astype(bool)
        return out
    # scanpy concatenates the batches, averages per gene name (pandas' compensated mean in
    # batch order, NaN skipped), then ranks genes by votes and mean normalised dispersion with
    # a stable sort of the genes in name order: integer name ranks reproduce all of it.
    rank = np.empty(genes.size, dtype=np.int64)
    rank[np.argsort(names[genes].astype(str), kind="stable")] = np.arange(genes.size)
    long = pd.DataFrame({c: per_batch[c].ravel() for c in columns}, index=np.tile(rank, n_batches))
    long["highly_variable"] = long["highly_variable"].astype(int)
    agg = long.groupby(level=0).agg(
        {"means": "mean", "dispersions": "mean", "dispersions_norm": "mean",
         "highly_variable": "sum"}
    )  # fmt: skip
    agg["highly_variable_nbatches"] = agg["highly_variable"]
    agg = agg.sort_values(
        ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
    )
    agg["highly_variable"] = np.arange(len(agg)) < n_top_genes
    return agg.loc[rank].reset_index(drop=True)


def highly_variable_genes(
    adata: AnnData,
    n_top_genes: int = 2000,
    *,
    batch_key: str | None = "sample_id",
    exclude: Sequence[str] = ("mito", "ribo", "hb"),
    key_added: str = "highly_variable",
) -> None:
    """Batch-aware highly variable genes on log-normalised data (scanpy ``flavor="seurat"``).

    In every batch, genes are binned by mean and ranked by normalised dispersion; each batch
    votes for its ``n_top_genes`` most dispersed genes. Genes are ranked by the number of
    votes, ties broken by the mean normalised dispersion, and the top ``n_top_genes`` kept:
    exactly ``sc.pp.highly_variable_genes(flavor="seurat", batch_key=...)`` on the genes
    not excluded.

    Parameters
    ----------
    adata
        RNA, ``n_cells x n_genes``, log-normalised values in ``.X`` (sparse or dense).
    n_top_genes
        Number of genes to select.
    batch_key
        ``obs`` column with the batch of each cell (default: the sample); None for one batch.
    exclude
        Gene groups never selected (keys of `QC_GENE_PATTERNS`): ``"mito"`` (MT-),
        ``"ribo"`` (RPL/RPS), ``"hb"`` (haemoglobins). Pass ``()`` to keep every gene.
    key_added
        Boolean ``var`` column of the selection.

    Returns
    -------
    None. Writes ``var[key_added]`` (bool), ``var["hvg_excluded"]``, ``var["means"]``,
    ``var["dispersions_norm"]``, ``var["highly_variable_nbatches"]`` and ``uns["hvg"]``.
    """
    import scanpy as sc

    if adata.X is None and store_of(adata) is None:
        raise InputError("the RNA data has no .X", hint="run normalize_rna first")
    if batch_key is not None and batch_key not in adata.obs.columns:
        raise InputError(
            f"obs has no batch column '{batch_key}'",
            column=batch_key,
            hint=f"use one of {list(adata.obs.columns)} or batch_key=None",
        )
    excluded = qc_gene_mask(adata.var_names, exclude)
    keep = np.flatnonzero(~excluded)
    if n_top_genes < 1 or n_top_genes > keep.size:
        raise InputError(
            f"n_top_genes={n_top_genes} is not in [1, {keep.size}] (genes not excluded)",
            key="n_top_genes",
        )
    batch = None
    if batch_key is not None:
        batch = pd.Categorical(adata.obs[batch_key].astype(str))
    x = adata.X
    store = store_of(adata)
    if store is not None or (sp.issparse(x) and x.format == "csr" and adata.var_names.is_unique):
        blocks = [(0, x)] if store is None else ((lo, b) for lo, _, b in rna_blocks(adata))
        names = np.asarray(adata.var_names)
        df = _seurat_hvg(blocks, adata.n_obs, names, batch, keep, n_top_genes)
    else:  # dense, CSC or duplicate gene names: scanpy itself
        # A light AnnData sharing .X (no copy); scanpy copies one batch at a time.
        obs = pd.DataFrame(index=adata.obs_names)
        if batch is not None:
            obs["batch"] = batch
        light = AnnData(X=x, obs=obs, var=pd.DataFrame(index=adata.var_names))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = sc.pp.highly_variable_genes(
                light[:, keep],
                n_top_genes=n_top_genes,
                flavor="seurat",
                batch_key=None if batch is None else "batch",
                inplace=False,
            )
    df.index = adata.var_names[keep]
    for col, fill in (
        ("highly_variable", False),
        ("means", np.nan),
        ("dispersions_norm", np.nan),
        ("highly_variable_nbatches", 0),
    ):
        full = pd.Series(fill, index=adata.var_names)
        if col in df.columns:
            full.iloc[keep] = df[col].to_numpy()
        adata.var[key_added if col == "highly_variable" else col] = full.to_numpy()
    adata.var[key_added] = adata.var[key_added].astype(bool)
    adata.var["hvg_excluded"] = excluded
    adata.uns["hvg"] = {
        "flavor": "seurat",
        "n_top_genes": int(n_top_genes),
        "batch_key": batch_key,
        "exclude": list(exclude),
    }


# --------------------------------------------------------------------------------------------
# PCA


def _check_n_comps(n_comps: int, limit: int, what: str) -> None:
    if not 1 <= n_comps <= limit:
        raise InputError(
            f"n_comps={n_comps} is not in [1, {limit}] for {what}",
            key="n_comps",
            hint=f"use at most {limit} components",
        )


def _flip_signs(loadings: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude loading of each component positive (deterministic sign)."""
    idx = np.argmax(np.abs(loadings), axis=0)
    signs = np.sign(loadings[idx, np.arange(loadings.shape[1])])
    signs[signs == 0] = 1.0
    return loadings * signs


def _scaled_block(
    block: np.ndarray | sp.spmatrix, mean: np.ndarray, std: np.ndarray, max_value: float | None
) -> np.ndarray:
    """Dense ``(block - mean) / std`` clipped to ``[-max_value, max_value]``, float64."""
    dense = block.toarray() if sp.issparse(block) else np.asarray(block)
    z = (dense.astype(np.float64) - mean) / std
    if max_value is not None:
        np.clip(z, -max_value, max_value, out=z)
    return z


@numba.njit(cache=True)
def _csr_column_sums(data, indices, indptr, col, n_cols, start, stop):  # pragma: no cover
    """Sums and sums of squares (float64) of rows ``[start, stop)`` per mapped column.

    Rows are added in order from zero, as ``csr.astype(float64).sum(axis=0)`` does.
    """
    total = np.zeros(n_cols)
    total_sq = np.zeros(n_cols)
    for q in range(indptr[start], indptr[stop]):
        c = col[indices[q]]
        if c >= 0:
            v = np.float64(data[q])
            total[c] += v
            total_sq[c] += v * v
    return total, total_sq


@numba.njit(parallel=True, cache=True)
def _csr_scaled_rows(data, indices, indptr, col, start, mean, std, lo, hi, out):  # pragma: no cover
    """``out[r] = clip((x[start + r, mapped columns] - mean) / std, lo, hi)``, float64.

    The same operations as densifying, subtracting and dividing in float64, then clipping.
    """
    n_rows, p = out.shape
    fill = np.empty(p)
    for c in range(p):
        fill[c] = min(max((0.0 - mean[c]) / std[c], lo), hi)
    for r in numba.prange(n_rows):
        for c in range(p):
            out[r, c] = fill[c]
        for q in range(indptr[start + r], indptr[start + r + 1]):
            c = col[indices[q]]
            if c >= 0:
                out[r, c] = min(max((np.float64(data[q]) - mean[c]) / std[c], lo), hi)


def scaled_pca(
    x: np.ndarray | sp.spmatrix,
    n_comps: int,
    *,
    columns: np.ndarray | None = None,
    max_value: float | None = 10.0,
    block_cells: int = BLOCK_CELLS,
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the scaled, clipped columns of ``x`` without holding them densely.

    Equal (up to floating point and sign) to ``sc.pp.scale(max_value=max_value)`` (unit
    variance with ``ddof=1``, zero-variance columns left unscaled) followed by a centred PCA:
    the scaled values are built ``block_cells`` rows at a time, their column sums and gene x
    gene cross-product are accumulated in float64, and the centred covariance is
    eigendecomposed. Memory: ``block_cells x n_features`` (float64 and ``dtype``) +
    ``n_features x n_features``. A CSR ``x`` is read in place (one numba pass per block, no
    column subset copied).

    Parameters
    ----------
    x
        ``n_cells x n_all`` (CSR or dense), e.g. log-normalised expression.
    n_comps
        Number of components, at most the number of features.
    columns
        Indices of the ``n_features`` columns to use (e.g. the HVGs); None: all.
    max_value
        Clip scaled values to ``[-max_value, max_value]``; None to not clip.
    block_cells
        Rows densified at a time.
    dtype
        Precision of the per-block products (``"float32"``: twice as fast; sums over blocks,
        means and the eigendecomposition are always float64).

    Returns
    -------
    scores
        ``n_cells x n_comps`` float32 principal components.
    loadings
        ``n_features x n_comps`` (unit columns; largest loading of each positive).
    variance, variance_ratio
        ``(n_comps,)`` variance of each component and its share of the total variance.
    """
    n = x.shape[0]
    columns = np.arange(x.shape[1]) if columns is None else np.asarray(columns)
    p = columns.size
    _check_n_comps(n_comps, min(p, max(n - 1, 1)), f"{n} cells x {p} features")
    starts = range(0, n, block_cells)
    csr = None
    if sp.issparse(x):
        csr = sp.csr_matrix(x)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        col = np.full(x.shape[1], -1, dtype=np.int64)
        col[columns] = np.arange(p)
        args = (csr.data, csr.indices, csr.indptr, col)
    else:
        x = np.asarray(x)[:, columns]
    bound = np.inf if max_value is None else float(max_value)

    def scaled(s: int) -> np.ndarray:
        if csr is None:
            return _scaled_block(x[s : s + block_cells], mean, std, max_value)
        out = np.empty((min(block_cells, n - s), p))
        _csr_scaled_rows(*args, s, mean, std, -bound, bound, out)
        return out

    # Pass 1: column means and variances (ddof=1), as sc.pp.scale.
    total = np.zeros(p)
    total_sq = np.zeros(p)
    for s in starts:
        if csr is not None:
            blk_sum, blk_sq = _csr_column_sums(*args, p, s, min(s + block_cells, n))
            total += blk_sum
            total_sq += blk_sq
        else:
            blk = np.asarray(x[s : s + block_cells], dtype=np.float64)
            total += blk.sum(axis=0)
            total_sq += (blk * blk).sum(axis=0)
    mean = total / n
    var = (total_sq - n * mean**2) / max(n - 1, 1)
    std = np.sqrt(np.maximum(var, 0.0))
    std[std == 0] = 1.0
    # Pass 2: cross-product and sums of the clipped scaled values.
    gram = np.zeros((p, p))
    zsum = np.zeros(p)
    for s in starts:
        z = scaled(s)
        zsum += z.sum(axis=0)
        z = z.astype(dtype, copy=False)
        gram += z.T @ z
    del z
    zmean = zsum / n
    cov = (gram - n * np.outer(zmean, zmean)) / max(n - 1, 1)
    del gram
    evals, evecs = scipy.linalg.eigh(cov, subset_by_index=[p - n_comps, p - 1])
    order = np.argsort(evals)[::-1]
    loadings = _flip_signs(evecs[:, order])
    variance = np.maximum(evals[order], 0.0)
    variance_ratio = variance / max(float(np.trace(cov)), np.finfo(float).tiny)
    # Pass 3: scores.
    scores = np.empty((n, n_comps), dtype=np.float32)
    offset = zmean @ loadings
    for s in starts:
        scores[s : s + block_cells] = scaled(s) @ loadings - offset
    return scores, loadings, variance, variance_ratio


def pca_rna(
    adata: AnnData,
    n_comps: int = 50,
    *,
    mask_var: str | None = "highly_variable",
    max_value: float | None = 10.0,
    key_added: str = "X_pca",
    block_cells: int = BLOCK_CELLS,
    dtype: str = "float32",
) -> None:
    """PCA of the scaled log-normalised RNA on the HVGs, without a dense cells x genes matrix.

    The result equals ``sc.pp.scale(adata[:, hvg], max_value=10)`` + ``sc.pp.pca`` up to the
    sign of each component (see `scaled_pca`); ``.X`` is not modified.

    Parameters
    ----------
    adata
        RNA, ``n_cells x n_genes``, log-normalised ``.X`` (CSR).
    n_comps
        Number of components (the study's Seurat default: 50).
    mask_var
        Boolean ``var`` column of the genes to use (`highly_variable_genes`); None: all.
    max_value
        Clip scaled values at this many standard deviations (sc.pp.scale ``max_value``).
    key_added
        ``obsm`` key of the ``n_cells x n_comps`` scores; loadings go to
        ``varm["PCs" if key_added == "X_pca" else key_added + "_loadings"]``
        (``n_genes x n_comps``, zero for unused genes), parameters and
        ``variance`` / ``variance_ratio`` to ``uns[key_added without "X_"]``.
    block_cells
        Cells densified at a time (memory: ``block_cells x n_hvg`` float64).
    dtype
        Precision of the block products (see `scaled_pca`).

    Returns
    -------
    None.
    """
    if mask_var is None:
        genes = np.arange(adata.n_vars)
    else:
        if mask_var not in adata.var.columns:
            raise InputError(
                f"var has no column '{mask_var}'",
                column=mask_var,
                hint="run highly_variable_genes first, or pass mask_var=None",
            )
        genes = np.flatnonzero(adata.var[mask_var].to_numpy(dtype=bool))
        if genes.size < 2:
            raise InputError(f"var['{mask_var}'] selects {genes.size} genes", column=mask_var)
    x, columns = adata.X, genes
    if store_of(adata) is not None:  # counts on disk: only these genes' columns in memory
        x, columns = rna_columns(adata, genes), None
    scores, loadings, variance, ratio = scaled_pca(
        x, n_comps, columns=columns, max_value=max_value, block_cells=block_cells,
        dtype=dtype,
    )  # fmt: skip
    del x
    adata.obsm[key_added] = scores
    full = np.zeros((adata.n_vars, n_comps), dtype=np.float32)
    full[genes] = loadings
    adata.varm["PCs" if key_added == "X_pca" else f"{key_added}_loadings"] = full
    adata.uns[key_added.removeprefix("X_")] = {
        "variance": variance,
        "variance_ratio": ratio,
        "params": {"mask_var": mask_var, "max_value": max_value, "n_comps": int(n_comps)},
    }


def pca_prot(
    adata: AnnData,
    n_comps: int | None = None,
    *,
    max_value: float | None = 10.0,
    exclude_isotypes: bool = True,
    key_added: str = "X_pca_prot",
) -> None:
    """PCA of the scaled CLR protein values, isotype controls excluded.

    ``n_comps`` defaults to ``min(n_proteins - 1, 30)`` (proteins after removing isotypes).
    The Seurat WNN vignette and the study use 18 protein PCs for a 25-antibody panel (about
    0.7 per antibody); with panels of 100-200 antibodies the variance beyond 30 PCs is noise
    of single antibodies, and 30 keeps the protein and RNA (50 PCs) embeddings of similar size.

    Parameters
    ----------
    adata
        Protein modality, ``n_cells x n_proteins``, CLR (or dsb) values in ``.X``.
    n_comps
        Number of components; None for the default above.
    max_value
        Clip scaled values at this many standard deviations.
    exclude_isotypes
        Leave out isotype controls (``var["isotype"]``, else by name).
    key_added
        ``obsm`` key of the ``n_cells x n_comps`` scores; loadings in
        ``varm[key_added + "_loadings"]``, variance ratios in ``uns[key_added without "X_"]``.

    Returns
    -------
    None.
    """
    from sccohort.pp.normalize import isotype_controls

    use = np.ones(adata.n_vars, dtype=bool)
    if exclude_isotypes:
        use &= ~adata.var_names.isin(isotype_controls(adata))
    n_use = int(use.sum())
    if n_use < 2:
        raise InputError(
            f"only {n_use} non-isotype antibodies: no protein PCA possible",
            hint="check the protein panel (var['isotype'])",
        )
    if n_comps is None:
        n_comps = min(n_use - 1, 30)
    x = adata.X
    x = x[:, np.flatnonzero(use)]
    scores, loadings, variance, ratio = scaled_pca(x, n_comps, max_value=max_value, dtype="float64")
    adata.obsm[key_added] = scores
    full = np.zeros((adata.n_vars, n_comps), dtype=np.float32)
    full[use] = loadings
    adata.varm[f"{key_added}_loadings"] = full
    adata.uns[key_added.removeprefix("X_")] = {
        "variance": variance,
        "variance_ratio": ratio,
        "params": {
            "max_value": max_value,
            "n_comps": int(n_comps),
            "exclude_isotypes": exclude_isotypes,
        },
    }


# --------------------------------------------------------------------------------------------
# Harmony


def harmony(
    adata: AnnData,
    basis: str = "X_pca",
    *,
    batch_key: str | Sequence[str] = "sample_id",
    key_added: str = "X_harmony",
    theta: float | Sequence[float] = 2.0,
    max_iter: int = 20,
    seed: int = 0,
    n_threads: int = 0,
) -> None:
    """Harmony integration (Korsunsky et al. 2019) of an embedding across batches.

    Uses harmonypy 2.x (C++ backend; results do not depend on ``n_threads``). Harmony stops
    when its objective converges, so ``max_iter`` is an upper bound (R's default is 10;
    20 lets large cohorts converge).

    Parameters
    ----------
    adata
        Cells x anything, with ``obsm[basis]`` (``n_cells x n_dims``).
    basis
        Embedding to integrate, e.g. ``"X_pca"`` or ``"X_pca_prot"``.
    batch_key
        ``obs`` column(s) with the batch of each cell.
    key_added
        ``obsm`` key of the ``n_cells x n_dims`` float32 result.
    theta
        Diversity penalty (one value, or one per batch column).
    max_iter
        Maximum Harmony iterations.
    seed
        Random state of Harmony's k-means initialisation.
    n_threads
        Threads for harmonypy (0: one per physical core).

    Returns
    -------
    None.
    """
    import logging

    import harmonypy

    if basis not in adata.obsm:
        raise InputError(
            f"obsm has no '{basis}'",
            key=basis,
            hint="compute the embedding first (pca_rna / pca_prot)",
        )
    keys = [batch_key] if isinstance(batch_key, str) else list(batch_key)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise InputError(
            f"obs has no batch column(s) {missing}",
            column=missing[0],
            hint=f"use one of {list(adata.obs.columns)}",
        )
    emb = np.asarray(adata.obsm[basis], dtype=np.float64)
    meta = pd.DataFrame({k: adata.obs[k].astype(str).to_numpy() for k in keys})
    if all(meta[k].nunique() < 2 for k in keys):
        warnings.warn(
            f"only one batch in {keys}: '{key_added}' is a copy of '{basis}'", stacklevel=2
        )
        adata.obsm[key_added] = emb.astype(np.float32)
        return
    theta_arg = [float(theta)] * len(keys) if np.isscalar(theta) else [float(t) for t in theta]
    log = logging.getLogger("harmonypy")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        # Pass dims x cells: harmonypy infers the orientation from the number of cells.
        ho = harmonypy.run_harmony(
            np.ascontiguousarray(emb.T),
            meta,
            keys,
            theta=theta_arg,
            max_iter_harmony=max_iter,
            random_state=seed,
            verbose=False,
            ncores=n_threads,
        )
    finally:
        log.setLevel(level)
    z = np.asarray(ho.Z_corr)
    if z.shape != emb.shape:  # older harmonypy returns dims x cells
        z = z.T
    adata.obsm[key_added] = z.astype(np.float32)
    adata.uns[key_added.removeprefix("X_")] = {
        "basis": basis,
        "batch_key": keys,
        "theta": theta_arg,
        "max_iter": int(max_iter),
        "seed": int(seed),
        "n_iterations": len(ho.objective_harmony),
    }


# --------------------------------------------------------------------------------------------
# clustering and layout


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


class _IgraphRandom:
    """igraph's random number source drawn from ``np.random.RandomState(seed)``.

    The adapter scanpy's ``sc.tl.leiden`` installs (same draws, so the same clusters), so
    that igraph's global generator is left as it was found.
    """

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def __getattr__(self, attr: str):
        return getattr(self._rng, "normal" if attr == "gauss" else attr)


def _igraph_undirected(adjacency: sp.spmatrix) -> igraph.Graph:
    """Undirected weighted igraph graph of a sparse ``n x n`` adjacency, each pair once.

    ``sc.tl.leiden(flavor="igraph")`` makes one undirected edge per stored entry, so a
    symmetric graph gets every pair twice (and each loop once). Here each pair i < j is one
    edge weighing ``A[i, j] + A[j, i]`` and each loop keeps ``A[i, i]``: the same node
    strengths, total weight and modularity with half the edges (which igraph's Python
    constructor converts at ~1 us each). Edges are listed row by row, loop first.
    """
    import igraph

    a = sp.csr_matrix(adjacency, dtype=np.float64)
    a.eliminate_zeros()
    both = (a + a.T - sp.diags(a.diagonal())).tocsr()  # 2 d - d == d exactly
    upper = sp.triu(both, k=0, format="csr")
    del both
    upper.eliminate_zeros()
    upper.sort_indices()
    rows = np.repeat(np.arange(upper.shape[0]), np.diff(upper.indptr))
    graph = igraph.Graph(n=upper.shape[0])
    for s in range(0, rows.size, _EDGE_CHUNK):  # Python tuples for a chunk at a time
        cut = slice(s, s + _EDGE_CHUNK)
        graph.add_edges(list(zip(rows[cut].tolist(), upper.indices[cut].tolist(), strict=True)))
    graph.es["weight"] = upper.data.tolist()
    return graph


def leiden(
    adata: AnnData,
    *,
    neighbors_key: str | None = None,
    resolution: float = 1.0,
    key_added: str = "leiden",
    n_iterations: int = 2,
    seed: int = 0,
) -> None:
    """Leiden clustering (igraph's implementation, modularity) of a neighbour graph.

    As ``sc.tl.leiden(flavor="igraph", directed=False)`` (same objective, random draws and
    outputs; the graph is handed to igraph with each pair once, see `_igraph_undirected`,
    which halves its conversion and clustering time: the labels were identical on 53,000 and
    230,000 cells).

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
    """
    import igraph

    _, entry = _neighbors_entry(adata, neighbors_key)
    graph = _igraph_undirected(adata.obsp[entry["connectivities_key"]])
    igraph.set_random_number_generator(_IgraphRandom(seed))
    try:
        part = graph.community_leiden(
            objective_function="modularity",
            weights="weight",
            resolution=resolution,
            n_iterations=n_iterations,
        )
    finally:
        igraph.set_random_number_generator(random)
    groups = np.asarray(part.membership)
    adata.obs[key_added] = pd.Categorical(
        groups.astype("U"), categories=[str(g) for g in np.unique(groups)]
    )
    adata.uns[key_added] = {
        "params": {"resolution": resolution, "random_state": seed, "n_iterations": n_iterations}
    }


def _induced(graph: sp.csr_matrix, idx: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(graph[idx][:, idx])


def _init_coords(embedding: np.ndarray) -> np.ndarray:
    """First two columns of an embedding, float32, as a UMAP starting layout."""
    return np.ascontiguousarray(np.asarray(embedding)[:, :2], dtype=np.float32)


def umap(
    adata: AnnData,
    *,
    neighbors_key: str | None = None,
    max_cells: int = UMAP_MAX_CELLS,
    key_added: str = "X_umap",
    min_dist: float = 0.5,
    init: str | None = None,
    seed: int = 0,
) -> None:
    """UMAP of a neighbour graph; large cohorts are laid out on a random subsample.

    Up to ``max_cells`` cells: ``sc.tl.umap`` on the graph. Above it, the layout is computed
    on ``max_cells`` randomly chosen cells (their induced subgraph, which keeps about
    ``max_cells / n_cells`` of each cell's edges: 43% for 230,000 cells and the default
    100,000), and every other cell is placed at the connectivity-weighted mean of its laid-out
    neighbours; cells whose neighbours are all unplaced are placed in a next round from the
    placed ones. Cells with no path to a laid-out cell get NaN (counted in
    ``uns[key]["n_unplaced"]``). Figures draw a random subsample anyway (the study showed
    30,000 cells per UMAP).

    Parameters
    ----------
    adata
        Cells x anything with the graph named by ``uns[neighbors_key]``.
    neighbors_key
        Graph to lay out (None: ``"neighbors"``).
    max_cells
        Largest number of cells laid out by UMAP itself.
    key_added
        ``obsm`` key of the ``n_cells x 2`` float32 coordinates.
    min_dist
        UMAP's minimum distance.
    init
        ``obsm`` key of an embedding whose first two columns start the layout (e.g. the
        Harmony PCs), or None for UMAP's spectral initialisation. PCA initialisation keeps
        the global structure as well as the spectral one (Kobak & Linderman 2021, Nat.
        Biotechnol.) and skips its eigendecomposition: 31 s instead of 67 s on 58,000 cells.
    seed
        Random seed of the subsample and of UMAP.

    Returns
    -------
    None. Writes ``obsm[key_added]`` and ``uns[key_added without "X_"]`` (parameters, number
    of cells laid out, placed and unplaced).
    """
    import scanpy as sc

    key, entry = _neighbors_entry(adata, neighbors_key)
    graph = sp.csr_matrix(adata.obsp[entry["connectivities_key"]])
    n = adata.n_obs
    info: dict = {"neighbors_key": key, "max_cells": int(max_cells), "seed": int(seed)}
    if init is not None and init not in adata.obsm:
        raise InputError(
            f"obsm has no embedding '{init}' to start UMAP from",
            key="init",
            hint=f"Embeddings: {', '.join(adata.obsm)}; or init=None (spectral)",
        )
    info["init"] = init or "spectral"
    rng = np.random.default_rng(seed)
    sub = np.arange(n) if n <= max_cells else np.sort(rng.choice(n, size=max_cells, replace=False))
    params = dict(entry.get("params", {}))
    rep = params.get("use_rep")
    if rep is not None and rep in adata.obsm:
        small = AnnData(obs=pd.DataFrame(index=adata.obs_names[sub]))
        small.obsm[rep] = np.asarray(adata.obsm[rep])[sub]
    else:
        # A graph without its representation at hand (WNN; a graph built from an embedding
        # held elsewhere): UMAP only uses the data to place disconnected components of the
        # spectral initialisation; zeros stand in.
        small = AnnData(X=np.zeros((sub.size, 1), dtype=np.float32))
        small.obs_names = adata.obs_names[sub]
        params |= {"use_rep": "X", "n_pcs": None}
    small.obsp["connectivities"] = graph if sub.size == n else _induced(graph, sub)
    small.uns["neighbors"] = {"connectivities_key": "connectivities", "params": params}
    init_pos = "spectral"
    if init is not None:
        small.obsm["_umap_init"] = _init_coords(np.asarray(adata.obsm[init])[sub])
        init_pos = "_umap_init"
    sc.tl.umap(small, min_dist=min_dist, random_state=seed, init_pos=init_pos)
    if sub.size == n:
        adata.obsm[key_added] = np.asarray(small.obsm["X_umap"], dtype=np.float32)
        adata.uns[key_added.removeprefix("X_")] = info | {
            "n_laid_out": n,
            "n_placed": 0,
            "n_unplaced": 0,
        }
        return
    coords = np.full((n, 2), np.nan)
    coords[sub] = small.obsm["X_umap"]
    placed = np.zeros(n, dtype=bool)
    placed[sub] = True
    n_placed = 0
    while not placed.all():
        w = graph[:, placed]
        weight = np.asarray(w.sum(axis=1)).ravel()
        new = ~placed & (weight > 0)
        if not new.any():
            break
        coords[new] = (w[new] @ coords[placed]) / weight[new, None]
        placed |= new
        n_placed += int(new.sum())
    n_unplaced = int((~placed).sum())
    if n_unplaced:
        warnings.warn(
            f"{n_unplaced} cells have no path to a laid-out cell: their UMAP is NaN",
            stacklevel=2,
        )
    adata.obsm[key_added] = coords.astype(np.float32)
    adata.uns[key_added.removeprefix("X_")] = info | {
        "n_laid_out": int(max_cells),
        "n_placed": n_placed,
        "n_unplaced": n_unplaced,
    }

"""Batch-aware highly variable genes without densifying the cells x genes matrix.

`highly_variable_genes`: Seurat-flavour dispersion ranking per batch (scanpy's
``flavor="seurat"`` with ``batch_key``) on the log-normalised ``.X``, QC genes excluded.
``seurat_v3`` (on counts) needs ``scikit-misc``, which sccohort does not depend on.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.pp.store import rna_blocks, store_of

#: Gene-name patterns never taken as HVGs by default: mitochondrial, ribosomal protein and
#: haemoglobin genes. Their variation tracks cell stress, library quality and red-cell or
#: ambient contamination (removed by QC), not immune cell identity.
QC_GENE_PATTERNS = {
    "mito": r"^MT-",
    "ribo": r"^RP[SL]\d+[A-Z]?\d*$|^RP[SL]P\d$",
    "hb": r"^HB[ABDEGMQZ]\d?$",
}


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

    Examples
    --------
    >>> from sccohort.tl import hvg_count
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> hvg_count("auto", mdata["rna"].var_names), hvg_count(500, mdata["rna"].var_names)
    (2000, 500)
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

    Examples
    --------
    >>> from sccohort.tl import highly_variable_genes
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> rna = mdata["rna"]
    >>> rna.obs["sample_id"] = mdata.obs["sample_id"].to_numpy()
    >>> highly_variable_genes(rna, n_top_genes=500, batch_key="sample_id")
    >>> int(rna.var["highly_variable"].sum())
    500
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

"""Memory-bounded PCA of RNA and protein.

- `pca_rna`: exactly ``sc.pp.scale(max_value=10)`` + ``sc.pp.pca`` on the HVGs, computed from
  the gene x gene covariance, accumulated over dense blocks of ``block_cells`` cells
  (``block_cells x n_hvg``, 80 MB by default) and eigendecomposed; the scaled
  ``n_cells x n_hvg`` matrix never exists.
- `pca_prot`: PCA of the scaled CLR protein values (dense is fine: ~150 antibodies),
  isotype controls excluded.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.pp.store import rna_columns, store_of

#: Cells per dense block in `pca_rna` (block_cells x n_hvg float32: 80 MB for 2,000 HVGs).
BLOCK_CELLS = 10_000


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

    Examples
    --------
    >>> from sccohort.tl import scaled_pca
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> scaled_pca(x, 2)[0].shape  # the cells' scores first
    (200, 2)
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

    Examples
    --------
    >>> from sccohort.tl import highly_variable_genes, pca_rna
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> rna = mdata["rna"]
    >>> highly_variable_genes(rna, n_top_genes=500, batch_key=None)
    >>> pca_rna(rna, n_comps=20)
    >>> rna.obsm["X_pca"].shape
    (1200, 20)
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

    Examples
    --------
    >>> from sccohort.tl import pca_prot
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> pca_prot(mdata["prot"], n_comps=10)
    >>> mdata["prot"].obsm["X_pca_prot"].shape
    (1200, 10)
    """
    from sccohort.pp.dsb import isotype_controls

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

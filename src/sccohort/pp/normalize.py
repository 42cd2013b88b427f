"""RNA and protein normalisation: log-normalisation, Pearson residuals and CLR.

Every function reads raw counts from a named layer (``layers["counts"]`` by default; never
modified), writes normalised values into ``.X`` (or ``layers[key_added]``) and returns None.

- RNA ``log1p``: total-count scaling to ``target_sum`` then ``log1p``; ``.X`` stays sparse
  (float32 CSR), computed in blocks of cells so no cells x genes array is ever dense.
- RNA ``pearson_residuals``: analytic Pearson residuals of a negative binomial with fixed
  overdispersion (Lause et al. 2021; scanpy's ``sc.experimental.pp.normalize_pearson_residuals``).
  The result is dense, so it is only allowed on a gene subset (e.g. highly variable genes).
- Protein ``clr``: Seurat's centred log-ratio, per cell (default) or per feature.
- Protein ``dsb``: in `sccohort.pp.dsb` (it shares this module's input checks).

Protein outputs are dense float32 (panels are ~100-200 antibodies) and never contain NaN.
Defined edge cases for proteins: an antibody with zero counts in every cell is kept with value 0
and named in a warning (``var["zero_in_all_cells"]``); a cell with zero protein counts is
flagged in ``obs["zero_protein_counts"]`` and named by count in a warning (its CLR values are
all 0).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError

#: Fewer empty droplets than this cannot estimate the ambient distribution of every antibody.
MIN_EMPTY_DROPLETS = 100
#: Largest dense residual matrix ``normalize_rna(method="pearson_residuals")`` will build
#: (values; 4 bytes each as float32, so 2 GB).
MAX_DENSE_VALUES = 500_000_000
#: Protein functions densify cells x features; panels beyond this size are not protein panels.
MAX_PROTEIN_FEATURES = 1_000
#: Rows processed at a time by the blocked computations (bounds temporary memory).
BLOCK_CELLS = 20_000

# Isotype controls by name: "isotype" anywhere; "IgG" anywhere (IgG1, IgG2a, MouseIgG1kappa...);
# IgM / IgA / IgE only after a host species ("Mouse IgM", "RatIgM"): a bare "IgM" or "IgA" is the
# anti-human immunoglobulin antibody that marks B cells, not a control.


# --------------------------------------------------------------------------------------------
# shared helpers


def _sample_of(adata: AnnData) -> str | None:
    """The sample id of a one-sample object (for error messages), else None."""
    if "sample_id" in adata.obs.columns:
        ids = pd.unique(adata.obs["sample_id"].astype(str))
        if len(ids) == 1:
            return str(ids[0])
    return None


def _counts(adata: AnnData, layer: str | None, what: str) -> np.ndarray | sp.spmatrix:
    """Raw counts of ``adata`` from ``layers[layer]`` (or ``.X`` when ``layer`` is None)."""
    if layer is None:
        mat = adata.X
    elif layer in adata.layers:
        mat = adata.layers[layer]
    else:
        raise InputError(
            f"the {what} data has no layers['{layer}'] (layers present: {list(adata.layers)})",
            key=layer,
            sample=_sample_of(adata),
            hint="keep raw integer counts in layers['counts'] (the pipeline's convention), "
            "or pass layer=None to read raw counts from .X",
        )
    if mat is None:
        raise InputError(f"the {what} data has no count matrix", sample=_sample_of(adata))
    values = mat.data if sp.issparse(mat) else np.asarray(mat)
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        raise InputError(
            f"the {what} counts contain negative, NaN or infinite values",
            key=layer,
            sample=_sample_of(adata),
            hint="pass raw UMI counts (non-negative integers), not normalised values",
        )
    return mat


def _dense(mat: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Dense float64 copy of a (protein-sized) matrix."""
    if sp.issparse(mat):
        return mat.toarray().astype(np.float64, copy=False)
    return np.array(mat, dtype=np.float64)


def _check_protein_panel(adata: AnnData, what: str) -> None:
    if adata.n_vars > MAX_PROTEIN_FEATURES:
        raise InputError(
            f"the {what} data has {adata.n_vars:,} features; protein normalisation densifies "
            f"cells x features and accepts at most {MAX_PROTEIN_FEATURES:,}",
            sample=_sample_of(adata),
            hint="pass the protein modality (mdata.mod['prot']), not the RNA",
        )
    if adata.var_names.has_duplicates:
        dup = sorted(set(adata.var_names[adata.var_names.duplicated()]))
        raise InputError(
            f"the {what} data has duplicated feature names: {', '.join(dup[:10])}",
            sample=_sample_of(adata),
            hint="make antibody names unique (e.g. adata.var_names_make_unique())",
        )


def _flag_zeros(adata: AnnData, x: np.ndarray, method: str) -> np.ndarray:
    """Flag all-zero proteins and cells in ``var`` / ``obs``; warn; return the protein mask."""
    zero_prot = ~np.any(x > 0, axis=0)
    zero_cell = ~np.any(x > 0, axis=1)
    adata.var["zero_in_all_cells"] = zero_prot
    adata.obs["zero_protein_counts"] = zero_cell
    if zero_prot.any():
        names = list(adata.var_names[zero_prot])
        warnings.warn(
            f"{method}: {len(names)} antibodies have zero counts in every cell and are set to 0: "
            + ", ".join(names[:20])
            + (" ..." if len(names) > 20 else ""),
            UserWarning,
            stacklevel=3,
        )
    if zero_cell.any():
        warnings.warn(
            f"{method}: {int(zero_cell.sum())} of {x.shape[0]} cells have zero protein counts "
            "(flagged in obs['zero_protein_counts']; remove them in QC)",
            UserWarning,
            stacklevel=3,
        )
    return zero_prot


def _store(adata: AnnData, values: np.ndarray | sp.spmatrix, key_added: str | None) -> None:
    if key_added is None:
        adata.X = values
    else:
        adata.layers[key_added] = values


# --------------------------------------------------------------------------------------------
# RNA


def normalize_rna(
    adata: AnnData,
    *,
    target_sum: float = 1e4,
    method: Literal["log1p", "pearson_residuals"] = "log1p",
    layer: str | None = "counts",
    theta: float = 100.0,
    clip: float | None = None,
    max_dense_values: int = MAX_DENSE_VALUES,
) -> None:
    """Normalise RNA counts into ``.X``.

    Parameters
    ----------
    adata
        RNA modality, ``n_cells x n_genes``; raw counts in ``layers[layer]`` (sparse or
        dense; read only).
    target_sum
        ``log1p``: every cell's counts are scaled to sum to this before ``log1p``.
    method
        ``"log1p"``: ``.X = log1p(counts / total * target_sum)`` as float32 CSR
        (``n_cells x n_genes``, same sparsity as the counts, sharing their ``indices`` and
        ``indptr`` arrays when the counts are a canonical CSR; cells with zero counts stay 0).
        ``"pearson_residuals"``: ``.X = (counts - mu) / sqrt(mu + mu**2 / theta)`` with
        ``mu = cell_total * gene_total / grand_total``, clipped to ``[-clip, clip]`` -- the
        semantics of scanpy's ``sc.experimental.pp.normalize_pearson_residuals`` -- as a dense
        float32 array. Residuals are dense, so this method refuses objects with more than
        ``max_dense_values`` entries: select genes first, e.g.
        ``normalize_rna(adata[:, adata.var["highly_variable"]].copy(), method=...)``.
        Genes or cells with zero counts get residual 0 (scanpy gives NaN).
    layer
        Layer holding the raw counts; None reads ``.X``.
    theta
        Negative binomial overdispersion of the residuals (scanpy's default 100).
    clip
        Residual clipping bound; None means ``sqrt(n_cells)`` (scanpy's default).
    max_dense_values
        Size limit (cells x genes) for the dense residual matrix.

    Returns
    -------
    None. Writes ``.X`` and ``uns["normalize_rna"]`` (method and parameters).

    Examples
    --------
    >>> from sccohort.pp import normalize_rna
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> rna = mdata["rna"]
    >>> rna.X = rna.layers["counts"].copy()
    >>> normalize_rna(rna)
    >>> rna.uns["normalize_rna"]
    {'method': 'log1p', 'target_sum': 10000.0}
    """
    if method not in ("log1p", "pearson_residuals"):
        raise InputError(
            f"unknown RNA normalisation method {method!r}",
            key="method",
            hint="use 'log1p' or 'pearson_residuals'",
        )
    counts = _counts(adata, layer, "RNA")
    if method == "log1p":
        if not target_sum > 0:
            raise InputError(f"target_sum must be > 0, got {target_sum}", key="target_sum")
        adata.X = _log_normalize(counts, float(target_sum))
        adata.uns["normalize_rna"] = {"method": method, "target_sum": float(target_sum)}
        return
    if not theta > 0:
        raise InputError(f"theta must be > 0, got {theta}", key="theta")
    n_cells, n_genes = adata.shape
    if n_cells * n_genes > max_dense_values:
        raise InputError(
            f"Pearson residuals are a dense matrix: {n_cells:,} cells x {n_genes:,} genes = "
            f"{n_cells * n_genes:,} values exceeds max_dense_values={max_dense_values:,}",
            key="method",
            sample=_sample_of(adata),
            hint="compute them on a gene subset, e.g. normalize_rna(adata[:, "
            "adata.var['highly_variable']].copy(), method='pearson_residuals'), or raise "
            "max_dense_values if memory allows (4 bytes per value)",
        )
    clip_at = float(np.sqrt(n_cells)) if clip is None else float(clip)
    if clip_at < 0:
        raise InputError(f"clip must be >= 0 or None, got {clip}", key="clip")
    adata.X = _pearson_residuals(counts, float(theta), clip_at)
    adata.uns["normalize_rna"] = {"method": method, "theta": float(theta), "clip": clip_at}


def cell_scale(totals: np.ndarray, target_sum: float) -> np.ndarray:
    """Per-cell factor ``target_sum / total`` (0 for a cell without counts)."""
    with np.errstate(divide="ignore"):
        return np.where(totals > 0, target_sum / totals, 0.0)


def _log_normalize(counts: np.ndarray | sp.spmatrix, target_sum: float) -> sp.csr_matrix:
    """``log1p(counts / total * target_sum)`` as float32 CSR (`_log1p_rows`, rows in parallel)."""
    csr = sp.csr_matrix(counts)  # no copy when already a CSR matrix
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    totals = np.empty(csr.shape[0], dtype=np.float64)
    _row_sums(csr.data, csr.indptr, totals)
    scale = cell_scale(totals, target_sum)
    data = np.empty(csr.nnz, dtype=np.float32)
    _log1p_rows(csr.data, csr.indptr, scale, data)
    # the column indices and row pointers are the counts' own (shared, not copied): ``.X``
    # then costs 4 bytes per non-zero instead of 8; neither matrix is ever re-sorted in place
    return sp.csr_matrix((data, csr.indices, csr.indptr), shape=csr.shape, dtype=np.float32)


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_sums(values, indptr, out):  # noqa: ANN001, ANN202  # pragma: no cover - numba
    """``out[row] = sum(float64(values[j]))`` over the row's stored values."""
    for row in numba.prange(indptr.size - 1):
        total = 0.0
        for j in range(indptr[row], indptr[row + 1]):
            total += np.float64(values[j])
        out[row] = total


#: Whole counts below this take their row's log1p from a per-row table.
_LOG1P_TABLE = 32


@numba.njit(parallel=True, cache=True, nogil=True)
def _log1p_rows(values, indptr, scale, out):  # noqa: ANN001, ANN202  # pragma: no cover - numba
    """``out[j] = float32(log1p(float64(values[j]) * scale[row of j]))`` (as numpy rounds it).

    Most counts are small whole numbers: each row's values 0 .. `_LOG1P_TABLE` - 1 are
    computed once (the same expression, so the same bits) and looked up.
    """
    for row in numba.prange(indptr.size - 1):
        factor = scale[row]
        table = np.empty(_LOG1P_TABLE, dtype=np.float32)
        for v in range(_LOG1P_TABLE):
            table[v] = np.float32(np.log1p(np.float64(v) * factor))
        for j in range(indptr[row], indptr[row + 1]):
            value = np.float64(values[j])
            if value >= 0.0 and value < _LOG1P_TABLE and value == np.floor(value):
                out[j] = table[np.int64(value)]
            else:
                out[j] = np.float32(np.log1p(value * factor))


def _pearson_residuals(counts: np.ndarray | sp.spmatrix, theta: float, clip: float) -> np.ndarray:
    """Dense float32 analytic Pearson residuals, computed in blocks of cells."""
    mat = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
    cell_sums = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
    gene_sums = np.asarray(mat.sum(axis=0), dtype=np.float64).ravel()
    total = cell_sums.sum()
    out = np.empty(mat.shape, dtype=np.float32)
    for start in range(0, mat.shape[0], BLOCK_CELLS):
        stop = min(start + BLOCK_CELLS, mat.shape[0])
        block = mat[start:stop]
        block = block.toarray() if sp.issparse(block) else block
        mu = np.outer(cell_sums[start:stop], gene_sums / total) if total > 0 else 0 * block
        with np.errstate(divide="ignore", invalid="ignore"):
            res = (block - mu) / np.sqrt(mu + mu**2 / theta)
        res[mu == 0] = 0.0  # zero-count gene or cell: counts are 0 there too
        out[start:stop] = np.clip(res, -clip, clip)
    return out


# --------------------------------------------------------------------------------------------
# protein: CLR


def clr(
    adata: AnnData,
    *,
    margin: Literal["cell", "feature"] = "cell",
    layer: str | None = "counts",
    key_added: str | None = None,
) -> None:
    """Centred log-ratio normalisation of protein counts, Seurat's formula.

    Seurat's CLR (``NormalizeData(normalization.method = "CLR")``, verified in
    satijalab/seurat ``R/preprocessing.R``) applies to each vector ``x`` it normalises::

        log1p(x / exp(sum(log1p(x[x > 0])) / length(x)))

    i.e. ``log1p(x / g)`` with ``g = exp(mean(log1p(x)))`` over all entries of ``x``
    (zeros count in ``length(x)``; ``log1p(0) = 0``). Which vectors ``x`` are:

    - ``margin="cell"`` (default; Seurat ``margin = 2``, the study's and the Seurat WNN
      vignette's choice): ``x`` is one cell's counts across all antibodies.
    - ``margin="feature"`` (Seurat ``margin = 1``; muon's ``mu.prot.pp.clr`` default): ``x``
      is one antibody's counts across all cells of ``adata``.

    Parameters
    ----------
    adata
        Protein modality, ``n_cells x n_proteins``; raw counts in ``layers[layer]``.
    margin
        ``"cell"`` or ``"feature"``, see above.
    layer
        Layer holding the raw counts; None reads ``.X``.
    key_added
        Write into ``layers[key_added]`` instead of ``.X``.

    Returns
    -------
    None. Writes a dense float32 ``n_cells x n_proteins`` array into ``.X`` (or the layer),
    ``obs["zero_protein_counts"]`` (cells with no counts: their CLR values are all 0),
    ``var["zero_in_all_cells"]`` (antibodies never detected: value 0; they still count in
    ``length(x)`` as in Seurat) and ``uns["clr"]``.

    Examples
    --------
    >>> from sccohort.pp import clr
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> prot = mdata["prot"]
    >>> prot.X = prot.layers["counts"].copy()
    >>> clr(prot, margin="cell")
    >>> prot.uns["clr"]
    {'margin': 'cell'}
    """
    if margin not in ("cell", "feature"):
        raise InputError(
            f"unknown CLR margin {margin!r}",
            key="margin",
            hint="use 'cell' (Seurat margin = 2) or 'feature' (Seurat margin = 1)",
        )
    _check_protein_panel(adata, "protein")
    x = _dense(_counts(adata, layer, "protein"))
    _flag_zeros(adata, x, "clr")
    axis = 1 if margin == "cell" else 0
    geo = np.exp(np.log1p(x).sum(axis=axis, keepdims=True) / x.shape[axis])
    _store(adata, np.log1p(x / geo).astype(np.float32), key_added)
    adata.uns["clr"] = {"margin": margin}

"""RNA and protein normalisation: log-normalisation, Pearson residuals, CLR and dsb.

Every function reads raw counts from a named layer (``layers["counts"]`` by default; never
modified), writes normalised values into ``.X`` (or ``layers[key_added]``) and returns None.

- RNA ``log1p``: total-count scaling to ``target_sum`` then ``log1p``; ``.X`` stays sparse
  (float32 CSR), computed in blocks of cells so no cells x genes array is ever dense.
- RNA ``pearson_residuals``: analytic Pearson residuals of a negative binomial with fixed
  overdispersion (Lause et al. 2021; scanpy's ``sc.experimental.pp.normalize_pearson_residuals``).
  The result is dense, so it is only allowed on a gene subset (e.g. highly variable genes).
- Protein ``clr``: Seurat's centred log-ratio, per cell (default) or per feature.
- Protein ``dsb``: Mulè, Martins & Tsang (Nat Commun 2022), R package ``dsb``
  ``DSBNormalizeProtein``: ambient correction from empty droplets, then removal of each cell's
  technical component.

Protein outputs are dense float32 (panels are ~100-200 antibodies) and never contain NaN.
Defined edge cases for proteins: an antibody with zero counts in every cell is kept with value 0
and named in a warning (``var["zero_in_all_cells"]``); a cell with zero protein counts is
flagged in ``obs["zero_protein_counts"]`` and named by count in a warning (its CLR values are
all 0).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

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
_ISOTYPE_NAME = re.compile(r"isotype|igg|(mouse|rat|hamster)[ _.-]*ig[mae]", re.IGNORECASE)


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
    >>> from sccohort.simulate import toy_mudata
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
    >>> from sccohort.simulate import toy_mudata
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


# --------------------------------------------------------------------------------------------
# protein: dsb


def isotype_controls(adata: AnnData) -> list[str]:
    """Names of the isotype-control antibodies of a protein modality.

    Uses the boolean ``var["isotype"]`` column when present; otherwise the names: those
    containing "isotype" or "IgG" (case-insensitive), or a host species followed by IgM / IgA /
    IgE ("Mouse IgM", "RatIgM"). A bare "IgM", "IgA" or "IgD" is not taken: in CITE-seq panels
    it is the anti-human immunoglobulin antibody marking B cells.

    Parameters
    ----------
    adata
        Protein modality (``n_cells x n_proteins``).

    Returns
    -------
    Isotype-control names in ``var_names`` order (possibly empty).

    Examples
    --------
    >>> from sccohort.pp import isotype_controls
    >>> from sccohort.simulate import toy_mudata
    >>> mdata = toy_mudata()
    >>> isotype_controls(mdata["prot"])[:2]
    ['Mouse IgG1 isotype', 'Mouse IgG2a isotype']
    """
    if "isotype" in adata.var.columns:
        mask = adata.var["isotype"].fillna(False).astype(bool).to_numpy()
    else:
        mask = np.array([bool(_ISOTYPE_NAME.search(str(n))) for n in adata.var_names])
    return list(adata.var_names[mask])


def dsb(
    adata: AnnData,
    empty: AnnData,
    *,
    isotypes: Sequence[str] | None = None,
    pseudocount: float = 10.0,
    denoise_counts: bool = True,
    use_isotype_control: bool = True,
    layer: str | None = "counts",
    empty_layer: str | None = "counts",
    key_added: str | None = None,
    max_iter: int = 500,
) -> None:
    """Normalise protein counts with dsb (Mulè, Martins & Tsang, Nat Commun 2022).

    Matches ``dsb::DSBNormalizeProtein`` (R package dsb 1.0.x, ``R/dsb.r``):

    1. ``c = log(counts + pseudocount)`` for cells and ``e`` likewise for empty droplets.
    2. Ambient correction, per protein ``j``: ``z_cj = (c_cj - mean_j(e)) / sd_j(e)``
       (``sd`` with ``n - 1``, as R's ``sd``).
    3. ``denoise_counts``: per cell, a two-component 1-D Gaussian mixture over that cell's ``z``
       of all proteins (``mclust::Mclust(x, G = 2)``: equal- and unequal-variance models, the
       better BIC wins; initial split at the cell's median as mclust's ``qclass`` does; EM
       vectorised over all cells). The mean of the lower ("background") component is the
       cell's background mean ``mu1``.
    4. Technical component ``t``: with isotype controls, PC1 scores of the cells x
       ``[isotype z values..., mu1]`` matrix, each column centred and scaled to unit SD
       (``prcomp(scale = TRUE)``); without, ``t = mu1``.
    5. Per protein, least squares ``z_j ~ a_j + b_j t`` across cells; the output is the
       residual plus the intercept, ``z_j - b_j t``: what ``limma::removeBatchEffect(z,
       covariates = t)`` returns in limma 3.54 (Debian 12; checked). PC1 scores have mean 0,
       so with isotypes this is also ``z_j - b_j (t - mean(t))`` (each protein's mean kept).
       Newer limma releases centre covariates first, which changes only the ``mu1``-only
       variant (``use_isotype_control=False``), by the constant ``b_j mean(mu1)`` per protein.

    The sign of PC1 is arbitrary in R; here it is chosen to correlate positively with ``mu1``
    (the output does not depend on it). Quantile clipping (an R option, off by default) is not
    offered. dsb is deterministic: no random seed is involved.

    Parameters
    ----------
    adata
        Protein modality of one sample (cells that passed QC), ``n_cells x n_proteins``; raw
        counts in ``layers[layer]``.
    empty
        Empty droplets of the same sample/lane from the raw (unfiltered) matrix,
        ``n_empty x n_proteins`` raw counts in ``empty.layers[empty_layer]`` (or ``.X`` when that
        layer is absent); same antibodies as ``adata`` (any order). At least
        ``MIN_EMPTY_DROPLETS`` droplets.
    isotypes
        Isotype-control names; None finds them with :func:`isotype_controls`.
    pseudocount
        Added to counts before the log (dsb's default 10).
    denoise_counts
        Run step 3-5 (remove each cell's technical component); False stops after step 2.
    use_isotype_control
        Build the technical component from isotypes and ``mu1`` (recommended); False uses
        ``mu1`` alone.
    layer, empty_layer
        Layers holding raw counts; None reads ``.X``.
    key_added
        Write into ``layers[key_added]`` instead of ``.X``.
    max_iter
        EM iterations per mixture at most (relative log-likelihood tolerance 1e-5, as
        mclust).

    Returns
    -------
    None. Writes a dense float32 ``n_cells x n_proteins`` array into ``.X`` (or the layer);
    ``obs``: ``dsb_background_mean`` (``mu1``), ``dsb_technical_component`` (``t``),
    ``zero_protein_counts``; ``var``: ``dsb_ambient_mean``, ``dsb_ambient_sd``,
    ``zero_in_all_cells``, ``dsb_normalised``; ``uns["dsb"]`` (parameters, isotypes used,
    number of empty droplets). Antibodies with zero counts in every cell, or with no spread
    in the empty droplets (SD 0: ambient scaling undefined), are left out of steps 3-5, set to
    0 and named in a warning (``var["dsb_normalised"]`` is False for them).

    Raises
    ------
    InputError
        No or fewer than ``MIN_EMPTY_DROPLETS`` empty droplets; antibody panels of cells and
        empty droplets differ (the missing ones are named); isotypes named but absent, or
        requested but none found; ``pseudocount <= 0``.

    Examples
    --------
    >>> from sccohort.pp import dsb
    >>> from sccohort.simulate import toy_mudata
    >>> mdata = toy_mudata()
    >>> healthy = (mdata.obs["donor_id"] == "HD1").to_numpy()
    >>> cells, empty = mdata["prot"][~healthy].copy(), mdata["prot"][healthy].copy()
    >>> dsb(cells, empty)  # HD1's cells stand in for empty droplets here
    >>> cells.X.shape, cells.uns["dsb"]["n_empty_droplets"]
    ((900, 139), 300)
    """
    sample = _sample_of(adata)
    if not pseudocount > 0:
        raise InputError(f"pseudocount must be > 0, got {pseudocount}", key="pseudocount")
    _check_protein_panel(adata, "protein")
    empty = _checked_empty(adata, empty, sample)
    x = _dense(_counts(adata, layer, "protein"))
    e_layer = empty_layer if empty_layer in empty.layers else None
    e = _dense(_counts(empty, e_layer, "empty-droplet protein"))[:, _order(adata, empty)]

    iso_names = _resolve_isotypes(adata, isotypes, denoise_counts and use_isotype_control, sample)

    zero_prot = _flag_zeros(adata, x, "dsb")
    log_e = np.log(e + pseudocount)
    mu_u = log_e.mean(axis=0)
    sd_u = log_e.std(axis=0, ddof=1)
    flat = (sd_u == 0) & ~zero_prot
    if flat.any():
        names = list(adata.var_names[flat])
        warnings.warn(
            f"dsb: {len(names)} antibodies have identical counts in all {e.shape[0]} empty "
            "droplets, so their ambient scaling is undefined; they are set to 0: "
            + ", ".join(names[:20]),
            UserWarning,
            stacklevel=2,
        )
    use = ~zero_prot & ~flat
    if not use.any():
        raise InputError(
            "no antibody can be dsb-normalised (all have zero counts in cells or no spread in "
            "empty droplets)",
            sample=sample,
            hint="check that the cells and empty droplets hold raw protein counts",
        )
    z = (np.log(x[:, use] + pseudocount) - mu_u[use]) / sd_u[use]

    background = np.full(x.shape[0], np.nan)
    technical = np.full(x.shape[0], np.nan)
    iso_used: list[str] = []
    if denoise_counts:
        background = gmm2_background_mean(z, max_iter=max_iter)
        covariate = background
        if use_isotype_control:
            iso_used, iso_cols = _usable_isotypes(adata.var_names[use], iso_names, sample)
            covariate = _pc1(np.column_stack([z[:, iso_cols], background]), background)
        technical = covariate
        z = _regress_out(z, covariate)

    out = np.zeros(x.shape, dtype=np.float32)
    out[:, use] = z
    _store(adata, out, key_added)
    adata.obs["dsb_background_mean"] = background
    adata.obs["dsb_technical_component"] = technical
    adata.var["dsb_ambient_mean"] = mu_u
    adata.var["dsb_ambient_sd"] = sd_u
    adata.var["dsb_normalised"] = use
    adata.uns["dsb"] = {
        "pseudocount": float(pseudocount),
        "denoise_counts": bool(denoise_counts),
        "use_isotype_control": bool(denoise_counts and use_isotype_control),
        "isotypes": iso_used,
        "n_empty_droplets": int(e.shape[0]),
    }


def _usable_isotypes(
    used_names: pd.Index, iso_names: list[str], sample: str | None
) -> tuple[list[str], np.ndarray]:
    """Isotypes among the normalised antibodies and their columns; warns about the others."""
    iso_used = [n for n in iso_names if n in set(used_names)]
    dropped = [n for n in iso_names if n not in set(iso_used)]
    if dropped:
        warnings.warn(
            f"dsb: isotype controls {', '.join(dropped)} have zero counts in every cell "
            "or no spread in empty droplets and are not used",
            UserWarning,
            stacklevel=3,
        )
    if not iso_used:
        raise InputError(
            "isotype controls were requested but none is usable "
            f"({', '.join(iso_names)} have zero counts in every cell)",
            sample=sample,
            hint="pass use_isotype_control=False",
        )
    return iso_used, np.flatnonzero(np.isin(used_names, iso_used))


def _regress_out(z: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """Residual plus intercept of each column of ``z`` regressed on ``covariate``."""
    centred = covariate - covariate.mean()
    ss = float(centred @ centred)
    if ss > 0:
        slopes = (centred @ z) / ss  # least-squares slopes with an intercept
        z = z - np.outer(covariate, slopes)  # residual + intercept
    return z


def _checked_empty(adata: AnnData, empty: AnnData | None, sample: str | None) -> AnnData:
    """Validate the empty-droplet object: present, enough droplets, same antibody panel."""
    if empty is None or empty.n_obs == 0:
        raise InputError(
            "dsb needs empty droplets, and none were given",
            sample=sample,
            hint="pass the empty droplets of the raw (unfiltered) Cell Ranger matrix, or use "
            "clr() when the raw matrix is not available",
        )
    if empty.n_obs < MIN_EMPTY_DROPLETS:
        raise InputError(
            f"only {empty.n_obs} empty droplets; dsb needs at least {MIN_EMPTY_DROPLETS} to "
            "estimate each antibody's ambient distribution",
            sample=sample,
            hint="widen the empty-droplet selection in the raw matrix, or use clr() for this "
            "sample",
        )
    cells, drops = list(adata.var_names), set(empty.var_names)
    missing = [n for n in cells if n not in drops]
    extra = sorted(drops - set(cells))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing from the empty droplets: " + ", ".join(missing))
        if extra:
            parts.append("only in the empty droplets: " + ", ".join(extra))
        raise InputError(
            "the antibody panels of cells and empty droplets differ (" + "; ".join(parts) + ")",
            sample=sample,
            hint="take cells and empty droplets from the same sample's raw matrix",
        )
    if empty.var_names.has_duplicates:
        raise InputError("the empty droplets have duplicated antibody names", sample=sample)
    return empty


def _order(adata: AnnData, empty: AnnData) -> np.ndarray:
    """Column indices of ``empty`` in the order of ``adata.var_names``."""
    return empty.var_names.get_indexer(adata.var_names)


def _resolve_isotypes(
    adata: AnnData, isotypes: Sequence[str] | None, needed: bool, sample: str | None
) -> list[str]:
    if isotypes is not None:
        isotypes = [isotypes] if isinstance(isotypes, str) else list(isotypes)
        absent = [n for n in isotypes if n not in set(adata.var_names)]
        if absent:
            raise InputError(
                f"isotype controls not in the protein panel: {', '.join(absent)}",
                key="isotypes",
                sample=sample,
                hint="use names exactly as in adata.var_names",
            )
        names = isotypes
    else:
        names = isotype_controls(adata)
    if needed and not names:
        raise InputError(
            "isotype controls were requested (use_isotype_control=True) but none was found "
            "(no var['isotype'] column and no name containing 'isotype', 'IgG', or a species "
            "followed by IgM/IgA/IgE)",
            key="isotypes",
            sample=sample,
            hint="pass isotypes=[...] with their names, or use_isotype_control=False",
        )
    return names


def _pc1(noise: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PC1 scores of column-standardised ``noise`` (cells x k), signed to follow ``reference``."""
    sd = noise.std(axis=0, ddof=1)
    keep = sd > 0
    if not keep.any():  # nothing varies across cells: no technical component to remove
        return np.zeros(noise.shape[0])
    scaled = (noise[:, keep] - noise[:, keep].mean(axis=0)) / sd[keep]
    # PC1 = top eigenvector of the k x k cross-product (an SVD of the cells x k matrix gives
    # the same direction but costs far more for k of a few isotypes)
    _, vectors = np.linalg.eigh(scaled.T @ scaled)
    scores = scaled @ vectors[:, -1]
    if np.corrcoef(scores, reference)[0, 1] < 0:
        scores = -scores
    return scores


# --------------------------------------------------------------------------------------------
# vectorised two-component 1-D Gaussian mixtures (one per row)

_LOG_2PI = float(np.log(2 * np.pi))


def gmm2_background_mean(
    values: np.ndarray,
    *,
    models: Sequence[Literal["E", "V"]] = ("E", "V"),
    max_iter: int = 500,
    tol: float = 1e-5,
) -> np.ndarray:
    """Mean of the lower component of a 2-component Gaussian mixture fitted to each row.

    One independent 1-D mixture per row (cell) over that row's values (proteins), fitted by
    EM for all rows at once in blocks of rows. As ``mclust::Mclust(x, G = 2)``: models ``"E"``
    (equal variances) and ``"V"`` (unequal), each initialised by splitting the row at its median
    (mclust's ``qclass``), the model with the larger BIC ``2 loglik - n_par log(n)`` is kept.
    EM stops per row when the relative log-likelihood change is below ``tol``. Variances are
    floored at ``1e-6`` times the row's variance (mclust would fail on a collapsed component).

    Parameters
    ----------
    values
        ``n_rows x n_values`` finite floats.
    models
        Mixture models to fit and compare by BIC.
    max_iter
        EM iterations at most.
    tol
        Relative log-likelihood tolerance.

    Returns
    -------
    ``n_rows`` lower-component means.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(values.shape[0])
    for start in range(0, values.shape[0], BLOCK_CELLS):
        block = values[start : start + BLOCK_CELLS]
        best_bic = np.full(block.shape[0], -np.inf)
        best_mean = np.full(block.shape[0], np.nan)
        prepared = _EMRows.of(block)
        for model in models:
            low, bic = _em_block(prepared, equal_var=model == "E", max_iter=max_iter, tol=tol)
            better = bic > best_bic
            best_bic[better] = bic[better]
            best_mean[better] = low[better]
        out[start : start + BLOCK_CELLS] = best_mean
    constant = values.min(axis=1) == values.max(axis=1)  # no mixture to fit: the value itself
    out[constant] = values[constant, 0]
    return out


class _EMRows(NamedTuple):
    """Rows to fit, with what the EM of every model reuses.

    Squares, row sums, the variance floor and the moments (``sum r, sum r x, sum r x^2``) of
    the initial split at the row median.
    """

    x: np.ndarray
    xx: np.ndarray
    sum_x: np.ndarray
    sum_xx: np.ndarray
    floor: np.ndarray
    init: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def of(cls, x: np.ndarray) -> _EMRows:
        x = np.ascontiguousarray(x)
        xx = x * x
        floor = 1e-6 * x.var(axis=1) + 1e-12
        r2 = (x > np.median(x, axis=1, keepdims=True)).astype(np.float64)  # P(component 2)
        ties = r2.sum(axis=1) == 0  # rows with at most one value above the median
        if ties.any():
            r2[ties] = (x[ties] >= np.max(x[ties], axis=1, keepdims=True)).astype(np.float64)
        init = (r2.sum(axis=1), np.einsum("ij,ij->i", r2, x), np.einsum("ij,ij->i", r2, xx))
        return cls(x, xx, x.sum(axis=1), xx.sum(axis=1), floor, init)


def _em_block(
    rows_in: _EMRows, *, equal_var: bool, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """EM of a 2-component 1-D mixture per row; (lower mean, BIC) per row.

    Each iteration runs over the rows still iterating: `_em_differences` and `_em_exponents`
    (numba) write the float32 exponents ``-|l2 - l1|``, numpy takes their exp and
    ``log(1 + e)`` (its float32 loops, as before the kernels existed: where the EM stops
    depends on these values), `_em_moments` (numba) sums the log-likelihood terms and the
    responsibilities' moments, and `_em_m_step` (numba) takes the M step and drops the rows
    that converged.
    """
    x, xx, sum_x, sum_xx, floor, init = rows_in
    n_rows, n = x.shape
    params = _m_step(n, *init, sum_x, sum_xx, equal_var, floor)
    coef = np.empty(n_rows)
    sums = np.empty((n_rows, 4))
    diff = np.empty((n_rows, n))
    e = np.empty((n_rows, n), np.float32)
    above = np.empty((n_rows, n), np.float32)
    one_plus = np.empty((n_rows, n), np.float32)
    log_one_plus = np.empty((n_rows, n), np.float32)
    loglik = np.full(n_rows, -np.inf)
    rows = np.arange(n_rows)  # rows still iterating, compacted in place by _em_m_step
    active = n_rows
    for _ in range(max_iter):
        ea, aa, opa, la = e[:active], above[:active], one_plus[:active], log_one_plus[:active]
        _em_differences(x, xx, sum_x, sum_xx, rows[:active], *params, coef, diff)
        _em_exponents(diff[:active], coef, ea, aa)
        np.exp(ea, out=ea)
        np.add(ea, np.float32(1.0), out=opa)
        np.log(opa, out=la)
        _em_moments(x, xx, rows[:active], ea, aa, opa, la, sums)
        active = _em_m_step(
            rows[:active], coef, sums, sum_x, sum_xx, n, floor, equal_var, tol, loglik, *params
        )
        if active == 0:
            break
    rows = np.arange(n_rows)
    _em_differences(x, xx, sum_x, sum_xx, rows, *params, coef, diff)
    _em_exponents(diff, coef, e, above)
    np.exp(e, out=e)
    np.add(e, np.float32(1.0), out=one_plus)
    np.log(one_plus, out=log_one_plus)
    _em_moments(x, xx, rows, e, above, one_plus, log_one_plus, sums)
    loglik = coef + sums[:, 3]
    n_par = 4 if equal_var else 5  # 2 means, 1 or 2 variances, 1 mixing proportion
    bic = 2 * loglik - n_par * np.log(n)
    return np.minimum(params[1], params[2]), bic


def _m_step(
    n: int,
    n2: np.ndarray,
    s2: np.ndarray,
    ss2: np.ndarray,
    sum_x: np.ndarray,
    sum_xx: np.ndarray,
    equal_var: bool,
    floor: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Mixture parameters per row from component 2's moments (``sum r2, sum r2 x, sum r2 x^2``).

    Returns ``(w2, m1, m2, v1, v2)``, each of length ``n_rows``; `_em_m_step` repeats these
    formulas row by row.
    """
    n1 = n - n2
    m1 = (sum_x - s2) / np.maximum(n1, 1e-12)
    m2 = s2 / np.maximum(n2, 1e-12)
    sq1 = np.maximum(sum_xx - ss2 - n1 * m1**2, 0.0)
    sq2 = np.maximum(ss2 - n2 * m2**2, 0.0)
    if equal_var:
        v1 = v2 = (sq1 + sq2) / n
    else:
        v1 = sq1 / np.maximum(n1, 1e-12)
        v2 = sq2 / np.maximum(n2, 1e-12)
    v1 = np.maximum(v1, floor)
    v2 = np.maximum(v2, floor)
    w2 = np.clip(n2 / n, 1e-12, 1 - 1e-12)
    return w2, m1, m2, v1.copy(), v2.copy()


# The numba kernels compute ``l2 - l1`` with IEEE semantics (no fastmath), so the float32
# exponents are those numpy computed before; only sums are reassociated (vectorised), which
# moves them by ~1e-16 relative.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _em_differences(x, xx, sum_x, sum_xx, rows, w2, m1, m2, v1, v2, coef, diff):  # noqa: ANN001, ANN202
    """E step, part 1, for ``rows``: ``diff[a] = l2 - l1`` and ``coef[a, 3] = sum(l1)``.

    With ``l_k = log(w_k) - log(2 pi v_k) / 2 - (x - m_k)^2 / (2 v_k)``, ``l2 - l1`` is the
    quadratic ``c2 x^2 + c1 x + c0``, and ``sum(l1)`` follows from the row sums.
    """
    n = x.shape[1]
    for a in range(rows.size):
        i = rows[a]
        a1 = np.log1p(-w2[i]) - 0.5 * (_LOG_2PI + np.log(v1[i]))
        a2 = np.log(w2[i]) - 0.5 * (_LOG_2PI + np.log(v2[i]))
        b1 = 0.5 / v1[i]
        b2 = 0.5 / v2[i]
        c2 = b1 - b2
        c1 = 2 * (b2 * m2[i] - b1 * m1[i])
        c0 = a2 - a1 - b2 * m2[i] ** 2 + b1 * m1[i] ** 2
        for j in range(n):
            d = c2 * xx[i, j] + c1 * x[i, j]
            diff[a, j] = d + c0
        coef[a] = n * a1 - b1 * (sum_xx[i] - 2 * m1[i] * sum_x[i] + n * m1[i] ** 2)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _em_exponents(diff, coef, e, above):  # noqa: ANN001, ANN202
    """E step, part 2: ``log(e^l1 + e^l2) = l1 + max(d, 0) + log(1 + e)``, ``e = exp(-|d|)``.

    For each row ``a`` of ``diff`` (``d = l2 - l1``): adds ``sum(max(d, 0))`` to
    ``coef[a]``, writes ``e[a] = float32(-min(|d|, 80))`` (the exponent; -80 keeps float32
    subnormals away) and ``above[a] = float32(d > 0)``.
    """
    for a in range(diff.shape[0]):
        positive = 0.0
        for j in range(diff.shape[1]):
            d = diff[a, j]
            positive += max(d, 0.0)
            above[a, j] = np.float32(d > 0)
            e[a, j] = -min(np.float32(abs(d)), np.float32(80.0))
        coef[a] += positive


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _em_moments(x, xx, rows, e, above, one_plus, log_one_plus, sums):  # noqa: ANN001, ANN202
    """E step, part 2: ``sums[a] = (sum r, sum r x, sum r x^2, sum log(1 + e))`` for ``rows``.

    ``r = e^max(d, 0) / (1 + e)``, component 2's responsibility, in float32 (``e`` holds the
    exp of the exponents): the numerator is 1 above 0, else ``e``.
    """
    n = x.shape[1]
    for a in range(rows.size):
        i = rows[a]
        n2 = 0.0
        s2 = 0.0
        ss2 = 0.0
        log_sum = 0.0
        for j in range(n):
            r = np.float64(max(e[a, j], above[a, j]) / one_plus[a, j])
            n2 += r
            s2 += r * x[i, j]
            ss2 += r * xx[i, j]
            log_sum += log_one_plus[a, j]
        sums[a, 0] = n2
        sums[a, 1] = s2
        sums[a, 2] = ss2
        sums[a, 3] = log_sum


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _em_m_step(
    rows, coef, sums, sum_x, sum_xx, n, floor, equal_var, tol, loglik, w2, m1, m2, v1, v2
):  # noqa: ANN001, ANN202, E501
    """Log-likelihood, convergence check and M step (`_m_step`'s formulas) for ``rows``.

    Updates ``loglik`` and the parameters in place; a row whose relative log-likelihood
    change is at most ``tol`` gets this last M step and leaves ``rows``, which is compacted
    in place. Returns how many rows are still iterating.
    """
    keep = 0
    for a in range(rows.size):
        i = rows[a]
        n2, s2, ss2 = sums[a, 0], sums[a, 1], sums[a, 2]
        ll = coef[a] + sums[a, 3]
        done = abs(ll - loglik[i]) <= tol * abs(ll)
        loglik[i] = ll
        n1 = n - n2
        mean1 = (sum_x[i] - s2) / max(n1, 1e-12)
        mean2 = s2 / max(n2, 1e-12)
        sq1 = max(sum_xx[i] - ss2 - n1 * mean1**2, 0.0)
        sq2 = max(ss2 - n2 * mean2**2, 0.0)
        if equal_var:
            var1 = (sq1 + sq2) / n
            var2 = var1
        else:
            var1 = sq1 / max(n1, 1e-12)
            var2 = sq2 / max(n2, 1e-12)
        w2[i] = min(max(n2 / n, 1e-12), 1 - 1e-12)
        m1[i] = mean1
        m2[i] = mean2
        v1[i] = max(var1, floor[i])
        v2[i] = max(var2, floor[i])
        if not done:
            rows[keep] = i
            keep += 1
    return keep

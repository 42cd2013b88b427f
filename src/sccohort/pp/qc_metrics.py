"""Per-cell QC metrics of one sample, and the robust spread the adaptive cuts use.

RNA: genes, UMIs, mitochondrial, red-cell and platelet shares; antibodies: total counts
without isotypes and the isotypes' share; `_mad`: median and scaled MAD.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import scipy.sparse as sp

HB_GENES = ("HBB", "HBA1", "HBA2")


PLATELET_GENES = ("PPBP", "PF4")


#: Per-cell metrics written to obs.
METRICS = (
    "n_umis",
    "n_genes",
    "pct_mito",
    "pct_ribo",
    "pct_hb",
    "pct_platelet",
    "prot_umis",
    "prot_n",
    "pct_isotype",
)


@functools.lru_cache(maxsize=8)
def _gene_groups(names: tuple[str, ...]) -> np.ndarray:
    """(n_genes, 4) float64 indicator of mito, ribosomal, haemoglobin and platelet genes.

    Cached: every sample of a cohort has the same genes, and the string matching of ~20,000
    names costs more than the counting.
    """
    upper = pd.Index(names).astype(str).str.upper()
    groups = np.zeros((len(names), 4))
    groups[:, 0] = upper.str.startswith("MT-")
    groups[:, 1] = upper.str.match(r"^RP[SL]\d")
    groups[:, 2] = upper.isin(HB_GENES)
    groups[:, 3] = upper.isin(PLATELET_GENES)
    groups.flags.writeable = False  # shared by every call with these names
    return groups


def rna_metrics(counts: sp.spmatrix, gene_names: pd.Index) -> pd.DataFrame:
    """RNA QC metrics of each cell.

    Parameters
    ----------
    counts
        (n_cells, n_genes) raw counts.
    gene_names
        (n_genes,) gene symbols (``MT-`` prefix for mitochondrial genes, any case).

    Returns
    -------
    DataFrame (n_cells rows): ``n_umis, n_genes, pct_mito, pct_ribo, pct_hb, pct_platelet``
    (percentages of the cell's UMIs).

    Examples
    --------
    >>> from sccohort.pp import rna_metrics
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> rna = mdata["rna"]
    >>> rna_metrics(rna.layers["counts"], rna.var_names).columns.tolist()
    ['n_umis', 'n_genes', 'pct_mito', 'pct_ribo', 'pct_hb', 'pct_platelet']
    """
    csr = sp.csr_matrix(counts)
    totals = np.asarray(csr.sum(axis=1)).ravel().astype(np.float64)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    out = pd.DataFrame(
        {
            "n_umis": totals,
            "n_genes": np.bincount(rows[csr.data > 0], minlength=csr.shape[0]),
        }
    )
    # counts of the gene groups per cell: one sparse x dense product (float64: exact for
    # counts), then in the counts' dtype as a column sum of the matrix would give them
    parts = np.asarray(csr @ _gene_groups(tuple(map(str, gene_names)))).astype(csr.dtype)
    names = ("pct_mito", "pct_ribo", "pct_hb", "pct_platelet")
    for column, part in zip(names, parts.T, strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[column] = np.where(totals > 0, 100.0 * part / totals, 0.0)
    return out


def protein_metrics(
    counts: sp.spmatrix | np.ndarray, isotype: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """Antibody QC metrics of each cell, ignoring antibodies with no counts at all.

    Parameters
    ----------
    counts
        (n_cells, n_antibodies) raw antibody counts of one sample.
    isotype
        (n_antibodies,) bool, isotype controls.

    Returns
    -------
    metrics
        DataFrame (n_cells rows): ``prot_umis`` (counts of non-isotype antibodies),
        ``prot_n`` (non-isotype antibodies detected), ``pct_isotype`` (isotype controls'
        percentage of all antibody counts; NaN when the panel has no isotype control).
    zero
        (n_antibodies,) bool, the all-zero antibodies (left out of the metrics).

    Examples
    --------
    >>> from sccohort.pp import protein_metrics
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> prot = mdata["prot"]
    >>> metrics, all_zero = protein_metrics(prot.layers["counts"], prot.var["isotype"].to_numpy())
    >>> metrics.columns.tolist(), int(all_zero.sum())
    (['prot_umis', 'prot_n', 'pct_isotype'], 0)
    """
    csc = sp.csc_matrix(counts)
    isotype = np.asarray(isotype, dtype=bool)
    zero = np.asarray(csc.sum(axis=0)).ravel() == 0
    specific = csc[:, np.flatnonzero(~isotype & ~zero)].tocsr()
    iso = np.asarray(csc[:, np.flatnonzero(isotype & ~zero)].sum(axis=1)).ravel()
    prot_umis = np.asarray(specific.sum(axis=1)).ravel().astype(np.float64)
    total = prot_umis + iso
    if isotype.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            pct_iso = np.where(total > 0, 100.0 * iso / total, 0.0)
    else:
        pct_iso = np.full(csc.shape[0], np.nan)
    metrics = pd.DataFrame(
        {
            "prot_umis": prot_umis,
            "prot_n": np.diff(specific.indptr),
            "pct_isotype": pct_iso,
        }
    )
    return metrics, zero


MAD_SCALE = 1.4826


def _mad(x: np.ndarray) -> tuple[float, float]:
    """Median and scaled MAD of the finite values (NaN, NaN when there are none)."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(x))
    return med, MAD_SCALE * float(np.median(np.abs(x - med)))

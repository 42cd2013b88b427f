"""Per-sample summary of a freshly read cohort (cells, depth, proteins detected)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

#: An antibody counts as detected in a sample when this share of its cells has a count > 0.
DETECTED_SHARE = 0.10


def _per_cell(counts: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Total counts and number of non-zero features per cell (rows)."""
    csr = sp.csr_matrix(counts)
    totals = np.asarray(csr.sum(axis=1)).ravel()
    nonzero = np.diff((csr > 0).tocsr().indptr)
    return totals, nonzero


def sample_summary(mdata: MuData, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: cells, median UMIs and genes, protein depth and antibodies detected.

    Parameters
    ----------
    mdata
        Cohort object with ``obs["sample_id"]``, modality ``rna`` and optionally ``prot``;
        raw counts in each modality's ``layers["counts"]``.
    samples
        The sample sheet table, indexed by ``sample_id`` (donor, batch, timepoint, tissue
        are copied into the result).

    Returns
    -------
    DataFrame with columns ``sample_id, donor_id, batch, timepoint, tissue, n_cells,
    median_umis, median_genes, median_prot_umis, n_proteins, proteins_detected``
    (``proteins_detected``: antibodies with a count > 0 in at least ``DETECTED_SHARE`` of
    the sample's cells; protein columns are empty when the cohort has no protein data).
    Samples with no cells keep a row with ``n_cells = 0``.
    """
    per_cell = pd.DataFrame(index=mdata.obs_names)
    per_cell["sample_id"] = mdata.obs["sample_id"].astype(str).to_numpy()
    if "rna" in mdata.mod:
        rna = mdata.mod["rna"]
        umis, genes = _per_cell(rna.layers["counts"])
        per_cell.loc[rna.obs_names, "umis"] = umis
        per_cell.loc[rna.obs_names, "genes"] = genes
    has_prot = "prot" in mdata.mod
    detected: dict[str, int] = {}
    if has_prot:
        prot = mdata.mod["prot"]
        prot_counts = sp.csr_matrix(prot.layers["counts"])
        totals, _ = _per_cell(prot_counts)
        per_cell.loc[prot.obs_names, "prot_umis"] = totals
        prot_samples = mdata.obs.loc[prot.obs_names, "sample_id"].astype(str).to_numpy()
        for sample_id in np.unique(prot_samples):
            rows = prot_counts[prot_samples == sample_id]
            share = np.asarray((rows > 0).sum(axis=0)).ravel() / max(rows.shape[0], 1)
            detected[sample_id] = int((share >= DETECTED_SHARE).sum())

    grouped = per_cell.groupby("sample_id", observed=True)
    table = pd.DataFrame(index=samples.index.astype(str))
    table.index.name = "sample_id"
    for column in ("donor_id", "batch", "timepoint", "tissue"):
        if column in samples:
            table[column] = samples[column].astype(str).to_numpy()
    table["n_cells"] = grouped.size().reindex(table.index).fillna(0).astype(int)
    for column, name in (("umis", "median_umis"), ("genes", "median_genes")):
        if column in per_cell:
            table[name] = grouped[column].median().reindex(table.index)
    if has_prot:
        table["median_prot_umis"] = grouped["prot_umis"].median().reindex(table.index)
        table["n_proteins"] = mdata.mod["prot"].n_vars
        table["proteins_detected"] = pd.Series(detected).reindex(table.index).fillna(0).astype(int)
    else:
        table["median_prot_umis"] = np.nan
        table["n_proteins"] = 0
        table["proteins_detected"] = 0
    return table.reset_index()

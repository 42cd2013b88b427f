"""Per-sample summary of freshly read cells (cells, depth, proteins detected, how read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.io.features import GENE_IDS_KEY, MODALITY_RULE_KEY

#: An antibody counts as detected in a sample when this share of its cells has a count > 0.
DETECTED_SHARE = 0.10
#: Columns of `summary_table` that say how each sample was read.
READ_COLUMNS = ("modalities", "n_genes", "gene_ids", "modality_rule")


def _per_cell(counts: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Total counts and number of non-zero features per cell (rows)."""
    csr = sp.csr_matrix(counts)
    totals = np.asarray(csr.sum(axis=1)).ravel()
    nonzero = np.diff((csr > 0).tocsr().indptr)
    return totals, nonzero


def summarise_sample(mods: Mapping[str, AnnData]) -> dict[str, Any]:
    """One sample's cells as read: their number, median depth, antibody detection.

    Parameters
    ----------
    mods
        The sample's modalities (``rna``, optionally ``prot``), raw counts in
        ``layers["counts"]``, all modalities holding the same cells.

    Returns
    -------
    ``n_cells``, ``median_umis``, ``median_genes``, ``median_prot_umis`` (NaN without
    RNA / protein), ``detected``: per antibody (``pd.Series`` indexed by antibody) the
    share of cells with a count > 0, or None without protein data; and how the sample was
    read: ``modalities`` (``"rna + prot"``), ``n_genes`` (0 without RNA), ``gene_ids``
    (``"symbols"``, ``"ensembl: 982/1,000 mapped"``...; ``""`` without RNA) and
    ``modality_rule`` (the readers' ``uns["modality_rule"]``, ``""`` if absent).

    Examples
    --------
    >>> from sccohort.pp import summarise_sample
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> one = mdata[mdata.obs["sample_id"] == "SSc1"]
    >>> summary = summarise_sample(dict(one.mod))
    >>> summary["n_cells"], summary["modalities"]
    (300, 'rna + prot')
    """
    row: dict[str, Any] = {"n_cells": next(iter(mods.values())).n_obs}
    row.update(_how_read(mods))
    row["median_umis"] = row["median_genes"] = row["median_prot_umis"] = np.nan
    row["detected"] = None
    if "rna" in mods and row["n_cells"]:
        umis, genes = _per_cell(mods["rna"].layers["counts"])
        row["median_umis"], row["median_genes"] = float(np.median(umis)), float(np.median(genes))
    if "prot" in mods:
        counts = sp.csr_matrix(mods["prot"].layers["counts"])
        if row["n_cells"]:
            row["median_prot_umis"] = float(np.median(_per_cell(counts)[0]))
        share = np.asarray((counts > 0).sum(axis=0)).ravel() / max(counts.shape[0], 1)
        row["detected"] = pd.Series(share, index=mods["prot"].var_names.copy())
    return row


def _how_read(mods: Mapping[str, AnnData]) -> dict[str, Any]:
    rna = mods.get("rna")
    rules = [str(a.uns[MODALITY_RULE_KEY]) for a in mods.values() if MODALITY_RULE_KEY in a.uns]
    return {
        "modalities": " + ".join(mods),
        "n_genes": 0 if rna is None else int(rna.n_vars),
        "gene_ids": "" if rna is None else str(rna.uns.get(GENE_IDS_KEY, "")),
        "modality_rule": rules[0] if rules else "",
    }


def summary_table(
    rows: Mapping[str, dict[str, Any]], samples: pd.DataFrame, antibodies: pd.Index | None
) -> pd.DataFrame:
    """The cohort's table of samples from each sample's `summarise_sample` row.

    Parameters
    ----------
    rows
        ``sample_id -> summarise_sample(...)``.
    samples
        The sample sheet table, indexed by ``sample_id`` (donor, batch, timepoint, tissue
        are copied into the result).
    antibodies
        The cohort's antibody panel (those common to all samples), or None without protein.

    Returns
    -------
    DataFrame with columns ``sample_id, donor_id, batch, timepoint, tissue, n_cells,
    median_umis, median_genes, median_prot_umis, n_proteins, proteins_detected``
    (``proteins_detected``: antibodies of the panel with a count > 0 in at least
    ``DETECTED_SHARE`` of the sample's cells; 0 without protein data) and `READ_COLUMNS`:
    ``modalities`` (``"rna + prot"``), ``n_genes`` (genes read, 0 without RNA),
    ``gene_ids`` (``"symbols"``, ``"ensembl: 982/1,000 mapped"``, ``"mixed: ..."``) and
    ``modality_rule`` (how the features were assigned to modalities: feature types, the
    rule, or the sample sheet's ``modality`` column).

    Examples
    --------
    >>> from sccohort.io import SampleSheet
    >>> from sccohort.pp import QCParams, prepare_sample, summary_table
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> prepared = prepare_sample(h5, "SSc1", qc=QCParams(doublet_method="none"))
    >>> sheet = SampleSheet.from_csv(samples).table.loc[["SSc1"]]
    >>> summary_table({"SSc1": prepared.summary}, sheet, None).columns.tolist()[:4]
    ['sample_id', 'donor_id', 'batch', 'timepoint']
    """
    table = pd.DataFrame(index=samples.index.astype(str))
    table.index.name = "sample_id"
    for column in ("donor_id", "batch", "timepoint", "tissue"):
        if column in samples:
            table[column] = samples[column].astype(str).to_numpy()
    get = {s: rows[s] for s in table.index}
    table["n_cells"] = [int(get[s]["n_cells"]) for s in table.index]
    for column in ("median_umis", "median_genes", "median_prot_umis"):
        table[column] = [get[s][column] for s in table.index]
    if antibodies is None:
        table["n_proteins"] = 0
        table["proteins_detected"] = 0
    else:
        table["n_proteins"] = len(antibodies)
        table["proteins_detected"] = [
            int((get[s]["detected"].reindex(antibodies) >= DETECTED_SHARE).sum())
            for s in table.index
        ]
    for column in READ_COLUMNS:  # rows made before these columns existed lack them
        default = 0 if column == "n_genes" else ""
        table[column] = [get[s].get(column, default) for s in table.index]
    return table.reset_index()

"""One sample from its count files to quality-controlled, normalised cells: the per-sample task.

`prepare_sample` reads a sample once and does everything that needs only that sample:
the summary row, QC (metrics, doublets, flags), RNA log-normalisation of the cells that
pass, and, for dsb, reading the sample's empty droplets. It runs as one Dask task per sample
(on a local or remote worker); the protein normalisation itself waits for the cohort's
common antibody panel (CLR and dsb depend on the panel) and runs after the samples are
joined.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from sccohort.io.read import read_raw_droplets, read_sample
from sccohort.pp.normalize import normalize_rna
from sccohort.pp.qc import qc_sample
from sccohort.pp.summary import summarise_sample


@dataclass
class PreparedSample:
    """What a per-sample task sends back (small: only the cells that pass QC).

    Attributes
    ----------
    sample_id
        The sample.
    mods
        ``modality -> AnnData`` of the cells that pass QC (ids ``<sample_id>:<barcode>``):
        raw counts in ``layers["counts"]``; ``rna.X`` log-normalised; ``prot.X`` None
        (normalised after joining); ``hto.X`` the counts.
    summary
        `summarise_sample` of every cell read.
    qc_cells
        Every cell read (index cell id): QC metrics, ``doublet_score``, ``qc_pass``,
        ``qc_reason``.
    qc_row
        The sample's row of the QC table.
    empty
        Protein counts of the sample's empty droplets (``layers["counts"]``), or None.
    warnings
        ``(category, message)`` of the warnings raised while preparing; the caller re-emits
        them (a remote worker's warnings would otherwise be lost).
    """

    sample_id: str
    mods: dict[str, AnnData]
    summary: dict[str, Any]
    qc_cells: pd.DataFrame
    qc_row: dict[str, Any]
    empty: AnnData | None = None
    warnings: list[tuple[type[Warning], str]] = field(default_factory=list)


def prepare_sample(
    path: str | Path,
    sample_id: str,
    *,
    format: str | None = None,
    tissue: str | None = None,
    qc: dict[str, Any] | None = None,
    target_sum: float = 1e4,
    raw_path: str | Path | None = None,
) -> PreparedSample:
    """Read, summarise, quality-control and RNA-normalise one sample.

    Parameters
    ----------
    path, sample_id, format
        As `sccohort.io.read.read_sample`.
    tissue
        The sample's tissue (QC thresholds differ for tissue; None or NaN = blood).
    qc
        Parameters of `sccohort.pp.qc.qc_sample` (``mode``, thresholds, ``seed``, ...).
    target_sum
        RNA total-count target before ``log1p``.
    raw_path
        The sample's raw (unfiltered) droplets for dsb; None reads none.

    Returns
    -------
    PreparedSample

    Raises
    ------
    InputError
        Unreadable or inconsistent files (naming the file and sample), bad QC parameters.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mdata = read_sample(path, sample_id, format=format)
        mdata.obs["tissue"] = "blood" if tissue is None or pd.isna(tissue) else str(tissue)
        mods = dict(mdata.mod)
        summary = summarise_sample(mods)
        qc_cells, qc_row = qc_sample(mdata, **(qc or {}))
        keep = qc_cells["qc_pass"].to_numpy(dtype=bool)
        kept: dict[str, AnnData] = {}
        for modality, adata in mods.items():
            part = adata[keep].copy()
            if modality == "rna":
                normalize_rna(part, target_sum=target_sum)
            elif modality == "prot":
                part.X = None
            kept[modality] = part
        empty = None
        if raw_path is not None and "prot" in mods:
            # every barcode Cell Ranger called a cell (QC-failed ones too) is not background
            empty = read_raw_droplets(raw_path, mdata.obs_names, sample_id, modalities=("prot",))
            empty.X = None
    seen = [(w.category, str(w.message)) for w in caught]
    return PreparedSample(sample_id, kept, summary, qc_cells, qc_row, empty, seen)

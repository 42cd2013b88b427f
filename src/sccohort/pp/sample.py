"""One sample from its count files to quality-controlled, normalised cells: the per-sample task.

`prepare_sample` reads a sample once and does everything that needs only that sample:
the summary row, QC (metrics, doublets, flags), and, for dsb, reading the sample's empty
droplets. It runs as one Dask task per sample (on a local or remote worker) and sends back
only the raw counts of the cells that pass: normalising after the samples are joined costs
less than sending normalised copies (and CLR and dsb depend on the cohort's common antibody
panel).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from sccohort.io.read import read_raw_droplets, read_sample
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
        raw counts in ``layers["counts"]``; ``.X`` None (normalised after joining), except
        ``hto.X``: the counts.
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
    raw_path: str | Path | None = None,
) -> PreparedSample:
    """Read, summarise and quality-control one sample; read its empty droplets.

    Parameters
    ----------
    path, sample_id, format
        As `sccohort.io.read.read_sample`.
    tissue
        The sample's tissue (QC thresholds differ for tissue; None or NaN = blood).
    qc
        Parameters of `sccohort.pp.qc.qc_sample` (``mode``, thresholds, ``seed``, ...).
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
            if modality != "hto":
                part.X = None
            kept[modality] = part
        empty = None
        if raw_path is not None and "prot" in mods:
            # every barcode Cell Ranger called a cell (QC-failed ones too) is not background
            empty = read_raw_droplets(raw_path, mdata.obs_names, sample_id, modalities=("prot",))
            empty.X = None
    seen = [(w.category, str(w.message)) for w in caught]
    return PreparedSample(sample_id, kept, summary, qc_cells, qc_row, empty, seen)

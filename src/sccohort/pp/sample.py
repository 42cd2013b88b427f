"""One sample from its count files to quality-controlled, normalised cells: the per-sample task.

`prepare_sample` reads a sample once and does everything that needs only that sample:
the summary row, QC (metrics, doublets, flags) and, for dsb, reading the sample's empty
droplets and normalising its antibodies on its own panel. It runs as one Dask task per sample
(on a local or remote worker) and sends back the raw counts of the cells that pass (plus
their dsb values): log-normalising RNA after the samples are joined costs less than sending
normalised copies, and CLR and dsb depend on the cohort's common antibody panel (the dsb
values are used when that panel is the sample's own, the usual case).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.io.read import read_raw_droplets, read_sample
from sccohort.pp.dsb import dsb
from sccohort.pp.qc import QCParams, qc_sample
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
    prot_dsb
        dsb values of the kept cells on the sample's own antibody panel (``n_kept x
        n_antibodies`` float32, index cell ids, columns the antibodies), or None. The cohort
        uses them when its common panel is this panel; otherwise dsb is recomputed.
    warnings
        ``(category, message, filename, lineno)`` of the warnings raised while preparing;
        the caller re-emits them from where they came (a remote worker's warnings would
        otherwise be lost; the place tells sccohort's own warnings from libraries').

    Examples
    --------
    >>> import tempfile
    >>> from sccohort.pp import QCParams, prepare_sample
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> prepared = prepare_sample(h5, "SSc1", qc=QCParams(doublet_method="none"))
    >>> prepared.sample_id, prepared.mods["rna"].n_obs, len(prepared.qc_cells)
    ('SSc1', 288, 300)
    """

    sample_id: str
    mods: dict[str, AnnData]
    summary: dict[str, Any]
    qc_cells: pd.DataFrame
    qc_row: dict[str, Any]
    empty: AnnData | None = None
    prot_dsb: pd.DataFrame | None = None
    warnings: list[tuple[type[Warning], str, str, int]] = field(default_factory=list)


def prepare_sample(
    path: str | Path,
    sample_id: str,
    *,
    format: str | None = None,
    modality: str | None = None,
    tissue: str | None = None,
    qc: QCParams | None = None,
    raw_path: str | Path | None = None,
) -> PreparedSample:
    """Read, summarise and quality-control one sample; read its empty droplets.

    Parameters
    ----------
    path, sample_id, format, modality
        As `sccohort.io.read.read_sample` (``modality``: the sample sheet's column; None,
        NaN or ``""`` let the file decide).
    tissue
        The sample's tissue (QC thresholds differ for tissue; None or NaN = blood).
    qc
        The settings of `sccohort.pp.qc_sample` (default: `QCParams`'s defaults).
    raw_path
        The sample's raw (unfiltered) droplets for dsb; None reads none.

    Returns
    -------
    PreparedSample

    Raises
    ------
    InputError
        Unreadable or inconsistent files (naming the file and sample), bad QC parameters.

    Examples
    --------
    >>> from sccohort.pp import QCParams, prepare_sample
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> prepared = prepare_sample(h5, "SSc1", qc=QCParams(doublet_method="none"))
    >>> prepared.qc_row["cells_out"], list(prepared.mods)
    (288, ['rna', 'prot'])
    """
    # the previous task's AnnData objects on this worker hold reference cycles: free them
    gc.collect()
    with _collected_warnings() as caught:
        mdata = read_sample(path, sample_id, format=format, modality=modality)
        mdata.obs["tissue"] = "blood" if tissue is None or pd.isna(tissue) else str(tissue)
        mods = dict(mdata.mod)
        summary = summarise_sample(mods)
        qc_cells, qc_row = qc_sample(mdata, qc)
        keep = qc_cells["qc_pass"].to_numpy(dtype=bool)
        kept: dict[str, AnnData] = {}
        for name, adata in mods.items():
            part = adata[keep].copy()
            if name != "hto":
                part.X = None
            kept[name] = part
        empty = prot_dsb = None
        if raw_path is not None and "prot" in mods:
            # every barcode Cell Ranger called a cell (QC-failed ones too) is not background
            empty = read_raw_droplets(raw_path, mdata.obs_names, sample_id, modalities=("prot",))
            empty.X = None
            prot_dsb = _dsb_values(kept["prot"], empty)
    seen = [(w.category, str(w.message), w.filename, w.lineno) for w in caught]
    return PreparedSample(sample_id, kept, summary, qc_cells, qc_row, empty, prot_dsb, seen)


@contextlib.contextmanager
def _collected_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings raised inside on a Dask worker process, where they would be lost.

    In this process (Dask's threads, or no Dask) they go on to the caller as they are:
    ``warnings.catch_warnings`` is not thread-safe, and concurrent tasks using it leave the
    process's warning handler pointing at one task's list (the run's record then misses
    every later warning).
    """
    if not _on_dask_worker():
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _on_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _dsb_values(prot: AnnData, empty: AnnData) -> pd.DataFrame | None:
    """The kept cells' dsb values (cells x antibodies, float32), or None.

    None when there are no cells or dsb refuses the sample (the cohort then recomputes it
    and raises the error there).
    """
    if prot.n_obs == 0:
        return None
    cells = AnnData(obs=pd.DataFrame(index=prot.obs_names), var=pd.DataFrame(index=prot.var_names))
    cells.layers["counts"] = prot.layers["counts"]
    try:
        dsb(cells, empty)
    except InputError:
        return None
    values = np.asarray(cells.X, dtype=np.float32)
    return pd.DataFrame(values, index=prot.obs_names, columns=prot.var_names)

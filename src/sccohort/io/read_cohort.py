"""Read a whole cohort from a sample sheet (and a clinical table) into one MuData."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mudata import MuData

from sccohort.cohort import ClinicalTable, SampleSheet, check_donors
from sccohort.io.read import read_samples


def read_cohort(
    samples_csv: str | Path,
    clinical_csv: str | Path | None = None,
    *,
    scheduler: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> MuData:
    """Read every sample of a sample sheet, one Dask task per sample, into one MuData.

    Parameters
    ----------
    samples_csv
        Sample sheet (``sample_id, donor_id, path`` and optional ``raw_path, batch,
        timepoint, tissue, format``); relative paths are taken from the CSV's folder.
    clinical_csv
        Optional clinical table (``donor_id`` + variables); every donor of the sample
        sheet must be in it.
    scheduler
        ``None`` (local threads), a ``distributed.Client`` or a scheduler address.
    progress
        Called as ``progress(done_samples, total_samples)``.

    Returns
    -------
    MuData with modalities ``rna``, ``prot`` (and ``hto`` where present), raw counts in
    each modality's ``layers["counts"]``, cell ids ``<sample_id>:<barcode>``, and
    ``obs`` columns ``sample_id, donor_id, batch, timepoint, tissue``. The clinical table,
    when given, is in ``uns["clinical"]`` (index ``donor_id``).

    Examples
    --------
    >>> from sccohort.io import read_cohort
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> mdata = read_cohort(samples, samples.parent / "clinical.csv")
    >>> mdata.shape, mdata.obs["donor_id"].nunique()
    ((1200, 19548), 4)
    """
    sheet = SampleSheet.from_csv(samples_csv)
    clinical = None
    if clinical_csv is not None:
        clinical = ClinicalTable.from_csv(clinical_csv)
        check_donors(sheet, clinical)
    mdata = read_samples(sheet.table, scheduler=scheduler, progress=progress)
    if clinical is not None:
        mdata.uns["clinical"] = clinical.table.astype(
            {c: str for c in clinical.table.columns if clinical.table[c].dtype == object}
        )
    return mdata

"""Per-sample work: summaries, QC, doublets, normalisation (one sample at a time).

Every name in ``__all__`` is public API (scanpy's conventions).
"""

from sccohort.pp.ambient import estimate_contamination, remove_ambient, soup_profile
from sccohort.pp.doublets import DoubletResult, call_doublets
from sccohort.pp.dsb import dsb, dsb_by_sample, isotype_controls
from sccohort.pp.normalize import clr, normalize_rna
from sccohort.pp.qc import QCParams, auto_min_genes, qc_sample, run_qc
from sccohort.pp.qc_metrics import protein_metrics, rna_metrics
from sccohort.pp.sample import PreparedSample, prepare_sample
from sccohort.pp.summary import summarise_sample, summary_table

__all__ = [
    "DoubletResult",
    "PreparedSample",
    "QCParams",
    "auto_min_genes",
    "call_doublets",
    "clr",
    "dsb",
    "estimate_contamination",
    "dsb_by_sample",
    "isotype_controls",
    "normalize_rna",
    "prepare_sample",
    "protein_metrics",
    "qc_sample",
    "remove_ambient",
    "rna_metrics",
    "soup_profile",
    "run_qc",
    "summarise_sample",
    "summary_table",
]

"""Per-sample quality control: low-quality cells, red cells, platelets, doublets, protein QC.

Everything is computed on one sample's cells at a time (`qc_sample`, pure, cheap to ship to
a Dask worker); `run_qc` loops over the samples of a cohort and writes the results into
``mdata.obs``.

Reasons, in the fixed order in which they are tested (a removed cell carries the first
that applies, see `REASONS`):

1. ``red_cell``: haemoglobin genes (HBB, HBA1, HBA2) >= ``hb_max_pct`` % of RNA UMIs.
2. ``platelet``: PPBP + PF4 >= ``platelet_max_pct`` % of RNA UMIs. Contaminants come first
   because their identity is certain; their tiny libraries would otherwise hide them under
   ``low_quality`` and the table would not count what the study removed by hand.
3. ``low_quality``: too few genes or UMIs, or too high a mitochondrial share.
4. ``large_library``: too many genes or UMIs (study: genes >= 5,000).
5. ``doublet``: called by `sccohort.pp.doublets.call_doublets` among the cells that pass
   1-4 (the others get a NaN ``doublet_score``).
6. ``no_protein``: total antibody counts (isotypes excluded) below
   ``max(min_prot_umis, exp(median - k MAD))`` of the sample (log scale).
7. ``isotype_high``: isotype controls' share of antibody counts above
   ``max(isotype_min_pct, expm1(median + k MAD))`` (log1p scale).

RNA thresholds by ``mode``:

- ``"study"`` (the reference study): pass when mito < 20 % (< 40 % when the sample's
  ``tissue`` is not ``"blood"``) and 200 < genes < 5,000 (strict inequalities).
- ``"adaptive"`` (default): per sample, median +/- ``nmads`` MADs (MAD scaled by 1.4826,
  as R's ``mad`` used by scater's ``isOutlier``) of log UMIs and log genes (both sides) and
  of the mito share (upper side only). Hard limits on top: genes >= ``min_genes`` always
  required (``"auto"``: 100, or for a targeted panel of fewer than 10,000 genes 100 x
  genes / 20,000, see `auto_min_genes`); the mito cut is clipped to [``mito_floor_pct``,
  ``mito_ceiling_pct``] = [10 %, 25 %] for blood ([10 %, 50 %] for other tissues), so a
  very tight sample never loses healthy cells at 6 % mito and a bad one never keeps cells
  at 40 %.

Protein-only samples (no ``rna`` modality: cytometry-like CITE-seq panels) are judged by
their antibodies: ``no_protein`` (too few counts) and ``isotype_high`` as above,
``large_library`` when the log antibody counts exceed median + ``nmads`` MADs, and doublets
simulated in antibody space (`sccohort.pp.doublets`); the RNA metrics are NaN and the RNA
reasons never apply (the number of antibodies detected is biology, not quality).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from sccohort.errors import InputError, SccohortWarning
from sccohort.pp.doublets import (
    KNN_METHODS,
    METHODS,
    MIN_CELLS_DOUBLETS,
    DoubletResult,
    call_doublets,
)
from sccohort.pp.qc_metrics import METRICS, _mad, protein_metrics, rna_metrics

#: Reasons a cell is removed, in the order they are tested.
REASONS = (
    "red_cell",
    "platelet",
    "low_quality",
    "large_library",
    "doublet",
    "no_protein",
    "isotype_high",
)
MODES = ("adaptive", "study")
#: Panels of fewer genes than this are targeted panels: ``min_genes = "auto"`` scales the
#: whole-transcriptome floor (`WHOLE_MIN_GENES` of `WHOLE_GENES`) by the panel's size.
PANEL_MAX_GENES = 10_000
WHOLE_GENES, WHOLE_MIN_GENES = 20_000, 100
#: A QC reason that removes more than this share of a sample's cells is named in a warning.
LARGE_LOSS = 0.3
#: Names of all-zero antibodies listed in a warning before it says "and N more".
_MAX_NAMED = 10


class QCWarning(SccohortWarning):
    """A sample-level QC event: no cells left, many cells lost, skipped doublet calling."""


@dataclass(frozen=True)
class QCParams:
    """The settings of `qc_sample` and `run_qc` (the config's ``[qc]`` section plus a seed).

    ``mode``: ``"adaptive"`` or ``"study"``; ``nmads`` and the hard limits (module
    docstring); ``hb_max_pct``, ``platelet_max_pct``, ``min_prot_umis``,
    ``isotype_min_pct``; ``doublet_method`` (``"cite"``, ``"scrublet"``, ``"none"``),
    ``doublet_neighbours`` (``"auto"``, ``"exact"``, ``"approximate"``: see
    `sccohort.pp.doublets`), ``doublet_min_cells``; ``seed``. Checked when made: an
    `InputError` names the bad field.

    Examples
    --------
    >>> from sccohort.pp import QCParams
    >>> QCParams(mode="study", doublet_method="none").nmads
    5.0
    """

    mode: str = "adaptive"
    nmads: float = 5.0
    min_genes: int | str = "auto"
    mito_floor_pct: float = 10.0
    mito_ceiling_pct: float = 25.0
    mito_ceiling_tissue_pct: float = 50.0
    study_mito_max_pct: float = 20.0
    study_mito_max_tissue_pct: float = 40.0
    study_genes_min: int = 200
    study_genes_max: int = 5000
    hb_max_pct: float = 10.0
    platelet_max_pct: float = 5.0
    min_prot_umis: float = 10.0
    isotype_min_pct: float = 2.0
    doublet_method: str = "cite"
    doublet_neighbours: str = "auto"
    doublet_min_cells: int = MIN_CELLS_DOUBLETS
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"mode": MODES, "doublet_method": METHODS, "doublet_neighbours": KNN_METHODS}
        words = {
            "mode": "QC mode",
            "doublet_method": "doublet method",
            "doublet_neighbours": "doublet neighbour search",
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InputError(
                    f"unknown {words[key]} {getattr(self, key)!r}",
                    key=key,
                    hint=f"use one of {', '.join(allowed)}",
                )
        for key, value in asdict(self).items():
            if key in (*choices, "seed") or (key == "min_genes" and value == "auto"):
                continue
            if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise InputError("must be a number >= 0", key=key, hint=f"got {value!r}")
        if self.nmads <= 0:
            raise InputError("must be > 0", key="nmads", hint=f"got {self.nmads!r}")


#: The default settings, by name.
DEFAULTS: dict[str, Any] = asdict(QCParams())


def auto_min_genes(n_genes: int) -> int:
    """The ``min_genes = "auto"`` floor: 100, or for a targeted panel 100 x genes / 20,000.

    A 1,000-gene panel gets 5: cells detect a fraction of a panel's genes, and the adaptive
    (MAD) bound does the rest.

    Examples
    --------
    >>> from sccohort.pp import auto_min_genes
    >>> auto_min_genes(1000), auto_min_genes(20000)
    (5, 100)
    """
    if n_genes >= PANEL_MAX_GENES:
        return WHOLE_MIN_GENES
    return max(1, int(round(WHOLE_MIN_GENES * n_genes / WHOLE_GENES)))


def _rna_flags(
    m: pd.DataFrame, p: QCParams, blood: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Low-quality and large-library flags and thresholds of one sample.

    Study mode: a cell passes when ``genes_min < genes < genes_max`` and ``mito <
    mito_max``. Adaptive mode: when ``genes_min <= genes <= genes_max``, ``umis_min <= umis
    <= umis_max`` and ``mito <= mito_max`` (compared on the log scale of the MAD cuts).
    """
    genes = m["n_genes"].to_numpy(float)
    umis = m["n_umis"].to_numpy(float)
    mito = m["pct_mito"].to_numpy(float)
    if p.mode == "study":
        cuts = {
            "mito_max": float(p.study_mito_max_pct if blood else p.study_mito_max_tissue_pct),
            "genes_min": float(p.study_genes_min),
            "genes_max": float(p.study_genes_max),
            "umis_min": float("nan"),
            "umis_max": float("nan"),
        }
        low = (mito >= cuts["mito_max"]) | (genes <= cuts["genes_min"])
        return low, genes >= cuts["genes_max"], cuts
    k = p.nmads
    log_u = np.log(np.maximum(umis, 1.0))
    log_g = np.log(np.maximum(genes, 1.0))
    med_u, mad_u = _mad(log_u)
    med_g, mad_g = _mad(log_g)
    med_m, mad_m = _mad(mito)
    ceiling = p.mito_ceiling_pct if blood else p.mito_ceiling_tissue_pct
    mito_max = float(np.clip(med_m + k * mad_m, p.mito_floor_pct, ceiling))
    genes_lo = max(med_g - k * mad_g, np.log(max(p.min_genes, 1.0)))
    low = (
        (mito > mito_max) | (genes < p.min_genes) | (log_g < genes_lo) | (log_u < med_u - k * mad_u)
    )
    large = (log_g > med_g + k * mad_g) | (log_u > med_u + k * mad_u)
    cuts = {
        "mito_max": mito_max,
        "genes_min": float(np.exp(genes_lo)),
        "genes_max": float(np.exp(med_g + k * mad_g)),
        "umis_min": float(np.exp(med_u - k * mad_u)),
        "umis_max": float(np.exp(med_u + k * mad_u)),
    }
    return low, large, cuts


def _protein_library_flags(m: pd.DataFrame, p: QCParams) -> tuple[np.ndarray, dict[str, float]]:
    """Large-library flags of a protein-only sample: log antibody counts above median + k MAD.

    Without RNA, a droplet holding two cells shows as twice the antibody counts; the lower
    side is the ``no_protein`` check. No cell is low quality by the number of antibodies it
    shows: which antibodies a cell carries is its biology (a monocyte has no CD3, CD8 or
    CD19), not its quality. RNA thresholds are NaN.
    """
    log_prot = np.log1p(m["prot_umis"].to_numpy(float))
    med, mad = _mad(log_prot)
    cut = med + p.nmads * mad
    large = np.isfinite(log_prot) & (log_prot > cut) if np.isfinite(cut) else np.zeros(len(m), bool)
    cuts = dict.fromkeys(("mito_max", "genes_min", "genes_max", "umis_min", "umis_max"), np.nan)
    cuts["prot_umis_max"] = float(np.expm1(cut))
    return large, cuts


def _counts(adata) -> sp.csr_matrix:
    return sp.csr_matrix(adata.layers["counts"] if "counts" in adata.layers else adata.X)


def _positions(adata, cells: pd.Index, sample: str, what: str) -> np.ndarray:
    """Rows of ``adata`` holding ``cells``; an error when some cell is missing."""
    pos = adata.obs_names.get_indexer(cells)
    if (pos < 0).any():
        raise InputError(
            f"{int((pos < 0).sum())} cells have no {what} counts",
            sample=sample,
            hint=f"keep only cells present in the {what} modality",
        )
    return pos


def _protein_flags(
    m: pd.DataFrame, p: QCParams, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """No-protein and isotype-high flags and thresholds of one sample.

    The norm (median, MAD) comes from the cells in ``rows``, the cells that passed the RNA
    checks, so that dead cells and contaminants do not widen it. Comparisons are made on
    the log scale on which the cuts are computed.
    """
    k = p.nmads
    log_prot = np.log1p(m["prot_umis"].to_numpy(float))
    log_iso = np.log1p(m["pct_isotype"].to_numpy(float))
    med_p, mad_p = _mad(log_prot[rows])
    med_i, mad_i = _mad(log_iso[rows])
    prot_cut = np.log1p(p.min_prot_umis)
    if np.isfinite(med_p):
        prot_cut = max(prot_cut, med_p - k * mad_p)
    no_protein = log_prot < prot_cut
    iso_cut = float("nan")
    isotype_high = np.zeros(len(m), bool)
    if np.isfinite(med_i):
        iso_cut = max(np.log1p(p.isotype_min_pct), med_i + k * mad_i)
        isotype_high = np.isfinite(log_iso) & (log_iso > iso_cut)
    cuts = {"prot_umis_min": float(np.expm1(prot_cut)), "isotype_max": float(np.expm1(iso_cut))}
    return no_protein, isotype_high, cuts


#: The config keys that loosen each QC reason (named when a reason removes many cells).
_REASON_KEYS = {
    "red_cell": "qc.hb_max_pct",
    "platelet": "qc.platelet_max_pct",
    "low_quality": "qc.min_genes, qc.nmads or qc.mito_ceiling_pct",
    "large_library": "qc.nmads",
    "doublet": 'qc.doublet_method = "none"',
    "no_protein": "qc.min_prot_umis",
    "isotype_high": "qc.isotype_min_pct",
}


def _warn_large_loss(removed: pd.Series, n: int, sample: str) -> None:
    """Warn, naming the key to set, when one reason removes over `LARGE_LOSS` of the cells."""
    for name, count in removed.items():
        if name and n and count > LARGE_LOSS * n:
            warnings.warn(
                f"sample '{sample}': QC removed {count} of {n} cells ({100 * count / n:.0f} %) "
                f"as {name}; if that is not expected of these cells, loosen "
                f"{_REASON_KEYS[name]} (see tables/qc.csv for the thresholds used)",
                QCWarning,
                stacklevel=3,
            )


def _first_reason(flags: dict[str, np.ndarray], n: int) -> np.ndarray:
    reason = np.full(n, "", dtype=object)
    for name in reversed(REASONS):
        reason[flags[name]] = name
    return reason


def _take_rows(mat: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """``mat[rows]``, without the copy when ``rows`` is every row in order."""
    if rows.size == mat.shape[0] and np.array_equal(rows, np.arange(rows.size)):
        return mat
    return mat[rows]


def _sample_values(obs: pd.DataFrame, column: str, default: str) -> str:
    if column not in obs or len(obs) == 0:
        return default
    values = obs[column].astype(str).unique()
    return str(values[0]) if len(values) else default


def qc_sample(mdata: MuData, params: QCParams | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Quality control of one sample's cells (pure: reads ``mdata``, changes nothing).

    Parameters
    ----------
    mdata
        One sample's cells: modality ``rna`` (gene symbols as ``var_names``) and/or
        ``prot`` (``var["isotype"]`` bool; without it no antibody counts as an isotype),
        raw counts in each modality's ``layers["counts"]`` (``.X`` if there is no such
        layer); ``obs`` with ``sample_id`` and ``tissue`` (missing tissue = ``"blood"``).
    params
        The settings (`QCParams`; default: its defaults).

    Returns
    -------
    obs
        DataFrame indexed like ``mdata.obs_names``: the `METRICS`, ``doublet_score``
        (float, NaN where not scored), ``qc_pass`` (bool), ``qc_reason`` (str, ``""`` for
        passing cells, else the first of `REASONS` that applies).
    row
        The sample's line of the QC table: ``sample_id, tissue, mode, cells_in,
        removed_<reason>`` for each reason, ``cells_out``, the thresholds used
        (``mito_max, genes_min, genes_max, umis_min, umis_max, hb_max, platelet_max,
        prot_umis_min, isotype_max, doublet_threshold``), ``doublet_method`` (what ran)
        and ``notes`` (skipped steps, ``;``-separated).

    Warns
    -----
    QCWarning
        Naming the sample when no cell passes (the row then shows ``cells_out = 0``), when
        one reason removes more than `LARGE_LOSS` of its cells (naming the key to loosen),
        when antibodies with no counts are ignored (named), or when doublet calling is
        skipped (too few cells: scores NaN,
        nobody removed as a doublet).

    Raises
    ------
    InputError
        A sample with neither ``rna`` nor ``prot``, or cells missing from a modality.

    Examples
    --------
    >>> from sccohort.pp import QCParams, qc_sample
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> one = mdata[mdata.obs["sample_id"] == "SSc1"].copy()
    >>> cells, row = qc_sample(one, QCParams(doublet_method="none"))
    >>> row["cells_in"], row["cells_out"], cells["qc_pass"].sum() == row["cells_out"]
    (300, 288, np.True_)
    """
    p = QCParams() if params is None else params
    sample = _sample_values(mdata.obs, "sample_id", "?")
    tissue = _sample_values(mdata.obs, "tissue", "blood")
    if "rna" not in mdata.mod and "prot" not in mdata.mod:
        raise InputError(
            "neither RNA nor protein counts; QC needs one of them",
            sample=sample,
            hint="read the sample with its Gene Expression or Antibody Capture library",
        )
    notes: list[str] = []
    m, rna_counts, p = _rna_part(mdata, sample, p, notes)
    prot_counts = _protein_part(mdata, m, sample, rna_counts is None, notes)
    flags, cuts = _library_flags(m, rna_counts is not None, p, tissue.lower() == "blood")
    before = ~(
        flags["red_cell"] | flags["platelet"] | flags["low_quality"] | flags["large_library"]
    )
    rows = np.flatnonzero(before)
    score, flags["doublet"], result = _doublet_part(
        rna_counts, prot_counts, rows, p, sample, len(m)
    )
    if result.note:
        notes.append(f"doublets: {result.note}")
    if prot_counts is not None:
        flags["no_protein"], flags["isotype_high"], pcuts = _protein_flags(m, p, rows)
    else:
        pcuts = {"prot_umis_min": float("nan"), "isotype_max": float("nan")}
        flags["no_protein"] = np.zeros(len(m), bool)
        flags["isotype_high"] = np.zeros(len(m), bool)
    reason = _first_reason(flags, len(m))
    m["doublet_score"] = score
    m["qc_pass"] = reason == ""
    m["qc_reason"] = reason.astype(str)
    if not m["qc_pass"].any():
        warnings.warn(
            f"sample '{sample}': no cell passes QC ({len(m)} cells in)", QCWarning, stacklevel=2
        )
    _warn_large_loss(pd.Series(reason).value_counts(), len(m), sample)
    row: dict[str, Any] = {
        "sample_id": sample,
        "tissue": tissue,
        "mode": p.mode,
        "cells_in": len(m),
    }
    counts = pd.Series(reason).value_counts()
    for name in REASONS:
        row[f"removed_{name}"] = int(counts.get(name, 0))
    row["cells_out"] = int(m["qc_pass"].sum())
    row |= cuts
    row |= {"hb_max": float(p.hb_max_pct), "platelet_max": float(p.platelet_max_pct)}
    row |= pcuts
    row["doublet_threshold"] = result.threshold
    row["doublet_method"] = result.method
    row["notes"] = "; ".join(notes)
    return m, row


def _rna_part(
    mdata: MuData, sample: str, p: QCParams, notes: list[str]
) -> tuple[pd.DataFrame, sp.csr_matrix | None, QCParams]:
    """RNA metrics of the cells (NaN without RNA), their counts, ``min_genes`` resolved."""
    cells = mdata.obs_names
    if "rna" not in mdata.mod:
        notes.append("protein-only sample: RNA QC skipped, cells judged by their antibodies")
        m = pd.DataFrame({c: np.full(len(cells), np.nan) for c in METRICS[:6]})
        m.index = cells
        return m, None, p
    rna = mdata.mod["rna"]
    pos = _positions(rna, cells, sample, "RNA")
    rna_counts = _take_rows(_counts(rna), pos)
    m = rna_metrics(rna_counts, rna.var_names)
    if p.min_genes == "auto":
        p = replace(p, min_genes=auto_min_genes(rna.n_vars))
        if rna.n_vars < PANEL_MAX_GENES:
            notes.append(f"targeted panel of {rna.n_vars} genes: min_genes {p.min_genes}")
    m.index = cells
    return m, rna_counts, p


def _protein_part(
    mdata: MuData, m: pd.DataFrame, sample: str, protein_only: bool, notes: list[str]
) -> sp.csr_matrix | None:
    """Protein metrics into ``m``; the counts of the antibodies QC judges by (or None)."""
    cells = mdata.obs_names
    prot_counts = None
    if "prot" not in mdata.mod:
        notes.append("protein QC skipped: no protein data")
    else:
        prot = mdata.mod["prot"]
        ppos = prot.obs_names.get_indexer(cells)
        if (ppos < 0).any():
            if protein_only:
                _positions(prot, cells, sample, "antibody")  # raises
            notes.append(f"protein QC skipped: {int((ppos < 0).sum())} cells lack antibodies")
        else:
            prot_counts = _antibody_metrics(prot, _take_rows(_counts(prot), ppos), m, sample, notes)
    if prot_counts is None:
        for column in ("prot_umis", "prot_n", "pct_isotype"):
            m[column] = np.nan
        if protein_only:  # and nothing to judge the cells by
            warnings.warn(
                f"sample '{sample}': no RNA and every antibody has zero counts; QC keeps "
                "every cell",
                QCWarning,
                stacklevel=3,
            )
    return prot_counts


def _antibody_metrics(
    prot: AnnData, pc: sp.csr_matrix, m: pd.DataFrame, sample: str, notes: list[str]
) -> sp.csr_matrix | None:
    """Antibody metrics of one sample's cells into ``m``; counts of the informative ones."""
    isotype = (
        prot.var["isotype"].to_numpy(bool) if "isotype" in prot.var else np.zeros(prot.n_vars, bool)
    )
    pm, zero = protein_metrics(pc, isotype)
    if zero.all():
        notes.append("protein QC skipped: every antibody has zero counts")
        return None
    if zero.any():
        names = list(prot.var_names[zero])
        shown = ", ".join(names[:_MAX_NAMED])
        more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
        warnings.warn(
            f"sample '{sample}': {len(names)} antibodies with no counts ignored "
            f"by protein QC: {shown}{more}",
            QCWarning,
            stacklevel=4,
        )
        notes.append(f"{len(names)} all-zero antibodies ignored")
    m[pm.columns] = pm.to_numpy()
    return pc[:, np.flatnonzero(~isotype & ~zero)]


def _library_flags(
    m: pd.DataFrame, has_rna: bool, p: QCParams, blood: bool
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Contaminant, low-quality and large-library flags; the thresholds used."""
    flags: dict[str, np.ndarray] = {}
    flags["red_cell"] = m["pct_hb"].to_numpy() >= p.hb_max_pct
    flags["platelet"] = m["pct_platelet"].to_numpy() >= p.platelet_max_pct
    if has_rna:
        flags["low_quality"], flags["large_library"], cuts = _rna_flags(m, p, blood)
    else:
        flags["low_quality"] = np.zeros(len(m), bool)
        flags["large_library"], cuts = _protein_library_flags(m, p)
    cuts.setdefault("prot_umis_max", float("nan"))
    return flags, cuts


def _doublet_part(
    rna_counts: sp.csr_matrix | None,
    prot_counts: sp.csr_matrix | None,
    rows: np.ndarray,
    p: QCParams,
    sample: str,
    n: int,
) -> tuple[np.ndarray, np.ndarray, DoubletResult]:
    """Doublet scores (NaN outside ``rows``) and calls of the ``n`` cells; the caller's result."""
    score, called = np.full(n, np.nan), np.zeros(n, bool)
    result = call_doublets(
        None if rna_counts is None else _take_rows(rna_counts, rows),
        None if prot_counts is None else _take_rows(prot_counts, rows),
        method=p.doublet_method,
        knn_method=p.doublet_neighbours,
        min_cells=int(p.doublet_min_cells),
        seed=int(p.seed),
    )
    score[rows] = result.score
    called[rows] = result.called
    if result.note and p.doublet_method != "none":
        warnings.warn(
            f"sample '{sample}': doublet calling skipped ({result.note}); "
            "doublet_score is NaN and no cell is removed as a doublet",
            QCWarning,
            stacklevel=3,
        )
    return score, called, result


def run_qc(mdata: MuData, params: QCParams | None = None) -> pd.DataFrame:
    """Quality control of every sample of a cohort, one sample at a time.

    Parameters
    ----------
    mdata
        Cohort object with ``obs["sample_id"]`` (and ``tissue``), modalities ``rna`` and
        optionally ``prot`` (see `qc_sample`). Changed in place: ``obs`` receives the
        `METRICS`, ``doublet_score``, ``qc_pass`` and ``qc_reason`` of every cell.
    params
        The settings of `qc_sample`, the same for every sample (`QCParams`).

    Examples
    --------
    >>> from sccohort.pp import QCParams, run_qc
    >>> table = run_qc(mdata, QCParams(doublet_method="none"))  # doctest: +SKIP

    Returns
    -------
    The QC table: one row per sample (`qc_sample`'s row), in the order samples first
    appear in ``obs``; the pipeline writes it to ``tables/qc.csv``.

    Raises
    ------
    InputError
        No ``sample_id`` column in ``obs``, or as in `qc_sample`.
    """
    if "sample_id" not in mdata.obs:
        raise InputError(
            "obs has no 'sample_id' column",
            column="sample_id",
            hint="read the cohort with sccohort.read_cohort or add obs['sample_id']",
        )
    sample_ids = mdata.obs["sample_id"].astype(str)
    frames, rows = [], []
    for sample in pd.unique(sample_ids):
        mask = (sample_ids == sample).to_numpy()
        frame, row = qc_sample(mdata[mask], params)
        frames.append(frame)
        rows.append(row)
    result = pd.concat(frames).reindex(mdata.obs_names)
    for column in result.columns:
        mdata.obs[column] = result[column].to_numpy()
    return pd.DataFrame(rows)

"""Kidney samples of a simulated cohort (issue 23): tissue cells, a trajectory, interactions.

``write_cohort(..., tissue="kidney")`` adds one sample ``<donor>_kidney`` for every SSc
donor (healthy donors have none, `kidney_donors`): in design ``paper`` 4 with SRC and 17
without, so that a difference between them can pass a donor-level test (4 vs 4 would allow
p >= 1/35). A kidney sample has half the blood samples' cells (`kidney_cells`), samples.csv
``tissue = kidney``, the design's primary timepoint, a kidney lane (``K1``, ``K2``, ... of
`KIDNEY_PER_LANE` samples) and is single-nucleus RNA: its h5 files hold Gene Expression
features only.

Cell types (expected shares; each donor's drawn from a Dirichlet of concentration
`DIRICHLET`): proximal tubule ``PT`` 0.30, distal tubule / collecting duct ``DCT`` 0.12
(l1 Epithelial), ``Endo`` 0.12 (Endothelial), ``Fib`` 0.08 (Stromal), ``Podo`` 0.03
(Epithelial), the monocyte-to-macrophage continuum 0.20 (l1 Mono), ``CD8_TEM_T2ISG`` 0.07,
``CD4_TEM`` 0.05 and ``NK`` 0.03. Tissue types have a background of the median blood
profile without immune genes, random lineage and type programs and named markers
(`KIDNEY_TYPES`); the immune types reuse the blood profiles of :mod:`.biology`.

Continuum: pseudotime uniform on [0, 1]; states by quarter, ``CD14_EGR1`` (the blood
profile) [0, .25), ``Mac_int1``, ``Mac_int2``, ``Mac_THBS1`` [.75, 1]. Only the planted
genes change along it: named (`RISING`, `FALLING`: level in cp10k at pseudotime 1) and
random ones, ``log level(t) = log level(0) + ramp(t) * log fold`` with a logistic ramp from
0 at t = 0 to 1 at t = 1 (its midpoint per gene: 0.35, 0.5 or 0.65 in turn, width 0.12; for
THBS1, which names the terminal state, midpoint 0.65 and width 0.04: it switches on as the
cells approach that state); a cell takes the profile of the nearest of `N_GRID` pseudotime
points. Tissue artefacts: mitochondrial fraction Beta(12, 108) (mean 10 %; blood 4.5 %),
ambient RNA 8 % of each droplet (blood 3 %) from the sample's own mean profile (mostly
tubule), doublets and low-quality cells at the blood rates. Interactions (`PAIRS`): in
design ``paper`` each ligand is `LR_FOLD` times higher in the source cells of SRC donors (in
SRC donors this adds to the trajectory of THBS1 and CXCL10 in Mac_THBS1); the other designs
plant none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.tenx import write_10x_h5
from sccohort.simulate.biology import (
    HOUSEKEEPING,
    SUBSETS,
    Biology,
    _named_genes,
    load_genes,
)
from sccohort.simulate.counts import _barcodes, _empty_counts, _rna_counts, _rng, biology
from sccohort.simulate.design import SampleSpec, SimParams

KIDNEY = "kidney"
#: Tissues ``--tissue`` accepts.
TISSUES = (KIDNEY,)
KIDNEY_PER_LANE = 8
DIRICHLET = 100.0
#: Beta parameters of a kidney nucleus's mitochondrial fraction (mean 0.10).
TISSUE_MT = (12.0, 108.0)
TISSUE_AMBIENT = 0.08
N_GRID = 40
#: Fold of each ligand in the source cells of SRC donors (design paper).
LR_FOLD = 3.0
_SEED = 20250623  # the fixed (cohort-seed independent) random parts of the kidney biology
_RAMP_WIDTH = 0.12
_MIDPOINTS = (0.35, 0.5, 0.65)
#: Genes that define the terminal state by their name (``Mac_THBS1``): they switch on as the
#: cells approach it (midpoint, ramp width), so that they are its most distinctive markers.
_LATE = {"THBS1": (0.65, 0.04)}
_N_LINEAGE, _N_TYPE, _N_TRAJ_UP, _N_TRAJ_DOWN = 150, 40, 25, 15


@dataclass(frozen=True)
class KidneyType:
    """A kidney cell type: labels, share, median UMIs, markers (cp10k) or a blood subset."""

    name: str
    l1: str
    l2: str
    share: float
    library: float
    markers: dict[str, float] = field(default_factory=dict)
    blood: str = ""


_K = KidneyType
KIDNEY_TYPES: tuple[KidneyType, ...] = (
    _K("PT", "Epithelial", "PT", 0.30, 3000, {
        "LRP2": 25, "CUBN": 15, "SLC34A1": 30, "SLC5A12": 10, "SLC22A6": 10, "SLC22A8": 8,
        "HNF4A": 6, "ALDOB": 60, "GPX3": 50, "MIOX": 20, "PDZK1IP1": 30, "FXYD2": 25,
        "KRT8": 10, "KRT18": 10, "PAX8": 5, "CDH16": 3, "EPCAM": 3}),
    _K("DCT", "Epithelial", "DCT", 0.12, 2500, {
        "SLC12A3": 30, "CALB1": 40, "SLC12A1": 5, "UMOD": 10, "AQP2": 8, "AQP3": 6,
        "GATA3": 6, "KRT8": 15, "KRT18": 15, "KRT19": 10, "EPCAM": 15, "CDH16": 15,
        "PAX2": 6, "PAX8": 8, "FXYD2": 10}),
    _K("Endo", "Endothelial", "Endo", 0.12, 2000, {
        "PECAM1": 25, "VWF": 30, "EMCN": 20, "PLVAP": 30, "KDR": 8, "FLT1": 15, "CDH5": 10,
        "ENG": 12, "EGFL7": 15, "SPARCL1": 25, "CD34": 8, "IGFBP7": 30, "CD47": 10}),
    _K("Fib", "Stromal", "Fib", 0.08, 2200, {
        "COL1A1": 40, "COL1A2": 50, "COL3A1": 60, "DCN": 50, "LUM": 40, "PDGFRB": 10,
        "PDGFRA": 8, "FBLN1": 15, "TAGLN": 10, "ACTA2": 8, "MGP": 40, "SPARC": 30, "TIMP3": 10}),
    _K("Podo", "Epithelial", "Podo", 0.03, 3500, {
        "NPHS1": 15, "NPHS2": 25, "PODXL": 40, "WT1": 10, "PTPRO": 10, "CLIC5": 15,
        "SYNPO": 10, "MAFB": 8}),
    _K("CD8_TEM_T2ISG", "CD8 T", "CD8 TEM", 0.07, 2000, blood="CD8_TEM_T2ISG"),
    _K("CD4_TEM", "CD4 T", "CD4 TEM", 0.05, 2000, blood="CD4_TEM"),
    _K("NK", "NK", "NK", 0.03, 2000, blood="NK_dim"),
)  # fmt: skip
del _K
#: Share of cells on the monocyte-to-macrophage continuum, a quarter per state.
CONTINUUM_SHARE = 0.20
CONTINUUM_LIBRARY = 3000.0
STATES = ("CD14_EGR1", "Mac_int1", "Mac_int2", "Mac_THBS1")
_STATE_L2 = {"CD14_EGR1": "CD14 Mono"}  # the other states: "Macrophage"
#: Named genes rising along pseudotime: their level (cp10k) at pseudotime 1 (Mac_THBS1).
RISING = {
    "C1QA": 60, "C1QB": 60, "C1QC": 40, "APOE": 80, "APOC1": 40, "CD163": 25, "MRC1": 15,
    "SELENOP": 20, "FOLR2": 10, "THBS1": 60, "TREM2": 10, "GPNMB": 20, "CTSB": 60,
    "CTSD": 60, "MSR1": 8, "MAF": 10, "CD68": 40, "F13A1": 10, "STAB1": 8, "SLC40A1": 8,
    "HMOX1": 20, "CXCL10": 8, "CCR5": 8,
}  # fmt: skip
#: Named genes falling along pseudotime: their level (cp10k) at pseudotime 1.
FALLING = {
    "S100A8": 3, "S100A9": 5, "S100A12": 1, "LYZ": 40, "EGR1": 2, "FOS": 3, "VCAN": 1,
    "FCN1": 2, "CCR2": 0.3, "MNDA": 3, "IL1B": 1,
}  # fmt: skip
#: Planted ligand-receptor pairs: (ligand, receptor, source, target); the ligand changes.
PAIRS = (
    ("CCL5", "CCR5", "CD8_TEM_T2ISG", "Mac_THBS1"),
    ("CCL5", "CCR1", "CD8_TEM_T2ISG", "Mac_THBS1"),
    ("CXCL10", "CXCR3", "Mac_THBS1", "CD8_TEM_T2ISG"),
    ("THBS1", "CD47", "Mac_THBS1", "Endo"),
)
_IMMUNE_HOUSEKEEPING = ("PTPRC", "CD52", "CD53", "CD37", "CXCR4", "CD48", "ITGB2", "ITGAL",
                        "SPN", "ITGA4", "CD74", "LCP1")  # fmt: skip


@dataclass(frozen=True)
class KidneyBiology:
    """Fixed expression profiles of a kidney sample's groups.

    Attributes
    ----------
    profiles
        Array (n_groups, n_genes): the `KIDNEY_TYPES`, then `N_GRID` continuum points;
        rows sum to 1, mitochondrial columns 0.
    state
        Array (n_groups,): the subset of each row (a continuum point: its state).
    grid
        Array (N_GRID,): pseudotime of the continuum rows.
    trajectory_genes
        The planted trajectory genes: ``gene, direction, planted_log2fc, midpoint``.
    """

    profiles: np.ndarray
    state: np.ndarray
    grid: np.ndarray
    trajectory_genes: pd.DataFrame


def state_of(pseudotime: np.ndarray) -> np.ndarray:
    """The continuum state of each pseudotime in [0, 1] (quarters), shape as the input."""
    q = np.minimum((np.asarray(pseudotime) * len(STATES)).astype(int), len(STATES) - 1)
    return np.array(STATES, dtype=object)[q]


def _ramp(t: np.ndarray, midpoint: float, width: float = _RAMP_WIDTH) -> np.ndarray:
    """Logistic ramp from 0 at t = 0 to 1 at t = 1, steepest at ``midpoint``."""

    def f(x: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(x) - midpoint) / width))

    return (f(t) - f(0.0)) / (f(1.0) - f(0.0))


def _background(bio: Biology) -> tuple[np.ndarray, np.ndarray]:
    """Tissue background (cp10k, (n_genes,)) and the pool of genes for random programs.

    The median blood profile, with the immune genes of the blood programs low (0.05),
    ribosomal genes halved (nuclei) and no mitochondrial UMIs (drawn apart).
    """
    blood = np.array([not s.contaminant for s in SUBSETS])
    bg = np.median(bio.profiles[blood], axis=0) * 1e4
    sym = bio.genes["symbol"].to_numpy()
    ribo = np.char.startswith(sym.astype(str), "RPL") | np.char.startswith(sym.astype(str), "RPS")
    bg[ribo] *= 0.5
    immune = (_named_genes() - set(HOUSEKEEPING)) | set(_IMMUNE_HOUSEKEEPING)
    bg[bio.idx(sorted(immune))] = 0.05
    bg[bio.mt_index] = 0.0
    named = _named_genes() | set(RISING) | set(FALLING) | {g for p in PAIRS for g in p[:2]}
    for t in KIDNEY_TYPES:
        named |= set(t.markers)
    kind = bio.genes["kind"].to_numpy()
    pool = (kind == "protein_coding") & ~ribo & (bg > 0.1) & (bg < 20) & ~np.isin(sym, list(named))
    return bg, np.flatnonzero(pool)


def _random_program(rng: np.random.Generator, pool: np.ndarray, up: int, down: int) -> dict:
    """Gene index -> fold: ``up`` genes 2-8 times up, ``down`` genes 2-8 times down."""
    chosen = rng.choice(pool, size=up + down, replace=False)
    logs = rng.uniform(1.0, 3.0, up + down) * np.r_[np.ones(up), -np.ones(down)]
    return dict(zip(chosen.tolist(), (2.0**logs).tolist(), strict=True))


def _type_profiles(bio: Biology, bg: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """cp10k profiles of the `KIDNEY_TYPES` (n_types, n_genes): tissue programs or blood."""
    rng = np.random.default_rng(_SEED)
    lineage = {
        l1: _random_program(rng, pool, _N_LINEAGE, _N_LINEAGE // 3)
        for l1 in ("Epithelial", "Endothelial", "Stromal")
    }
    names = [s.name for s in SUBSETS]
    out = np.zeros((len(KIDNEY_TYPES), bg.size))
    for i, t in enumerate(KIDNEY_TYPES):
        if t.blood:
            out[i] = bio.profiles[names.index(t.blood)] * 1e4
            continue
        expr = bg.copy()
        for prog in (lineage[t.l1], _random_program(rng, pool, _N_TYPE, 0)):
            for g, f in prog.items():
                expr[g] *= f
        expr[bio.idx(list(t.markers))] = list(t.markers.values())
        out[i] = expr
    return out


def _trajectory_ends(bio: Biology, pool: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """The continuum's cp10k start (CD14_EGR1) and the planted genes' log folds and midpoints.

    Returns ``start`` (n_genes,) and a table ``gene_index, gene, direction, log_fold,
    midpoint`` (named genes, then random ones from genes the monocytes express).
    """
    start = bio.profiles[[s.name for s in SUBSETS].index("CD14_EGR1")] * 1e4
    rng = np.random.default_rng(_SEED + 1)
    named = {**RISING, **FALLING}
    idx = bio.idx(list(named))
    logs = np.log(np.array(list(named.values()), dtype=float) / start[idx])
    direction = ["rising"] * len(RISING) + ["falling"] * len(FALLING)
    expressed = pool[(start[pool] > 1.0) & (start[pool] < 20.0)]
    rand = rng.choice(expressed, size=_N_TRAJ_UP + _N_TRAJ_DOWN, replace=False)
    sign = np.r_[np.ones(_N_TRAJ_UP), -np.ones(_N_TRAJ_DOWN)]
    table = pd.DataFrame(
        {
            "gene_index": np.r_[idx, rand],
            "direction": direction + ["rising"] * _N_TRAJ_UP + ["falling"] * _N_TRAJ_DOWN,
            "log_fold": np.r_[logs, sign * np.log(2.0) * rng.uniform(1.5, 3.0, sign.size)],
        }
    )
    table["gene"] = bio.genes["symbol"].to_numpy()[table["gene_index"]]
    table["midpoint"] = [_MIDPOINTS[i % len(_MIDPOINTS)] for i in range(len(table))]
    late = [_LATE.get(g) for g in table["gene"]]
    table["midpoint"] = [
        m if v is None else v[0] for m, v in zip(table["midpoint"], late, strict=True)
    ]
    table["width"] = [_RAMP_WIDTH if v is None else v[1] for v in late]
    wrong = np.sign(table["log_fold"]) != np.where(table["direction"] == "rising", 1, -1)
    if wrong.any():  # a named level that does not move its gene the documented way
        raise ValueError(f"trajectory genes against their direction: {list(table['gene'][wrong])}")
    return start, table


def _continuum(start: np.ndarray, genes: pd.DataFrame, t: np.ndarray) -> np.ndarray:
    """Normalised profiles (len(t), n_genes) of the continuum at pseudotimes ``t``."""
    out = np.repeat(start[None, :], t.size, axis=0)
    cols = ["gene_index", "log_fold", "midpoint", "width"]
    for g, lf, mid, width in genes[cols].itertuples(index=False):
        out[:, g] = start[g] * np.exp(lf * _ramp(t, mid, width))
    return out / out.sum(axis=1, keepdims=True)


@cache
def kidney_biology() -> KidneyBiology:
    """The fixed profiles of kidney samples (`KidneyBiology`), the same for every cohort."""
    bio = biology()
    bg, pool = _background(bio)
    types = _type_profiles(bio, bg, pool)
    types[:, bio.mt_index] = 0.0
    types /= types.sum(axis=1, keepdims=True)
    start, genes = _trajectory_ends(bio, pool)
    grid = (np.arange(N_GRID) + 0.5) / N_GRID
    ends = _continuum(start, genes, np.array([0.0, 1.0]))
    g = genes["gene_index"].to_numpy()
    table = genes.assign(planted_log2fc=np.round(np.log2(ends[1, g] / ends[0, g]), 4))
    state = np.r_[[t.name for t in KIDNEY_TYPES], state_of(grid)].astype(object)
    return KidneyBiology(
        np.vstack([types, _continuum(start, genes, grid)]),
        state,
        grid,
        table[["gene", "direction", "planted_log2fc", "midpoint"]],
    )


def check_tissue(tissue: str | None) -> None:
    """`InputError` unless ``tissue`` is ``None`` or one of `TISSUES`."""
    if tissue is not None and tissue not in TISSUES:
        raise InputError(
            f"unknown tissue '{tissue}'", key="tissue", hint=f"use one of {', '.join(TISSUES)}"
        )


def kidney_donors(clinical: pd.DataFrame, design: str) -> list[str]:
    """Donors with a kidney sample, in clinical-table order: every SSc donor.

    `InputError` when the design has no SSc donor (design ``stim``).
    """
    ssc = clinical.loc[clinical["group"] == "SSc", "donor_id"].astype(str).tolist()
    if not ssc:
        raise InputError(
            f"design '{design}' has no SSc donors to take kidney samples from",
            key="tissue",
            hint="kidney samples come from SSc donors: use design paper, null or prepost",
        )
    return ssc


def kidney_cells(cells_per_donor: int) -> int:
    """Nuclei per kidney sample: half a blood sample's cells (a biopsy yields fewer), >= 1."""
    return max(int(cells_per_donor) // 2, 1)


@dataclass(frozen=True)
class KidneyJob:
    """One kidney sample to simulate and write (see `run_kidney_job`)."""

    out: Path
    spec: SampleSpec
    lr_fold: float
    params: SimParams
    n_cells: int
    seed: int
    donor_idx: int
    lane_idx: int


def kidney_jobs(
    out: Path,
    clinical: pd.DataFrame,
    design: str,
    selected: set[str],
    timepoint: str,
    p: SimParams,
    n_cells: int,
    seed: int,
) -> list[KidneyJob]:
    """A `KidneyJob` per kidney donor among ``selected``; lanes by place among all kidney donors."""
    position = {d: i for i, d in enumerate(clinical["donor_id"].astype(str))}
    src = clinical.set_index("donor_id")["SRC"] if "SRC" in clinical else pd.Series()
    jobs = []
    for k, donor in enumerate(kidney_donors(clinical, design)):
        if donor not in selected:
            continue
        lane = k // KIDNEY_PER_LANE
        spec = SampleSpec(-1, f"{donor}_kidney", donor, timepoint, f"K{lane + 1}")
        fold = LR_FOLD if design == "paper" and src.get(donor) == "yes" else 1.0
        jobs.append(KidneyJob(out, spec, fold, p, n_cells, seed, position[donor], lane))
    return jobs


def _sample_profiles(kb: KidneyBiology, job: KidneyJob) -> np.ndarray:
    """The groups' profiles in one sample: ligand folds, donor and lane gene noise."""
    prof = kb.profiles.copy()
    if job.lr_fold != 1.0:
        genes = load_genes()["symbol"].tolist()
        for ligand, source in {(lig, src) for lig, _, src, _ in PAIRS}:
            prof[kb.state == source, genes.index(ligand)] *= job.lr_fold
    n_genes = prof.shape[1]
    donor = _rng(job.seed, 1, job.donor_idx).normal(0.0, job.params.donor_noise, n_genes)
    lane = _rng(job.seed, 11, job.lane_idx).normal(0.0, job.params.batch_noise, n_genes)
    prof *= np.exp(donor + lane)[None, :]
    return prof / prof.sum(axis=1, keepdims=True)


def _compartments() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected shares, l1 and median UMIs of the 8 types and the continuum (9,)."""
    share = np.r_[[t.share for t in KIDNEY_TYPES], CONTINUUM_SHARE]
    l1 = np.array([*(t.l1 for t in KIDNEY_TYPES), "Mono"], dtype=object)
    library = np.r_[[t.library for t in KIDNEY_TYPES], CONTINUUM_LIBRARY]
    return share, l1, library


def _draw_atoms(
    rng: np.random.Generator, share: np.ndarray, n_cells: int, doublet_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compartments of the cells, then of their doublet partners (of another l1).

    Returns ``(atoms, pseudotime, doublet)``: atoms and pseudotime (n_cells + n_doublets,),
    pseudotime NaN off the continuum; doublet (n_cells,).
    """
    _, l1, _ = _compartments()
    cell = rng.choice(share.size, size=n_cells, p=share)
    doublet = rng.random(n_cells) < doublet_rate
    first = l1[cell[doublet]]
    partner = np.zeros(first.size, dtype=np.int64)
    for lv in np.unique(first):
        p = np.where(l1 != lv, share, 0.0)
        sel = first == lv
        partner[sel] = rng.choice(share.size, size=int(sel.sum()), p=p / p.sum())
    atoms = np.r_[cell, partner]
    t = np.where(atoms == share.size - 1, rng.random(atoms.size), np.nan)
    return atoms, t, doublet


def _libraries(
    rng: np.random.Generator, atoms: np.ndarray, doublet: np.ndarray, params: SimParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per atom (n_atoms,): expected UMIs, mitochondrial fraction, low quality.

    Low-quality cells are singlets (``params.low_quality_rate`` of all cells) with 10-35 %
    of the UMIs and 30-70 % mitochondrial.
    """
    n_cells = doublet.size
    p_lq = min(1.0, params.low_quality_rate / max(1.0 - doublet.mean(), 1e-9))
    lq = np.zeros(atoms.size, bool)
    lq[:n_cells] = ~doublet & (rng.random(n_cells) < p_lq)
    median = _compartments()[2] * params.library_scale
    log_lib = np.log(median[atoms]) + rng.normal(0.0, 0.15) + rng.normal(0.0, 0.4, atoms.size)
    lib, mt = np.exp(log_lib), rng.beta(*TISSUE_MT, atoms.size)
    lib[lq] *= rng.uniform(0.1, 0.35, int(lq.sum()))
    mt[lq] = rng.uniform(0.3, 0.7, int(lq.sum()))
    return lib, mt, lq


def _groups(kb: KidneyBiology, job: KidneyJob, share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sample's profiles with ambient RNA (n_groups, n_genes) and the ambient (n_genes,)."""
    prof = _sample_profiles(kb, job)
    median = _compartments()[2] * job.params.library_scale
    n_types = len(KIDNEY_TYPES)
    on_grid = np.full(N_GRID, share[-1] * median[-1] / N_GRID)
    weight = np.r_[share[:n_types] * median[:n_types], on_grid]
    ambient = weight @ prof / weight.sum()
    return (1.0 - TISSUE_AMBIENT) * prof + TISSUE_AMBIENT * ambient[None, :], ambient


def _counts(
    rng: np.random.Generator, kb: KidneyBiology, job: KidneyJob, share: np.ndarray
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RNA of the cells and of the empty droplets.

    Returns ``(cells, empties, compartment, pseudotime, doublet, low_quality)``: CSR
    (n_cells, n_genes) and (n_empty, n_genes), then per cell (of its first nucleus).
    """
    p, n = job.params, job.n_cells
    atoms, t, doublet = _draw_atoms(rng, share, n, p.doublet_rate)
    lib, mt, lq = _libraries(rng, atoms, doublet, p)
    on_grid = np.minimum((np.nan_to_num(t) * N_GRID).astype(int), N_GRID - 1)
    group = np.where(np.isnan(t), atoms, len(KIDNEY_TYPES) + on_grid)
    groups, ambient = _groups(kb, job, share)
    rna = _rna_counts(rng, biology(), groups, group, lib * (1 - mt), lib * mt)
    d_rows = np.flatnonzero(doublet)
    to_first = sp.csr_matrix(
        (np.ones(d_rows.size, dtype=np.int32), (d_rows, np.arange(d_rows.size))),
        shape=(n, d_rows.size),
    )
    cells = (rna[:n] + (to_first @ rna[n:]).tocsr()).tocsr()
    cells.sort_indices()
    lib_empty = np.exp(rng.normal(np.log(30.0), 0.6, int(p.n_empty)))
    empty_mt = rng.beta(8.0, 40.0, int(p.n_empty))
    empties = _empty_counts(rng, biology(), ambient, lib_empty, empty_mt)
    return cells, empties, atoms[:n], t[:n], doublet, lq[:n]


def _features() -> pd.DataFrame:
    """Features of a kidney h5 file: the genes only (single-nucleus RNA, no antibodies)."""
    genes = load_genes()
    return pd.DataFrame(
        {"id": genes["gene_id"], "name": genes["symbol"], "feature_type": "Gene Expression",
         "genome": "GRCh38"}
    )  # fmt: skip


def _write_h5(job: KidneyJob, barcodes: np.ndarray, cells: sp.csr_matrix, empty_bcs: np.ndarray,
              empties: sp.csr_matrix) -> None:  # fmt: skip
    """Filtered and raw (cells + empty droplets, barcode order) h5 of one kidney sample."""
    folder = job.out / job.spec.sample_id
    folder.mkdir(parents=True, exist_ok=True)
    feats, sid = _features(), job.spec.sample_id
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", cells, barcodes, feats,
                 library_id=sid, compression_level=1)  # fmt: skip
    every = np.concatenate([barcodes, empty_bcs])
    order = np.argsort(every, kind="stable")
    raw = sp.vstack([cells, empties], format="csr")[order]
    write_10x_h5(folder / "raw_feature_bc_matrix.h5", raw, every[order], feats, library_id=sid,
                 compression_level=1)  # fmt: skip


def _donor_shares(job: KidneyJob) -> np.ndarray:
    """The donor's kidney composition over the 9 compartments (Dirichlet around expected)."""
    share, _, _ = _compartments()
    draw = _rng(job.seed, 12, job.donor_idx).dirichlet(DIRICHLET * share)
    draw = np.maximum(draw, 1e-12)
    return draw / draw.sum()


def _composition(job: KidneyJob, share: np.ndarray) -> pd.DataFrame:
    """``truth/donor_composition.csv`` rows of one kidney sample (types, then states)."""
    expected, _, _ = _compartments()
    n_states = len(STATES)
    return pd.DataFrame(
        {
            "sample_id": job.spec.sample_id,
            "donor_id": job.spec.donor_id,
            "subset": [t.name for t in KIDNEY_TYPES] + list(STATES),
            "expected_share": np.r_[expected[:-1], np.full(n_states, expected[-1] / n_states)],
            "donor_share": np.r_[share[:-1], np.full(n_states, share[-1] / n_states)],
        }
    )


def run_kidney_job(job: KidneyJob) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Simulate and write one kidney sample.

    Returns
    -------
    ``(cells, composition, trajectory)``: per cell ``cell_id, sample_id, l1, l2, subset,
    doublet, low_quality, contaminant`` (n_cells rows, as for blood); the sample's
    ``truth/donor_composition.csv`` rows; ``cell_id, pseudotime, state`` of its cells on
    the continuum (a doublet: of its first nucleus).
    """
    kb = kidney_biology()
    rng = _rng(job.seed, 10, job.donor_idx)
    share = _donor_shares(job)
    cells, empties, comp, t, doublet, lq = _counts(rng, kb, job, share)
    n, n_empty = cells.shape[0], empties.shape[0]
    codes = _barcodes(rng, n + n_empty)
    is_cell = np.zeros(codes.size, bool)
    is_cell[rng.choice(codes.size, size=n, replace=False)] = True
    _write_h5(job, codes[is_cell], cells, codes[~is_cell], empties)
    sid = job.spec.sample_id
    cell_id = np.array([f"{sid}:{b.decode()}" for b in codes[is_cell]], dtype=object)
    types = KIDNEY_TYPES
    on = ~np.isnan(t)
    subset = np.array([types[c].name if c < len(types) else "" for c in comp], dtype=object)
    subset[on] = state_of(t[on])
    l1 = np.array([types[c].l1 if c < len(types) else "Mono" for c in comp], dtype=object)
    l2 = np.array([types[c].l2 if c < len(types) else "" for c in comp], dtype=object)
    l2[on] = [_STATE_L2.get(s, "Macrophage") for s in subset[on]]
    truth = pd.DataFrame(
        {"cell_id": cell_id, "sample_id": sid, "l1": l1, "l2": l2, "subset": subset,
         "doublet": doublet, "low_quality": lq, "contaminant": ""}
    )  # fmt: skip
    trajectory = pd.DataFrame(
        {"cell_id": cell_id[on], "pseudotime": np.round(t[on], 6), "state": subset[on]}
    )
    return truth, _composition(job, share), trajectory


def interactions_table(design: str) -> pd.DataFrame:
    """``truth/interactions.csv``: the `PAIRS` and their planted log2 fold in SRC donors."""
    lfc = round(float(np.log2(LR_FOLD)), 4) if design == "paper" else 0.0
    rows = [(lig, rec, src, tgt, lfc, "SRC", "ligand") for lig, rec, src, tgt in PAIRS]
    cols = ["ligand", "receptor", "source", "target", "planted_log2fc", "contrast", "changed"]
    return pd.DataFrame(rows, columns=cols)


def primary_timepoint(config: str) -> str:
    """The ``primary_timepoint`` of a config template (the kidney samples' timepoint)."""
    found = re.search(r'^primary_timepoint = "([^"]*)"$', config, flags=re.MULTILINE)
    if found is None:
        raise ValueError("the config template has no primary_timepoint")
    return found.group(1)


def kidney_config(config: str, n_samples: int) -> str:
    """The config with ``primary_tissue = "blood"`` under [run] and a comment on the kidney."""
    line = f'primary_timepoint = "{primary_timepoint(config)}"\n'
    config = config.replace(line, line + 'primary_tissue = "blood"\n', 1)
    return config + (
        "\n"
        f'# {n_samples} kidney samples (samples.csv tissue = "kidney", single-nucleus RNA only)\n'
        "# carry the tissue side's truth: the monocyte-to-macrophage trajectory\n"
        "# (truth/trajectory.csv, truth/trajectory_genes.csv) and the ligand-receptor pairs\n"
        '# (truth/interactions.csv). With [run] primary_tissue = "blood" the blood samples\n'
        "# represent the donors; the kidney samples go to the tissue stages (integration\n"
        "# of shared lineages, trajectory, cell-cell communication; see [tissue]).\n"
    )

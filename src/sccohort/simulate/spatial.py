"""Spatial slides of a simulated cohort (issue 25): kidney tissue on an imaging panel.

``write_cohort(..., spatial="cosmx")`` adds one slide ``<donor>_slide`` for every SSc donor
(`sccohort.simulate.tissue.kidney_donors`), written twice: as CosMx flat files in
``<slide>/cosmx/`` and as Xenium outputs in ``<slide>/xenium/`` (the layouts of
`sccohort.io.spatial`); samples.csv names the folder of the format asked for
(``format = cosmx`` or ``xenium``, ``tissue = kidney``).

Layout (µm; `AREA_PER_CELL` µm² per cell, a square slide): cells on a jittered grid;
glomeruli (radius `GLOMERULUS_UM`, `GLOMERULI_PER_MM2`) and the planted inflammatory niche
(radius `NICHE_UM`, `NICHES_PER_MM2`; `NICHE_FOLD` times as many in SRC donors' slides in
design ``paper``, the same in all slides otherwise) as discs; the rest is tubules, the
Voronoi cells of seeds `TUBULE_UM` apart (proximal ``PT`` 70 %, distal ``DCT`` 30 %), with
the interstitium along their borders (`INTERSTITIUM_UM` wide). Niche precedence:
inflammatory, glomerulus, interstitium, tubule. Cell types per niche: `COMPOSITION`
(``Mac_THBS1`` with fibroblasts and CD8_TEM_T2ISG in the inflammatory niche; resident
macrophages ``Mac_int1`` in the interstitium).

Expression: the kidney profiles of :mod:`sccohort.simulate.tissue` (macrophages: the
continuum at pseudotime 0.4 and 0.9) on a panel of `PANEL_SIZE` genes (their named markers,
then the genes that vary most between the types), donor noise, a library of about 300 UMIs
per cell and `SPILLOVER` of each cell's counts from its nearest neighbour's profile (cell
segmentation errors); `N_NEGATIVE` negative probes with a few counts. Truth:
``truth/spatial.csv`` (``cell_id`` as the CosMx reader names cells, ``xenium_cell_id``,
``sample_id``, ``x``, ``y`` in µm, ``l1``, ``subset``, ``niche``).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from sccohort.errors import InputError
from sccohort.io.spatial import COSMX_PIXEL_UM
from sccohort.io.tenx import write_10x_h5
from sccohort.simulate.biology import load_genes
from sccohort.simulate.counts import _rng
from sccohort.simulate.tissue import (
    FALLING,
    KIDNEY_TYPES,
    PAIRS,
    RISING,
    kidney_biology,
)

#: Formats ``--spatial`` accepts (both are always written; this one goes in samples.csv).
SPATIAL_FORMATS = ("cosmx", "xenium")
NICHES = ("tubule", "glomerulus", "interstitium", "inflammatory")
PANEL_SIZE = 960
N_NEGATIVE = 10
AREA_PER_CELL = 250.0
FOV_UM = 510.0
GLOMERULUS_UM, GLOMERULI_PER_MM2 = 60.0, 2.5
NICHE_UM, NICHES_PER_MM2, NICHE_FOLD = 50.0, 4.0, 3.0
TUBULE_UM, INTERSTITIUM_UM = 90.0, 8.0
LIBRARY, SPILLOVER = 300.0, 0.1
COMPOSITION = {
    "glomerulus": {"Podo": 0.45, "Endo": 0.40, "Fib": 0.15},
    "tubule": {"tubule": 0.94, "Endo": 0.03, "Fib": 0.03},
    "interstitium": {"Fib": 0.32, "Endo": 0.32, "Mac_int1": 0.12, "CD4_TEM": 0.10,
                     "CD8_TEM_T2ISG": 0.08, "NK": 0.06},
    "inflammatory": {"Mac_THBS1": 0.40, "Fib": 0.30, "CD8_TEM_T2ISG": 0.25, "Endo": 0.05},
}  # fmt: skip
_MACROPHAGES = {"Mac_int1": 0.4, "Mac_THBS1": 0.9}  # continuum pseudotime of their profile


def check_spatial(spatial: str | None) -> None:
    """`InputError` unless ``spatial`` is ``None`` or one of `SPATIAL_FORMATS`."""
    if spatial is not None and spatial not in SPATIAL_FORMATS:
        raise InputError(f"unknown spatial format '{spatial}'", key="spatial",
                         hint=f"use one of {', '.join(SPATIAL_FORMATS)}")  # fmt: skip


@dataclass(frozen=True)
class SlideJob:
    """One slide to simulate and write."""

    out: Path
    sample_id: str
    donor_id: str
    enlarged: bool
    n_cells: int
    seed: int
    donor_idx: int


@cache
def _types() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """Subsets, their l1 and their profiles on every gene (n_types, n_genes)."""
    kb = kidney_biology()
    names = [t.name for t in KIDNEY_TYPES]
    rows = [kb.profiles[i] for i in range(len(names))]
    l1 = [t.l1 for t in KIDNEY_TYPES]
    for name, t in _MACROPHAGES.items():
        rows.append(kb.profiles[len(names) + min(int(t * len(kb.grid)), len(kb.grid) - 1)])
        names.append(name)
        l1.append("Mono")
    return tuple(names), tuple(l1), np.vstack(rows)


@cache
def panel() -> np.ndarray:
    """Gene indices of the panel: named markers first, then the most variable between types."""
    genes = load_genes()["symbol"].tolist()
    position = {g: i for i, g in enumerate(genes)}
    named = [g for t in KIDNEY_TYPES for g in t.markers] + [*RISING, *FALLING]
    named += [g for pair in PAIRS for g in pair[:2]]
    named += ["CD3E", "CD8A", "CD4", "NKG7", "GNLY", "CCL5", "CD14", "CD68", "PTPRC", "GZMB"]
    chosen = list(dict.fromkeys(position[g] for g in named if g in position))
    _, _, prof = _types()
    logp = np.log1p(prof * 1e4)
    order = np.argsort(-(logp.var(axis=0) * (prof.max(axis=0) > 2e-5)), kind="stable")
    mito = {i for i, g in enumerate(genes) if g.startswith("MT-")}
    for g in order:
        if len(chosen) >= PANEL_SIZE:
            break
        if g not in chosen and g not in mito:
            chosen.append(int(g))
    return np.array(chosen[:PANEL_SIZE])


def _layout(
    rng: np.random.Generator, n: int, enlarged: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells' positions (n, 2) µm, niche index and tubule type index (0 PT, 1 DCT)."""
    side = np.sqrt(n * AREA_PER_CELL)
    k = int(np.ceil(np.sqrt(n)))
    step = side / k
    grid = np.stack(np.meshgrid(np.arange(k), np.arange(k)), axis=-1).reshape(-1, 2)
    grid = grid[np.sort(rng.choice(len(grid), size=n, replace=False))]
    xy = (grid + 0.5 + rng.uniform(-0.3, 0.3, grid.shape)) * step
    area_mm2 = side**2 / 1e6

    def centres(rate: float) -> np.ndarray:
        return rng.uniform(0, side, (max(1, rng.poisson(rate * area_mm2)), 2))

    inflamed = centres(NICHES_PER_MM2 * (NICHE_FOLD if enlarged else 1.0))
    glomeruli = centres(GLOMERULI_PER_MM2)
    seeds = rng.uniform(0, side, (max(2, int(side**2 / TUBULE_UM**2)), 2))
    kind = (rng.random(len(seeds)) < 0.3).astype(int)
    d_inf = cKDTree(inflamed).query(xy)[0]
    d_glom = cKDTree(glomeruli).query(xy)[0]
    dist, idx = cKDTree(seeds).query(xy, k=2)
    niche = np.where(dist[:, 1] - dist[:, 0] < INTERSTITIUM_UM, 2, 0)
    niche = np.where(d_glom < GLOMERULUS_UM, 1, niche)
    niche = np.where(d_inf < NICHE_UM, 3, niche)
    return xy, niche, kind[idx[:, 0]]


def _subsets(rng: np.random.Generator, niche: np.ndarray, tubule: np.ndarray) -> np.ndarray:
    """Each cell's subset, drawn from its niche's `COMPOSITION`."""
    out = np.empty(niche.size, dtype=object)
    for i, name in enumerate(NICHES):
        sel = np.flatnonzero(niche == i)
        comp = COMPOSITION[name]
        drawn = rng.choice(list(comp), size=sel.size, p=np.array(list(comp.values())))
        out[sel] = drawn
    is_tubule = out == "tubule"
    out[is_tubule] = np.where(tubule[is_tubule] == 0, "PT", "DCT")
    return out


def _counts(rng: np.random.Generator, job: SlideJob, xy: np.ndarray, subset: np.ndarray):
    """Panel counts (n, PANEL_SIZE) int, negative probe counts (n, N_NEGATIVE)."""
    names, _, prof = _types()
    genes = panel()
    noise = _rng(job.seed, 1, job.donor_idx).normal(0.0, 0.1, prof.shape[1])[genes]
    p = prof[:, genes] * np.exp(noise)[None, :]
    p /= p.sum(axis=1, keepdims=True)
    code = pd.Categorical(subset, categories=names).codes
    neighbour = cKDTree(xy).query(xy, k=2)[1][:, 1]
    mix = (1 - SPILLOVER) * p[code] + SPILLOVER * p[code[neighbour]]
    lib = np.exp(rng.normal(np.log(LIBRARY), 0.35, len(xy)))
    counts = rng.poisson(lib[:, None] * mix)
    return counts.astype(np.int32), rng.poisson(0.03, (len(xy), N_NEGATIVE)).astype(np.int32)


def _xenium_ids(n: int) -> np.ndarray:
    """Xenium-style cell ids: 8 letters a-p (base 16 of the cell's number) and ``-1``."""
    digits = (np.arange(n)[:, None] >> (4 * np.arange(7, -1, -1))) & 15
    letters = np.frombuffer(b"abcdefghijklmnop", dtype=np.uint8)[digits]
    return np.array([row.tobytes().decode() + "-1" for row in letters], dtype=object)


def _write_csv_gz(path: Path, table: pd.DataFrame) -> None:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=1) as fh:
        fh.write(buffer.getvalue())
    tmp.replace(path)


def _write_cosmx(job: SlideJob, px: np.ndarray, counts, negative, area_px) -> np.ndarray:
    """The CosMx flat files of a slide; returns the cells' barcodes ``<fov>_<cell_ID>``."""
    folder = job.out / job.sample_id / "cosmx"
    folder.mkdir(parents=True, exist_ok=True)
    fov_px = FOV_UM / COSMX_PIXEL_UM
    tile = np.floor(px / fov_px).astype(int)
    nx = int(tile[:, 0].max()) + 1
    fov = 1 + tile[:, 0] + nx * tile[:, 1]
    order = np.lexsort((px[:, 0], px[:, 1], fov))
    cell_id = np.empty(len(px), dtype=np.int64)
    for f in np.unique(fov):
        sel = order[fov[order] == f]
        cell_id[sel] = np.arange(1, sel.size + 1)
    genes = load_genes()["symbol"].to_numpy()[panel()]
    neg_names = [f"NegPrb{i + 1}" for i in range(N_NEGATIVE)]
    expr = pd.DataFrame(np.c_[counts, negative][order], columns=[*genes, *neg_names])
    expr.insert(0, "cell_ID", cell_id[order])
    expr.insert(0, "fov", fov[order])
    fovs = np.unique(fov)
    background = pd.DataFrame(0, index=range(fovs.size), columns=expr.columns)
    background["fov"], background["cell_ID"] = fovs, 0
    background[genes[0]] = 3  # transcripts outside any cell
    expr = pd.concat([background, expr]).sort_values(["fov", "cell_ID"], kind="stable")
    origin = np.c_[(fovs - 1) % nx, (fovs - 1) // nx] * fov_px
    local = px - origin[np.searchsorted(fovs, fov)]
    meta = pd.DataFrame({
        "fov": fov, "cell_ID": cell_id, "Area": np.round(area_px).astype(int),
        "AspectRatio": 1.0, "CenterX_local_px": np.round(local[:, 0], 2),
        "CenterY_local_px": np.round(local[:, 1], 2), "CenterX_global_px": px[:, 0],
        "CenterY_global_px": px[:, 1], "Width": 100, "Height": 100,
    }).iloc[order]  # fmt: skip
    positions = pd.DataFrame(
        {"fov": fovs, "x_global_px": origin[:, 0], "y_global_px": origin[:, 1]}
    )
    stem = job.sample_id
    _write_csv_gz(folder / f"{stem}_exprMat_file.csv.gz", expr)
    _write_csv_gz(folder / f"{stem}_metadata_file.csv.gz", meta)
    _write_csv_gz(folder / f"{stem}_fov_positions_file.csv.gz", positions)
    return np.array([f"{f}_{c}" for f, c in zip(fov, cell_id, strict=True)], dtype=object)


def _write_xenium(job: SlideJob, um: np.ndarray, counts, negative, area_um) -> np.ndarray:
    """The Xenium files of a slide; returns the cells' ids."""
    folder = job.out / job.sample_id / "xenium"
    folder.mkdir(parents=True, exist_ok=True)
    ids = _xenium_ids(len(um))
    symbols = load_genes().iloc[panel()]
    neg = [f"NegControlProbe_{i + 1:05d}" for i in range(N_NEGATIVE)]
    features = pd.DataFrame({
        "id": [*symbols["gene_id"], *neg], "name": [*symbols["symbol"], *neg],
        "feature_type": ["Gene Expression"] * len(symbols) + ["Negative Control Probe"] * len(neg),
    })  # fmt: skip
    matrix = sp.csr_matrix(np.c_[counts, negative])
    write_10x_h5(folder / "cell_feature_matrix.h5", matrix, ids, features,
                 library_id=job.sample_id, compression_level=1)  # fmt: skip
    total = counts.sum(axis=1)
    cells = pd.DataFrame({
        "cell_id": ids, "x_centroid": um[:, 0], "y_centroid": um[:, 1],
        "transcript_counts": total, "control_probe_counts": negative.sum(axis=1),
        "control_codeword_counts": 0, "unassigned_codeword_counts": 0,
        "deprecated_codeword_counts": 0, "total_counts": total + negative.sum(axis=1),
        "cell_area": np.round(area_um, 4), "nucleus_area": np.round(area_um * 0.4, 4),
    })  # fmt: skip
    _write_csv_gz(folder / "cells.csv.gz", cells)
    return ids


def run_slide_job(job: SlideJob) -> pd.DataFrame:
    """Simulate and write one slide (both formats); its rows of ``truth/spatial.csv``."""
    rng = _rng(job.seed, 30, job.donor_idx)
    xy, niche, tubule = _layout(rng, job.n_cells, job.enlarged)
    subset = _subsets(rng, niche, tubule)
    counts, negative = _counts(rng, job, xy, subset)
    px = np.round(xy / COSMX_PIXEL_UM, 2)
    um = np.round(px * COSMX_PIXEL_UM, 4)  # what both files say, to 0.1 nm
    area_um = np.exp(rng.normal(np.log(AREA_PER_CELL * 0.6), 0.25, len(xy)))
    barcodes = _write_cosmx(job, px, counts, negative, area_um / COSMX_PIXEL_UM**2)
    xenium = _write_xenium(job, um, counts, negative, area_um)
    names, l1, _ = _types()
    l1_of = dict(zip(names, l1, strict=True))
    return pd.DataFrame({
        "cell_id": [f"{job.sample_id}:{b}" for b in barcodes],
        "xenium_cell_id": [f"{job.sample_id}:{b}" for b in xenium],
        "sample_id": job.sample_id, "x": um[:, 0], "y": um[:, 1],
        "l1": [l1_of[s] for s in subset], "subset": subset,
        "niche": np.asarray(NICHES, dtype=object)[niche],
    })  # fmt: skip


def slide_jobs(out: Path, clinical: pd.DataFrame, design: str, selected: set[str],
               n_cells: int, seed: int) -> list[SlideJob]:  # fmt: skip
    """A `SlideJob` per SSc donor among ``selected`` (the niche enlarged with SRC in paper)."""
    from sccohort.simulate.tissue import kidney_donors

    position = {d: i for i, d in enumerate(clinical["donor_id"].astype(str))}
    src = clinical.set_index("donor_id")["SRC"] if "SRC" in clinical else pd.Series()
    return [
        SlideJob(
            out,
            f"{donor}_slide",
            donor,
            design == "paper" and src.get(donor) == "yes",
            int(n_cells),
            int(seed),
            position[donor],
        )  # fmt: skip
        for donor in kidney_donors(clinical, design)
        if donor in selected
    ]


def spatial_samples(jobs: list[SlideJob], fmt: str, timepoint: str) -> pd.DataFrame:
    """The slides' rows of ``samples.csv``."""
    return pd.DataFrame({
        "sample_id": [j.sample_id for j in jobs], "donor_id": [j.donor_id for j in jobs],
        "path": [f"{j.sample_id}/{fmt}" for j in jobs], "raw_path": "",
        "batch": [f"S{i // 8 + 1}" for i in range(len(jobs))], "timepoint": timepoint,
        "tissue": "kidney", "format": fmt,
    })  # fmt: skip

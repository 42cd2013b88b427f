"""The spatial stage: slides of imaging panels, their cell types, niches and clinical groups.

Slides are the sample sheet's rows of a spatial format (`RunState.slides`). Per slide (a
Dask task): read (`sccohort.io.spatial`) and panel QC (UMIs, negative-probe share, cell
area). Then, on all slides: log-normalisation to the median UMIs of a panel cell, cell types
by label transfer (`sccohort.tl.transfer_labels`: ``l1`` and ``subset``) from the cohort's
own dissociated cells (the blood, at most `MAX_PER_SUBSET` cells per subset, and every
tissue cell of the tissue stage; without tissue cells, by the shipped markers), the
panel's coverage of the annotation's markers, the
spatial graph, neighbourhood compositions and niches (`sccohort.tl.niches`), neighbourhood
enrichment per slide, and each donor's share of cells per niche tested between the groups of
each contrast with the donor-level default test. A cohort without slides skips it with a
note.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask
import mudata as md
import numpy as np
import pandas as pd

from sccohort.cluster import compute
from sccohort.errors import InputError
from sccohort.io.atomic import write_h5mu
from sccohort.io.read import read_sample
from sccohort.io.tables import write_table
from sccohort.pp import normalize_rna
from sccohort.stages.base import RunState
from sccohort.stages.donors import _designs  # the run's designs, small donors left out
from sccohort.stages.tissue import tissue_cells
from sccohort.stats import compare_donor_values
from sccohort.tl import (
    annotate_tissue,
    label_coverage,
    load_markers,
    neighbourhood_composition,
    neighbourhood_enrichment,
    niches,
    spatial_neighbors,
    transfer_labels,
)

SPATIAL_FILE = "spatial.h5mu"
#: Blood cells per subset in the label-transfer reference.
MAX_PER_SUBSET = 500


def no_spatial_reason(state: RunState) -> str | None:
    """Why the spatial stage cannot run on this cohort (None when it can)."""
    if state.slides is None or not len(state.slides):
        return "the cohort has no spatial slides (format cosmx, xenium or spatial)"
    if not state.config.spatial.analyse:
        return "[spatial] analyse = false"
    if "rna" not in state.mdata.mod:
        return "the blood has no RNA: slide cells are labelled from the cohort's RNA"
    return None


def stage_spatial(state: RunState) -> list[Path]:
    """Slides: QC, cell types, niches, neighbourhood enrichment, niche shares by group.

    Writes ``tables/spatial_qc.csv``, ``spatial_cell_types.csv`` (per label: cells, share,
    confidence; the panel's marker coverage per l1 / l2 label), ``niche_composition.csv``
    (`sccohort.tl.niches`), ``cooccurrence.csv`` (`sccohort.tl.neighbourhood_enrichment`),
    ``niche_shares.csv`` (per donor and niche), with contrasts ``niches.csv`` (the tests)
    and ``OUT/spatial.h5mu`` (mod ``rna``: every kept cell with its labels, niche,
    ``obsm["spatial"]`` and the spatial graph).
    """
    reason = no_spatial_reason(state)
    if reason is not None:
        state.skip("spatial", "spatial niches", reason)
        return []
    cfg, seed = state.config.spatial, state.config.seed
    cells, qc_rows = _read_slides(state)
    types = _label(state, cells)
    spatial_neighbors(cells, n_neighbors=cfg.n_neighbors)
    neighbourhood_composition(cells, "subset")
    composition = niches(
        cells, "subset", n_niches=cfg.n_niches or None, max_niches=cfg.max_niches, seed=seed
    )
    state.resolved["spatial.n_niches"] = int(cells.obs["niche"].nunique())
    enrichment = neighbourhood_enrichment(cells, "subset", n_perm=cfg.enrichment_perm, seed=seed)
    shares = _niche_shares(cells)
    written = [
        write_table(state.out, "spatial_qc", qc_rows),
        write_table(state.out, "spatial_cell_types", types),
        write_table(state.out, "niche_composition", composition),
        write_table(state.out, "cooccurrence", enrichment),
        write_table(state.out, "niche_shares", shares),
    ]
    tests = _niche_tests(state, shares)
    if len(tests):
        written.append(write_table(state.out, "niches", tests))
    del cells.obsm["neighbourhood"]  # a DataFrame per cell: recomputed from the graph
    written.append(write_h5mu(md.MuData({"rna": cells}), state.out / SPATIAL_FILE))
    return written


def _read_slide(path: str, sample_id: str, fmt: str, cfg) -> tuple[ad.AnnData, dict]:
    """One slide after panel QC (raw counts) and its QC row (a Dask task)."""
    rna = read_sample(path, sample_id, format=fmt).mod["rna"]
    counts = np.asarray(rna.layers["counts"].sum(axis=1)).ravel()
    negative = rna.obs["n_negative"].to_numpy(dtype=float)
    area = rna.obs["cell_area"].to_numpy(dtype=float)
    low = counts < cfg.min_counts
    noisy = ~low & (negative > cfg.max_negative_share * np.maximum(counts + negative, 1))
    median_area = np.nanmedian(area) if np.isfinite(area).any() else np.nan
    merged = ~low & ~noisy & (area > cfg.max_area_fold * median_area)
    keep = ~(low | noisy | merged)
    row = {
        "sample_id": sample_id,
        "format": fmt,
        "cells_in": rna.n_obs,
        "removed_low_counts": int(low.sum()),
        "removed_negative_probes": int(noisy.sum()),
        "removed_large_area": int(merged.sum()),
        "cells_out": int(keep.sum()),
        "median_counts": float(np.median(counts[keep])) if keep.any() else 0.0,
        "negative_per_cell": float(negative.mean()) if negative.size else 0.0,
        "n_genes": rna.n_vars,
    }
    return rna[keep].copy(), row


def _read_slides(state: RunState) -> tuple[ad.AnnData, pd.DataFrame]:
    table = state.slides.table
    tasks = [
        dask.delayed(_read_slide, pure=False)(
            str(table.at[s, "path"]),
            s,
            str(table.at[s, "format"]),
            state.config.spatial,
            dask_key_name=f"read-slide-{i}-{s}",
        )
        for i, s in enumerate(table.index)
    ]
    results = compute(tasks, state.scheduler, state.progress.advance)
    qc_rows = pd.DataFrame([row for _, row in results])
    kept = [rna for rna, _ in results if rna.n_obs]
    if not kept or sum(a.n_obs for a in kept) < 50:
        raise InputError(
            f"the slides kept {sum(a.n_obs for a in kept)} cells after panel QC",
            file=state.config.samples,
            column="format",
            hint="check [spatial] min_counts and max_negative_share, or set [spatial] "
            "analyse = false",
        )
    cells = ad.concat(kept, merge="same")
    cells.obsm["spatial"] = np.vstack([a.obsm["spatial"] for a in kept])
    sample = np.concatenate([[a.obs_names[0].split(":")[0]] * a.n_obs for a in kept])
    donors = table["donor_id"].astype(str)
    cells.obs["sample_id"] = pd.Categorical(sample)
    cells.obs["donor_id"] = pd.Categorical(donors.loc[sample].to_numpy())
    total = np.asarray(cells.layers["counts"].sum(axis=1)).ravel()
    normalize_rna(cells, target_sum=float(np.median(total)))
    return cells, qc_rows


def _label_table(cells: ad.AnnData) -> pd.DataFrame:
    """``key, label, n_cells, share, median_confidence`` of marker labels (l1, subset)."""
    rows = []
    for key, conf in (("l1", "l1_confidence"), ("subset", "l2_confidence")):
        groups = cells.obs.groupby(cells.obs[key].astype(str), observed=True)[conf]
        for label, values in groups:
            rows.append((key, label, len(values), len(values) / cells.n_obs, values.median()))
    return pd.DataFrame(rows, columns=["key", "label", "n_cells", "share", "median_confidence"])


def _reference(state: RunState, tissue) -> ad.AnnData:
    """The cohort's dissociated RNA with ``l1`` and ``subset``: blood (drawn) and tissue."""
    blood = state.mdata.mod["rna"]
    obs = state.mdata.obs.loc[blood.obs_names]
    rng = np.random.default_rng(state.config.seed)
    subset = obs["subset"].astype(str).to_numpy()
    rows = []
    for name in pd.unique(subset):
        found = np.flatnonzero(subset == name)
        if found.size > MAX_PER_SUBSET:
            found = rng.choice(found, MAX_PER_SUBSET, replace=False)
        rows.append(found)
    rows = np.sort(np.concatenate(rows))
    rna = tissue.mod["rna"]
    parts = [_labelled(blood[rows], obs.iloc[rows]), _labelled(rna, rna.obs)]
    return ad.concat(parts, join="inner")


def _labelled(adata: ad.AnnData, obs: pd.DataFrame) -> ad.AnnData:
    out = ad.AnnData(
        X=adata.layers["counts"],
        obs=pd.DataFrame(
            {c: obs[c].astype(str).to_numpy() for c in ("sample_id", "l1", "subset")},
            index=adata.obs_names,
        ),
        var=pd.DataFrame(index=adata.var_names),
    )
    out.layers["counts"] = adata.layers["counts"]
    return out


def _label(state: RunState, cells: ad.AnnData) -> pd.DataFrame:
    """Cell types (l1, subset) and the panel's coverage of the markers; the table.

    With tissue cells in the run (the tissue stage), label transfer from them and the blood;
    without, the blood lacks the tissue's own types (a tubule cell would take the nearest
    blood label), so the shipped PBMC and tissue markers annotate the slides
    (`sccohort.tl.annotate_tissue`; subset = l2).
    """
    tissue = tissue_cells(state)
    cfg = state.config.spatial
    if tissue is None:
        state.resolved["spatial.annotation"] = "markers"
        annotate_tissue(
            cells,
            resolution=state.config.tissue.resolution,
            min_confidence=cfg.min_confidence,
            seed=state.config.seed,
        )
        cells.obs["subset"] = cells.obs["l2"].astype(str)
        table = _label_table(cells)
    else:
        state.resolved["spatial.annotation"] = "label transfer"
        reference = _reference(state, tissue)
        shared = cells.var_names.intersection(reference.var_names)
        table = transfer_labels(
            cells,
            reference,
            keys=("l1", "subset"),
            batch_key="sample_id",
            n_top_genes=min(2000, len(shared)),
            min_confidence=cfg.min_confidence,
            key_prefix="",
            seed=state.config.seed,
        )
        state.resolved["spatial.panel_genes_shared"] = int(len(shared))
    coverage = label_coverage({"rna": load_markers("rna")}, {"rna": cells})
    coverage = coverage.rename(columns={"level": "key"})[
        ["key", "label", "callable", "marker_coverage", "missing_markers"]
    ]
    return table.merge(coverage, on=["key", "label"], how="left")


def _niche_shares(cells: ad.AnnData) -> pd.DataFrame:
    """Per donor and niche: its cells on the donor's slides, their share."""
    counts = pd.crosstab(cells.obs["donor_id"].astype(str), cells.obs["niche"].astype(str))
    share = counts.div(counts.sum(axis=1), axis=0)
    long = share.stack().rename("share").reset_index()
    long["n_cells"] = counts.stack().to_numpy()
    long["donor_cells"] = long["donor_id"].map(counts.sum(axis=1))
    return long


def _niche_tests(state: RunState, shares: pd.DataFrame) -> pd.DataFrame:
    """Each donor contrast on the donors' niche shares (default donor-level test)."""
    values = shares.pivot(index="donor_id", columns="niche", values="share").fillna(0.0)
    frames = []
    for name, design in _designs(state).items():
        if design.donor_of is not None:
            continue  # a design on samples (timepoints): a slide is one visit
        missing = [d for d in design.donors if d not in values.index]
        try:
            sub = design.without(missing)
        except InputError as exc:
            state.skip("spatial", f"niche shares for {name}", exc.problem)
            continue
        res = compare_donor_values(
            values.loc[list(sub.donors)],
            sub,
            level="niche",
            n_perm=state.config.association.n_perm,
            max_exact=state.config.association.max_exact,
            seed=state.config.seed,
        )
        frames.append(res.assign(contrast=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

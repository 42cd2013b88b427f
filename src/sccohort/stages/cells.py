"""Stages that work on cells: reading, QC, normalisation, embedding, labels, markers."""

from __future__ import annotations

import dataclasses
import gc
import warnings
from pathlib import Path

import anndata as ad
import dask
import mudata as md
import numpy as np
import pandas as pd

from sccohort.cluster import Background, compute
from sccohort.cohort import SampleSheet
from sccohort.config import Config
from sccohort.errors import InputError
from sccohort.io.probe import SampleProbe, probe_samples
from sccohort.io.read import combine_samples
from sccohort.io.tables import table_path, write_table
from sccohort.pp import (
    QCParams,
    auto_min_genes,
    clr,
    dsb_by_sample,
    normalize_rna,
    prepare_sample,
    summary_table,
)
from sccohort.pp.qc_metrics import METRICS as QC_METRICS
from sccohort.pp.store import RNA_STORE_FILE, STORE_KEY, RnaCollector, RnaStore
from sccohort.stages.base import RunState
from sccohort.stages.panel import check_panel
from sccohort.tl import (
    harmony,
    highly_variable_genes,
    hvg_count,
    leiden,
    pca_prot,
    pca_rna,
    umap,
)
from sccohort.tl.annotate import UNASSIGNED, annotate
from sccohort.tl.cell_graph import cell_graph
from sccohort.tl.markers import rank_markers
from sccohort.tl.subsets import subsets
from sccohort.tl.transfer import load_reference, transfer_labels


def stage_preprocess(state: RunState) -> list[Path]:
    """Each sample once, as one Dask task: read, summarise, QC; then join and normalise.

    Writes ``tables/samples.csv`` (per sample as read), ``tables/qc.csv`` (per sample: cells
    in, removed by each reason, out) and ``tables/qc_cells.csv.gz`` (every cell's metrics
    and reason). The cohort keeps the cells that pass, with ``obs`` QC columns; proteins
    are normalised (CLR or dsb) on the panel common to all samples. A sample left with no
    cells keeps its rows in the tables (a warning names it).
    """
    table = state.samples.table
    params = QCParams(**dataclasses.asdict(state.config.qc), seed=state.config.seed)
    use_dsb = _protein_method(state) == "dsb"
    formats, tissues, raws = (
        table[name] if name in table else pd.Series(None, index=table.index)
        for name in ("format", "tissue", "raw_path")
    )
    tasks = [
        dask.delayed(prepare_sample, pure=False)(
            str(table.at[s, "path"]),
            s,
            format=None if pd.isna(formats[s]) else str(formats[s]),
            modality=table.at[s, "modality"] if "modality" in table else None,
            tissue=None if pd.isna(tissues[s]) else str(tissues[s]),
            qc=params,
            raw_path=str(raws[s]) if use_dsb else None,
            dask_key_name=f"prepare-sample-{i}-{s}",
        )
        for i, s in enumerate(table.index)
    ]
    collector = RnaCollector(
        state.out / RNA_STORE_FILE,
        table["path"].astype(str),
        state.config.run.rna_on_disk,
        state.config.normalize.target_sum,
    )
    try:
        prepared = compute(tasks, state.scheduler, state.progress.advance, collector.take)
        store = collector.finish()
    except BaseException:
        collector.abort()
        raise
    for sample in prepared:
        for category, message, filename, lineno in sample.warnings:
            warnings.warn_explicit(message, category, filename, lineno)
    mdata = combine_samples({p.sample_id: p.mods for p in prepared}, table)
    qc_cells = pd.concat([p.qc_cells for p in prepared])
    for name in qc_cells.columns:
        mdata.obs[name] = qc_cells.loc[mdata.obs_names, name].to_numpy()
    antibodies = mdata.mod["prot"].var_names if "prot" in mdata.mod else None
    summary = summary_table({p.sample_id: p.summary for p in prepared}, table, antibodies)
    qc_table = pd.DataFrame([p.qc_row for p in prepared])
    empties = {p.sample_id: p.empty for p in prepared}
    own_dsb = {p.sample_id: p.prot_dsb for p in prepared if p.prot_dsb is not None}
    del prepared
    gc.collect()  # the parts' AnnData objects hold reference cycles
    columns = ["sample_id", "qc_pass", "qc_reason", "doublet_score", *QC_METRICS]
    qc_cells.insert(0, "sample_id", [c.split(":", 1)[0] for c in qc_cells.index])
    written = [
        write_table(state.out, "samples", summary),
        write_table(state.out, "qc", qc_table),
        write_table(
            state.out,
            "qc_cells",
            qc_cells[[c for c in columns if c in qc_cells]].rename_axis("cell_id").reset_index(),
        ),
    ]
    if mdata.n_obs == 0:
        raise InputError(
            "no cell of any sample passed quality control",
            file=table_path(state.out, "qc"),
            hint="check the QC table; for unusual data set [qc] mode or thresholds in the config",
        )
    _normalize(state, mdata, store, empties if use_dsb else None, own_dsb)
    state.mdata = mdata
    return written


def _normalize(
    state: RunState,
    mdata: md.MuData,
    store: RnaStore | None,
    empties: dict[str, ad.AnnData] | None,
    own_dsb: dict[str, pd.DataFrame],
) -> None:
    """RNA log-normalised (in memory, or as read from ``store``); proteins by CLR or dsb."""
    if "rna" in mdata.mod:
        rna = mdata.mod["rna"]
        if store is None:
            normalize_rna(rna, target_sum=state.config.normalize.target_sum)
        else:  # counts on disk: normalised as read (`sccohort.pp.store`)
            rna.uns["normalize_rna"] = {"method": "log1p", "target_sum": store.target_sum}
            rna.uns[STORE_KEY] = str(store.path)
        if state.config.qc.min_genes == "auto":
            state.resolved["qc.min_genes"] = auto_min_genes(rna.n_vars)
    if "prot" not in mdata.mod:
        return
    prot = mdata.mod["prot"]
    if empties is not None:
        prot.obs["sample_id"] = mdata.obs.loc[prot.obs_names, "sample_id"].to_numpy()
        dsb_by_sample(prot, empties, precomputed=own_dsb)
    else:
        clr(prot, margin="cell")
        prot.uns["normalization"] = {"method": "clr"}


def _protein_method(state: RunState) -> str:
    method = state.config.normalize.protein
    if method != "auto":
        return method
    raw = state.samples.table.get("raw_path")
    return "dsb" if raw is not None and raw.notna().all() else "clr"


def check_inputs(
    config: Config,
    samples: SampleSheet,
    tissue_samples: SampleSheet | None = None,
    slides: SampleSheet | None = None,
) -> dict[str, SampleProbe]:
    """Stage-specific input checks, run before anything is written.

    Every sample's count file is checked (`sccohort.io.probe.probe_samples`: headers,
    shapes and values, without loading a matrix), then the settings that depend on its
    panel (`sccohort.stages.panel.check_panel`); so are the files of ``tissue_samples``
    (samples of other tissues, probed among themselves) when the tissue stages use them, and
    of ``slides`` (spatial slides) when the spatial stage does.

    Returns
    -------
    ``sample_id -> SampleProbe``.

    Raises
    ------
    InputError
        A count file that cannot be probed; a panel a setting does not fit;
        ``[normalize] protein = "dsb"`` while a sample has no ``raw_path``; an
        ``[annotation]`` reference that is missing, or ``labels = "reference"`` without one
        (or without ``l1`` and ``l2`` among its keys); a missing ``[characterise]``
        gene-set or TF-target file.
    """
    _check_annotation(config)
    probes = probe_samples(samples)
    check_panel(config, probes)
    if tissue_samples is not None and config.tissue.analyse:
        probe_samples(tissue_samples)
    if slides is not None and config.spatial.analyse:
        probe_samples(slides)
    for key in ("gene_sets", "tf_targets"):
        path = getattr(config.characterise, key)
        if path is not None and not path.is_file():
            raise InputError(
                f"{key} file '{path}' not found",
                file=config.path,
                key=f"characterise.{key}",
                hint="Give the path (relative to the config) of a GMT / TRRUST-style TSV file",
            )
    if config.normalize.protein != "dsb":
        return probes
    raw = samples.table.get("raw_path")
    missing = samples.table.index if raw is None else samples.table.index[raw.isna()]
    if len(missing):
        raise InputError(
            "dsb needs each sample's raw droplets but raw_path is empty",
            file=config.samples,
            sample=str(missing[0]),
            column="raw_path",
            hint=f"{len(missing)} sample(s) lack it; add the raw_feature_bc_matrix paths or set "
            "[normalize] protein = 'clr'",
        )
    return probes


def _check_annotation(config: Config) -> None:
    section = config.annotation
    if section.reference is None:
        if section.labels == "reference":
            raise InputError(
                'labels = "reference" but no reference is given',
                file=config.path,
                key="annotation.labels",
                hint='Set annotation.reference to a labelled .h5ad / .h5mu, or labels = "markers"',
            )
        return
    if not section.reference.is_file() or section.reference.suffix.lower() not in (
        ".h5ad",
        ".h5mu",
    ):
        raise InputError(
            f"reference '{section.reference}' is not an existing .h5ad or .h5mu file",
            file=config.path,
            key="annotation.reference",
            hint="Give the path (relative to the config) of a labelled .h5ad or .h5mu",
        )
    if section.labels == "reference" and not {"l1", "l2"} <= set(section.reference_keys):
        raise InputError(
            'labels = "reference" needs reference_keys to include "l1" and "l2"',
            file=config.path,
            key="annotation.reference_keys",
            hint="Subsets and the report use Azimuth l1 / l2 labels",
        )


def stage_embed(state: RunState) -> list[Path]:
    """HVG, PCA, protein PCA, Harmony, the WNN graph and Leiden; starts the UMAP layout.

    With one modality (RNA only, protein only) its kNN graph stands in for the WNN graph,
    under the same name. The layout runs on a Dask worker beside the next stages;
    `stage_umap` collects it. ``mdata.uns["embed"]`` records what later stages read: the
    embedding of each modality (``reps``), the one subsets and neighbourhoods use
    (``use_rep``) and the resolved panel-dependent settings.
    """
    cfg, mdata = state.config.embedding, state.mdata
    seed = state.config.seed
    reps: dict[str, str] = {}
    if "rna" in mdata.mod:
        rna = mdata.mod["rna"]
        rna.obs["sample_id"] = mdata.obs.loc[rna.obs_names, "sample_id"].to_numpy()
        n_top = hvg_count(cfg.n_top_genes, rna.var_names)
        highly_variable_genes(rna, n_top_genes=n_top, batch_key="sample_id")
        n_pcs = min(cfg.n_pcs, n_top - 1, rna.n_obs - 1)
        pca_rna(rna, n_comps=n_pcs)
        mdata.obsm["X_pca"] = rna.obsm["X_pca"]
        reps["rna"] = "X_pca"
        state.resolved |= {"embedding.n_top_genes": n_top, "embedding.n_pcs": n_pcs}
    if "prot" in mdata.mod:
        pca_prot(mdata.mod["prot"], n_comps=cfg.n_pcs_prot or None)
        mdata.obsm["X_pca_prot"] = mdata.mod["prot"].obsm["X_pca_prot"]
        reps["prot"] = "X_pca_prot"
        state.resolved["embedding.n_pcs_prot"] = mdata.obsm["X_pca_prot"].shape[1]
    if cfg.harmony_key:
        for modality, basis in list(reps.items()):
            adata = mdata.mod[modality]
            adata.obs[cfg.harmony_key] = mdata.obs.loc[adata.obs_names, cfg.harmony_key].to_numpy()
            key = "X_harmony" if modality == "rna" else "X_harmony_prot"
            harmony(adata, use_rep=basis, batch_key=cfg.harmony_key, key_added=key, seed=seed)
            mdata.obsm[key] = adata.obsm[key]
            reps[modality] = key
    graph = ad.AnnData(obs=pd.DataFrame(index=mdata.obs_names))
    for modality, key in reps.items():
        graph.obsm[f"{modality}_{key}"] = mdata.obsm[key]
    graph_reps = {m: f"{m}_{k}" for m, k in reps.items()}
    cluster_key = cell_graph(graph, graph_reps, n_neighbors=cfg.n_neighbors, seed=seed)
    # the main embedding: RNA's when there is RNA (subsets and neighbourhoods use it)
    use_rep = reps.get("rna", reps.get("prot"))
    # the layout needs only the graph: it runs on a worker while Leiden runs here
    state.background["umap"] = _start_umap(state, graph, mdata.obsm[use_rep])
    leiden(graph, neighbors_key=cluster_key, resolution=cfg.resolution, seed=seed)
    for key in ("wnn_connectivities", "wnn_distances", "wnn_snn"):
        if key in graph.obsp:
            mdata.obsp[key] = graph.obsp[key]
    for column in [c for c in graph.obs if c.endswith("_weight")] + ["leiden"]:
        mdata.obs[column] = graph.obs[column].to_numpy()
    for key in ("wnn", "leiden"):
        if key in graph.uns:
            mdata.uns[key] = graph.uns[key]
    mdata.uns["embed"] = {"reps": reps, "use_rep": use_rep, "graph": "wnn"}
    return []


def _start_umap(state: RunState, graph: ad.AnnData | md.MuData, init: np.ndarray) -> Background:
    """The UMAP layout of ``graph``'s WNN graph as a background job, started from ``init``."""
    layout = ad.AnnData(obs=pd.DataFrame(index=graph.obs_names))
    layout.obsp["wnn_connectivities"] = graph.obsp["wnn_connectivities"]
    layout.uns["wnn"] = graph.uns["wnn"]
    layout.obsm["init"] = np.asarray(init)[:, :2]
    cfg = state.config
    return Background(state.scheduler, umap_layout, layout, cfg.embedding.umap_max_cells, cfg.seed)


def umap_layout(layout: ad.AnnData, max_cells: int, seed: int) -> tuple[np.ndarray, dict]:
    """UMAP coordinates (``n_cells x 2``) and parameters of the WNN graph in ``layout``.

    ``layout`` holds ``obsp["wnn_connectivities"]``, ``uns["wnn"]`` and the starting
    coordinates in ``obsm["init"]``; runs as a background task on a Dask worker.
    """
    umap(layout, neighbors_key="wnn", max_cells=max_cells, init="init", seed=seed)
    return layout.obsm["X_umap"], layout.uns["umap"]


def stage_umap(state: RunState) -> list[Path]:
    """Collect the UMAP layout started by the embed stage (or lay it out now on resume)."""
    job = state.background.pop("umap", None)
    mdata = state.mdata
    if job is None:
        job = _start_umap(state, mdata, mdata.obsm[mdata.uns["embed"]["use_rep"]])
    coords, info = job.result()
    mdata.obsm["X_umap"] = coords
    mdata.uns["umap"] = info
    return []


def stage_annotate(state: RunState) -> list[Path]:
    """Cell types in the Azimuth vocabulary (l1, l2) from shipped RNA and protein markers.

    Writes ``obs`` ``l1``, ``l2``, ``l1_confidence``, ``l2_confidence`` and
    ``tables/cell_types.csv`` (per l2 label: its l1, cells, share, samples, median
    confidence). With an ``[annotation] reference``, also ``obs`` ``ref_<key>`` (+
    ``_confidence``) transferred from it and ``tables/label_transfer.csv`` (per key and
    label: cells, share, median confidence, agreement with the marker labels); with
    ``labels = "reference"`` the transferred l1 / l2 replace the marker labels.
    """
    mdata, section = state.mdata, state.config.annotation
    coverage = annotate(
        mdata,
        use=tuple(m for m in ("rna", "prot") if m in mdata.mod),
        min_confidence=section.min_confidence,
    )
    written = []
    if section.reference is not None and "rna" not in mdata.mod:
        state.skip(
            "annotate",
            "label transfer",
            "the cohort has no RNA (protein only): the reference is matched on genes",
        )
    elif section.reference is not None:
        rna = mdata.mod["rna"]
        rna.obs = rna.obs.drop(columns=[c for c in rna.obs if c.startswith("ref_")])
        for key in ("sample_id", *section.reference_keys):
            if key in mdata.obs:
                rna.obs[key] = mdata.obs.loc[rna.obs_names, key].to_numpy()
        transferred = transfer_labels(
            rna,
            load_reference(section.reference, section.reference_keys),
            keys=section.reference_keys,
            n_neighbors=section.transfer_neighbors,
            min_confidence=section.min_confidence,
            seed=state.config.seed,
        )
        for column in [c for c in rna.obs if c.startswith("ref_")]:
            mdata.obs[column] = rna.obs.loc[mdata.obs_names, column].to_numpy()
        if section.labels == "reference":
            for key in ("l1", "l2"):
                mdata.obs[key] = pd.Categorical(mdata.obs[f"ref_{key}"].astype(str))
                mdata.obs[f"{key}_confidence"] = mdata.obs[f"ref_{key}_confidence"]
        written.append(write_table(state.out, "label_transfer", transferred))
    obs = mdata.obs
    table = (
        obs.groupby(["l1", "l2"], observed=True)
        .agg(
            n_cells=("l2", "size"),
            n_samples=("sample_id", "nunique"),
            median_confidence=("l2_confidence", "median"),
        )
        .reset_index()
    )
    table.insert(3, "share", table["n_cells"] / len(obs))
    table = table.sort_values(["l1", "n_cells"], ascending=[True, False], kind="stable")
    if section.labels == "markers":
        table = with_coverage(table, coverage)
    return [*written, write_table(state.out, "cell_types", table)]


def with_coverage(table: pd.DataFrame, coverage: pd.DataFrame) -> pd.DataFrame:
    """``cell_types.csv`` with each l2 label's marker coverage; labels without cells added.

    Columns added: ``callable`` (bool), ``marker_coverage``, ``missing_markers`` (see
    `sccohort.tl.annotate.label_coverage`) and ``note``: why a label is not called, or that
    the l1 name stands for l2 where the markers cannot tell its types apart.
    """
    l2 = coverage[coverage["level"] == "l2"].set_index("label")
    absent = l2[~l2.index.isin(table["l2"])]
    extra = pd.DataFrame(
        {"l1": absent["parent"], "l2": absent.index, "n_cells": 0, "share": 0.0, "n_samples": 0}
    )
    out = pd.concat([table, extra], ignore_index=True)
    out["callable"] = out["l2"].map(l2["callable"]).astype(object)
    # the l1 name standing for l2 (NK is also an l2 label: then only when that is not callable)
    coarse = (out["l2"] == out["l1"]) & (out["l2"] != UNASSIGNED) & out["callable"].ne(True)
    out.loc[coarse, "callable"] = False
    out["marker_coverage"] = out["l2"].map(l2["marker_coverage"])
    out["missing_markers"] = out["l2"].map(l2["missing_markers"]).fillna("")
    lost = out["callable"].eq(False)
    out["note"] = np.where(lost, "not callable: no distinctive marker in the data", "")
    out.loc[coarse, "note"] = "l2 types of this lineage cannot be told apart by these markers"
    return out


def stage_subsets(state: RunState) -> list[Path]:
    """Subcluster each lineage and name subsets as the study did (CD14_EGR1).

    Writes ``obs["subset"]`` and ``tables/subsets.csv``.
    """
    mdata = state.mdata
    table = subsets(
        mdata,
        use_rep=mdata.uns["embed"]["use_rep"],
        features="rna" if "rna" in mdata.mod else "prot",
        knn_method=state.config.subsets.neighbours,
        seed=state.config.seed,
    )
    return [write_table(state.out, "subsets", table)]


#: Markers kept per subset in ``tables/markers_<modality>.csv`` (by statistic).
MARKERS_PER_SUBSET = 100
#: Subsets with fewer cells get no marker table rows (a warning names them).
MIN_MARKER_CELLS = 3


def stage_markers(state: RunState) -> list[Path]:
    """One-vs-rest markers of every subset, RNA and protein -> ``tables/markers_<mod>.csv``.

    Keeps the ``MARKERS_PER_SUBSET`` features with the largest Wilcoxon statistic per subset
    (all antibodies for protein); subsets of fewer than ``MIN_MARKER_CELLS`` cells (e.g. a
    stray red cell) are left out with a warning.
    """
    written = []
    for modality in ("rna", "prot"):
        if modality not in state.mdata.mod:
            continue
        adata = state.mdata.mod[modality]
        adata.obs["subset"] = state.mdata.obs.loc[adata.obs_names, "subset"].to_numpy()
        sizes = adata.obs["subset"].value_counts()
        groups = [str(g) for g in sizes.index[sizes >= MIN_MARKER_CELLS]]
        if len(sizes) > len(groups):
            warnings.warn(
                f"no markers for subsets with fewer than {MIN_MARKER_CELLS} cells: "
                + ", ".join(map(str, sizes.index[sizes < MIN_MARKER_CELLS])),
                UserWarning,
                stacklevel=2,
            )
        if len(groups) < 2:
            continue
        table = rank_markers(adata, "subset", groups=groups)
        if modality == "rna":
            table = table.groupby("group", observed=True, sort=False).head(MARKERS_PER_SUBSET)
        table = table.rename(columns={"group": "subset"})
        written.append(write_table(state.out, "markers", table, modality=modality))
    return written

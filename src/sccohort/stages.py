"""The stages of a run: what each one does to the cohort and which files it writes.

Each stage is a function of the :class:`RunState` that returns the files it wrote (through
:mod:`sccohort.io.atomic`); :data:`STAGES` lists them in order. The runner in
:mod:`sccohort.pipeline` executes them, checkpoints and resumes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from sccohort.cohort import ClinicalTable, ContrastDesign, SampleSheet
from sccohort.config import Config, build_designs
from sccohort.errors import InputError
from sccohort.io.atomic import write_csv
from sccohort.io.genesets import hallmark, read_gmt, read_tf_targets
from sccohort.io.read import read_raw_droplets, read_samples
from sccohort.pp.normalize import clr, dsb, normalize_rna
from sccohort.pp.qc import METRICS as QC_METRICS
from sccohort.pp.qc import run_qc
from sccohort.pp.summary import sample_summary
from sccohort.report.assemble import assemble_report
from sccohort.stats.abundance import DEFAULT_METHOD, compare_donor_values, test_abundance
from sccohort.stats.composition import composition, donor_counts, donor_shares
from sccohort.stats.enrichment import enrich_markers, gsea
from sccohort.stats.gating import gating_strategy, protein_markers
from sccohort.stats.longitudinal import expression_trajectory, trajectories
from sccohort.stats.neighbourhoods import neighbourhoods
from sccohort.stats.predict import predict_phenotype
from sccohort.stats.pseudobulk import pseudobulk, pseudobulk_de_all
from sccohort.stats.signatures import donor_scores, score_cells, signature_sets
from sccohort.stats.tests import kruskal_dunn, ks_test
from sccohort.tl.annotate import annotate
from sccohort.tl.embed import harmony, highly_variable_genes, leiden, pca_prot, pca_rna, umap
from sccohort.tl.markers import rank_markers
from sccohort.tl.subsets import subsets
from sccohort.tl.transfer import load_reference, transfer_labels
from sccohort.tl.wnn import wnn

#: The columns every statistics table starts with (DESIGN.md).
CORE_COLUMNS = (
    "contrast",
    "level",
    "subset",
    "effect",
    "ci_low",
    "ci_high",
    "pvalue",
    "padj",
    "method",
    "n_case",
    "n_control",
)


class Progress(Protocol):
    """What the pipeline tells a progress display (the CLI draws it with rich)."""

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """A stage begins (``index`` is 1-based)."""

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage are finished."""

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """A stage ended, or was taken from its checkpoint when ``resumed``."""


class Silent:
    """A progress display that shows nothing."""

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """Show nothing."""

    def advance(self, done: int, total: int) -> None:
        """Show nothing."""

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """Show nothing."""


@dataclass
class RunState:
    """Everything the stages share: validated inputs, the cohort object, the output folder."""

    config: Config
    out: Path
    samples: SampleSheet
    clinical: ClinicalTable | None
    progress: Progress
    mdata: Any = None
    scheduler: Any = None


@dataclass(frozen=True)
class Stage:
    """A named step: ``run(state)`` does the work and returns the files it wrote.

    ``changes_cohort`` marks stages that modify ``state.mdata``. ``saves_cohort`` stages
    also keep a copy of the cohort object in their checkpoint, so a resumed run can start
    after them; cheap cohort-changing stages between two saves are re-run on resume
    rather than writing the whole object to disk each time.
    """

    name: str
    description: str
    run: Callable[[RunState], list[Path]]
    changes_cohort: bool = False
    saves_cohort: bool = False


def _stage_ingest(state: RunState) -> list[Path]:
    """Read every sample of the sample sheet into one MuData (one Dask task per sample)."""
    mdata = read_samples(
        state.samples.table, scheduler=state.scheduler, progress=state.progress.advance
    )
    for adata in mdata.mod.values():
        adata.X = None  # raw counts live in layers["counts"]; normalisation fills .X
    state.mdata = mdata
    return []


def _stage_summary(state: RunState) -> list[Path]:
    """Per-sample cells, median genes and UMIs, proteins detected -> ``tables/samples.csv``."""
    table = sample_summary(state.mdata, state.samples.table)
    return [write_csv(table, state.out / "tables" / "samples.csv")]


def _stage_qc(state: RunState) -> list[Path]:
    """Flag and remove low-quality cells, doublets, platelets, red cells -> ``tables/qc*.csv``.

    The cohort keeps the cells that pass; every cell's metrics and reason are in
    ``tables/qc_cells.csv.gz``. A sample left with no cells is dropped with a warning.
    """
    mdata = state.mdata
    params = dataclasses.asdict(state.config.qc) | {"seed": state.config.seed}
    table = run_qc(mdata, **params)
    columns = ["sample_id", "qc_pass", "qc_reason", "doublet_score", *QC_METRICS]
    cells = mdata.obs[[c for c in columns if c in mdata.obs]]
    written = [
        write_csv(table, state.out / "tables" / "qc.csv"),
        write_csv(
            cells.rename_axis("cell_id"), state.out / "tables" / "qc_cells.csv.gz", index=True
        ),
    ]
    keep = mdata.obs["qc_pass"].to_numpy(dtype=bool)
    if not keep.any():
        raise InputError(
            "no cell of any sample passed quality control",
            file=state.out / "tables" / "qc.csv",
            hint="check the QC table; for unusual data set [qc] mode or thresholds in the config",
        )
    state.mdata = mdata[keep].copy()
    return written


def _protein_method(state: RunState) -> str:
    method = state.config.normalize.protein
    if method != "auto":
        return method
    raw = state.samples.table.get("raw_path")
    return "dsb" if raw is not None and raw.notna().all() else "clr"


def check_inputs(config: Config, samples: SampleSheet) -> None:
    """Stage-specific input checks, run before anything is written.

    Raises
    ------
    InputError
        ``[normalize] protein = "dsb"`` while a sample has no ``raw_path``; an
        ``[annotation]`` reference that is missing, or ``labels = "reference"`` without one
        (or without ``l1`` and ``l2`` among its keys).
    """
    _check_annotation(config)
    if config.normalize.protein != "dsb":
        return
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


def _stage_normalize(state: RunState) -> list[Path]:
    """RNA total-count + log1p into ``.X``; protein CLR or dsb (per sample, its own droplets)."""
    mdata = state.mdata
    normalize_rna(mdata.mod["rna"], target_sum=state.config.normalize.target_sum)
    if "prot" not in mdata.mod:
        return []
    prot = mdata.mod["prot"]
    method = _protein_method(state)
    if method == "clr":
        clr(prot, margin="cell")
    else:
        prot.X = np.zeros(prot.shape, dtype=np.float32)
        samples = mdata.obs.loc[prot.obs_names, "sample_id"].astype(str).to_numpy()
        for sample_id in pd.unique(samples):
            rows = np.flatnonzero(samples == sample_id)
            part = prot[rows].copy()
            raw = state.samples.table.loc[sample_id, "raw_path"]  # present: check_inputs
            barcodes = [name.split(":", 1)[1] for name in part.obs_names]
            empty = read_raw_droplets(raw, barcodes, sample_id, modalities=("prot",))
            dsb(part, empty[:, part.var_names].copy())
            prot.X[rows] = part.X
    prot.uns["normalization"] = {"method": method}
    return []


def _stage_embed(state: RunState) -> list[Path]:
    """HVG, PCA, protein PCA, Harmony, the WNN graph, Leiden and UMAP."""
    cfg, mdata = state.config.embedding, state.mdata
    seed = state.config.seed
    rna = mdata.mod["rna"]
    rna.obs["sample_id"] = mdata.obs.loc[rna.obs_names, "sample_id"].to_numpy()
    highly_variable_genes(rna, n_top_genes=cfg.n_top_genes, batch_key="sample_id")
    pca_rna(rna, n_comps=cfg.n_pcs)
    mdata.obsm["X_pca"] = rna.obsm["X_pca"]
    reps = {"rna": "X_pca"}
    if "prot" in mdata.mod:
        pca_prot(mdata.mod["prot"], n_comps=cfg.n_pcs_prot or None)
        mdata.obsm["X_pca_prot"] = mdata.mod["prot"].obsm["X_pca_prot"]
        reps["prot"] = "X_pca_prot"
    if cfg.harmony_key:
        for modality, basis in list(reps.items()):
            adata = mdata.mod[modality]
            adata.obs[cfg.harmony_key] = mdata.obs.loc[adata.obs_names, cfg.harmony_key].to_numpy()
            key = "X_harmony" if modality == "rna" else "X_harmony_prot"
            harmony(adata, basis=basis, batch_key=cfg.harmony_key, key_added=key, seed=seed)
            mdata.obsm[key] = adata.obsm[key]
            reps[modality] = key
    graph = ad.AnnData(obs=pd.DataFrame(index=mdata.obs_names))
    for modality, key in reps.items():
        graph.obsm[f"{modality}_{key}"] = mdata.obsm[key]
    if len(reps) > 1:
        wnn(
            graph,
            {m: f"{m}_{k}" for m, k in reps.items()},
            n_neighbors=cfg.n_neighbors,
            random_state=seed,
        )
        # cluster the shared-nearest-neighbour graph, as Seurat's FindClusters on "wsnn"
        # (ARI 0.99 with Seurat on the real ECCITE cells, 0.87 on the UMAP connectivities)
        graph.uns["wnn_snn"] = graph.uns["wnn"] | {"connectivities_key": "wnn_snn"}
        cluster_key = "wnn_snn"
    else:  # RNA only: the RNA kNN graph stands in for the WNN graph, under the same name
        sc.pp.neighbors(
            graph, n_neighbors=cfg.n_neighbors, use_rep="rna_" + reps["rna"], key_added="wnn",
            random_state=seed,
        )  # fmt: skip
        graph.obs["rna_weight"] = 1.0
        cluster_key = "wnn"
    leiden(graph, neighbors_key=cluster_key, resolution=cfg.resolution, seed=seed)
    umap(graph, neighbors_key="wnn", max_cells=cfg.umap_max_cells, seed=seed)
    for key in ("wnn_connectivities", "wnn_distances", "wnn_snn"):
        if key in graph.obsp:
            mdata.obsp[key] = graph.obsp[key]
    for column in [c for c in graph.obs if c.endswith("_weight")] + ["leiden"]:
        mdata.obs[column] = graph.obs[column].to_numpy()
    mdata.obsm["X_umap"] = graph.obsm["X_umap"]
    for key in ("wnn", "leiden", "umap"):
        if key in graph.uns:
            mdata.uns[key] = graph.uns[key]
    return []


def _stage_annotate(state: RunState) -> list[Path]:
    """Cell types in the Azimuth vocabulary (l1, l2) from shipped RNA and protein markers.

    Writes ``obs`` ``l1``, ``l2``, ``l1_confidence``, ``l2_confidence`` and
    ``tables/cell_types.csv`` (per l2 label: its l1, cells, share, samples, median
    confidence). With an ``[annotation] reference``, also ``obs`` ``ref_<key>`` (+
    ``_confidence``) transferred from it and ``tables/label_transfer.csv`` (per key and
    label: cells, share, median confidence, agreement with the marker labels); with
    ``labels = "reference"`` the transferred l1 / l2 replace the marker labels.
    """
    mdata, section = state.mdata, state.config.annotation
    annotate(
        mdata,
        use=tuple(m for m in ("rna", "prot") if m in mdata.mod),
        min_confidence=section.min_confidence,
    )
    written = []
    if section.reference is not None:
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
        written.append(write_csv(transferred, state.out / "tables" / "label_transfer.csv"))
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
    return [*written, write_csv(table, state.out / "tables" / "cell_types.csv")]


def _stage_subsets(state: RunState) -> list[Path]:
    """Subcluster each lineage and name subsets as the study did (CD14_EGR1).

    Writes ``obs["subset"]`` and ``tables/subsets.csv``.
    """
    table = subsets(state.mdata, seed=state.config.seed)
    return [write_csv(table, state.out / "tables" / "subsets.csv")]


#: Markers kept per subset in ``tables/markers_<modality>.csv`` (by statistic).
MARKERS_PER_SUBSET = 100
#: Subsets with fewer cells get no marker table rows (a warning names them).
MIN_MARKER_CELLS = 3


def _stage_markers(state: RunState) -> list[Path]:
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
        written.append(write_csv(table, state.out / "tables" / f"markers_{modality}.csv"))
    return written


def _designs(state: RunState) -> dict[str, ContrastDesign]:
    """Every contrast's design on the donors of the primary samples ({} without contrasts)."""
    if state.clinical is None or not state.config.contrasts:
        return {}
    return build_designs(state.config, state.samples, state.clinical)


def _primary_sample_of(state: RunState) -> pd.Series:
    """Donor -> its primary sample (the configured timepoint and tissue)."""
    primary = state.samples.primary_samples(
        state.config.primary_timepoint, state.config.primary_tissue
    )
    return pd.Series(primary.index.astype(str), index=primary["donor_id"].astype(str).to_numpy())


def _composition(state: RunState) -> pd.DataFrame:
    levels = tuple(c for c in ("l1", "l2", "subset") if c in state.mdata.obs)
    return composition(state.mdata.obs, levels=levels)


def _check_levels(state: RunState, table: pd.DataFrame) -> list[str]:
    levels = list(state.config.association.levels)
    known = list(pd.unique(table["level"]))
    unknown = [lv for lv in levels if lv not in known]
    if unknown:
        raise InputError(
            f"unknown composition level(s) {', '.join(unknown)}",
            file=state.config.path,
            key="association.levels",
            hint=f"Levels of this cohort: {', '.join(known)}",
        )
    return levels


def _core_first(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tidy result frames with the DESIGN core columns first."""
    table = pd.concat([f for f in frames if len(f)], ignore_index=True)
    core = [c for c in CORE_COLUMNS if c in table.columns]
    return table[core + [c for c in table.columns if c not in core]]


def _stage_composition(state: RunState) -> list[Path]:
    """Counts and shares per sample at every level and within parents -> composition.csv."""
    table = _composition(state)
    return [write_csv(table, state.out / "tables" / "composition.csv")]


def _stage_association(state: RunState) -> list[Path]:
    """Every contrast at every level: the default permutation test, and the study's KS.

    Writes ``tables/association.csv`` (one row per contrast x level x subset x method, the
    DESIGN core columns first) and, for ``[association] groupings``, ``tables/subgroups.csv``
    (Kruskal-Wallis per subset, then Dunn's pairs).
    """
    cfg, seed = state.config.association, state.config.seed
    table = _composition(state)
    levels = _check_levels(state, table)
    designs = _designs(state)
    sample_of = _primary_sample_of(state)
    written = []
    frames = []
    steps, done = len(designs) * len(levels), 0
    for design in designs.values():
        samples = list(sample_of.loc[design.donors.astype(str)])
        for level in levels:
            counts, totals = donor_counts(table, level, samples)
            frames.append(
                test_abundance(
                    counts,
                    totals,
                    design,
                    level=level,
                    n_perm=cfg.n_perm,
                    max_exact=cfg.max_exact,
                    seed=seed,
                )
            )
            if cfg.classic and not design.is_continuous:
                shares = counts / totals.where(totals > 0)
                frames.append(ks_test(shares, design, level, seed=seed))
            done += 1
            state.progress.advance(done, steps)
    if frames:
        written.append(write_csv(_core_first(frames), state.out / "tables" / "association.csv"))
    subgroups = _subgroups(state, table, levels, sample_of)
    if subgroups is not None:
        written.append(write_csv(subgroups, state.out / "tables" / "subgroups.csv"))
    return written


def _subgroups(
    state: RunState, table: pd.DataFrame, levels: list[str], sample_of: pd.Series
) -> pd.DataFrame | None:
    """Kruskal-Wallis + Dunn across the levels of each configured grouping."""
    cfg = state.config.association
    if not cfg.groupings:
        return None
    if state.clinical is None:
        raise InputError(
            "groupings need a clinical table",
            file=state.config.path,
            key="association.groupings",
            hint="Add [inputs] clinical, or remove the groupings",
        )
    clinical = state.clinical.table
    donors = [d for d in sample_of.index if d in clinical.index]
    frames = []
    for grouping in cfg.groupings:
        variables = [v.strip() for v in grouping.split("*")]
        unknown = [v for v in variables if v not in clinical.columns]
        if unknown:
            raise InputError(
                f"grouping '{grouping}' names unknown variable(s) {', '.join(unknown)}",
                file=state.config.path,
                key="association.groupings",
                hint=f"Variables of the clinical table: {', '.join(clinical.columns)}",
            )
        values = clinical.loc[donors, variables]
        values = values[values.notna().all(axis=1)]
        groups = pd.Series(
            ["/".join(map(str, row)) for row in values.itertuples(index=False)],
            index=pd.Index(values.index, name="donor_id"),
            name=grouping,
        )
        if groups.nunique() < 3:
            raise InputError(
                f"grouping '{grouping}' has {groups.nunique()} level(s) among the donors with "
                f"samples ({', '.join(sorted(groups.unique()))}); Kruskal-Wallis + Dunn needs 3 "
                "or more",
                file=state.config.path,
                key="association.groupings",
                hint="Cross it with another variable (e.g. 'ARA*SRC'); two groups are compared "
                "by a contrast",
            )
        samples = list(sample_of.loc[groups.index])
        for level in levels:
            shares = donor_shares(table, level, samples)
            omnibus, pairs = kruskal_dunn(
                shares, groups, level, adjust=cfg.dunn_adjust, seed=state.config.seed
            )
            frames += [omnibus, pairs]
    return _core_first(frames)


def _stage_neighbourhoods(state: RunState) -> list[Path]:
    """Milo-style neighbourhood DA of every contrast -> ``tables/neighbourhoods.csv``."""
    cfg = state.config.association
    designs = _designs(state)
    if not cfg.neighbourhoods or not designs:
        return []
    mdata = state.mdata
    if cfg.milo_embedding not in mdata.obsm:
        raise InputError(
            f"the cohort has no embedding '{cfg.milo_embedding}'",
            file=state.config.path,
            key="association.milo_embedding",
            hint=f"Embeddings: {', '.join(mdata.obsm)}",
        )
    embedding = np.asarray(mdata.obsm[cfg.milo_embedding])
    sample_of = _primary_sample_of(state)
    frames = []
    for i, design in enumerate(designs.values(), start=1):
        frames.append(
            neighbourhoods(
                embedding,
                mdata.obs,
                design,
                samples=list(sample_of.loc[design.donors.astype(str)]),
                preset=cfg.milo_preset,
                seed=state.config.seed,
            )
        )
        state.progress.advance(i, len(designs))
    return [write_csv(_core_first(frames), state.out / "tables" / "neighbourhoods.csv")]


#: Levels whose default-test results mark a subset as associated.
ASSOCIATED_LEVELS = ("subset", "subset_in_l1")


def associated_subsets(association: pd.DataFrame, alpha: float, limit: int) -> pd.DataFrame:
    """The best (lowest padj) contrast of each subset significant in the default test.

    Parameters
    ----------
    association
        ``tables/association.csv``.
    alpha, limit
        Significance threshold on ``padj``; at most ``limit`` subsets, by ``padj``.

    Returns
    -------
    pandas.DataFrame
        Rows of ``association`` (``subset`` unique), sorted by ``padj``.
    """
    rows = association[
        (association["method"] == DEFAULT_METHOD)
        & association["level"].isin(ASSOCIATED_LEVELS)
        & (association["padj"] < alpha)
    ]
    rows = rows.sort_values(["padj", "pvalue", "subset"], kind="stable")
    return rows.drop_duplicates("subset").head(limit).reset_index(drop=True)


def _parent_l1(obs: pd.DataFrame, subset: str) -> str:
    """The l1 lineage most cells of a subset belong to."""
    return str(obs.loc[obs["subset"] == subset, "l1"].astype(str).value_counts().index[0])


def _read_table(state: RunState, name: str) -> pd.DataFrame:
    path = state.out / "tables" / name
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _file_name(name: str) -> str:
    """A contrast name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _stage_de(state: RunState) -> list[Path]:
    """Pseudobulk DE (raw counts summed per donor) between the groups of each contrast.

    Writes ``tables/de_<contrast>.csv`` (one row per group x gene: DESeq2-style Wald test,
    log2 fold change with CI, BH per group), ``tables/de_skipped.csv`` (groups without
    enough donors) and ``tables/enrichment_de.csv`` (preranked GSEA of each group's Wald
    statistics against MSigDB Hallmark).
    """
    cfg, seed = state.config.characterise, state.config.seed
    designs = _designs(state)
    if not designs:
        return []
    association = _read_table(state, "association.csv")
    obs = state.mdata.obs
    sample_of = _primary_sample_of(state)
    counts = {
        level: pseudobulk(state.mdata, level, samples=list(sample_of), min_cells=cfg.de_min_cells)[
            0
        ]
        for level in ("subset", "l2")
    }
    written, skipped, gsea_tables = [], [], []
    gene_sets = hallmark()
    for i, (name, design) in enumerate(designs.items(), start=1):
        if cfg.de_groups == "all":
            groups = {level: sorted(counts[level]) for level in counts}
        else:
            rows = association[association["contrast"] == name] if len(association) else None
            chosen = (
                associated_subsets(rows, cfg.alpha, cfg.max_subsets)["subset"].tolist()
                if rows is not None and len(rows)
                else []
            )
            parents = [
                str(obs.loc[obs["subset"] == s, "l2"].astype(str).value_counts().index[0])
                for s in chosen
            ]
            groups = {"subset": chosen, "l2": list(dict.fromkeys(parents))}
        frames = []
        for level, names in groups.items():
            if not names:
                continue
            result, skips = pseudobulk_de_all(counts[level], design, level=level, groups=names)
            frames.append(result)
            skipped.append(skips)
            for group, rows in result.groupby("subset", sort=False):
                ranked = rows.dropna(subset=["stat"]).set_index("gene")["stat"]
                if len(ranked) >= 50:
                    table = gsea(ranked, gene_sets, n_perm=2000, seed=seed)
                    gsea_tables.append(table.assign(contrast=name, level=level, subset=group))
        if frames:
            table = pd.concat(frames, ignore_index=True)
            written.append(write_csv(table, state.out / "tables" / f"de_{_file_name(name)}.csv"))
        state.progress.advance(i, len(designs))
    skipped = [s for s in skipped if len(s)]
    if skipped:
        written.append(
            write_csv(
                pd.concat(skipped, ignore_index=True), state.out / "tables" / "de_skipped.csv"
            )
        )
    if gsea_tables:
        written.append(
            write_csv(_core_first(gsea_tables), state.out / "tables" / "enrichment_de.csv")
        )
    return written


def _stage_characterise(state: RunState) -> list[Path]:
    """Enrichment, gating, prediction, signatures and time courses of associated subsets.

    Writes (under ``tables/``) ``enrichment.csv`` (marker ORA per associated subset),
    ``gating.csv`` + ``protein_markers.csv``, ``prediction.csv`` + ``prediction_donors.csv``
    (binary contrasts), ``signatures.csv`` (donor x subset mean scores of the NF-kB /
    TNF-alpha, IFN-gamma and IFN-alpha Hallmark sets), and ``timecourse.csv`` +
    ``timecourse_expression.csv`` when donors have several timepoints. Tables with nothing
    to report are not written.
    """
    cfg, seed, mdata = state.config.characterise, state.config.seed, state.mdata
    tables = state.out / "tables"
    association = _read_table(state, "association.csv")
    chosen = (
        associated_subsets(association, cfg.alpha, cfg.max_subsets)
        if len(association)
        else pd.DataFrame(columns=["subset", "contrast"])
    )
    subsets_ = list(chosen["subset"])
    obs = mdata.obs
    written = []
    steps = 5

    # 1. enrichment of the markers of each associated subset
    markers = _read_table(state, "markers_rna.csv")
    if subsets_ and len(markers):
        gene_sets = dict(hallmark())
        if cfg.gene_sets is not None:
            gene_sets |= read_gmt(cfg.gene_sets)
        if cfg.tf_targets is not None:
            gene_sets |= {f"TF_{k}": v for k, v in read_tf_targets(cfg.tf_targets).items()}
        universe = list(mdata.mod["rna"].var_names)
        enrichment = enrich_markers(markers[markers["subset"].isin(subsets_)], gene_sets, universe)
        written.append(write_csv(enrichment, tables / "enrichment.csv"))
    state.progress.advance(1, steps)

    # 2. protein gating of each associated subset
    if subsets_ and "prot" in mdata.mod:
        prot = mdata.mod["prot"]
        cell_obs = obs.loc[prot.obs_names]
        gates, protein_tables = [], []
        for subset in subsets_:
            target = (cell_obs["subset"] == subset).to_numpy()
            parent = (cell_obs["l1"].astype(str) == _parent_l1(obs, subset)).to_numpy()
            result = gating_strategy(
                prot,
                target,
                parent,
                cell_obs["donor_id"].astype(str).to_numpy(),
                subset=subset,
                max_gates=cfg.gating_max_gates,
                test_donors=cfg.gating_test_fraction,
                seed=seed,
            )
            gates.append(result.to_frame())
            protein_tables.append(protein_markers(prot, target, parent, subset=subset))
        written.append(write_csv(pd.concat(gates, ignore_index=True), tables / "gating.csv"))
        written.append(
            write_csv(pd.concat(protein_tables, ignore_index=True), tables / "protein_markers.csv")
        )
    state.progress.advance(2, steps)

    # 3. donor-level prediction of each binary contrast from subset shares
    designs = _designs(state)
    sample_of = _primary_sample_of(state)
    table = _composition(state)
    summaries, predictions = [], []
    for design in designs.values():
        if design.is_continuous:
            continue
        shares = donor_shares(table, "subset", list(sample_of.loc[design.donors.astype(str)]))
        shares = shares.loc[:, shares.notna().all() & (shares.sum() > 0)]
        pseudo = 0.5 / max(float(np.median(table["total"][table["total"] > 0])), 1.0)
        logit = np.log((shares + pseudo) / (1 - shares + pseudo))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the report flags small groups
            result = predict_phenotype(logit, design, n_perm=cfg.prediction_perm, seed=seed)
        summaries.append(result.to_frame("summary").assign(level="subset"))
        predictions.append(result.to_frame("predictions"))
    if summaries:
        written.append(write_csv(_core_first(summaries), tables / "prediction.csv"))
        written.append(
            write_csv(pd.concat(predictions, ignore_index=True), tables / "prediction_donors.csv")
        )
    state.progress.advance(3, steps)

    # 4. signature scores per donor and subset (primary samples)
    rna = mdata.mod["rna"]
    scores = score_cells(rna, signature_sets(), seed=seed)
    donor = donor_scores(scores, obs.loc[rna.obs_names], samples=list(sample_of))
    written.append(write_csv(donor, tables / "signatures.csv"))
    tests = []
    for design in designs.values():
        for name, rows in donor.groupby("set", sort=False):
            values = rows.pivot(index="donor_id", columns="subset", values="score")
            values = values.reindex(design.donors.astype(str))
            tests.append(
                compare_donor_values(
                    values, design, level=f"signature:{name}", n_perm=cfg.prediction_perm * 10,
                    seed=seed,
                )
            )  # fmt: skip
    if tests:
        written.append(write_csv(_core_first(tests), tables / "signature_tests.csv"))
    state.progress.advance(4, steps)

    # 5. time courses of the associated subsets and their named genes
    longitudinal = state.samples.table.groupby("donor_id")["timepoint"].nunique()
    if subsets_ and (longitudinal >= 2).any():
        traj = trajectories(table, state.samples.table, "subset_in_l1", subsets_)
        written.append(write_csv(traj, tables / "timecourse.csv"))
        frames = []
        for subset in subsets_:
            named = subset.rsplit("_", 1)[-1]
            genes = [g for g in dict.fromkeys([named, *cfg.timecourse_genes]) if g in rna.var_names]
            if genes:
                lineage = _parent_l1(obs, subset)
                expression = expression_trajectory(mdata, genes, {"l1": lineage})
                frames.append(expression.assign(subset=subset, cells=lineage))
        if frames:
            expression = pd.concat(frames, ignore_index=True)
            written.append(write_csv(expression, tables / "timecourse_expression.csv"))
    state.progress.advance(5, steps)
    return written


def _stage_report(state: RunState) -> list[Path]:
    """``report.html`` (one self-contained file) and ``figures/`` (PNG + SVG of each figure).

    The methods section reads ``run.json`` as the runner wrote it before this stage (config,
    versions, seeds, the timings of every earlier stage).
    """
    run_json = json.loads((state.out / "run.json").read_text())
    cfg = state.config.characterise
    path = assemble_report(
        state.out,
        state.mdata,
        state.clinical,
        state.config,
        run_json,
        alpha=cfg.alpha,
        max_subsets=cfg.max_subsets,
    )
    figures = sorted(p for p in (state.out / "figures").glob("*") if p.is_file())
    return [path, *figures]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Reading samples", _stage_ingest, changes_cohort=True, saves_cohort=True),
    Stage("summary", "Summarising samples", _stage_summary),
    Stage("qc", "Quality control", _stage_qc, changes_cohort=True),
    Stage("normalize", "Normalising RNA and protein", _stage_normalize, changes_cohort=True),
    Stage(
        "embed",
        "Embedding: PCA, Harmony, WNN, Leiden, UMAP",
        _stage_embed,
        changes_cohort=True,
        saves_cohort=True,
    ),
    Stage("annotate", "Annotating cell types", _stage_annotate, changes_cohort=True),
    Stage("subsets", "Finding and naming subsets", _stage_subsets, changes_cohort=True),
    Stage("markers", "Ranking subset markers", _stage_markers),
    Stage("composition", "Counting cells per donor and subset", _stage_composition),
    Stage("association", "Testing subsets against each contrast", _stage_association),
    Stage("neighbourhoods", "Neighbourhood differential abundance", _stage_neighbourhoods),
    Stage("de", "Pseudobulk differential expression", _stage_de),
    Stage("characterise", "Characterising associated subsets", _stage_characterise),
    Stage("report", "Writing the report", _stage_report),
)

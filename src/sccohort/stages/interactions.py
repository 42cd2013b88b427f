"""The cell-cell communication stage: ligand-receptor scores and their donor-level tests.

In every compartment (the blood, each tissue) the cells of each sample are scored
(`sccohort.tl.ligand_receptor`, linear scale, so that a ligand's fold change is the score's)
for the pairs that involve a subset of interest. A contrast's subsets of interest are those
associated with it (``padj < [characterise] alpha``) and, when the trajectory's root is one
of them, the trajectory's terminal tissue state; a root set in the config (``[tissue]
root``) and its terminal state are of interest to every contrast. Per donor the scores of the
pairs that involve them are tested between the contrast's groups
(`sccohort.stats.compare_interactions`, BH within the contrast and compartment). The pooled
cells of each compartment (at most ``[tissue] interaction_max_cells`` drawn) give the ranks
and specificity p-values.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sccohort.errors import InputError
from sccohort.io.tables import table_path, write_table
from sccohort.pp.store import rna_columns
from sccohort.stages.base import RunState
from sccohort.stages.donors import _designs
from sccohort.stages.tissue import no_tissue_reason, tissue_cells
from sccohort.stats import associated_subsets, compare_interactions
from sccohort.tl.interactions import _entities, ligand_receptor, load_ligand_receptor

#: Columns of the pooled scores kept in ``tables/interactions.csv``.
POOLED = ["score", "specificity_pvalue", "rank"]


def stage_interactions(state: RunState) -> list[Path]:
    """Ligand-receptor interactions of the subsets of interest, blood and tissue; tests.

    Writes ``tables/interaction_scores.csv`` (pooled per compartment: every expressed pair
    that involves a subset of interest, with its rank within its source and target and its
    specificity p-value) and ``tables/interactions.csv`` (core columns; one row per contrast,
    compartment (``tissue``) and interaction of the contrast's subsets of interest, with
    ``source, target, ligand, receptor``, the pooled ``score``, ``specificity_pvalue`` and
    ``rank``, and the test's extras).
    """
    reason = no_tissue_reason(state)
    if reason is not None:
        state.skip("interactions", "cell-cell communication", reason)
        return []
    by_contrast = _of_interest(state)
    interest = list(dict.fromkeys(s for subsets in by_contrast.values() for s in subsets))
    if not interest:
        state.skip(
            "interactions",
            "cell-cell communication",
            "no associated subset and no trajectory state to centre the interactions on",
        )
        return []
    cfg, seed = state.config.tissue, state.config.seed
    resource = load_ligand_receptor()
    pooled_frames, test_frames = [], []
    compartments = _compartments(state, resource)
    for i, (name, cells) in enumerate(compartments.items()):
        pooled = _pooled(cells, resource, interest, cfg, seed)
        per_sample = ligand_receptor(
            cells,
            "subset",
            resource=resource,
            min_cells=cfg.interaction_min_cells,
            min_fraction=cfg.interaction_min_fraction,
            n_perm=0,
            sample_key="sample_id",
            scale="linear",
            involving=interest,
        )
        pooled_frames.append(pooled.assign(tissue=name))
        test_frames.extend(_tests(state, name, per_sample, pooled, by_contrast))
        state.progress.advance(i + 1, len(compartments))
    scores = pd.concat(pooled_frames, ignore_index=True)
    scores = scores[scores["expressed"].astype(bool)].drop(columns="expressed")
    scores = scores[["tissue", *[c for c in scores.columns if c != "tissue"]]]
    written = [write_table(state.out, "interaction_scores", scores)]
    if test_frames:
        written.append(write_table(state.out, "interactions", test_frames))
    return written


def _of_interest(state: RunState) -> dict[str, list[str]]:
    """Contrast -> its associated subsets (by padj) and the trajectory's terminal state."""
    path = table_path(state.out, "association")
    association = pd.read_csv(path) if path.is_file() else None
    table = associated_subsets(association, alpha=state.config.characterise.alpha, n_candidates=0)
    root, terminal = (state.resolved.get(f"tissue.{k}") for k in ("root", "terminal"))
    chosen = [root, terminal] if state.config.tissue.root and terminal else []
    out = {}
    for contrast in state.config.contrasts:
        subsets = list(table.loc[table["contrast"] == contrast, "subset"].astype(str))
        extra = [terminal] if terminal and root in subsets else []
        out[contrast] = list(dict.fromkeys(subsets + extra + chosen))
    return out


def _compartments(state: RunState, resource: pd.DataFrame) -> dict[str, ad.AnnData]:
    """Blood and each tissue: cells x the resource's genes (log-normalised), subsets, samples."""
    blood = state.mdata.mod["rna"]
    genes = _entities(resource, blood.var_names).var_idx
    primary = state.samples.primary_samples(
        state.config.primary_timepoint, state.config.primary_tissue
    ).index.astype(str)
    obs = state.mdata.obs.loc[blood.obs_names, ["sample_id", "subset"]].astype(str)
    rows = np.flatnonzero(obs["sample_id"].isin(primary).to_numpy())  # one sample per donor
    x = rna_columns(blood, np.asarray(genes))[rows]
    parts = {
        state.config.primary_tissue: ad.AnnData(
            x, obs=obs.iloc[rows], var=pd.DataFrame(index=blood.var_names[genes])
        )
    }
    tissue = tissue_cells(state).mod["rna"]
    for name in pd.unique(tissue.obs["tissue"].astype(str)):
        cells = tissue[(tissue.obs["tissue"].astype(str) == name).to_numpy()]
        keep = cells.var_names.isin(_resource_genes(resource))
        part = cells[:, keep].copy()
        part.obs = part.obs[["sample_id", "subset"]].astype(str)
        parts[name] = part
    return parts


def _resource_genes(resource: pd.DataFrame) -> set[str]:
    """Every gene of the resource (subunits of complexes split)."""
    names = pd.concat([resource["ligand"], resource["receptor"]]).astype(str)
    return {g for name in names for g in name.split("_")}


def _pooled(cells: ad.AnnData, resource, interest: list[str], cfg, seed: int) -> pd.DataFrame:
    """Pooled scores (log scale, ranks, specificity) of at most ``interaction_max_cells``."""
    if cells.n_obs > cfg.interaction_max_cells:
        rng = np.random.default_rng(seed)
        cells = cells[np.sort(rng.choice(cells.n_obs, cfg.interaction_max_cells, replace=False))]
    return ligand_receptor(
        cells,
        "subset",
        resource=resource,
        min_cells=cfg.interaction_min_cells,
        min_fraction=cfg.interaction_min_fraction,
        n_perm=cfg.interaction_perm,
        seed=seed,
        involving=interest,
    )


def _tests(
    state: RunState,
    compartment: str,
    per_sample: pd.DataFrame,
    pooled: pd.DataFrame,
    by_contrast: dict[str, list[str]],
) -> list[pd.DataFrame]:
    """``compare_interactions`` per donor contrast on its pairs and the donors with samples."""
    donor_of = pd.concat(
        [state.samples.table["donor_id"], state.tissue_samples.table["donor_id"]]
    ).astype(str)
    keys = ["source", "target", "ligand", "receptor"]
    frames = []
    for name, design in _designs(state).items():
        subsets = by_contrast.get(name, [])
        if design.donor_of is not None or not subsets:
            continue
        mine = per_sample[per_sample["source"].isin(subsets) | per_sample["target"].isin(subsets)]
        # donors without a sample here, or whose samples lack every group of interest
        present = set(mine["sample_id"].map(donor_of))
        try:
            sub = design.without([d for d in design.donors if d not in present])
            res = compare_interactions(
                mine[mine["sample_id"].map(donor_of).isin(sub.donors)],
                sub,
                sample_to_donor=donor_of,
                n_perm=state.config.association.n_perm,
                max_exact=state.config.association.max_exact,
                seed=state.config.seed,
            )
        except InputError as exc:
            state.skip("interactions", f"{name} in {compartment}", exc.problem)
            continue
        res = res.assign(contrast=name, tissue=compartment)
        frames.append(res.merge(pooled[keys + POOLED], on=keys, how="left"))
    return frames

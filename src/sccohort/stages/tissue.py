"""Stages of the tissue side: tissue cells, the lineages blood and tissue share, the trajectory.

Tissue samples are the sample sheet's rows of another tissue than ``[run] primary_tissue``
(`RunState.tissue_samples`). `stage_tissue` reads and quality-controls them (thresholds of
`sccohort.pp.qc` for tissue), annotates them (`sccohort.tl.annotate_tissue`) and puts the
shared lineages in one embedding with the blood (`sccohort.tl.integrate_lineages`); the
cells go to ``OUT/tissue.h5mu`` (``mod["rna"]`` every tissue cell, ``mod["joint"]`` the joint
embedding). `stage_trajectory` orders the root subset's lineage by diffusion pseudotime and
finds its terminal states and each cell's fate probabilities. A cohort without tissue
samples skips both with a note.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import dask
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.cluster import compute
from sccohort.errors import InputError
from sccohort.io.atomic import write_h5mu
from sccohort.io.cohort_file import read_h5mu
from sccohort.io.read import combine_samples
from sccohort.io.tables import table_path, write_table
from sccohort.pp import (
    QCParams,
    estimate_contamination,
    normalize_rna,
    prepare_sample,
    remove_ambient,
    soup_profile,
)
from sccohort.stages.base import RunState
from sccohort.stages.donors import _designs  # the run's designs, small donors left out
from sccohort.stats import associated_subsets, compare_donor_values
from sccohort.tl import fate_probabilities, pseudotime, trajectory_genes, umap
from sccohort.tl.tissue import annotate_tissue, integrate_lineages

TISSUE_FILE = "tissue.h5mu"
#: Tissue cells a donor needs on the trajectory for its progression to be tested.
MIN_TRAJECTORY_CELLS = 10


def no_tissue_reason(state: RunState) -> str | None:
    """Why the tissue stages cannot run on this cohort (None when they can)."""
    if state.tissue_samples is None or not len(state.tissue_samples):
        return f"the cohort has no samples of another tissue than '{state.config.primary_tissue}'"
    if not state.config.tissue.analyse:
        return "[tissue] analyse = false"
    if "rna" not in state.mdata.mod:
        return "the blood has no RNA: tissue cells are matched to the blood on genes"
    return None


def stage_tissue(state: RunState) -> list[Path]:
    """Tissue cells: QC, annotation, and the shared lineages integrated with the blood.

    Writes ``tables/tissue_qc.csv`` (per tissue sample: cells in, removed by each reason,
    out), ``tables/tissue_cell_types.csv`` (per tissue, l1, l2 and subset: cells, samples,
    share of the tissue's cells, median confidence) and ``OUT/tissue.h5mu``.
    """
    reason = no_tissue_reason(state)
    if reason is not None:
        state.skip("tissue", "tissue analyses", reason)
        return []
    cfg, seed = state.config.tissue, state.config.seed
    tissue, qc_rows, soups = _read_tissue(state)
    annotate_tissue(tissue, resolution=cfg.resolution, seed=seed)
    qc_rows = _remove_ambient(state, tissue, soups, qc_rows)
    blood = state.mdata.mod["rna"]
    for column in ("sample_id", "tissue", "l1", "l2", "subset"):
        blood.obs[column] = state.mdata.obs.loc[blood.obs_names, column].to_numpy()
    joint = integrate_lineages(
        blood,
        tissue,
        max_per_subset=cfg.max_blood_per_subset,
        resolution=cfg.resolution,
        seed=seed,
    )
    umap(joint, neighbors_key="wnn", seed=seed)
    for column in ("l1", "l2", "subset"):
        tissue.obs[column] = tissue.obs[column].astype(str).astype("category")
    state.tissue = md.MuData({"rna": tissue, "joint": joint})
    return [
        write_table(state.out, "tissue_qc", qc_rows),
        write_table(state.out, "tissue_cell_types", _cell_types(tissue)),
        write_h5mu(state.tissue, state.out / TISSUE_FILE),
    ]


def _read_tissue(state: RunState):
    """The tissue samples' RNA after QC (log-normalised) and their QC rows."""
    table = state.tissue_samples.table
    params = QCParams(**dataclasses.asdict(state.config.qc), seed=state.config.seed)
    formats = table["format"] if "format" in table else pd.Series(None, index=table.index)
    raws = table["raw_path"] if "raw_path" in table else pd.Series(None, index=table.index)
    ambient = state.config.tissue.ambient
    tasks = [
        dask.delayed(_prepare_tissue_sample, pure=False)(
            str(table.at[s, "path"]),
            s,
            raw_path=str(raws[s]) if ambient and not pd.isna(raws[s]) else None,
            format=None if pd.isna(formats[s]) else str(formats[s]),
            modality=table.at[s, "modality"] if "modality" in table else None,
            tissue=str(table.at[s, "tissue"]),
            qc=params,
            dask_key_name=f"prepare-tissue-{i}-{s}",
        )
        for i, s in enumerate(table.index)
    ]
    results = compute(tasks, state.scheduler, state.progress.advance)
    prepared = [r[0] for r in results]
    soups = {p.sample_id: soup for p, soup in results if isinstance(soup, pd.Series)}
    for p, problem in results:
        if isinstance(problem, str):
            warnings.warn(f"tissue sample {p.sample_id}: ambient RNA not removed: {problem}",
                          UserWarning, stacklevel=2)  # fmt: skip
    for sample in prepared:  # the samples' own warnings (a QC reason removing many cells)
        for category, message, filename, lineno in sample.warnings:
            warnings.warn_explicit(message, category, filename, lineno)
    qc_rows = pd.DataFrame([p.qc_row for p in prepared])
    mdata = combine_samples({p.sample_id: p.mods for p in prepared}, table)
    if "rna" not in mdata.mod or mdata.n_obs < 10:
        raise InputError(
            f"the tissue samples kept {mdata.n_obs} cells with RNA after QC",
            file=state.config.samples,
            column="tissue",
            hint="tissue analyses need RNA; set [tissue] analyse = false to leave them out",
        )
    tissue = mdata.mod["rna"]
    for column in ("sample_id", "donor_id", "tissue"):
        tissue.obs[column] = mdata.obs.loc[tissue.obs_names, column].astype(str).to_numpy()
    normalize_rna(tissue, target_sum=state.config.normalize.target_sum)
    return tissue, qc_rows, soups


def _prepare_tissue_sample(path: str, sample_id: str, *, raw_path: str | None, **kwargs):
    """`prepare_sample` of a tissue sample and, with raw droplets, its soup (one task)."""
    prepared = prepare_sample(path, sample_id, **kwargs)
    if raw_path is None:
        return prepared, None
    try:
        return prepared, soup_profile(raw_path, prepared.qc_cells.index, sample_id)
    except InputError as exc:  # e.g. too few empty droplets: the run goes on without
        return prepared, exc.problem


def _remove_ambient(state: RunState, tissue, soups: dict, qc_rows: pd.DataFrame) -> pd.DataFrame:
    """SoupX per tissue sample with raw droplets (`sccohort.pp.remove_ambient`, per cluster).

    ``tissue.layers["decontaminated"]`` (the counts of samples without raw droplets as they
    are), ``.X`` log-normalised from it; the QC rows get ``ambient_contamination`` and
    ``ambient_removed`` (NaN: not removed).
    """
    parts, done = {}, {}
    for sample_id, soup in soups.items():
        cells = np.flatnonzero((tissue.obs["sample_id"] == sample_id).to_numpy())
        one = tissue[cells].copy()
        rho = state.config.tissue.contamination
        try:
            if rho is None:
                rho, _ = estimate_contamination(one, soup, "leiden")
        except InputError as exc:
            warnings.warn(f"tissue sample {sample_id}: ambient RNA not removed: {exc.problem}",
                          UserWarning, stacklevel=2)  # fmt: skip
            continue
        done[sample_id] = (rho, remove_ambient(one, soup, rho, groupby="leiden"))
        parts[sample_id] = (cells, one.layers["decontaminated"])
    layer = tissue.layers["counts"].astype(np.float32).tocsr()
    if parts:
        rows = np.concatenate([cells for cells, _ in parts.values()])
        layer = _replace_rows(layer, rows, sp.vstack([v for _, v in parts.values()]))
    tissue.layers["decontaminated"] = layer
    table = state.tissue_samples.table
    raws = table["raw_path"] if "raw_path" in table else pd.Series(None, index=table.index)
    missing = sorted(raws.index[raws.isna()].astype(str))
    if missing and state.config.tissue.ambient:
        warnings.warn(
            f"ambient RNA not removed from {len(missing)} tissue sample(s) without raw droplets "
            f"(raw_path): {', '.join(missing[:5])}", UserWarning, stacklevel=2,
        )  # fmt: skip
    if done:
        normalize_rna(tissue, target_sum=state.config.normalize.target_sum, layer="decontaminated")
    ids = qc_rows["sample_id"].astype(str)
    return qc_rows.assign(
        ambient_contamination=ids.map({s: v[0] for s, v in done.items()}),
        ambient_removed=ids.map({s: round(v[1], 4) for s, v in done.items()}),
    )


def _replace_rows(matrix, rows: np.ndarray, values):
    """``matrix`` (CSR) with ``rows`` replaced by ``values`` (CSR, same width)."""
    keep = np.ones(matrix.shape[0], dtype=bool)
    keep[rows] = False
    order = np.argsort(np.r_[np.flatnonzero(keep), rows], kind="stable")
    return sp.vstack([matrix[keep], values.astype(np.float32)], format="csr")[order]


def _cell_types(tissue) -> pd.DataFrame:
    obs = tissue.obs
    table = (
        obs.groupby(["tissue", "l1", "l2", "subset"], observed=True)
        .agg(
            n_cells=("l2", "size"),
            n_samples=("sample_id", "nunique"),
            median_confidence=("l2_confidence", "median"),
        )
        .reset_index()
    )
    totals = obs.groupby("tissue", observed=True).size()
    table.insert(5, "share", table["n_cells"] / table["tissue"].map(totals).astype(float))
    return table.sort_values(["tissue", "l1", "n_cells"], ascending=[True, True, False])


def tissue_cells(state: RunState) -> md.MuData | None:
    """The tissue object of this run (read from ``OUT/tissue.h5mu`` after a resume)."""
    if state.tissue is None and (state.out / TISSUE_FILE).is_file():
        state.tissue = read_h5mu(state.out / TISSUE_FILE)
    return state.tissue


def stage_trajectory(state: RunState) -> list[Path]:
    """Pseudotime from the root subset through its lineage's tissue states; genes; donors.

    Terminal states and fate probabilities: `sccohort.tl.fate_probabilities` among the tissue
    states; the main terminal state is the one with the highest median pseudotime.
    Writes ``tables/trajectory_cells.csv.gz`` (per cell of the trajectory: source, sample,
    donor, tissue, subset, pseudotime, ``terminal`` (in the main terminal state),
    ``fate_<state>`` per terminal state), ``tables/trajectory_genes.csv`` (spline F test on
    the tissue cells of the trajectory), ``tables/trajectory_donors.csv`` (per donor and
    terminal state: cells, median pseudotime, share in the state, mean fate probability)
    and, with contrasts, ``tables/trajectory_tests.csv`` (those per donor tested with the
    default test).
    """
    tissue = tissue_cells(state) if no_tissue_reason(state) is None else None
    if tissue is None:
        state.skip("trajectory", "trajectory", no_tissue_reason(state) or "no tissue cells")
        return []
    joint = tissue.mod["joint"]
    root, why = _root(state, joint)
    if root is None:
        state.skip("trajectory", "trajectory", why)
        return []
    l1 = joint.obs.loc[joint.obs["subset"] == root, "l1"].astype(str).value_counts().index[0]
    # the root's cells (blood and tissue) and every tissue cell of its lineage
    keep = (joint.obs["subset"] == root) | (
        (joint.obs["source"] != "blood") & (joint.obs["l1"] == l1)
    )
    lineage = joint[keep.to_numpy()].copy()
    try:
        pseudotime(
            lineage, "subset", root, use_rep="X_lineage", n_neighbors=30, seed=state.config.seed
        )
    except InputError as exc:  # e.g. cells the kNN graph does not connect to the root
        warnings.warn(f"no trajectory from {root}: {exc.problem}", UserWarning, stacklevel=2)
        state.skip("trajectory", "trajectory", exc.problem)
        return []
    states = sorted(set(lineage.obs.loc[lineage.obs["state"], "subset"].astype(str)))
    fate_probabilities(lineage, "subset", candidates=states, use_rep="X_lineage",
                       n_neighbors=30, seed=state.config.seed)  # fmt: skip
    terminals = list(lineage.uns["fate"]["terminal_states"])  # by median pseudotime
    terminal = terminals[-1]
    state.resolved |= {
        "tissue.root": root, "tissue.terminal": terminal, "tissue.terminal_states": terminals
    }  # fmt: skip
    cells = _trajectory_cells(state, lineage, terminal)
    in_tissue = lineage[(lineage.obs["source"] != "blood").to_numpy()].copy()
    genes = trajectory_genes(in_tissue, df=state.config.tissue.spline_df)
    genes.insert(0, "root", root)
    donors = _donor_progress(cells, terminals)
    written = [
        write_table(state.out, "trajectory_cells", cells),
        write_table(state.out, "trajectory_genes", genes),
        write_table(state.out, "trajectory_donors", donors),
    ]
    tests = _progress_tests(state, donors)
    if len(tests):
        written.append(write_table(state.out, "trajectory_tests", tests))
    return written


def _root(state: RunState, joint) -> tuple[str | None, str]:
    """The root subset: the config's, or the most associated one whose lineage has states."""
    obs = joint.obs
    with_states = set(obs.loc[obs["state"], "l1"].astype(str))
    if not with_states:
        return None, "no tissue state (a tissue cluster without blood cells) in a shared lineage"
    blood = obs[obs["source"] == "blood"]
    eligible = set(blood.loc[blood["l1"].astype(str).isin(with_states), "subset"].astype(str))
    configured = state.config.tissue.root
    if configured:
        if configured in eligible:
            return configured, ""
        why = (
            f"[tissue] root '{configured}' is not a blood subset of a lineage with tissue "
            f"states (those are: {', '.join(sorted(eligible)[:8])})"
        )
        warnings.warn(why, UserWarning, stacklevel=2)
        return None, why
    path = table_path(state.out, "association")
    association = pd.read_csv(path) if path.is_file() else None
    table = associated_subsets(association, alpha=1.0, n_candidates=0)
    table = table[table["subset"].astype(str).isin(eligible)]
    if not len(table):
        return None, (
            "no contrast tested a subset of the lineages with tissue states "
            f"({', '.join(sorted(with_states))}); set [tissue] root"
        )
    return str(table.sort_values("pvalue", kind="stable")["subset"].iloc[0]), ""


def _trajectory_cells(state: RunState, lineage, terminal: str) -> pd.DataFrame:
    obs = lineage.obs
    donor_of = pd.concat(
        [state.samples.table["donor_id"], state.tissue_samples.table["donor_id"]]
    ).astype(str)
    cells = pd.DataFrame(
        {
            "cell_id": lineage.obs_names,
            "source": obs["source"].astype(str).to_numpy(),
            "sample_id": obs["sample_id"].astype(str).to_numpy(),
            "tissue": obs["tissue"].astype(str).to_numpy(),
            "subset": obs["subset"].astype(str).to_numpy(),
            "pseudotime": obs["pseudotime"].to_numpy(),
        }
    )
    cells.insert(3, "donor_id", cells["sample_id"].map(donor_of).to_numpy())
    cells["terminal"] = cells["subset"] == terminal
    fate = lineage.obsm["fate"]
    for name in fate.columns:
        cells[f"fate_{name}"] = fate[name].to_numpy()
    return cells.sort_values("pseudotime", kind="stable").reset_index(drop=True)


def _donor_progress(cells: pd.DataFrame, terminals: list[str]) -> pd.DataFrame:
    """Per donor, tissue and terminal state: cells, median pseudotime, share, fate.

    The share of the donor's tissue cells on the trajectory in the terminal state and their
    mean fate probability towards it.
    """
    tissue = cells[cells["source"] != "blood"]
    frames = []
    for name in terminals:
        frames.append(
            tissue.assign(_in=tissue["subset"] == name)
            .groupby(["donor_id", "tissue"], observed=True)
            .agg(
                n_cells=("pseudotime", "size"),
                median_pseudotime=("pseudotime", "median"),
                terminal_share=("_in", "mean"),
                fate_probability=(f"fate_{name}", "mean"),
            )
            .reset_index()
            .assign(terminal=name)
        )
    return pd.concat(frames, ignore_index=True).sort_values(["tissue", "donor_id", "terminal"])


def _progress_tests(state: RunState, donors: pd.DataFrame) -> pd.DataFrame:
    """Each donor contrast on the donors' median pseudotime and terminal share, per tissue."""
    frames = []
    for name, design in _designs(state).items():
        if design.donor_of is not None:
            continue  # a design on samples (timepoints): the tissue samples are one visit
        for tissue, rows in donors.groupby("tissue", observed=True):
            values = _progress_values(rows[rows["n_cells"] >= MIN_TRAJECTORY_CELLS])
            missing = [d for d in design.donors if d not in values.index]
            try:
                sub = design.without(missing)
            except InputError as exc:
                state.skip("trajectory", f"progression {name} in {tissue}", exc.problem)
                continue
            res = compare_donor_values(
                values.loc[list(sub.donors)],
                sub,
                level=f"trajectory:{tissue}",
                n_perm=state.config.association.n_perm,
                max_exact=state.config.association.max_exact,
                seed=state.config.seed,
            )
            frames.append(res.assign(contrast=name, tissue=tissue))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _progress_values(rows: pd.DataFrame) -> pd.DataFrame:
    """Donors x tested values: median pseudotime, terminal shares, fates.

    ``terminal_share:<state>`` per terminal state and, with several terminal states,
    ``fate:<state>`` (with one it is 1 for all).
    """
    wide = rows.pivot(index="donor_id", columns="terminal")
    values = wide["median_pseudotime"].iloc[:, [0]].set_axis(["median_pseudotime"], axis=1)
    parts = [values, wide["terminal_share"].add_prefix("terminal_share:")]
    if wide["terminal_share"].shape[1] > 1:
        parts.append(wide["fate_probability"].add_prefix("fate:"))
    return pd.concat(parts, axis=1)

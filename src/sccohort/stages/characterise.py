"""The characterise stage: what the run works out about each associated subset.

Five steps, each a call of public functions: marker enrichment (ORA), the protein gating
strategy and markers, prediction of each binary donor-level contrast from subset shares,
signature scores per donor (or per sample) tested in every contrast, and time courses of
the associated subsets over the donors' timepoints.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.errors import InputError
from sccohort.io import hallmark, read_gmt, read_tf_targets
from sccohort.io.tables import write_table
from sccohort.stages.base import RunState
from sccohort.stages.donors import (
    NO_RNA,
    _characterised,
    _composition,
    _designs,
    _parent_l1,
    _primary_sample_of,
    _read_table,
    covered_sets,
)
from sccohort.stats import (
    GatingOptions,
    compare_donor_values,
    donor_scores,
    donor_shares,
    enrich_markers,
    expression_trajectory,
    gate_subsets,
    paired_test,
    predict_phenotype,
    score_cells,
    share_logits,
    signature_sets,
    trajectories,
)


def stage_characterise(state: RunState) -> list[Path]:
    """Enrichment, gating, prediction, signatures and time courses of associated subsets.

    Writes (under ``tables/``) ``enrichment.csv`` (marker ORA per associated subset),
    ``gating.csv`` + ``protein_markers.csv``, ``prediction.csv`` + ``prediction_donors.csv``
    (binary contrasts), ``signatures.csv`` (donor x subset mean scores of the NF-kB /
    TNF-alpha, IFN-gamma and IFN-alpha Hallmark sets) and ``signature_tests.csv``, and
    ``timecourse.csv``, ``timecourse_tests.csv`` (Wilcoxon signed-rank between consecutive
    timepoints; a note instead where fewer than 2 donors have both) and
    ``timecourse_expression.csv`` when donors have several timepoints. Tables with nothing
    to report are not written.
    """
    cfg = state.config.characterise
    subsets_ = _characterised(_read_table(state, "association"), cfg.alpha, cfg.max_subsets)
    steps = (
        _marker_enrichment,
        _gating,
        _prediction,
        _signatures,
        _timecourses,
    )
    written: list[Path] = []
    for done, step in enumerate(steps, start=1):
        written += step(state, subsets_)
        state.progress.advance(done, len(steps))
    return written


def _marker_enrichment(state: RunState, subsets_: list[str]) -> list[Path]:
    """ORA of each associated subset's RNA markers in Hallmark (+ configured) gene sets."""
    cfg, rna = state.config.characterise, state.mdata.mod.get("rna")
    markers = _read_table(state, "markers", modality="rna")
    if subsets_ and rna is None:
        state.skip("characterise", "marker enrichment", f"{NO_RNA}: no gene markers")
    if not subsets_ or rna is None or not len(markers):
        return []
    gene_sets = dict(hallmark())
    if cfg.gene_sets is not None:
        gene_sets |= read_gmt(cfg.gene_sets)
    if cfg.tf_targets is not None:
        gene_sets |= {f"TF_{k}": v for k, v in read_tf_targets(cfg.tf_targets).items()}
    universe = list(rna.var_names)
    gene_sets = covered_sets(state, "characterise", "enrichment", gene_sets, universe)
    if not gene_sets:
        return []
    chosen_markers = markers[markers["subset"].isin(subsets_)]
    enrichment = enrich_markers(chosen_markers, gene_sets, universe)
    return [write_table(state.out, "enrichment", enrichment)]


def _gating(state: RunState, subsets_: list[str]) -> list[Path]:
    """Protein gating strategy and protein markers of each associated subset."""
    cfg, mdata = state.config.characterise, state.mdata
    if not subsets_ or "prot" not in mdata.mod:
        return []
    prot, obs = mdata.mod["prot"], mdata.obs
    cell_obs = obs.loc[prot.obs_names]
    l1 = cell_obs["l1"].astype(str)
    masks = {}
    for subset in subsets_:
        target = (cell_obs["subset"] == subset).to_numpy()
        parent = (l1 == _parent_l1(obs, subset)).to_numpy()
        # a subset that is its whole lineage (a panel that cannot split it) is gated
        # against all cells
        masks[subset] = (target, parent if (parent & ~target).any() else np.ones_like(parent))
    donors = cell_obs["donor_id"].astype(str).to_numpy()
    options = GatingOptions(
        max_gates=cfg.gating_max_gates, test_donors=cfg.gating_test_fraction,
        seed=state.config.seed,
    )  # fmt: skip
    try:
        results = gate_subsets(prot, masks, donors, options)
    except InputError:  # a subset without cells in the training donors: gate one by one
        results = []
        for subset, mask in masks.items():
            try:
                results += gate_subsets(prot, {subset: mask}, donors, options)
            except InputError as err:
                state.skip("characterise", f"gating of {subset}", err.problem)
    if not results:
        return []
    gates = pd.concat([result.to_frame() for result, _ in results], ignore_index=True)
    proteins = pd.concat([table for _, table in results], ignore_index=True)
    return [
        write_table(state.out, "gating", gates),
        write_table(state.out, "protein_markers", proteins),
    ]


def _prediction(state: RunState, subsets_: list[str]) -> list[Path]:
    """Donor-level prediction of each binary contrast from the logits of subset shares."""
    cfg = state.config.characterise
    sample_of = _primary_sample_of(state)
    table = _composition(state)
    summaries, predictions = [], []
    for design in _designs(state).values():
        if design.is_continuous or design.unit != "donor":
            continue
        shares = donor_shares(table, "subset", list(sample_of.loc[design.donors.astype(str)]))
        logit = share_logits(shares, table["total"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the report flags small groups
            result = predict_phenotype(
                logit, design, n_perm=cfg.prediction_perm, seed=state.config.seed
            )
        summaries.append(result.to_frame("summary").assign(level="subset"))
        predictions.append(result.to_frame("predictions"))
    if not summaries:
        return []
    return [
        write_table(state.out, "prediction", summaries),
        write_table(state.out, "prediction_donors", pd.concat(predictions, ignore_index=True)),
    ]


def _signatures(state: RunState, subsets_: list[str]) -> list[Path]:
    """Signature scores per donor and subset (primary samples), tested in every contrast."""
    cfg, seed, rna = state.config.characterise, state.config.seed, state.mdata.mod.get("rna")
    if rna is None:
        state.skip("characterise", "signature scores", f"{NO_RNA}: signatures are gene sets")
        return []
    signatures = covered_sets(state, "characterise", "signatures", signature_sets(), rna.var_names)
    if not signatures:
        return []
    scores = score_cells(rna, signatures, seed=seed)
    obs = state.mdata.obs.loc[rna.obs_names]
    donor = donor_scores(scores, obs, samples=list(_primary_sample_of(state)))
    written = [write_table(state.out, "signatures", donor)]
    designs = _designs(state)
    per_sample = None
    if any(d.unit == "sample" for d in designs.values()):
        per_sample = donor_scores(scores, obs, by=("sample_id", "subset"))
    tests = []
    for design in designs.values():
        table = donor if design.unit == "donor" else per_sample
        for name, rows in table.groupby("set", sort=False):
            values = rows.pivot(index=f"{design.unit}_id", columns="subset", values="score")
            values = values.reindex(design.units.astype(str))
            tests.append(
                compare_donor_values(
                    values, design, level=f"signature:{name}", n_perm=cfg.signature_perm,
                    seed=seed,
                )
            )  # fmt: skip
    if tests:
        written.append(write_table(state.out, "signature_tests", tests))
    return written


def _timecourses(state: RunState, subsets_: list[str]) -> list[Path]:
    """Shares and named genes of the associated subsets over the donors' timepoints."""
    cfg, mdata = state.config.characterise, state.mdata
    longitudinal = state.samples.table.groupby("donor_id")["timepoint"].nunique()
    if not subsets_ or not (longitudinal >= 2).any():
        return []
    traj = trajectories(_composition(state), state.samples.table, "subset_in_l1", subsets_)
    written = [write_table(state.out, "timecourse", traj)]
    order = traj.drop_duplicates("timepoint").sort_values("timepoint_order")["timepoint"]
    pairs = [
        paired_test(traj, first, second, seed=state.config.seed)
        for first, second in zip(order[:-1], order[1:], strict=True)
    ]
    if pairs:
        written.append(write_table(state.out, "timecourse_tests", pairs))
    rna, frames = mdata.mod.get("rna"), []
    for subset in subsets_:
        named = subset.rsplit("_", 1)[-1]
        wanted = dict.fromkeys([named, *cfg.timecourse_genes])
        genes = [g for g in wanted if rna is not None and g in rna.var_names]
        if genes:
            lineage = _parent_l1(mdata.obs, subset)
            expression = expression_trajectory(mdata, genes, {"l1": lineage})
            frames.append(expression.assign(subset=subset, cells=lineage))
    if frames:
        expression = pd.concat(frames, ignore_index=True)
        written.append(write_table(state.out, "timecourse_expression", expression))
    return written

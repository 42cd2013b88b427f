"""Stages that work on donors: composition, association, neighbourhoods, DE, characterisation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import ContrastDesign, SampleSheet
from sccohort.errors import InputError
from sccohort.io import hallmark, read_gmt, read_tf_targets
from sccohort.io.atomic import read_csv
from sccohort.io.tables import table_path, write_table
from sccohort.stages.base import RunState
from sccohort.stats import (
    GatingOptions,
    associated_subsets,
    attainable_significance,
    characterised_subsets,
    compare_abundance,
    compare_donor_values,
    composition,
    describe_attainable,
    donor_counts,
    donor_scores,
    donor_shares,
    enrich_markers,
    expression_trajectory,
    gate_subsets,
    gsea,
    kruskal_dunn,
    ks_test,
    neighbourhoods,
    paired_test,
    predict_phenotype,
    pseudobulk,
    pseudobulk_de_all,
    score_cells,
    sets_covered,
    share_logits,
    signature_sets,
    trajectories,
)


def _designs(state: RunState) -> dict[str, ContrastDesign]:
    """Every contrast's design: on the measured donors of the primary samples, or on samples.

    Donors whose primary sample kept fewer than ``[association] min_cells`` cells
    (`small_donors`) are left out of donor designs, such samples out of sample designs
    (contrasts on a sample sheet column); a contrast left without a valid design (e.g. one
    group empty) is skipped, with the reason recorded. ``{}`` without contrasts.
    """
    if not state.config.contrasts:
        return {}
    primary = state.samples.primary_samples(
        state.config.primary_timepoint, state.config.primary_tissue
    )
    small, small_samples = small_donors(state), _small_samples(state)
    known = state.clinical.table.index if state.clinical is not None else state.samples.donors
    donors = [
        d for d in primary["donor_id"].astype(str).unique() if d in known and d not in small
    ]  # fmt: skip
    table = state.samples.table
    measured = SampleSheet(
        table.drop(index=list(small_samples)), state.samples.path, state.samples.lines
    )
    designs = {}
    for name, contrast in state.config.contrasts.items():
        on_samples = contrast.variable in table.columns
        left_out = small_samples if on_samples else small
        try:
            designs[name] = contrast.design(
                state.clinical, None if on_samples else donors, samples=measured
            )
        except InputError as exc:
            if not left_out:
                raise
            state.skip(
                "association",
                f"contrast {name}",
                f"without the {'samples' if on_samples else 'donors'} of fewer than "
                f"{state.config.association.min_cells} cells ({', '.join(left_out)}): "
                f"{exc.problem}",
            )
    return designs


def _small_samples(state: RunState) -> dict[str, int]:
    """Sample -> cells it kept, for samples below ``[association] min_cells``."""
    cells = state.mdata.obs["sample_id"].astype(str).value_counts()
    kept = cells.reindex(state.samples.table.index.astype(str)).fillna(0).astype(int)
    return kept[kept < state.config.association.min_cells].to_dict()


def _rows(design: ContrastDesign, sample_of: pd.Series) -> list[str]:
    """The samples of a design's rows: the primary sample of each donor, or its samples."""
    if design.unit == "sample":
        return list(design.units.astype(str))
    return list(sample_of.loc[design.donors.astype(str)])


def small_donors(state: RunState) -> dict[str, int]:
    """Donor -> cells of its primary sample, for donors below ``[association] min_cells``."""
    sample_of = _primary_sample_of(state)
    cells = state.mdata.obs["sample_id"].astype(str).value_counts()
    kept = sample_of.map(cells).fillna(0).astype(int)
    return kept[kept < state.config.association.min_cells].to_dict()


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


def stage_composition(state: RunState) -> list[Path]:
    """Counts and shares per sample at every level and within parents -> composition.csv."""
    table = _composition(state)
    return [write_table(state.out, "composition", table)]


def stage_association(state: RunState) -> list[Path]:
    """Every contrast at every level: the default permutation test, and the study's KS.

    Writes ``tables/association.csv`` (one row per contrast x level x subset x method, the
    DESIGN core columns first), ``tables/contrasts.csv`` (per contrast its design and the
    smallest p-value the default test can reach, `attainable_significance`; a warning when
    nothing can reach ``[characterise] alpha``) and, for ``[association] groupings``,
    ``tables/subgroups.csv`` (Kruskal-Wallis per subset, then Dunn's pairs).
    """
    cfg, seed = state.config.association, state.config.seed
    table = _composition(state)
    levels = _check_levels(state, table)
    designs = _designs(state)
    sample_of = _primary_sample_of(state)
    written = []
    small = small_donors(state)
    if small:
        warnings.warn(
            f"{len(small)} donor(s) left out of the donor-level tests: their primary sample "
            f"kept fewer than {state.config.association.min_cells} cells after QC ("
            + ", ".join(f"{d}: {n}" for d, n in small.items())
            + "); [association] min_cells sets the minimum",
            UserWarning,
            stacklevel=2,
        )
    if designs:
        reach = contrast_table(state, designs)
        reach["left_out"] = "; ".join(f"{d} ({n} cells)" for d, n in small.items())
        written.append(write_table(state.out, "contrasts", reach))
        donors = [design.donor_table() for design in designs.values()]
        written.append(write_table(state.out, "contrast_donors", donors))
    frames = []
    steps, done = len(designs) * len(levels), 0
    for design in designs.values():
        samples = _rows(design, sample_of)
        for level in levels:
            counts, totals = donor_counts(table, level, samples, unit=design.unit)
            frames.append(
                compare_abundance(
                    counts,
                    totals,
                    design,
                    level=level,
                    n_perm=cfg.n_perm,
                    max_exact=cfg.max_exact,
                    seed=seed,
                )
            )
            if cfg.classic and not design.is_continuous and not design.paired:
                shares = counts / totals.where(totals > 0)
                frames.append(ks_test(shares, design, level, seed=seed))
            done += 1
            state.progress.advance(done, steps)
    if frames:
        written.append(write_table(state.out, "association", frames))
    subgroups = _subgroups(state, table, levels, sample_of)
    if subgroups is not None:
        written.append(write_table(state.out, "subgroups", subgroups))
    return written


def contrast_table(state: RunState, designs: dict[str, ContrastDesign]) -> pd.DataFrame:
    """Each contrast's design and attainable significance; warns where nothing can reach alpha."""
    cfg, alpha = state.config.association, state.config.characterise.alpha
    rows = []
    for design in designs.values():
        row = attainable_significance(
            design, n_perm=cfg.n_perm, max_exact=cfg.max_exact, alpha=alpha
        )
        rows.append({"contrast": row.pop("contrast"), "design": design.describe(), **row})
        if not row["reachable"]:
            warnings.warn(describe_attainable(rows[-1], alpha), UserWarning, stacklevel=2)
    return pd.DataFrame(rows)


def _subgroups(
    state: RunState, table: pd.DataFrame, levels: list[str], sample_of: pd.Series
) -> list[pd.DataFrame] | None:
    """Kruskal-Wallis + Dunn across the levels of each configured grouping (result frames)."""
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
    small = small_donors(state)
    donors = [d for d in sample_of.index if d in clinical.index and d not in small]
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
    return frames


def stage_neighbourhoods(state: RunState) -> list[Path]:
    """Milo-style neighbourhood DA of every contrast -> ``tables/neighbourhoods.csv``."""
    cfg = state.config.association
    designs = _designs(state)
    if not cfg.neighbourhoods or not designs:
        return []
    mdata = state.mdata
    key = cfg.milo_embedding
    if key == "auto":
        key = mdata.uns["embed"]["use_rep"]
    if key not in mdata.obsm:
        raise InputError(
            f"the cohort has no embedding '{key}'",
            file=state.config.path,
            key="association.milo_embedding",
            hint=f'Embeddings: {", ".join(mdata.obsm)}; or "auto"',
        )
    embedding = np.asarray(mdata.obsm[key])
    sample_of = _primary_sample_of(state)
    frames = []
    for i, (name, design) in enumerate(designs.items(), start=1):
        if design.unit != "donor":
            state.skip(
                "neighbourhoods",
                f"contrast {name}",
                "neighbourhood DA compares donors through one sample each; this contrast "
                f"compares samples by {design.contrast.variable}",
            )
            continue
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
    return [write_table(state.out, "neighbourhoods", frames)] if frames else []


def _characterised(association: pd.DataFrame | None, alpha: float, limit: int) -> list[str]:
    """The significant subsets to characterise, by padj (`characterised_subsets`)."""
    if association is None or not len(association):
        return []
    table = associated_subsets(association, alpha=alpha, n_candidates=0)
    return characterised_subsets(table, max_subsets=limit, candidates=0)[0]


def _parent_l1(obs: pd.DataFrame, subset: str) -> str:
    """The l1 lineage most cells of a subset belong to."""
    return str(obs.loc[obs["subset"] == subset, "l1"].astype(str).value_counts().index[0])


def _read_table(state: RunState, name: str, **fields: str) -> pd.DataFrame:
    """A table an earlier stage wrote, as written (empty when the stage wrote none)."""
    path = table_path(state.out, name, **fields)
    return read_csv(path) if path.is_file() else pd.DataFrame()


#: Genes of a set that must be in the data: marker ORA, preranked GSEA, signature scores.
MIN_SET_GENES = {"enrichment": 5, "gsea": 15, "signatures": 3}


def covered_sets(
    state: RunState, stage: str, analysis: str, gene_sets: dict, universe
) -> dict[str, list[str]]:
    """The gene sets with enough genes in ``universe``; the others are recorded as skipped."""
    kept, dropped = sets_covered(gene_sets, universe, MIN_SET_GENES[analysis])
    if dropped:
        named = ", ".join(f"{n} ({k})" for n, k in list(dropped.items())[:3])
        more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
        state.skip(
            stage,
            f"{analysis}: {len(dropped)} of {len(gene_sets)} gene sets",
            f"fewer than {MIN_SET_GENES[analysis]} of their genes are in the data "
            f"(genes present: {named}{more})",
        )
    return kept


NO_RNA = "the cohort has no RNA (protein only)"


def stage_de(state: RunState) -> list[Path]:
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
    if "rna" not in state.mdata.mod:
        state.skip("de", "pseudobulk differential expression", f"{NO_RNA}: DE needs gene counts")
        return []
    association = _read_table(state, "association")
    obs = state.mdata.obs
    by_unit = _pseudobulk_by_unit(state, {d.unit for d in designs.values()})
    written, skipped, gsea_tables = [], [], []
    genes = state.mdata.mod["rna"].var_names
    gene_sets = covered_sets(state, "de", "gsea", dict(hallmark()), genes)
    for i, (name, design) in enumerate(designs.items(), start=1):
        counts = by_unit[design.unit]
        if cfg.de_groups == "all":
            groups = {level: sorted(counts[level]) for level in counts}
        else:
            rows = association[association["contrast"] == name] if len(association) else None
            chosen = _characterised(rows, cfg.alpha, cfg.max_subsets)
            parents = [
                str(obs.loc[obs["subset"] == s, "l2"].astype(str).value_counts().index[0])
                for s in chosen
            ]
            groups = {"subset": chosen, "l2": list(dict.fromkeys(parents))}
            if design.unit == "sample":  # a condition: what changes within every cell type
                groups["l2"] = sorted(counts["l2"])
        frames = []
        for level, names in groups.items():
            if not names:
                continue
            result, skips = pseudobulk_de_all(counts[level], design, level=level, groups=names)
            frames.append(result)
            skipped.append(skips)
            for group, rows in result.groupby("subset", sort=False):
                ranked = rows.dropna(subset=["stat"]).set_index("gene")["stat"]
                # the genes DE could test: a set may fall below the minimum among them
                testable = sets_covered(gene_sets, ranked.index, MIN_SET_GENES["gsea"])[0]
                if len(ranked) >= cfg.gsea_min_genes and testable:
                    table = gsea(ranked, testable, n_perm=cfg.gsea_perm, seed=seed)
                    gsea_tables.append(table.assign(contrast=name, level=level, subset=group))
        if frames:
            table = pd.concat(frames, ignore_index=True)
            written.append(write_table(state.out, "de", table, contrast=name))
        state.progress.advance(i, len(designs))
    skipped = [s for s in skipped if len(s)]
    if skipped:
        written.append(write_table(state.out, "de_skipped", pd.concat(skipped, ignore_index=True)))
    if gsea_tables:
        written.append(write_table(state.out, "enrichment_de", gsea_tables))
    return written


def _pseudobulk_by_unit(state: RunState, units: set[str]) -> dict[str, dict]:
    """Pseudobulk counts per level for the kinds of design rows the contrasts have.

    ``"donor"``: each donor's primary sample, indexed by donor; ``"sample"``: every sample.
    """
    min_cells = state.config.characterise.de_min_cells
    samples = {"donor": list(_primary_sample_of(state)), "sample": None}
    return {
        unit: {
            level: pseudobulk(state.mdata, level, samples=samples[unit], min_cells=min_cells)[0]
            for level in ("subset", "l2")
        }
        for unit in sorted(units)
    }


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
    results = gate_subsets(
        prot, masks, cell_obs["donor_id"].astype(str).to_numpy(),
        GatingOptions(
            max_gates=cfg.gating_max_gates, test_donors=cfg.gating_test_fraction,
            seed=state.config.seed,
        ),
    )  # fmt: skip
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

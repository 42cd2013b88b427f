"""Stages that compare donors (or samples): composition, association, neighbourhoods, DE.

The characterise stage is in :mod:`sccohort.stages.characterise`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import ContrastDesign, SampleSheet
from sccohort.errors import InputError
from sccohort.io import hallmark
from sccohort.io.atomic import read_csv
from sccohort.io.tables import table_path, write_table
from sccohort.stages.base import RunState
from sccohort.stats import (
    associated_subsets,
    attainable_significance,
    characterised_subsets,
    cohort_detectable_fold,
    compare_abundance,
    composition,
    describe_attainable,
    donor_counts,
    donor_shares,
    gsea,
    kruskal_dunn,
    ks_test,
    leave_one_donor_out,
    neighbourhoods,
    pseudobulk,
    pseudobulk_de_all,
    sets_covered,
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
                state.clinical,
                None if on_samples else donors,
                samples=measured,
                tissue=state.config.primary_tissue,
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
    DESIGN core columns first; significant rows of the default test with ``loo_padj`` and
    ``loo_donor``, `leave_one_donor_out`), ``tables/contrasts.csv`` (per contrast its design
    and the smallest p-value the default test can reach, `attainable_significance`; a warning when
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
        kept = [s for d, s in sample_of.items() if d not in small]
        reach = reach.merge(detectable_table(state, designs, table, kept), on="contrast")
        written.append(write_table(state.out, "contrasts", reach))
        donors = [design.donor_table() for design in designs.values()]
        written.append(write_table(state.out, "contrast_donors", donors))
    frames = []
    steps, done = len(designs) * len(levels), 0
    for design in designs.values():
        samples = _rows(design, sample_of)
        for level in levels:
            counts, totals = donor_counts(table, level, samples, unit=design.unit)
            options = {"level": level, "n_perm": cfg.n_perm, "max_exact": cfg.max_exact}
            tests = compare_abundance(counts, totals, design, seed=seed, **options)
            frames.append(
                leave_one_donor_out(
                    counts, totals, design, tests, alpha=state.config.characterise.alpha,
                    seed=seed, **options,
                )
            )  # fmt: skip
            if cfg.classic and not (design.is_continuous or design.paired or design.mixed):
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


def detectable_table(
    state: RunState, designs: dict[str, ContrastDesign], table: pd.DataFrame, samples: list[str]
) -> pd.DataFrame:
    """Per contrast, the folds its donors detect at 80% power (`cohort_detectable_fold`).

    The variation is fitted from the primary samples' composition at the deepest level;
    contrasts that are not two groups of donors (continuous, paired, repeated) get a note.
    """
    alpha, cfg = state.config.characterise.alpha, state.config.association
    level = next(lv for lv in ("subset", "l2", "l1") if lv in set(table["level"]))
    counts = donor_counts(table, level, samples)[0]
    rows = []
    for name, design in designs.items():
        row = {"contrast": name, "detectable_subset": "", "detectable_share": np.nan,
               "detectable_fold_up": np.nan, "detectable_fold_down": np.nan,
               "detectable_note": ""}  # fmt: skip
        if design.is_continuous or design.paired or design.mixed:
            row["detectable_note"] = "power is simulated for two groups of donors only"
        elif min(design.n_case, design.n_control) < 2:
            row["detectable_note"] = "fewer than 2 donors in a group"
        else:
            try:
                found = cohort_detectable_fold(
                    counts, design.n_case, design.n_control, fdr=alpha, n_perm=cfg.n_perm,
                    seed=state.config.seed,
                )  # fmt: skip
            except InputError as exc:
                row["detectable_note"] = exc.problem
            else:
                row |= {"detectable_subset": found["subset"],
                        "detectable_share": found["share"],
                        "detectable_fold_up": found["fold_up"],
                        "detectable_fold_down": found["fold_down"],
                        "detectable_note": found["note"]}  # fmt: skip
        rows.append(row)
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
        if design.mixed:
            state.skip(
                "neighbourhoods",
                f"contrast {name}",
                "its samples are unbalanced repeats (a mixed model), and the neighbourhood NB "
                "GLM has no donor random effect; paired = true gives the paired design",
            )
            continue
        samples = (
            design.units if design.unit == "sample" else sample_of.loc[design.donors.astype(str)]
        )
        frames.append(
            neighbourhoods(
                embedding,
                mdata.obs,
                design,
                samples=list(samples.astype(str)),
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

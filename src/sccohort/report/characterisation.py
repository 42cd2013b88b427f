"""The report's characterisation section: one subsection per associated subset.

Its markers (dot plot of RNA and protein), enrichment, signature scores by group, gating,
the ROC of the donor-level prediction and time courses, each from the run's tables
(`sccohort.report.stats_sections` has the composition and association sections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import pl
from ..io.tables import read_table
from ..pp.store import rna_columns, store_of
from ..stats.selection import MAX_CHARACTERISED, associated_subsets, characterised_subsets
from .build import FigureBlock, Note, Paragraph, Section, TableBlock
from .sections import skipped_notes
from .stats_sections import arm_order, contrast_groups, missing_note

__all__ = ["characterisation_section"]


def _subset_lineage(
    out: Path, obs: pd.DataFrame | None, subset: str
) -> tuple[str | None, str | None]:
    subsets = read_table(out, "subsets")
    if subsets is not None and "subset" in subsets:
        row = subsets[subsets["subset"].astype(str) == subset]
        if len(row):
            first = row.iloc[0]
            return (
                str(first["l1"]) if "l1" in row else None,
                str(first["l2"]) if "l2" in row else None,
            )
    if obs is not None and "subset" in obs:
        cells = obs[obs["subset"].astype(str) == subset]
        if len(cells):
            l1 = str(cells["l1"].mode().iloc[0]) if "l1" in cells else None
            l2 = str(cells["l2"].mode().iloc[0]) if "l2" in cells else None
            return l1, l2
    return None, None


def _top_features(table: pd.DataFrame | None, subset: str, n: int, names: Any) -> list[str]:
    if table is None or "subset" not in table:
        return []
    feature = "feature" if "feature" in table else "gene" if "gene" in table else "protein"
    if feature not in table:
        return []
    rows = table[table["subset"].astype(str) == subset]
    for column in ("statistic", "auroc", "auroc_parent"):
        if column in rows:
            rows = rows.sort_values(column, ascending=False, kind="stable")
            break
    known = set(map(str, names))
    return [f for f in dict.fromkeys(rows[feature].astype(str)) if f in known][:n]


def _passing(mdata: Any) -> np.ndarray:
    obs = mdata.obs
    if "qc_pass" in obs:
        return obs["qc_pass"].fillna(False).astype(bool).to_numpy()
    return np.ones(len(obs), dtype=bool)


#: RNA markers per subset in the marker dot plot.
N_DOT_GENES = 8


def _marker_rna(out: Path, mdata: Any, subsets: Sequence[str]) -> Any:
    """The RNA of the dot plots' genes of all ``subsets``, read once (cells x those genes).

    With the RNA on disk each read of a few genes reads whole gene blocks of every cell, so
    the subsets' genes are read together; in memory the RNA is returned as it is.
    """
    rna = getattr(mdata, "mod", {}).get("rna")
    if rna is None or store_of(rna) is None:
        return rna
    table = read_table(out, "markers", modality="rna")
    genes = list(
        dict.fromkeys(
            g for s in subsets for g in _top_features(table, s, N_DOT_GENES, rna.var_names)
        )
    )
    columns = rna.var_names.get_indexer(genes)
    return AnnData(
        X=rna_columns(rna, columns), obs=pd.DataFrame(index=rna.obs_names),
        var=pd.DataFrame(index=pd.Index(genes)),
    )  # fmt: skip


def _markers_figure(
    out: Path, mdata: Any, rna: Any, subset: str, l1: str | None, k: int
) -> list[Any]:
    """The marker dot plot of ``subset``; ``rna``: `_marker_rna`'s RNA (or None)."""
    obs = mdata.obs
    prot = getattr(mdata, "mod", {}).get("prot")
    panels: dict[str, tuple[Any, list[str]]] = {}
    if rna is not None:
        table = read_table(out, "markers", modality="rna")
        genes = _top_features(table, subset, N_DOT_GENES, rna.var_names)
        if genes:
            panels["RNA"] = (rna, genes)
    if prot is not None:
        proteins = _top_features(
            read_table(out, "markers", modality="prot"), subset, 5, prot.var_names
        )
        if proteins:
            panels["protein"] = (prot, proteins)
    if not panels:
        return [
            Note(f"No marker table rows for {subset} (tables/markers_rna.csv, markers_prot.csv).")
        ]
    labels = obs["subset"].astype(str).where(_passing(mdata))
    if l1 is not None and "l1" in obs:
        labels = labels.where(obs["l1"].astype(str) == l1)
    sizes = labels.value_counts()
    rows = [subset] + [s for s in sizes.index if s != subset][:9]
    labels = labels.where(labels.isin(rows))
    fig = pl.marker_dotplot(
        panels, labels, order=[r for r in rows if r in sizes.index],
        thresholds={"protein": 1.0}, title=f"Markers of {subset}"
        + (f" among {l1} subsets" if l1 else ""),
    )  # fmt: skip
    return [
        FigureBlock(
            fig,
            f"markers_{k}_{subset}",
            caption=f"Top RNA and protein markers of {subset} (tables/markers_*.csv) next to the "
            "other subsets of its lineage: dot size = cells expressing (protein: normalised "
            "value > 1), colour = mean scaled per marker.",
        )
    ]


def _enrichment_blocks(out: Path, subset: str, k: int, alpha: float) -> list[Any]:
    table = read_table(out, "enrichment")
    if table is None or "subset" not in table:
        return [missing_note("enrichment", "gene-set enrichment")]
    rows = table[table["subset"].astype(str) == subset]
    if rows.empty:
        return [Note(f"No gene-set enrichment rows for {subset}.")]
    n_sig = int((rows["padj"] < alpha).sum())
    return [
        FigureBlock(
            pl.enrichment_bars(rows, alpha=alpha, title=f"Hallmark enrichment of {subset} markers"),
            f"enrichment_{k}_{subset}",
            caption=f"Over-representation of {subset}'s marker genes in gene sets; {n_sig} set(s) "
            f"with padj < {alpha:g}.",
        )
    ]


def _gsea_blocks(out: Path, subset: str, contrast: str, n_rows: int = 8) -> list[Any]:
    table = read_table(out, "enrichment_de")
    if table is None or not {"contrast", "subset", "set", "padj"} <= set(table.columns):
        return []
    rows = table[
        (table["contrast"].astype(str) == contrast) & (table["subset"].astype(str) == subset)
    ].sort_values(["padj", "pvalue"] if "pvalue" in table else ["padj"], kind="stable")
    if rows.empty:
        return []
    columns = [c for c in ("set", "nes", "set_size", "pvalue", "padj") if c in rows]
    return [
        TableBlock(
            rows,
            caption=f"Gene-set enrichment (GSEA, preranked) of {subset}'s pseudobulk "
            f"differential expression in {contrast}: positive NES = up in cases",
            csv="tables/enrichment_de.csv",
            columns=columns,
            max_rows=n_rows,
        )
    ]


def _signature_blocks(
    out: Path, subset: str, contrast: str, groups: Mapping[str, pd.Series], k: int
) -> list[Any]:
    table = read_table(out, "signatures")
    if table is None or not {"donor_id", "subset", "set", "score"} <= set(table.columns):
        return [missing_note("signatures", "signature scores")]
    rows = table[table["subset"].astype(str) == subset]
    if rows.empty:
        return [Note(f"No signature scores for {subset}.")]
    if contrast not in groups:
        return [Note(f"Contrast {contrast} has no two arms to compare signature scores in.")]
    arms = groups[contrast]
    tests = read_table(out, "signature_tests")
    pvalues: dict[str, float] = {}
    untested = ""
    if tests is not None and {"contrast", "subset", "padj"} <= set(tests.columns):
        part = tests[
            (tests["contrast"].astype(str) == contrast) & (tests["subset"].astype(str) == subset)
        ]
        key = "set" if "set" in part else "level" if "level" in part else None
        if key is not None:
            pvalues = {
                str(s).removeprefix("signature:"): float(p)
                for s, p in zip(part[key], part["padj"], strict=True)
                if pd.notna(p)
            }
        notes = part.loc[part["padj"].isna(), "note"].dropna() if "note" in part else []
        if len(notes):
            untested = f" The donor-level test did not run: {notes.iloc[0]}."
    order = arm_order(arms)
    present = set(arms[arms.index.isin(rows["donor_id"].astype(str))])
    fig = pl.signature_scores(
        rows,
        arms,
        pvalues=pvalues or None,
        order=[o for o in order if o in present],
        title=f"Signature scores of {subset} by {contrast}",
    )
    return [
        FigureBlock(
            fig,
            f"signatures_{k}_{subset}",
            caption=f"Mean signature score of {subset}'s cells per donor, by {contrast}"
            + (
                "; adjusted p-value of the donor-level test (tables/signature_tests.csv)."
                if pvalues
                else "."
            )
            + untested,
        )
    ]


def _gating_blocks(out: Path, mdata: Any, subset: str, l1: str | None, k: int) -> list[Any]:
    table = read_table(out, "gating")
    need = {"subset", "step", "protein", "direction", "threshold", "split"}
    if table is None or not need <= set(table.columns):
        return [missing_note("gating", "gating strategy")]
    rows = table[table["subset"].astype(str) == subset]
    if rows.empty:
        return [Note(f"No gating strategy for {subset}.")]
    splits = rows["split"].astype(str)
    first_split = "train" if (splits == "train").any() else splits.iloc[0]
    gates = rows[(splits == first_split) & (rows["step"] >= 1)].sort_values("step")
    blocks: list[Any] = []
    prot = getattr(mdata, "mod", {}).get("prot") if mdata is not None else None
    proteins = list(dict.fromkeys(str(p) for p in gates["protein"]))
    if prot is not None and all(p in prot.var_names for p in proteins):
        keep = _passing(mdata)
        obs = mdata.obs[keep]
        # the gated proteins' columns first, then the passing cells (no copy of every column)
        matrix = prot.X[:, prot.var_names.get_indexer(proteins)][np.flatnonzero(keep)]
        matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        values = pd.DataFrame(matrix, columns=proteins)
        start0 = rows[(rows["step"] == 0)]
        start = None
        if len(start0) and str(start0["gate"].iloc[0]) == "parent" and l1 is not None:
            start = (obs["l1"].astype(str) == l1).to_numpy()
        target = (obs["subset"].astype(str) == subset).to_numpy()
        fig = pl.gating_plot(values, target, gates, start=start, metrics=rows, subset=subset)
        blocks.append(
            FigureBlock(
                fig,
                f"gating_{k}_{subset}",
                caption=f"Gating {subset} from "
                + (f"the {l1} lineage" if start is not None else "all cells")
                + ": each panel shows the protein of one gate in the cells that passed the "
                "previous gates (shaded: kept); the last panel gives purity and recall after "
                "each gate on training and held-out donors.",
            )
        )
    else:
        blocks.append(Note("The protein data for the gating plot is not available."))
    columns = [c for c in ("step", "gate", "split", "n_gated", "n_target", "purity", "recall",
                           "f1", "quantile") if c in rows]  # fmt: skip
    blocks.append(TableBlock(rows, caption=f"Gating steps for {subset}", csv="tables/gating.csv",
                             columns=columns))  # fmt: skip
    return blocks


def _roc_blocks(out: Path, contrast: str, k: int) -> list[Any]:
    donors = read_table(out, "prediction_donors")
    if donors is None or "contrast" not in donors:
        return [missing_note("prediction_donors", "donor-level prediction")]
    rows = donors[donors["contrast"].astype(str) == contrast]
    truth = "y" if "y" in rows else "truth" if "truth" in rows else None
    score = "score" if "score" in rows else "prob" if "prob" in rows else None
    if rows.empty or truth is None or score is None or rows[truth].nunique() < 2:
        return [Note(f"No donor-level prediction for {contrast}.")]
    summary = read_table(out, "prediction")
    text = ""
    if summary is not None and "contrast" in summary:
        s = summary[summary["contrast"].astype(str) == contrast]
        if len(s):
            r = s.iloc[0]
            text = (
                f" Out-of-fold AUROC {float(r['effect']):.2f} (95% CI {float(r['ci_low']):.2f} "
                f"to {float(r['ci_high']):.2f}), permutation p = {float(r['pvalue']):.3g}"
                + (
                    f"; chance level of this procedure {float(r['auroc_null_mean']):.2f}"
                    if "auroc_null_mean" in s and np.isfinite(r["auroc_null_mean"])
                    else ""
                )
                + "."
            )
    fig = pl.roc(rows, truth=truth, score=score, model=None, case=1,
                 title=f"{contrast} from subset shares")  # fmt: skip
    return [
        FigureBlock(
            fig,
            f"roc_{k}_{contrast}",
            caption=f"Predicting {contrast} from all subset shares (penalised logistic "
            "regression, cross-validated: each donor scored by a model that never saw it)." + text,
        )
    ]


def _population_column(expression: pd.DataFrame) -> str | None:
    for column in ("subset", "cells", "population", "l2", "l1"):
        if column in expression:
            return column
    return None


def _timecourse_blocks(
    out: Path, subset: str, l1: str | None, l2: str | None, k: int
) -> tuple[list[Any], bool]:
    shares = read_table(out, "timecourse")
    expression = read_table(out, "timecourse_expression")
    if shares is not None and "subset" in shares:
        shares = shares[shares["subset"].astype(str) == subset]
        if "level" in shares and shares["level"].nunique() > 1:
            levels = shares["level"].astype(str)
            shares = shares[levels == ("subset" if (levels == "subset").any() else levels.iloc[0])]
    column = _population_column(expression) if expression is not None else None
    mine = None
    if expression is not None and column is not None:
        names = {subset, l1, l2} - {None}
        mine = expression[expression[column].astype(str).isin(names)]
    have_shares = shares is not None and len(shares) > 0
    have_expr = mine is not None and len(mine) > 0
    if not have_shares and not have_expr:
        return [], False
    fig = pl.timecourse_panels(shares if have_shares else None, mine if have_expr else None,
                               title=f"{subset}: donors sampled at several timepoints")  # fmt: skip
    return [
        FigureBlock(
            fig,
            f"timecourse_{k}_{subset}",
            caption=f"{subset} share"
            + (" and expression in its cells" if have_expr else "")
            + " per timepoint, one line per donor with two or more timepoints.",
        )
    ], True


def characterisation_section(
    out: str | Path,
    mdata: Any = None,
    *,
    alpha: float = 0.05,
    max_subsets: int = MAX_CHARACTERISED,
) -> Section:
    """One subsection per associated subset: its markers, enrichment, signatures and more.

    Each subsection: marker dot plot (RNA + protein), enrichment bars, signature scores by
    group, gating plot, ROC of the donor-level prediction of its contrast (once per
    contrast) and time courses of donors with several timepoints.

    Parameters
    ----------
    out
        Run folder with the characterisation tables (``enrichment.csv``, ``signatures.csv``,
        ``signature_tests.csv``, ``gating.csv``, ``prediction.csv``,
        ``prediction_donors.csv``, ``timecourse.csv``, ``timecourse_expression.csv``,
        ``markers_rna.csv``, ``markers_prot.csv``; each optional).
    mdata
        The cohort (``obs`` with ``subset``, ``l1``; ``mod["rna"]``, ``mod["prot"]``) for the
        marker dot plots and gating plots; ``None`` leaves them out.
    alpha
        Significance threshold of the associated subsets and of the enrichment.
    max_subsets
        Most subsets characterised (by smallest padj).

    Returns
    -------
    Section
        Anchor ``characterisation``.
    """
    out = Path(out)
    table = associated_subsets(read_table(out, "association"), alpha=alpha)
    subsets, significant = characterised_subsets(table, max_subsets=max_subsets)
    skipped = skipped_notes(out, "characterise")
    if not subsets:
        return Section(
            "Characterisation of associated subsets",
            "characterisation",
            [Note("No subset to characterise: no association table or no candidate."), *skipped],
        )
    groups = contrast_groups(out)
    blocks: list[Any] = list(skipped)
    if not significant:
        blocks.append(
            Note(
                "No subset is significantly associated; the strongest nominal candidates are "
                "characterised below for exploration only.",
                "warning",
            )
        )
    obs = getattr(mdata, "obs", None)
    dot_rna = _marker_rna(out, mdata, subsets) if obs is not None and "subset" in obs else None
    roc_done: set[str] = set()
    any_timecourse = False
    for k, subset in enumerate(subsets):
        rows = table[table["subset"].astype(str) == subset]
        if significant:
            rows = rows[rows["significant"].astype(bool)]
        section, drawn = _subset_section(
            out, mdata, dot_rna, subset, rows, groups, roc_done, alpha, k
        )
        blocks.append(section)
        any_timecourse |= drawn
    expression = read_table(out, "timecourse_expression")
    if expression is not None and _population_column(expression) is None:
        blocks.append(
            Section(
                "Gene expression over time",
                "timecourse-expression",
                [
                    FigureBlock(
                        pl.timecourse_panels(None, expression),
                        "timecourse_expression",
                        caption="Mean expression per timepoint, one line per donor with two or "
                        "more timepoints (tables/timecourse_expression.csv).",
                    )
                ],
            )
        )
        any_timecourse = True
    if not any_timecourse:
        blocks.append(
            Note("No donor has samples at two or more timepoints (tables/timecourse.csv).")
        )
    return Section("Characterisation of associated subsets", "characterisation", blocks)


def _subset_section(
    out: Path,
    mdata: Any,
    dot_rna: Any,
    subset: str,
    rows: pd.DataFrame,
    groups: Mapping[str, pd.Series],
    roc_done: set[str],
    alpha: float,
    k: int,
) -> tuple[Section, bool]:
    """One associated subset's subsection; whether it drew a time course.

    ``roc_done``: the contrasts whose ROC is drawn already (this one's is added).
    """
    obs = getattr(mdata, "obs", None)
    first = rows.iloc[0]
    l1, l2 = _subset_lineage(out, obs, subset)
    parts: list[Any] = [
        Paragraph(
            f"{subset}"
            + (f" ({l2}, lineage {l1})" if l1 else "")
            + ": "
            + "; ".join(
                f"{r.fold_change:.2f}-fold in {r.contrast} cases (95% CI {r.ci}, padj {r.padj:.2g})"
                for r in rows.itertuples(index=False)
            )
            + "."
        )
    ]
    if mdata is not None and "subset" in mdata.obs:
        parts.extend(_markers_figure(out, mdata, dot_rna, subset, l1, k))
    parts.extend(_enrichment_blocks(out, subset, k, alpha))
    parts.extend(_gsea_blocks(out, subset, str(first.contrast)))
    parts.extend(_signature_blocks(out, subset, str(first.contrast), groups, k))
    if mdata is not None:
        parts.extend(_gating_blocks(out, mdata, subset, l1, k))
    contrast = str(first.contrast)
    if contrast in roc_done:
        parts.append(Paragraph(f"Donor-level prediction of {contrast}: see above."))
    else:
        parts.extend(_roc_blocks(out, contrast, k))
        roc_done.add(contrast)
    time_blocks, drawn = _timecourse_blocks(out, subset, l1, l2, k)
    parts.extend(time_blocks)
    return Section(subset, f"subset-{subset}", parts), drawn

"""Section builders for the statistics of a run: composition and association.

Each function reads the run's ``tables/*.csv`` (and, where a figure needs cells, the cohort
object) and returns a :class:`~sccohort.report.build.Section`; nothing here writes a file.
A table that is missing or empty makes its part of the section say so in one line; it
never raises. :func:`associated_subsets` is the report's headline table: the subset x
contrast rows that the default test finds significant, sorted by adjusted p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import pl
from ..cohort import ClinicalTable
from ..errors import InputError
from ..io.tables import TABLES, read_table, table_files
from ..stats.abundance import DEFAULT_METHOD
from ..stats.composition import donor_shares
from ..stats.permutation import describe_attainable
from ..stats.selection import (
    associated_subsets,
    default_test_rows,
)
from ..stats.tests import proportion_biplot
from .build import FigureBlock, Note, Paragraph, Section, TableBlock
from .detectable import detectable_paragraph
from .paired_samples import LEVEL_WORDS, paired_comparisons
from .sections import clinical_frame, group_column, skipped_notes

__all__ = [
    "arm_order",
    "association_section",
    "composition_section",
    "contrast_groups",
    "missing_note",
]


def missing_note(name: str, what: str) -> Note:
    """The note of a section whose table (a key of `TABLES`) is missing or empty."""
    file = TABLES[name].file
    return Note(f"No {what} in this run (tables/{file} is missing or empty).")


# ---------------------------------------------------------------------------- contrasts


def _levels(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def contrast_groups(out: str | Path) -> dict[str, pd.Series]:
    """Donor -> arm label of every binary/categorical contrast, as the run's designs had them.

    Reads ``tables/contrast_donors.csv`` (`sccohort.cohort.ContrastDesign.donor_table`).

    Returns
    -------
    dict
        Contrast name -> Series indexed by donor_id (``"yes"`` / ``"no"``), named by the
        variable, ``attrs["control"]`` the control arm; no continuous or sample contrasts.
    """
    table = read_table(out, "contrast_donors")
    if table is None:
        return {}
    out_: dict[str, pd.Series] = {}
    for name, rows in table.groupby(table["contrast"].astype(str), sort=False):
        by_sample = "unit" in rows and str(rows["unit"].iloc[0]) == "sample"
        if str(rows["kind"].iloc[0]) == "continuous" or by_sample:
            continue
        group = pd.Series(
            rows["arm"].astype(str).to_numpy(),
            index=pd.Index(rows["donor_id"].astype(str)),
            name=str(rows["variable"].iloc[0]),
        )
        control = rows.loc[rows["group"].astype(str) == "control", "arm"]
        group.attrs["control"] = str(control.iloc[0]) if len(control) else ""
        out_[str(name)] = group
    return out_


# ---------------------------------------------------------------------- the headline table


def _count(value: Any) -> str:
    return str(int(value)) if pd.notna(value) else "?"


def _associated_block(table: pd.DataFrame, alpha: float) -> list[Any]:
    n_sig = int(table["significant"].astype(bool).sum()) if len(table) else 0
    shown = table.assign(
        **{
            "fold change": table["fold_change"].astype(float).round(2),
            "donors (case / control)": [
                f"{_count(a)} / {_count(b)}"
                for a, b in zip(table["n_case"], table["n_control"], strict=True)
            ],
            "mean share % (case / control)": [
                f"{100 * float(a):.2f} / {100 * float(b):.2f}"
                if pd.notna(a) and pd.notna(b)
                else ""
                for a, b in zip(table["mean_share_case"], table["mean_share_control"], strict=True)
            ],
            "significant": table["significant"].astype(bool),
            "padj without one donor": [
                f"{float(p):.2g} (without {d})" if pd.notna(p) else ""
                for p, d in zip(table["loo_padj"], table["loo_donor"], strict=True)
            ],
        }
    ).rename(columns={"ci": "95% CI", "ks_padj": "KS padj"})
    columns = [
        "subset", "contrast", "level", "fold change", "95% CI", "padj", "KS padj",
        "padj without one donor", "donors (case / control)", "mean share % (case / control)",
    ]  # fmt: skip
    if shown["KS padj"].isna().all():
        columns.remove("KS padj")
    if shown["padj without one donor"].eq("").all():
        columns.remove("padj without one donor")
    if shown["mean share % (case / control)"].eq("").all():
        columns.remove("mean share % (case / control)")
    if 0 < shown["significant"].sum() < len(shown):  # mixed: say which rows are which
        columns.append("significant")
    blocks: list[Any] = []
    if n_sig:
        pairs = "; ".join(
            f"{r.subset} with {r.contrast} ({r.fold_change:.2f}-fold, padj {r.padj:.2g}"
            + _one_donor(r.loo_padj, r.loo_donor, alpha)
            + ")"
            for r in table[table["significant"].astype(bool)].itertuples(index=False)
        )
        blocks.append(
            Paragraph(
                f"{n_sig} subset x contrast association(s) with padj < {alpha:g} under the "
                f"default donor-level test: {pairs}."
            )
        )
    else:
        blocks.append(
            Note(
                f"No subset reached padj < {alpha:g} under the default donor-level test"
                + (
                    "; the rows below are nominal (p < "
                    f"{alpha:g}) candidates that did not survive the correction."
                    if len(table)
                    else "."
                ),
                "warning",
            )
        )
    if len(table):
        blocks.append(
            TableBlock(
                shown,
                caption="Associated subsets: fold change of the share (case / control, "
                "adjusted for the contrast's covariates) with its 95% CI, adjusted p-value of "
                "the default test (linear model of arcsine-square-root shares, p-value from "
                "permutations of the donors' labels, BH within contrast and level) and of the "
                "study's KS test (Bonferroni), and the largest adjusted p-value of the default "
                "test when any one donor is left out (and which donor); significant rows first.",
                csv="tables/report_associated_subsets.csv",
                columns=columns,
                overwrite=True,
            )
        )
    return blocks


def _one_donor(padj: float, donor: str, alpha: float) -> str:
    """A warning when leaving one donor out loses the association (padj >= alpha)."""
    lost = pd.notna(padj) and padj >= alpha
    return f"; carried by one donor: without {donor} padj is {padj:.2g}" if lost else ""


def associated_summary(out: str | Path, *, alpha: float = 0.05) -> list[Any]:
    """The headline blocks (text + "Associated subsets" table) for the report's summary."""
    association = read_table(out, "association")
    if association is None:
        return [missing_note("association", "association tests")]
    table = associated_subsets(association, alpha=alpha)
    if table["significant"].astype(bool).any():  # the headline: significant rows only
        table = table[table["significant"].astype(bool)].reset_index(drop=True)
    return _associated_block(table, alpha)


# ----------------------------------------------------------------------------- composition


def arm_order(arms: pd.Series) -> list[str]:
    """Control arm first, then the case arm (as the labels of `contrast_groups` come)."""
    labels = list(pd.unique(arms.astype(str)))
    return sorted(labels, key=lambda s: 0 if s == arms.attrs.get("control") else 1)


def _primary_samples(comp: pd.DataFrame, timepoint: str | None, tissue: str | None) -> list[str]:
    meta = comp.drop_duplicates("sample_id")[["sample_id", "donor_id", "timepoint", "tissue"]]
    meta = meta.astype(str)
    for column, value in (("timepoint", timepoint), ("tissue", tissue)):
        if value is not None and (meta[column] == str(value)).any():
            meta = meta[meta[column] == str(value)]
    return list(meta.drop_duplicates("donor_id")["sample_id"])


def _donor_group(clinical: pd.DataFrame | None, donors: Sequence[str]) -> tuple[pd.Series, str]:
    column = group_column(clinical, None)
    if clinical is None or column is None:
        return pd.Series("all donors", index=list(donors)), "group"
    group = clinical[column].reindex(list(donors)).astype(object)
    return group.where(group.notna(), "(no clinical row)").astype(str), column


def composition_section(
    out: str | Path,
    mdata: Any = None,
    clinical: ClinicalTable | pd.DataFrame | None = None,
    *,
    primary_timepoint: str | None = None,
    primary_tissue: str | None = None,
    alpha: float = 0.05,
    n_compare: int = 4,
) -> Section:
    """Composition per donor, the PCA biplot of subset shares, the top associated subsets.

    Parameters
    ----------
    out
        Run folder with ``tables/composition.csv`` (and ``association.csv``,
        ``contrast_donors.csv`` for the group comparisons).
    mdata
        Unused except as a fallback source of ``obs`` when ``composition.csv`` is missing.
    clinical
        Clinical table (colours donors by its ``group``-like variable).
    primary_timepoint, primary_tissue
        The sample representing each donor (default: each donor's first sample).
    alpha
        Significance threshold of the associated subsets.
    n_compare
        Most subsets drawn as group comparisons (strip plots).

    Returns
    -------
    Section
        Anchor ``composition``.
    """
    comp = read_table(out, "composition")
    if comp is None and mdata is not None and "subset" in getattr(mdata, "obs", {}):
        from ..stats.composition import composition

        comp = composition(mdata.obs, ("l1", "l2", "subset"))
    if comp is None or not (comp["level"].astype(str) == "subset").any():
        return Section("Composition", "composition", [missing_note("composition", "composition")])
    samples = _primary_samples(comp, primary_timepoint, primary_tissue)
    shares = donor_shares(comp, "subset", samples)
    frame = clinical_frame(clinical)
    group, column = _donor_group(frame, list(shares.index))
    blocks: list[Any] = [
        Paragraph(
            f"Subset shares of {len(shares)} donors (one sample each"
            + (f", timepoint {primary_timepoint}" if primary_timepoint else "")
            + f"), {shares.shape[1]} subsets."
        ),
        FigureBlock(
            pl.composition_bars(shares, group),
            "composition_bars",
            caption=f"Share of each subset per donor, donors grouped by {column}; the 20 "
            "largest subsets have their own colour.",
        ),
    ]
    blocks += _composition_pca(shares, group)
    blocks += _top_comparisons(out, comp, samples, n_compare, alpha)
    blocks += paired_comparisons(Path(out), comp, n_compare, alpha)
    return Section("Composition", "composition", blocks)


def _composition_pca(shares: pd.DataFrame, group: pd.Series) -> list[Any]:
    """The PCA biplot of the donor x subset shares, or a note why there is none."""
    blocks: list[Any] = []
    try:
        pca = proportion_biplot(shares, group)
        pcs = [c for c in pca["scores"].columns if str(c).startswith("PC")]
        fig = pl.pca_biplot(
            {
                "scores": pca["scores"][pcs],
                "loadings": pca["loadings"],
                "explained": np.asarray(pca["variance_explained"], dtype=float),
                "centroids": pca["centroids"],
            },
            group,
        )
        dropped = pca.get("dropped") or {}
        blocks.append(
            FigureBlock(
                fig,
                "composition_pca",
                caption="PCA of the donor x subset shares (each subset scaled to unit variance, "
                "as FactoMineR); arrows: the subsets most correlated with the two components."
                + (f" Left out: {', '.join(dropped)}." if dropped else ""),
            )
        )
    except InputError as exc:
        blocks.append(Note(f"No PCA biplot: {exc}"))
    return blocks


def _top_comparisons(
    out: Path, comp: pd.DataFrame, samples: list[str], n_compare: int, alpha: float
) -> list[Any]:
    """Strip plots of the top associated subsets in the two arms of their contrasts."""
    blocks: list[Any] = []
    association = read_table(out, "association")
    top = associated_subsets(association, alpha=alpha)
    groups = contrast_groups(out)
    panels: list[dict[str, Any]] = []
    described: list[str] = []
    for row in top.itertuples(index=False):
        if len(panels) >= n_compare:
            break
        if row.contrast not in groups:
            continue
        level = str(row.level) if str(row.level) in set(comp["level"].astype(str)) else "subset"
        level_shares = donor_shares(comp, level, samples)
        if row.subset not in level_shares.columns:
            continue
        arms = groups[row.contrast]
        values = level_shares[row.subset].reindex(arms.index).dropna()
        if values.empty:
            continue
        pvalues = [("default test, adj.", row.padj)]
        if pd.notna(row.ks_padj):
            pvalues.append(("KS, Bonferroni", row.ks_padj))
        panels.append(
            {
                "values": values,
                "group": arms.loc[values.index],
                "title": f"{row.subset} by {row.contrast}",
                "ylabel": f"{LEVEL_WORDS.get(level, level)} (%)",
                "order": arm_order(arms),
                "pvalues": pvalues,
            }
        )
        described.append(
            f"{row.subset} in {row.contrast}: {row.fold_change:.2f}-fold (95% CI {row.ci})"
        )
    if panels:
        blocks.append(
            FigureBlock(
                pl.comparison_panels(panels),
                "composition_top_subsets",
                caption="The top associated subsets per donor in the two arms of their contrast, "
                "with the adjusted p-values of the default test and of the study's KS test. "
                + "; ".join(described)
                + ".",
            )
        )
    elif len(top):
        blocks.append(Note("The associated subsets' contrasts have no two-arm grouping to draw."))
    return blocks


# ----------------------------------------------------------------------------- association


def association_section(
    out: str | Path, *, alpha: float = 0.05, nhood_alpha: float = 0.1, de_alpha: float = 0.05
) -> Section:
    """Associations of subsets with every contrast: the headline table, then the details.

    Parameters
    ----------
    out
        Run folder: ``tables/association.csv``, ``neighbourhoods.csv``, ``de_<contrast>.csv``,
        ``subgroups.csv`` (each optional).
    alpha
        Significance threshold on padj of the subset tests.
    nhood_alpha
        Spatial FDR threshold of the neighbourhood plots.
    de_alpha
        padj threshold of the volcano plots.

    Returns
    -------
    Section
        Anchor ``association``; its first table is "Associated subsets".
    """
    out = Path(out)
    association = read_table(out, "association")
    blocks: list[Any] = [*attainable_notes(out, alpha), *detectable_paragraph(out, alpha)]
    if association is None:
        blocks.append(missing_note("association", "association tests"))
    else:
        table = associated_subsets(association, alpha=alpha)
        blocks.extend(_associated_block(table, alpha))
        default = default_test_rows(association, DEFAULT_METHOD, ("subset",)).drop(columns="_rank")
        if {"contrast", "subset", "effect", "padj"} <= set(default.columns):
            default = default.drop_duplicates(["contrast", "subset"])
            blocks.append(
                FigureBlock(
                    pl.association_heatmap(default, alpha=alpha),
                    "association_heatmap",
                    caption="Effect (log2 fold change of the mean share, case / control) of "
                    "every subset in every contrast under the default test; stars mark padj.",
                )
            )
        methods = (
            sorted(association["method"].astype(str).unique()) if "method" in association else []
        )
        levels = (
            f"; composition levels: {', '.join(pd.unique(association['level'].astype(str)))}"
            if "level" in association
            else ""
        )
        blocks.append(
            Paragraph(
                "Tests in tables/association.csv: "
                + (", ".join(methods) or "(method not recorded)")
                + levels
                + ". The methods section explains each."
            )
        )
    blocks.append(_neighbourhood_section(out, nhood_alpha))
    de = _de_section(out, de_alpha)
    de.blocks.extend(skipped_notes(out, "de"))
    blocks.append(de)
    blocks.append(_subgroup_section(out, alpha))
    return Section("Association with clinical contrasts", "association", blocks)


def attainable_notes(out: Path, alpha: float) -> list[Note]:
    """Warnings from contrasts.csv: designs that cannot reach ``padj < alpha``, donors left out."""
    reach = read_table(out, "contrasts")
    if reach is None or "reachable" not in reach:
        return []
    notes = [
        Note(describe_attainable(row, alpha), "warning")
        for row in reach.to_dict("records")
        if not bool(row["reachable"])
    ]
    left_out = reach["left_out"].dropna().astype(str) if "left_out" in reach else []
    if len(left_out) and left_out.iloc[0]:
        notes.append(
            Note(
                f"Left out of every donor-level test, too few cells after QC: {left_out.iloc[0]}"
                " ([association] min_cells).",
                "warning",
            )
        )
    return notes


def _neighbourhood_section(out: Path, alpha: float) -> Section:
    nh = read_table(out, "neighbourhoods")
    if nh is None or not {"contrast", "subset", "effect", "padj"} <= set(nh.columns):
        return Section(
            "Neighbourhoods", "neighbourhoods", [missing_note("neighbourhoods", "neighbourhoods")]
        )
    blocks: list[Any] = [
        Paragraph(
            "Differential abundance of overlapping k-nearest-neighbour neighbourhoods "
            "(Milo-style: negative binomial per neighbourhood, spatial FDR), which finds "
            "shifts within or across subsets without relying on the clustering."
        )
    ]
    for k, (contrast, part) in enumerate(nh.groupby(nh["contrast"].astype(str), sort=False)):
        n_sig = int((part["padj"] < alpha).sum())
        blocks.append(
            FigureBlock(
                pl.nhood_beeswarm(
                    part,
                    logfc="effect",
                    fdr="padj",
                    alpha=alpha,
                    title=f"{contrast}: {len(part):,} neighbourhoods",
                ),  # fmt: skip
                f"nhood_{k}_{contrast}",
                caption=f"{contrast}: log fold change of each neighbourhood, grouped by its "
                f"majority subset; {n_sig} with spatial FDR < {alpha:g}.",
            )
        )
    return Section("Neighbourhoods", "neighbourhoods", blocks)


def _de_section(out: Path, alpha: float) -> Section:
    blocks: list[Any] = []
    for k, (contrast, path) in enumerate(table_files(out, "de").items()):
        de = read_table(out, "de", contrast=contrast)
        if de is None or not {"effect", "pvalue", "padj"} <= set(de.columns):
            continue
        if "contrast" in de and de["contrast"].notna().any():
            contrast = str(de["contrast"].dropna().iloc[0])
        gene = "gene" if "gene" in de else "feature" if "feature" in de else None
        if gene is None:
            continue
        de = de.assign(
            label=(de["subset"].astype(str) + ": " if "subset" in de else "") + de[gene].astype(str)
        )
        sig = de[de["padj"] < alpha]
        blocks.append(
            FigureBlock(
                pl.volcano(de, label="label", alpha=alpha, title=f"Pseudobulk DE: {contrast}"),
                f"volcano_{k}_{contrast}",
                caption=f"{contrast}: pseudobulk differential expression per subset (every "
                f"subset's genes together); {len(sig):,} subset x gene pairs with padj < "
                f"{alpha:g} (named: the most significant).",
            )
        )
        if len(sig):
            columns = [c for c in ("subset", gene, "effect", "pvalue", "padj", "base_mean")
                       if c in sig]  # fmt: skip
            blocks.append(
                TableBlock(
                    sig.sort_values("padj"),
                    caption=f"{contrast}: differentially expressed genes (padj < {alpha:g})",
                    csv=f"tables/{path.name}",
                    columns=columns,
                    max_rows=25,
                )
            )
    if not blocks:
        blocks.append(Note("No pseudobulk differential expression in this run (tables/de_*.csv)."))
    skipped = read_table(out, "de_skipped")
    if skipped is not None and {"contrast", "subset"} <= set(skipped.columns):
        per = skipped.groupby(skipped["contrast"].astype(str))["subset"].size()
        blocks.append(
            Note(
                "Subsets not tested for lack of donors with cells (tables/de_skipped.csv): "
                + ", ".join(f"{c} {n}" for c, n in per.items())
                + "."
            )
        )
    return Section("Differential expression (pseudobulk)", "de", blocks)


def _subgroup_section(out: Path, alpha: float) -> Section:
    sub = read_table(out, "subgroups")
    if sub is None or not {"contrast", "subset", "padj", "method"} <= set(sub.columns):
        return Section(
            "Subgroups", "subgroups", [missing_note("subgroups", "subgroup comparisons")]
        )
    method = sub["method"].astype(str)
    kw = sub[method.str.startswith("kruskal")].sort_values(["padj", "pvalue"], kind="stable")
    dunn = sub[method.str.startswith("dunn")]
    hits = kw[kw["padj"] < alpha]
    wanted = ("contrast", "level", "subset", "H", "statistic", "epsilon_sq", "pvalue", "padj")
    columns = [c for c in wanted if c in sub]
    blocks: list[Any] = [
        Paragraph(
            f"Kruskal-Wallis tests of each subset's share across the levels of "
            f"{', '.join(pd.unique(kw['contrast'].astype(str))) or 'the groupings'} "
            f"(Bonferroni); {len(hits)} with padj < {alpha:g}"
            + (". Dunn's post-hoc pairs of those follow." if len(hits) else ".")
        ),
        TableBlock(
            kw,
            caption="Kruskal-Wallis per subset",
            csv="tables/subgroups.csv",
            columns=columns,
            max_rows=20,
        ),  # fmt: skip
    ]
    if len(hits) and len(dunn):
        keys = set(zip(hits["contrast"].astype(str), hits["subset"].astype(str), strict=True))
        base = dunn["contrast"].astype(str).str.split(":").str[0]
        keep = [(b, s) in keys for b, s in zip(base, dunn["subset"].astype(str), strict=True)]
        pairs = dunn[keep].sort_values("padj", kind="stable")
        if len(pairs):
            blocks.append(
                TableBlock(
                    pairs,
                    caption="Dunn's pairs of the significant subsets",
                    columns=[
                        c
                        for c in (
                            "contrast",
                            "subset",
                            "group1",
                            "group2",
                            "effect",
                            "ci_low",
                            "ci_high",
                            "pvalue",
                            "padj",
                        )
                        if c in pairs
                    ],
                    max_rows=40,
                )  # fmt: skip
            )
    return Section("Subgroups", "subgroups", blocks)

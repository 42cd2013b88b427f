"""Section builders for the statistics of a run: composition, association, characterisation.

Each function reads the run's ``tables/*.csv`` (and, where a figure needs cells, the cohort
object) and returns a :class:`~sccohort.report.build.Section`; nothing here writes a file.
A table that is missing or empty makes its part of the section say so in one line; it
never raises. :func:`associated_subsets` is the report's headline table: the subset x
contrast rows that the default test finds significant, sorted by adjusted p-value.
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
from ..cohort import ClinicalTable
from ..errors import InputError
from ..io.tables import TABLES, read_table, table_files
from ..pp.store import rna_columns, store_of
from ..stats.abundance import DEFAULT_METHOD, describe_attainable
from ..stats.composition import donor_shares
from ..stats.selection import (
    MAX_CHARACTERISED,
    associated_subsets,
    characterised_subsets,
    default_test_rows,
)
from ..stats.tests import proportion_biplot
from .build import FigureBlock, Note, Paragraph, Section, TableBlock
from .sections import clinical_frame, group_column, skipped_notes

__all__ = [
    "association_section",
    "characterisation_section",
    "composition_section",
    "contrast_groups",
]

_LEVEL_WORDS = {
    "subset": "share of all cells",
    "subset_in_l1": "share of its lineage (l1)",
    "l2": "share of all cells",
    "l2_in_l1": "share of its lineage (l1)",
    "l1": "share of all cells",
}


def _missing(name: str, what: str) -> Note:
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
        Contrast name -> Series indexed by donor_id (e.g. ``"yes"`` / ``"no"``), named by the
        contrast's variable, ``attrs["control"]`` the control arm's label; continuous
        contrasts are left out. ``{}`` when the run tested no contrast.
    """
    table = read_table(out, "contrast_donors")
    if table is None:
        return {}
    out_: dict[str, pd.Series] = {}
    for name, rows in table.groupby(table["contrast"].astype(str), sort=False):
        if str(rows["kind"].iloc[0]) == "continuous":
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
        }
    ).rename(columns={"ci": "95% CI", "ks_padj": "KS padj"})
    columns = [
        "subset", "contrast", "level", "fold change", "95% CI", "padj", "KS padj",
        "donors (case / control)", "mean share % (case / control)",
    ]  # fmt: skip
    if shown["KS padj"].isna().all():
        columns.remove("KS padj")
    if shown["mean share % (case / control)"].eq("").all():
        columns.remove("mean share % (case / control)")
    if 0 < shown["significant"].sum() < len(shown):  # mixed: say which rows are which
        columns.append("significant")
    blocks: list[Any] = []
    if n_sig:
        pairs = "; ".join(
            f"{r.subset} with {r.contrast} ({r.fold_change:.2f}-fold, padj {r.padj:.2g})"
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
                "study's KS test (Bonferroni); significant rows first.",
                csv="tables/report_associated_subsets.csv",
                columns=columns,
                overwrite=True,
            )
        )
    return blocks


def associated_summary(out: str | Path, *, alpha: float = 0.05) -> list[Any]:
    """The headline blocks (text + "Associated subsets" table) for the report's summary."""
    association = read_table(out, "association")
    if association is None:
        return [_missing("association", "association tests")]
    table = associated_subsets(association, alpha=alpha)
    if table["significant"].astype(bool).any():  # the headline: significant rows only
        table = table[table["significant"].astype(bool)].reset_index(drop=True)
    return _associated_block(table, alpha)


# ----------------------------------------------------------------------------- composition


def _arm_order(arms: pd.Series) -> list[str]:
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
        return Section("Composition", "composition", [_missing("composition", "composition")])
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
                "ylabel": f"{_LEVEL_WORDS.get(level, level)} (%)",
                "order": _arm_order(arms),
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
    return Section("Composition", "composition", blocks)


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
    blocks: list[Any] = attainable_notes(out, alpha)
    if association is None:
        blocks.append(_missing("association", "association tests"))
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
            "Neighbourhoods", "neighbourhoods", [_missing("neighbourhoods", "neighbourhoods")]
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
        return Section("Subgroups", "subgroups", [_missing("subgroups", "subgroup comparisons")])
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


# ------------------------------------------------------------------------ characterisation


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
        return [_missing("enrichment", "gene-set enrichment")]
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
        return [_missing("signatures", "signature scores")]
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
    order = _arm_order(arms)
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
        return [_missing("gating", "gating strategy")]
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
        return [_missing("prediction_donors", "donor-level prediction")]
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
        first = rows.iloc[0]
        l1, l2 = _subset_lineage(out, obs, subset)
        parts: list[Any] = [
            Paragraph(
                f"{subset}"
                + (f" ({l2}, lineage {l1})" if l1 else "")
                + ": "
                + "; ".join(
                    f"{r.fold_change:.2f}-fold in {r.contrast} cases (95% CI {r.ci}, padj "
                    f"{r.padj:.2g})"
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
        any_timecourse |= drawn
        blocks.append(Section(subset, f"subset-{subset}", parts))
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

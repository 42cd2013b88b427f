"""The report's tissue section: tissue cells, the joint embedding, the trajectory, interactions.

Built from the tissue stages' tables and ``OUT/tissue.h5mu``; a run without tissue samples
gets the section with the reason the stages gave (``run.json``'s ``skipped``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import pl
from ..io.cohort_file import read_h5mu
from ..io.tables import read_table
from .build import FigureBlock, Note, Paragraph, Section, TableBlock
from .sections import skipped_notes

__all__ = ["tissue_section"]

TISSUE_FILE = "tissue.h5mu"
#: Genes drawn in the heatmap along pseudotime.
HEATMAP_GENES = 40
#: Interactions shown per subset of interest in the dot plot.
TOP_PER_SUBSET = 10


def tissue_section(out: str | Path, alpha: float = 0.05) -> Section:
    """The tissue section of ``OUT/report.html``.

    Parameters
    ----------
    out
        The run folder (``tables/tissue_cell_types.csv``, ``trajectory_*.csv``,
        ``interaction_scores.csv``, ``interactions.csv`` and ``tissue.h5mu`` when the tissue
        stages ran).
    alpha
        Threshold on ``padj`` for the differential interactions and progression tests.

    Returns
    -------
    Section
        Anchor ``tissue``: subsections on cell types and the joint embedding, the
        trajectory and cell-cell communication, each present when its stage ran.
    """
    out = Path(out)
    notes = [
        n for stage in ("tissue", "trajectory", "interactions") for n in skipped_notes(out, stage)
    ]
    types = read_table(out, "tissue_cell_types")
    if types is None:
        text = "No tissue samples were analysed."
        return Section("Tissue", "tissue", [Paragraph(text), *notes])
    joint = _joint(out)
    parts = [_cells_part(types, out, joint)]
    trajectory = _trajectory_part(out, joint, alpha)
    if trajectory is not None:
        parts.append(trajectory)
    interactions = _interactions_part(out, alpha)
    if interactions is not None:
        parts.append(interactions)
    return Section("Tissue", "tissue", [*notes, *parts])


def _joint(out: Path) -> Any:
    """The joint embedding of ``tissue.h5mu`` (None when the file is missing)."""
    path = out / TISSUE_FILE
    if not path.is_file():
        return None
    return read_h5mu(path).mod["joint"]


def _cells_part(types: pd.DataFrame, out: Path, joint: Any) -> Section:
    qc = read_table(out, "tissue_qc")
    blocks: list[Any] = []
    for tissue, rows in types.groupby("tissue", sort=False):
        n_cells = int(rows["n_cells"].sum())
        n_samples = int(rows["n_samples"].max())
        blocks.append(
            Paragraph(
                f"{tissue}: {n_cells:,} cells after QC in {n_samples} samples; "
                f"{rows['l1'].nunique()} lineages, {rows['subset'].nunique()} subsets and states."
            )
        )
    if qc is not None:
        blocks.append(
            TableBlock(qc, "Tissue QC per sample (tissue thresholds).", "tables/tissue_qc.csv")
        )
        blocks.append(Paragraph(_ambient_sentence(qc)))
    blocks.append(
        TableBlock(
            types.sort_values("n_cells", ascending=False),
            "Tissue cells per type and subset (tissue states are named as blood subsets are).",
            "tables/tissue_cell_types.csv",
            max_rows=40,
        )
    )
    if joint is not None and "X_umap" in joint.obsm:
        info = joint.uns.get("integrate_lineages", {})
        lineages = ", ".join(map(str, info.get("lineages", [])))
        blocks.append(
            Paragraph(
                f"The lineages blood and tissue share ({lineages}) in one embedding: PCA of the "
                "joint variable genes, Harmony with tissue and sample as batches (blood cells "
                f"drawn, at most {info.get('max_per_subset', '?')} per subset)."
            )
        )
        coords = np.asarray(joint.obsm["X_umap"])
        for column, name in (("source", "tissue"), ("subset", "subset")):
            fig = pl.embedding(coords, joint.obs[column].astype(str).to_numpy(), name=name)
            blocks.append(
                FigureBlock(fig, f"tissue_umap_{column}", caption=f"Joint UMAP by {name}.")
            )
    return Section("Tissue cells and the joint embedding", "tissue-cells", blocks)


def _trajectory_part(out: Path, joint: Any, alpha: float) -> Section | None:
    cells = read_table(out, "trajectory_cells")
    genes = read_table(out, "trajectory_genes")
    if cells is None or genes is None:
        return None
    root = str(genes["root"].iloc[0]) if "root" in genes and len(genes) else "?"
    fates = [c for c in cells.columns if c.startswith("fate_")]
    ends = ", ".join(c.removeprefix("fate_") for c in fates) or "?"
    n_sig = int((genes["padj"] < alpha).sum())
    blocks: list[Any] = [
        Paragraph(
            f"Diffusion pseudotime from {root} (the blood subset most associated with a contrast "
            f"whose lineage has tissue states, or the config's root) through the tissue cells of "
            f"its lineage; terminal states (tissue states that send no net flow onwards in the "
            f"pseudotime-directed cell graph): {ends}; each cell's fate probabilities are its "
            f"absorption probabilities in them. {len(cells):,} cells; {n_sig:,} of "
            f"{len(genes):,} genes change along it (spline F test on the tissue cells, "
            f"BH padj < {alpha})."
        )
    ]
    by_state = cells.groupby("subset")
    order = pd.concat(
        [by_state["pseudotime"].median().rename("median_pseudotime"), by_state[fates].mean()],
        axis=1,
    ).sort_values("median_pseudotime")
    blocks.append(
        TableBlock(
            order.reset_index(),
            "States in the order of their median pseudotime, with their mean fate probabilities.",
            None,
        )
    )
    if joint is not None and "X_umap" in joint.obsm:
        pt = pd.Series(cells["pseudotime"].to_numpy(), index=cells["cell_id"].astype(str))
        on = joint.obs_names.isin(pt.index)
        fig = pl.embedding(
            np.asarray(joint.obsm["X_umap"])[on],
            pt.reindex(joint.obs_names[on]).to_numpy(),
            name="pseudotime",
        )
        blocks.append(
            FigureBlock(
                fig,
                "tissue_pseudotime",
                caption="Joint UMAP of the trajectory's cells by pseudotime.",
            )
        )
        heat = _heatmap(joint, cells, genes, alpha)
        if heat is not None:
            blocks.append(heat)
    blocks.append(
        TableBlock(genes, "Genes along pseudotime.", "tables/trajectory_genes.csv", max_rows=25)
    )
    donors = read_table(out, "trajectory_donors")
    if donors is not None:
        blocks.append(
            TableBlock(
                donors,
                "How far each donor's tissue cells progress.",
                "tables/trajectory_donors.csv",
                max_rows=30,
            )
        )
    tests = read_table(out, "trajectory_tests")
    if tests is not None:
        blocks.append(
            TableBlock(
                tests,
                "Progression (median pseudotime, terminal share, fate) between groups.",
                "tables/trajectory_tests.csv",
            )
        )
    return Section("Trajectory", "trajectory", blocks)


def _heatmap(
    joint: Any, cells: pd.DataFrame, genes: pd.DataFrame, alpha: float
) -> FigureBlock | None:
    tissue_cells = cells[cells["source"] != "blood"]
    cell_ids = tissue_cells["cell_id"].astype(str)
    cell_ids = cell_ids[cell_ids.isin(joint.obs_names)]
    top = genes[(genes["padj"] < alpha) & genes["gene"].isin(joint.var_names)].head(HEATMAP_GENES)
    if len(top) < 2 or len(cell_ids) < 10:
        return None
    sub = joint[cell_ids.to_numpy(), top["gene"].to_numpy()]
    x = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
    expression = pd.DataFrame(x, columns=top["gene"].to_numpy())
    pseudotime = tissue_cells.set_index("cell_id").loc[cell_ids, "pseudotime"].to_numpy()
    fig = pl.trajectory_heatmap(expression, pseudotime, top, max_genes=HEATMAP_GENES)
    return FigureBlock(
        fig,
        "tissue_trajectory_genes",
        caption="Top genes along pseudotime (tissue cells; mean per pseudotime bin, scaled "
        "per gene).",
    )


def _ambient_sentence(qc: pd.DataFrame) -> str:
    rho = qc.get("ambient_contamination", pd.Series(dtype=float)).dropna()
    kept = len(qc) - len(rho)
    if not len(rho):
        return "Ambient RNA was not removed (no tissue sample has raw droplets, raw_path)."
    return (
        f"Ambient RNA removed from {len(rho)} of {len(qc)} tissue samples (SoupX's method: "
        f"the soup from each sample's empty droplets, its share estimated from genes a cluster "
        f"does not express, subtracted per cluster): contamination median "
        f"{rho.median():.1%} (range {rho.min():.1%}-{rho.max():.1%})"
        + (f"; {kept} sample(s) without raw droplets kept as they are." if kept else ".")
    )


def _interactions_part(out: Path, alpha: float) -> Section | None:
    scores = read_table(out, "interaction_scores")
    tests = read_table(out, "interactions")
    if scores is None:
        return None
    blocks: list[Any] = [
        Paragraph(
            "Ligand-receptor pairs (the curated resource shipped with sccohort) between the "
            "subsets of interest (associated with a contrast, and the trajectory's terminal "
            "state) and every other cell type, in each compartment: score = mean ligand in the "
            "source x mean receptor in the target; specificity by label permutation."
        )
    ]
    for tissue, rows in scores.groupby("tissue", sort=False):
        ranked = rows[rows["rank"] <= TOP_PER_SUBSET]
        if len(ranked):
            fig = pl.interaction_dots(
                ranked.drop(columns="tissue"), title=f"{tissue}: top interactions"
            )
            blocks.append(
                FigureBlock(
                    fig,
                    f"interactions_{tissue}",
                    caption=f"Top interactions per source and target in {tissue}.",
                )
            )
    qc = read_table(out, "tissue_qc")
    rho = qc.get("ambient_contamination") if qc is not None else None
    removed = rho is not None and rho.notna().all()
    blocks.append(
        Note(
            (
                "Ambient RNA was removed before scoring, but not exactly (per cluster): "
                if removed
                else "Ambient RNA was not removed from every tissue sample: "
            )
            + "a ligand raised in one cell type reaches every nucleus of the sample, so a "
            "differential pair whose source does not itself make the ligand (tubule cells "
            "'sending' CCL5) may be ambient. Read differential pairs from their main source.",
            "note" if removed else "warning",
        )
    )
    if tests is not None and len(tests):
        found = tests[tests["padj"] < alpha]
        blocks.append(
            Paragraph(
                f"Per-donor interaction scores tested between each contrast's groups (default "
                f"test on log2 scores, BH within contrast and compartment): {len(found)} of "
                f"{len(tests):,} interactions at padj < {alpha}."
            )
        )
        shown = found if len(found) else tests.head(10)
        columns = [
            "contrast",
            "tissue",
            "source",
            "target",
            "ligand",
            "receptor",
            "effect",
            "pvalue",
            "padj",
            "n_case",
            "n_control",
            "rank",
        ]
        blocks.append(
            TableBlock(
                shown,
                "Differential interactions"
                if len(found)
                else "The strongest interactions (none at the threshold)",
                "tables/interactions.csv",
                columns=[c for c in columns if c in shown],
            )
        )
    return Section("Cell-cell communication", "interactions", blocks)

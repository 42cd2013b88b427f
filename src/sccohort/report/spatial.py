"""The report's spatial section: slides, their cell types, niches and niche shares by group.

Built from the spatial stage's tables and ``OUT/spatial.h5mu``; a run without slides gets
the section with the reason the stage gave (``run.json``'s ``skipped``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import pl
from ..io.cohort_file import read_h5mu
from ..io.tables import read_table
from .build import FigureBlock, Paragraph, Section, TableBlock
from .sections import skipped_notes

__all__ = ["spatial_section"]

SPATIAL_FILE = "spatial.h5mu"
#: Slides drawn (the first ones of the sample sheet) and cells drawn per slide.
MAX_SLIDES, MAX_CELLS_PER_SLIDE = 3, 20_000
#: Niches drawn by group per contrast (the smallest p-values).
MAX_NICHE_PLOTS = 2


def spatial_section(out: str | Path, alpha: float = 0.05) -> Section:
    """The spatial section of ``OUT/report.html``.

    Parameters
    ----------
    out
        The run folder (``tables/spatial_qc.csv``, ``spatial_cell_types.csv``,
        ``niche_composition.csv``, ``cooccurrence.csv``, ``niche_shares.csv``, ``niches.csv``
        and ``spatial.h5mu`` when the spatial stage ran).
    alpha
        Threshold on ``padj`` for the niche tests.

    Returns
    -------
    Section
        Anchor ``spatial``: the slides' QC and cell types, slide maps by cell type and
        niche, the niches' composition, the neighbourhood enrichment and the niche tests.
    """
    out = Path(out)
    notes = skipped_notes(out, "spatial")
    qc = read_table(out, "spatial_qc")
    if qc is None:
        return Section("Spatial niches", "spatial", [Paragraph("No spatial slides."), *notes])
    types = read_table(out, "spatial_cell_types")
    composition = read_table(out, "niche_composition")
    n_niches = composition["niche"].nunique() if composition is not None else 0
    blocks: list[Any] = [
        Paragraph(
            f"{len(qc)} slides, {int(qc['cells_out'].sum()):,} cells after panel QC "
            f"({int(qc['n_genes'].max()):,} genes). Cell types by label transfer from the "
            "cohort's blood and tissue cells (by the shipped markers when the run has no "
            "tissue cells); niches: k-means of each cell's neighbourhood composition (its 20 "
            f"nearest cells, types standardised): {n_niches} niches."
        ),
        TableBlock(qc, "Panel QC per slide.", "tables/spatial_qc.csv"),
        *notes,
    ]
    if types is not None:
        blocks.append(
            TableBlock(
                types,
                "Cell types on the slides (with the panel's coverage of each label's markers).",
                "tables/spatial_cell_types.csv",
                max_rows=40,
            )
        )
    blocks += _slide_maps(out)
    if composition is not None:
        top = composition[composition["enrichment"] >= 1.5].sort_values(
            ["niche", "share"], ascending=[True, False]
        )
        blocks.append(
            TableBlock(
                top,
                "Niches: the types they hold above their share on the slides.",
                "tables/niche_composition.csv",
                max_rows=40,
            )
        )
    enrichment = read_table(out, "cooccurrence")
    if enrichment is not None and len(enrichment):
        fig = pl.enrichment_heatmap(enrichment)
        blocks.append(
            FigureBlock(
                fig,
                "spatial_enrichment",
                caption="Which types sit next "
                "to each other (z-score over label permutations per slide, "
                "mean over slides).",
            )
        )
    blocks += _niche_tests(out, alpha)
    return Section("Spatial niches", "spatial", blocks)


def _slide_maps(out: Path) -> list[FigureBlock]:
    path = out / SPATIAL_FILE
    if not path.is_file():
        return []
    cells = read_h5mu(path).mod["rna"]
    blocks = []
    slides = pd.unique(cells.obs["sample_id"].astype(str))[:MAX_SLIDES]
    for i, slide in enumerate(slides):
        on = (cells.obs["sample_id"].astype(str) == slide).to_numpy()
        xy = np.asarray(cells.obsm["spatial"])[on]
        for column, name in (("subset", "cell type"), ("niche", "niche")):
            fig = pl.embedding(
                xy,
                cells.obs[column].astype(str).to_numpy()[on],
                name=name,
                basis="slide",
                max_cells=MAX_CELLS_PER_SLIDE,
                title=f"{slide} by {name}",
                label_on_data=False,
            )
            blocks.append(
                FigureBlock(
                    fig, f"spatial_slide{i + 1}_{column}", caption=f"Slide {slide} by {name} (µm)."
                )
            )
    return blocks


def _niche_tests(out: Path, alpha: float) -> list[Any]:
    tests = read_table(out, "niches")
    shares = read_table(out, "niche_shares")
    donors = read_table(out, "contrast_donors")
    if tests is None or not len(tests):
        return []
    found = tests[tests["padj"] < alpha]
    blocks: list[Any] = [
        Paragraph(
            "Each donor's share of cells per niche (its slides pooled), tested between each "
            f"contrast's groups with the donor-level default test: {len(found)} of "
            f"{len(tests)} tests at padj < {alpha}."
        ),
        TableBlock(
            tests.sort_values("pvalue"),
            "Niche shares between groups.",
            "tables/niches.csv",
            max_rows=25,
        ),
    ]
    if shares is None or donors is None:
        return blocks
    values = shares.pivot(index="donor_id", columns="niche", values="share")
    for contrast, rows in tests.groupby("contrast", sort=False):
        group = donors[donors["contrast"] == contrast].set_index("donor_id")["arm"].astype(str)
        for niche in rows.nsmallest(MAX_NICHE_PLOTS, "pvalue")["subset"]:
            fig = pl.group_comparison(
                values[niche].dropna(), group, subset=niche, title=f"{niche}: {contrast}"
            )
            safe = "".join(c if c.isalnum() else "_" for c in f"{contrast}_{niche}")
            blocks.append(
                FigureBlock(
                    fig, f"niche_{safe}"[:80], caption=f"Share of each donor's cells in {niche}."
                )
            )
    return blocks

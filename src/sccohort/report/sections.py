"""Section builders for what every run has: cohort, QC, UMAPs, cell types, methods.

Each function reads a run's output folder (``tables/*.csv``), the cohort object or the
``run.json`` record and returns a :class:`~sccohort.report.build.Section`; nothing here
writes a file (:func:`~sccohort.report.build.build_report` does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import pl
from ..cohort import ClinicalTable
from ..errors import InputError
from ..io.tables import read_table, table_path
from ..pl.embedding import MAX_CELLS
from .build import FigureBlock, Note, Paragraph, Section, TableBlock

__all__ = [
    "SMALL_GROUP",
    "cell_types_section",
    "clinical_frame",
    "cohort_section",
    "contrast_sizes",
    "group_column",
    "qc_section",
    "umap_section",
]

#: Groups with fewer donors than this get a limitations warning.
SMALL_GROUP = 5
#: obs columns drawn on the UMAP, with their legend names.
UMAP_COLUMNS = {
    "l1": "cell type (l1)",
    "l2": "cell type (l2)",
    "subset": "subset",
    "sample_id": "sample",
    "rna_weight": "WNN RNA weight",
}


def clinical_frame(clinical: ClinicalTable | pd.DataFrame | None) -> pd.DataFrame | None:
    """A copy of the clinical table indexed by ``donor_id`` as text (``None`` stays ``None``)."""
    if clinical is None:
        return None
    frame = clinical.table if isinstance(clinical, ClinicalTable) else clinical
    frame = frame.copy()
    if "donor_id" in frame.columns:
        frame = frame.set_index("donor_id")
    frame.index = frame.index.astype(str)
    frame.index.name = "donor_id"
    return frame


def group_column(clinical: pd.DataFrame | None, group: str | None) -> str | None:
    """The clinical variable that groups donors (``None`` when there is none).

    ``group`` if given (it must be a column), else ``"group"``, else the first non-numeric
    variable with 2-6 levels.
    """
    if clinical is None:
        return None
    if group is not None:
        if group not in clinical.columns:
            raise InputError(
                f"the clinical table has no variable '{group}'",
                column=group,
                hint=f"Variables: {', '.join(map(str, clinical.columns))}",
            )
        return group
    if "group" in clinical.columns:
        return "group"
    for column in clinical.columns:  # the first variable with few levels
        values = clinical[column].dropna()
        if not pd.api.types.is_numeric_dtype(values) and 1 < values.nunique() <= 6:
            return str(column)
    return None


def contrast_sizes(contrasts: Mapping[str, Mapping[str, Any]], out: str | Path) -> pd.DataFrame:
    """Each declared contrast's settings and donors per arm, as the run's design tested them.

    The donors come from ``tables/contrast_donors.csv``; a contrast the run did not test
    (its design was refused, see the skipped analyses) has no donor counts (NaN).
    """
    rows = []
    donors = read_table(out, "contrast_donors")
    if donors is None:
        donors = pd.DataFrame(columns=["contrast", "group"])
    for name, spec in contrasts.items():
        part = donors[donors["contrast"].astype(str) == str(name)]
        variable = spec.get("variable")
        case, control = spec.get("case"), spec.get("control")
        if part.empty:
            n_case = n_control = np.nan
        elif case is None:  # continuous
            n_case, n_control = len(part), np.nan
        else:
            n_case = int((part["group"].astype(str) == "case").sum())
            n_control = int((part["group"].astype(str) == "control").sum())
        within = ", ".join(f"{k} = {v}" for k, v in dict(spec.get("within") or {}).items())
        units = "donors"
        if "unit" in part and (part["unit"].astype(str) == "sample").any():
            sides = part.groupby(part["donor_id"].astype(str))["group"].nunique()
            units = "samples, paired within donor" if (sides > 1).any() else "samples"
        rows.append(
            {
                "contrast": name,
                "compares": units,
                "variable": variable,
                "case": "per unit" if case is None else case,
                "control": "" if case is None else control if control is not None else "others",
                "within": within,
                "covariates": ", ".join(spec.get("covariates") or []),
                "n_case": n_case,
                "n_control": n_control,
            }
        )
    return pd.DataFrame(rows)


def _run_samples(out: Path) -> pd.DataFrame:
    """``tables/samples.csv`` with text ids and, when QC ran, the cells after QC per sample."""
    samples = read_table(out, "samples", required=True)
    samples["sample_id"] = samples["sample_id"].astype(str)
    samples["donor_id"] = samples["donor_id"].astype(str)
    if table_path(out, "qc").is_file():
        qc = read_table(out, "qc", required=True)
        after = qc.set_index(qc["sample_id"].astype(str))["cells_out"]
        samples["cells_after_qc"] = samples["sample_id"].map(after)
    return samples


def _cohort_paragraphs(samples: pd.DataFrame, donors: list[str]) -> list[Any]:
    """Donors, samples and cells in one sentence; samples per timepoint when several."""
    n_cells = int(samples["n_cells"].sum()) if "n_cells" in samples else 0
    kept = int(samples["cells_after_qc"].sum()) if "cells_after_qc" in samples else None
    text = f"{len(donors)} donors contributed {len(samples)} samples with {n_cells:,} cells" + (
        f", of which {kept:,} passed quality control." if kept is not None else "."
    )
    blocks: list[Any] = [Paragraph(text)]
    if "timepoint" in samples and samples["timepoint"].nunique() > 1:
        per = samples.groupby("timepoint", sort=False)["sample_id"].size()
        blocks.append(
            Paragraph(
                "Samples per timepoint: " + ", ".join(f"{k} {v}" for k, v in per.items()) + "."
            )
        )
    return blocks


def _group_sizes(
    samples: pd.DataFrame, table: pd.DataFrame, column: str, donors: list[str], small_group: int
) -> tuple[TableBlock, list[str]]:
    """Donors, samples and cells per level of ``column``; warnings on small groups."""
    groups = table[column].reindex(donors).fillna("(missing)").astype(str)
    per_donor = samples.groupby("donor_id")
    summary = pd.DataFrame(
        {
            column: groups.to_numpy(),
            "samples": per_donor.size().reindex(donors).to_numpy(),
            "cells": per_donor["n_cells"].sum().reindex(donors).to_numpy()
            if "n_cells" in samples
            else np.nan,
        },
        index=donors,
    )
    if "cells_after_qc" in samples:
        summary["cells_after_qc"] = per_donor["cells_after_qc"].sum().reindex(donors)
    by_group = summary.groupby(column, sort=True).agg(
        donors=(column, "size"),
        **{c: (c, "sum") for c in summary.columns if c != column},
    )
    block = TableBlock(
        by_group.reset_index(),
        caption=f"Donors, samples and cells per {column}",
        csv="tables/report_cohort_groups.csv",
    )
    warnings = [
        f"{column} = {level} has only {n} donor(s): group-level estimates for it "
        "are imprecise and tests involving it have little power"
        for level, n in by_group["donors"].items()
        if n < small_group
    ]
    return block, warnings


def _donor_table(samples: pd.DataFrame, table: pd.DataFrame, donors: list[str]) -> TableBlock:
    """The clinical rows of the donors with samples, with their samples (and cells after QC)."""
    donor_table = table.reindex(donors)
    donor_table.insert(0, "samples", samples.groupby("donor_id").size().reindex(donors))
    if "cells_after_qc" in samples:
        donor_table.insert(1, "cells_after_qc", samples.groupby("donor_id")["cells_after_qc"].sum())
    return TableBlock(
        donor_table,
        caption="Donors and their clinical variables",
        csv="tables/report_cohort_donors.csv",
        index=True,
        max_rows=200,
    )


def _contrast_arms(
    contrasts: Mapping[str, Mapping[str, Any]], out: Path, small_group: int
) -> tuple[TableBlock, list[str]]:
    """The declared contrasts with donors per arm; warnings on arms with few donors."""
    sizes = contrast_sizes(contrasts, out)
    block = TableBlock(
        sizes,
        caption="Declared contrasts and the donors in each arm",
        csv="tables/report_contrasts.csv",
    )
    warnings = []
    for row in sizes.itertuples(index=False):
        arms = [("case", row.n_case), ("control", row.n_control)]
        for arm, n in arms:
            if np.isfinite(n) and n < small_group:
                warnings.append(
                    f"contrast {row.contrast}: only {int(n)} {arm} donor(s); effects are "
                    "estimated with wide uncertainty and a single donor can drive them"
                )
    return block, warnings


def cohort_section(
    out: str | Path,
    clinical: ClinicalTable | pd.DataFrame | None = None,
    *,
    group: str | None = None,
    contrasts: Mapping[str, Mapping[str, Any]] | None = None,
    small_group: int = SMALL_GROUP,
) -> Section:
    """Cohort overview: donors, groups, samples and cells; contrasts and their group sizes.

    Parameters
    ----------
    out
        Run folder with ``tables/samples.csv`` (and ``tables/qc.csv`` for cells after QC).
    clinical
        The clinical table (``ClinicalTable`` or a DataFrame indexed by / with ``donor_id``).
    group
        Clinical variable that defines the main groups (default ``"group"`` when present).
    contrasts
        ``run.json["config"]["contrasts"]``: a table of the contrasts with donors per arm.
    small_group
        Groups or contrast arms with fewer donors get a limitations warning.

    Returns
    -------
    Section
        Anchor ``cohort``.
    """
    out = Path(out)
    samples = _run_samples(out)
    table = clinical_frame(clinical)
    column = group_column(table, group)
    donors = list(pd.unique(samples["donor_id"]))
    blocks: list[Any] = _cohort_paragraphs(samples, donors)
    warnings: list[str] = []
    if table is not None:
        no_clinical = [d for d in donors if d not in table.index]
        if no_clinical:
            warnings.append(
                f"{len(no_clinical)} donor(s) with samples have no clinical row: "
                + ", ".join(no_clinical)
            )
        if column is not None:
            block, notes = _group_sizes(samples, table, column, donors, small_group)
            blocks.append(block)
            warnings.extend(notes)
        blocks.append(_donor_table(samples, table, donors))
    if contrasts:
        block, notes = _contrast_arms(contrasts, out, small_group)
        blocks.append(block)
        warnings.extend(notes)
    blocks.extend(Note(w, "warning") for w in warnings)
    blocks.append(
        TableBlock(
            samples,
            caption="Samples (tables/samples.csv)",
            csv="tables/samples.csv",
            max_rows=200,
        )
    )
    return Section("Cohort overview", "cohort", blocks)


def qc_section(out: str | Path, *, min_kept: float = 0.7) -> Section:
    """Quality control per sample: cells kept and removed by reason, thresholds used.

    Parameters
    ----------
    out
        Run folder with ``tables/qc.csv``.
    min_kept
        Samples keeping a smaller share of their cells get a warning.

    Returns
    -------
    Section
        Anchor ``qc``.
    """
    qc = read_table(out, "qc", required=True)
    qc["sample_id"] = qc["sample_id"].astype(str)
    kept = qc["cells_out"] / qc["cells_in"].where(qc["cells_in"] > 0)
    total_in, total_out = int(qc["cells_in"].sum()), int(qc["cells_out"].sum())
    reasons = {
        c.removeprefix("removed_").replace("_", " "): int(qc[c].sum())
        for c in qc.columns
        if c.startswith("removed_") and qc[c].sum() > 0
    }
    blocks: list[Any] = [
        Paragraph(
            f"Quality control kept {total_out:,} of {total_in:,} cells "
            f"({100 * total_out / max(total_in, 1):.1f}%). Removed: "
            + (", ".join(f"{k} {v:,}" for k, v in reasons.items()) or "none")
            + ". Each cell is counted under the first reason that removed it."
        ),
        FigureBlock(
            pl.qc_cells(qc),
            "qc_cells_per_sample",
            caption="Cells per sample kept (blue) and removed by reason; the label gives the "
            "share kept.",
        ),
    ]
    low = qc.loc[kept < min_kept, "sample_id"].tolist()
    if low:
        blocks.append(
            Note(
                f"{len(low)} sample(s) kept less than {100 * min_kept:.0f}% of their cells: "
                + ", ".join(low)
                + ". Check their QC metrics before trusting their composition.",
                "warning",
            )
        )
    columns = [
        c for c in ("sample_id", "tissue", "mode", "cells_in", "cells_out") if c in qc.columns
    ] + [c for c in qc.columns if c.startswith("removed_")]
    thresholds = [
        c
        for c in (
            "mito_max", "genes_min", "genes_max", "umis_min", "umis_max", "doublet_threshold"
        )
        if c in qc.columns
    ]  # fmt: skip
    blocks.append(
        TableBlock(
            qc,
            caption="Cells removed per sample",
            csv="tables/qc.csv",
            columns=columns,
            max_rows=200,
        )  # fmt: skip
    )
    if thresholds:
        blocks.append(
            TableBlock(
                qc,
                caption="Thresholds applied per sample",
                csv="tables/qc.csv",
                columns=["sample_id", *thresholds],
                max_rows=200,
            )  # fmt: skip
        )
    return Section("Quality control", "qc", blocks)


def umap_section(
    mdata: Any,
    *,
    columns: Mapping[str, str] | None = None,
    max_cells: int = MAX_CELLS,
    seed: int = 0,
    basis: str = "X_umap",
) -> Section:
    """UMAPs of a random subsample of cells coloured by cell type, subset, sample, WNN weight.

    Parameters
    ----------
    mdata
        The cohort (anything with ``.obs`` and ``.obsm[basis]``, e.g. a MuData).
    columns
        obs column -> legend name; default `UMAP_COLUMNS` (missing columns are skipped).
    max_cells, seed
        Cells drawn per UMAP (the same cells in every panel) and the seed of that draw.
    basis
        ``obsm`` key of the 2-D embedding.

    Returns
    -------
    Section
        Anchor ``umap``, one figure per column present.
    """
    if basis not in mdata.obsm:
        raise InputError(
            f"the cohort has no obsm['{basis}']",
            key=basis,
            hint="Run the embed stage (UMAP) before building this section",
        )
    coords = np.asarray(mdata.obsm[basis])
    obs = mdata.obs
    wanted = dict(columns or UMAP_COLUMNS)
    present = {c: n for c, n in wanted.items() if c in obs.columns}
    n = len(obs)
    drawn = min(n, max_cells)
    which = (
        f"the same {drawn:,} of {n:,} cells, chosen at random (seed {seed})"
        if n > drawn
        else f"all {n:,} cells"
    )
    blocks: list[Any] = [
        Paragraph(
            f"UMAP of the weighted-nearest-neighbour graph (RNA and protein). Each panel draws "
            f"{which}."
        )
    ]
    for column, name in present.items():
        values = obs[column]
        fig = pl.embedding(coords, values.to_numpy(), name=name, max_cells=max_cells, seed=seed)
        caption = f"UMAP coloured by {name}."
        if column == "rna_weight":
            caption += (
                " The RNA weight is the share the RNA modality takes in each cell's WNN "
                "neighbourhood (1 - protein weight); high values mean RNA separates the cell "
                "from its neighbours better than protein."
            )
        blocks.append(FigureBlock(fig, f"umap_{column}", caption=caption))
    missing = [c for c in wanted if c not in present]
    if missing:
        blocks.append(Note("Not available in this run: " + ", ".join(missing) + "."))
    return Section("Cells at a glance (UMAP)", "umap", blocks)


def cell_types_section(out: str | Path) -> Section:
    """Cell types (l1/l2) and, when present, the subsets found within them.

    Parameters
    ----------
    out
        Run folder with ``tables/cell_types.csv`` (and optionally ``tables/subsets.csv``).

    Returns
    -------
    Section
        Anchor ``cell-types``.
    """
    out = Path(out)
    types = read_table(out, "cell_types", required=True)
    called = types[types["n_cells"] > 0] if "n_cells" in types else types
    blocks: list[Any] = [
        Paragraph(
            f"{called['l2'].nunique()} cell types (Azimuth PBMC l2 vocabulary) in "
            f"{called['l1'].nunique()} lineages (l1), labelled from RNA and protein markers."
        ),
        *coverage_notes(types),
        FigureBlock(
            pl.label_shares(called),
            "cell_types_shares",
            caption="Share of all cells per cell type, coloured by lineage; numbers are cells.",
        ),
        TableBlock(types, caption="Cell types", csv="tables/cell_types.csv", max_rows=100),
    ]
    if "median_confidence" in types:
        # "unassigned" is low-confidence by definition; flag real labels only
        low = called[
            (called["median_confidence"] < 0.5) & (called["l2"].astype(str) != "unassigned")
        ]
        if len(low):
            blocks.append(
                Note(
                    "Low median label confidence (< 0.5) for: "
                    + ", ".join(f"{r.l2} ({r.l1})" for r in low.itertuples(index=False))
                    + ". Check these labels against their markers.",
                    "warning",
                )
            )
    if table_path(out, "subsets").is_file():
        subsets = read_table(out, "subsets", required=True)
        blocks.append(
            Section(
                "Subsets",
                "subsets",
                [
                    Paragraph(
                        f"Each lineage was subclustered into {len(subsets)} subsets, named after "
                        "their parent cell type and their most distinctive gene (as CD14_EGR1)."
                    ),
                    TableBlock(subsets, caption="Subsets", csv="tables/subsets.csv", max_rows=200),
                ],
            )
        )
    blocks.extend(skipped_notes(out, "annotate"))
    return Section("Cell types", "cell-types", blocks)


def coverage_notes(types: pd.DataFrame) -> list[Note]:
    """What the markers in the data could not call (``cell_types.csv``'s coverage columns)."""
    if "callable" not in types or "note" not in types:
        return []
    notes = []
    lost = types[types["note"].astype(str).str.startswith("not callable")]
    if len(lost):
        named = "; ".join(
            f"{r.l2} (missing {str(r.missing_markers).replace(';', ', ')})"
            if isinstance(r.missing_markers, str) and r.missing_markers
            else str(r.l2)
            for r in lost.itertuples(index=False)
        )
        notes.append(
            Note(
                f"{len(lost)} cell types cannot be called from the markers in these data and "
                f"were not assigned: {named}. Their cells carry another label or "
                "'unassigned'. A labelled reference atlas ([annotation] reference in the "
                "config) can transfer labels that markers cannot call.",
                "warning",
            )
        )
    coarse = types[types["note"].astype(str).str.startswith("l2 types")]
    if len(coarse):
        notes.append(
            Note(
                "The markers cannot tell the cell types within "
                + ", ".join(coarse["l1"].astype(str))
                + " apart: their cells keep the lineage name as their l2 label.",
            )
        )
    return notes


def skipped_notes(out: str | Path, stage: str | None = None) -> list[Note]:
    """One note per analysis that could not run on these data (``run.json``'s ``skipped``)."""
    path = Path(out) / "run.json"
    try:
        skipped = json.loads(path.read_text()).get("skipped", [])
    except (OSError, ValueError):
        return []
    return [
        Note(f"Not run: {entry['analysis']}, because {entry['reason']}.")
        for entry in skipped
        if stage is None or entry.get("stage") == stage
    ]

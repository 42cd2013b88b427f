"""Report figures of sample-level contrasts: each donor's samples joined by a line.

A contrast on a column of samples.csv (timepoint, treatment) compares samples; where donors
have samples on both sides the test is paired within donor, and the figure shows it: one line
per donor from its control-side samples to its case-side samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .. import pl
from ..io.tables import read_table
from ..stats.composition import donor_counts
from ..stats.selection import associated_subsets
from .build import FigureBlock

#: Axis words of each composition level.
LEVEL_WORDS = {
    "subset": "share of all cells",
    "subset_in_l1": "share of its lineage (l1)",
    "l2": "share of all cells",
    "l2_in_l1": "share of its lineage (l1)",
    "l1": "share of all cells",
}


def paired_comparisons(out: Path, comp: pd.DataFrame, n_compare: int, alpha: float) -> list[Any]:
    """Connected-line plots of the top associated subsets of the sample-level contrasts.

    Reads ``association.csv`` and ``contrast_donors.csv`` (rows with ``unit = "sample"``);
    returns no block when no sample-level contrast has an associated subset.
    """
    units = read_table(out, "contrast_donors")
    association = read_table(out, "association")
    if units is None or association is None or "unit" not in units:
        return []
    units = units[units["unit"].astype(str) == "sample"].astype({"sample_id": str})
    top = associated_subsets(association, alpha=alpha)
    top = top[top["contrast"].astype(str).isin(set(units["contrast"].astype(str)))]
    panels, described = [], []
    for row in top.head(n_compare).itertuples(index=False):
        rows = units[units["contrast"].astype(str) == str(row.contrast)].set_index("sample_id")
        level = str(row.level) if str(row.level) in set(comp["level"].astype(str)) else "subset"
        counts, totals = donor_counts(comp, level, list(rows.index), unit="sample")
        if row.subset not in counts.columns:
            continue
        share = counts[row.subset] / totals[row.subset].where(totals[row.subset] > 0)
        control = rows.loc[rows["group"].astype(str) == "control", "arm"].astype(str)
        case = rows.loc[rows["group"].astype(str) == "case", "arm"].astype(str)
        panels.append(
            {
                "values": share,
                "arm": rows["arm"].astype(str),
                "donor": rows["donor_id"].astype(str),
                "title": f"{row.subset} by {row.contrast}",
                "ylabel": f"{LEVEL_WORDS.get(level, level)} (%)",
                "order": [*pd.unique(control), *pd.unique(case)],
                "pvalues": [("default test, adj.", row.padj)],
            }
        )
        described.append(
            f"{row.subset} in {row.contrast}: {row.fold_change:.2f}-fold (95% CI {row.ci})"
        )
    if not panels:
        return []
    return [
        FigureBlock(
            pl.paired_lines(panels),
            "composition_paired_samples",
            caption="The top associated subsets of the sample-level contrasts: one point per "
            "sample, one grey line per donor joining the mean of its samples on each side "
            "(donors sampled on one side only are points without a line), with the adjusted "
            "p-value of the default test. " + "; ".join(described) + ".",
        )
    ]

"""The report's "what this cohort could detect" lines, from ``tables/contrasts.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io.tables import read_table
from .build import Items, Paragraph


def detectable_paragraph(out: str | Path, alpha: float = 0.05) -> list[Paragraph | Items]:
    """Per contrast the folds its donors detect at 80% power: a paragraph and one item each.

    Reads the ``detectable_*`` columns the association stage writes
    (`sccohort.stats.cohort_detectable_fold`); an empty list when there are none.
    """
    table = read_table(Path(out), "contrasts")
    if table is None or "detectable_fold_up" not in table:
        return []
    simulated = table["detectable_subset"].fillna("").astype(str) != ""
    if not simulated.any():
        return []
    first = table[simulated].iloc[0]
    intro = Paragraph(
        "What this cohort could detect: simulated from the variation between its own donors "
        f"and tested as above, a subset of the median share ({100 * first['detectable_share']:.2g}"
        f" % of cells, like {first['detectable_subset']}) is found with 80 % power (padj < "
        f"{alpha:g}) when its share changes as below. Smaller effects may be real and missed; "
        "`sccohort power --from` this run plans a larger cohort."
    )
    return [intro, Items([_contrast_text(row) for row in table.to_dict("records")])]


def _contrast_text(row: dict) -> str:
    up, down, note = row["detectable_fold_up"], row["detectable_fold_down"], row["detectable_note"]
    note = note if isinstance(note, str) else ""
    sizes = f"{row['contrast']} ({int(row['n_case'])} vs {int(row['n_control'])})"
    if not str(row.get("detectable_subset") or "") or str(row["detectable_subset"]) == "nan":
        return f"{sizes}: not simulated ({note})"
    if pd.notna(up) and pd.notna(down):
        return f"{sizes}: expanded {up:.2g}-fold, or depleted to {down:.2g} of its share"
    if pd.notna(up):
        return f"{sizes}: expanded {up:.2g}-fold (no depletion down to a third of its share)"
    if pd.notna(down):
        return f"{sizes}: depleted to {down:.2g} of its share (no expansion up to 6-fold)"
    if note.startswith("out of reach"):
        return f"{sizes}: never; {note[len('out of reach: ') :]}"
    return f"{sizes}: neither a 6-fold expansion nor a depletion to a third"

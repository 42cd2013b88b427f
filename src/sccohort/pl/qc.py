"""Quality control per sample: cells kept and removed, by reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import InputError
from ._common import FONT, new_figure, require_columns

#: Colour of the kept cells; removal reasons take the following colours in column order.
KEPT_COLOUR = "#4c72b0"
REASON_COLOURS = ("#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")


def qc_cells(qc: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Horizontal stacked bars per sample: cells kept, then cells removed by each reason.

    Parameters
    ----------
    qc
        ``tables/qc.csv``: one row per sample with ``sample_id``, ``cells_in``, ``cells_out``
        and one ``removed_<reason>`` column per reason (cells removed for that reason; a cell
        counts once). Reasons that removed no cell anywhere are left out of the legend.
    title
        Figure title (default names the totals).

    Returns
    -------
    matplotlib.figure.Figure
        Bar lengths per sample sum to ``cells_in``.

    Examples
    --------
    >>> from sccohort import pl
    >>> qc = pd.DataFrame({"sample_id": ["S1", "S2"], "cells_in": [100, 120]})
    >>> qc["cells_out"] = [90, 100]
    >>> qc["removed_low_quality"], qc["removed_doublet"] = [10, 15], [0, 5]
    >>> type(pl.qc_cells(qc)).__name__
    'Figure'
    """
    require_columns(qc, ("sample_id", "cells_in", "cells_out"), "the QC table")
    reasons = [c for c in qc.columns if str(c).startswith("removed_")]
    removed = qc[reasons].fillna(0).astype(float)
    reasons = [c for c in reasons if removed[c].sum() > 0]
    cells_in = qc["cells_in"].astype(float).to_numpy()
    kept = qc["cells_out"].astype(float).to_numpy()
    gap = cells_in - kept - removed[reasons].sum(axis=1).to_numpy()
    if np.any(np.abs(gap) > 0.5):
        bad = qc["sample_id"].astype(str).to_numpy()[np.abs(gap) > 0.5][0]
        raise InputError(
            "cells_out plus the removed_* columns does not equal cells_in",
            sample=bad,
            column="cells_out",
            hint="Each removed cell must be counted under exactly one removed_<reason> column",
        )
    samples = qc["sample_id"].astype(str).to_numpy()
    n = len(samples)
    fig = new_figure(9.0, max(2.5, 0.22 * n + 1.4))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    ax.barh(y, kept, color=KEPT_COLOUR, label=f"kept ({int(kept.sum()):,})", height=0.8)
    left = kept.copy()
    for i, reason in enumerate(reasons):
        width = removed[reason].to_numpy()
        label = reason.removeprefix("removed_").replace("_", " ")
        ax.barh(
            y, width, left=left, height=0.8, color=REASON_COLOURS[i % len(REASON_COLOURS)],
            label=f"{label} ({int(width.sum()):,})",
        )  # fmt: skip
        left += width
    for yi, k, total in zip(y, kept, cells_in, strict=True):
        share = 100 * k / total if total else 0.0
        ax.text(total, yi, f" {share:.0f}% kept", va="center", ha="left", fontsize=FONT["small"])
    ax.set_yticks(y, samples, fontsize=FONT["tick"] if n <= 40 else FONT["small"])
    ax.set_xlim(0, cells_in.max() * 1.15 if n else 1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("cells (count)", fontsize=FONT["label"])
    ax.set_ylabel("sample", fontsize=FONT["label"])
    ax.tick_params(axis="x", labelsize=FONT["tick"])
    ax.set_title(
        title
        or f"Cells per sample before and after QC: {int(kept.sum()):,} of "
        f"{int(cells_in.sum()):,} kept ({n} samples)",
        fontsize=FONT["title"],
    )
    ax.legend(
        title="cells (total)", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
        fontsize=FONT["small"], title_fontsize=FONT["tick"],
    )  # fmt: skip
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig

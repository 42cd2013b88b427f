"""Power curves: power against the planted fold, one panel per subset and cell number."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._common import FONT, category_colours, new_figure, require_columns


def power_curves(power: pd.DataFrame, target_power: float | None = 0.8) -> Figure:
    """Power of each design against the fold (log scale), with its 95% interval.

    Panels: one per planted subset (its base share in the title) and, when the grid has
    several, per cells per sample (rows); lines: donors per group. A dashed line marks
    ``target_power``.

    Parameters
    ----------
    power
        `sccohort.stats.abundance_power`'s table (``subset, base_share, fold, n_case,
        n_control, cells_per_sample, power, ci_low, ci_high``).
    target_power
        Drawn as a horizontal line (``None``: not drawn).

    Examples
    --------
    >>> from sccohort import pl
    >>> grid = pd.DataFrame({"subset": "B", "base_share": 0.03, "n_case": 4, "n_control": 17,
    ...                      "cells_per_sample": 2000.0, "fold": [1.5, 2.0, 3.0],
    ...                      "power": [0.2, 0.6, 0.9], "ci_low": [0.1, 0.5, 0.8],
    ...                      "ci_high": [0.3, 0.7, 0.95]})
    >>> len(pl.power_curves(grid).axes)
    1
    """
    columns = ["subset", "base_share", "fold", "n_case", "n_control", "cells_per_sample"]
    require_columns(power, [*columns, "power", "ci_low", "ci_high"], "the power table")
    panels = power[["subset", "base_share"]].drop_duplicates().to_records(index=False)
    cells = sorted(power["cells_per_sample"].unique())
    designs = power[["n_case", "n_control"]].drop_duplicates().sort_values(["n_case", "n_control"])
    labels = [f"{a} vs {b}" for a, b in designs.itertuples(index=False)]
    colours = category_colours(labels)
    fig = new_figure(3.2 * len(panels) + 1.6, 2.8 * len(cells))
    axes = np.atleast_2d(fig.subplots(len(cells), len(panels), sharey=True, squeeze=False))
    for row, n_cells in enumerate(cells):
        for col, (subset, share) in enumerate(panels):
            ax = axes[row, col]
            part = power[
                (power["subset"] == subset)
                & (power["base_share"] == share)
                & (power["cells_per_sample"] == n_cells)
            ]
            for label, (a, b) in zip(labels, designs.itertuples(index=False), strict=True):
                line = part[(part["n_case"] == a) & (part["n_control"] == b)].sort_values("fold")
                if line.empty:
                    continue
                ax.fill_between(
                    line["fold"], line["ci_low"], line["ci_high"], color=colours[label], alpha=0.15
                )
                ax.plot(line["fold"], line["power"], marker="o", ms=3, color=colours[label],
                        label=label)  # fmt: skip
            if target_power is not None:
                ax.axhline(target_power, color="0.4", lw=0.8, ls="--")
            ax.set_xscale("log")
            folds = sorted(part["fold"].unique())
            ax.set_xticks(folds, [f"{f:g}" for f in folds], minor=False)
            ax.minorticks_off()
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=FONT["tick"])
            title = f"{subset} ({100 * share:.3g} % of cells)"
            if len(cells) > 1:
                title += f", {n_cells:,.0f} cells / sample"
            ax.set_title(title, fontsize=FONT["label"])
            ax.set_xlabel("fold change in cases", fontsize=FONT["label"])
            if col == 0:
                ax.set_ylabel("power", fontsize=FONT["label"])
    axes[0, -1].legend(
        title="cases vs controls", fontsize=FONT["small"], title_fontsize=FONT["small"],
        loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False,
    )  # fmt: skip
    return fig

"""Spatial figures: neighbourhood enrichment between cell types (heatmap).

Slides themselves are drawn with `sccohort.pl.embedding` on ``obsm["spatial"]`` (``basis``
``"slide"``); niche shares by clinical group with `sccohort.pl.group_comparison`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._common import FONT, new_figure, require_columns


def enrichment_heatmap(
    table: pd.DataFrame, *, title: str | None = None, clip: float = 20.0
) -> Figure:
    """Types x types: the mean z-score over slides of `sccohort.tl.neighbourhood_enrichment`.

    Parameters
    ----------
    table
        ``type_a, type_b, zscore`` (one row per slide and ordered pair, e.g.
        ``tables/cooccurrence.csv``).
    title
        Figure title.
    clip
        Colours saturate at +- this z-score.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort.pl import enrichment_heatmap
    >>> table = pd.DataFrame({"type_a": ["A", "A", "B", "B"], "type_b": ["A", "B", "A", "B"],
    ...                       "zscore": [5.0, -3.0, -3.0, 4.0]})
    >>> enrichment_heatmap(table).axes[0].get_title()
    'Neighbourhood enrichment (mean z over slides)'
    """
    require_columns(table, ["type_a", "type_b", "zscore"], "enrichment table")
    mean = table.pivot_table(index="type_a", columns="type_b", values="zscore", aggfunc="mean")
    types = sorted(set(mean.index) | set(mean.columns))
    mean = mean.reindex(index=types, columns=types).fillna(0.0)
    size = 2.5 + 0.32 * len(types)
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.clip(mean.to_numpy(), -clip, clip), cmap="RdBu_r", vmin=-clip, vmax=clip)
    ax.set_xticks(range(len(types)), types, rotation=90, fontsize=FONT["small"])
    ax.set_yticks(range(len(types)), types, fontsize=FONT["small"])
    ax.set_title(title or "Neighbourhood enrichment (mean z over slides)", fontsize=FONT["title"])
    bar = fig.colorbar(image, ax=ax, shrink=0.7)
    bar.set_label("z-score (neighbours vs permuted labels)", fontsize=FONT["label"])
    return fig

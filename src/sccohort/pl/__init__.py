"""Figures: one function per figure type; each takes tidy tables or arrays, returns a Figure.

No function here writes a file; :mod:`sccohort.report` saves and embeds the figures.
"""

from .association import association_heatmap, nhood_beeswarm, volcano
from .characterise import (
    comparison_panels,
    enrichment_bars,
    gating_plot,
    signature_scores,
    timecourse_panels,
)
from .composition import (
    composition_bars,
    group_comparison,
    label_shares,
    paired_lines,
    pca_biplot,
)
from .embedding import embedding
from .markers import dot_values, marker_dotplot
from .power import power_curves
from .qc import qc_cells
from .roc import roc
from .spatial import enrichment_heatmap
from .tissue import interaction_dots, trajectory_heatmap

__all__ = [
    "association_heatmap",
    "comparison_panels",
    "composition_bars",
    "dot_values",
    "embedding",
    "enrichment_bars",
    "enrichment_heatmap",
    "gating_plot",
    "group_comparison",
    "interaction_dots",
    "label_shares",
    "marker_dotplot",
    "nhood_beeswarm",
    "paired_lines",
    "pca_biplot",
    "power_curves",
    "qc_cells",
    "roc",
    "signature_scores",
    "timecourse_panels",
    "trajectory_heatmap",
    "volcano",
]

"""Tissue figures: genes along a trajectory (heatmap) and cell-cell interactions (dot plot).

`trajectory_heatmap` draws the genes of `sccohort.tl.trajectory_genes` over equal-count
pseudotime bins; `interaction_dots` draws the scores of `sccohort.tl.ligand_receptor`, one
dot per ligand-receptor pair and source-target pair of cell groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ._common import FONT, new_figure, require_columns

#: Label colours of the genes' directions along the trajectory (other values: dark grey).
DIRECTION_COLOURS = {"falling": "#2166ac", "transient": "#7b3294", "rising": "#b2182b"}
_OTHER = "#333333"
#: Dot areas (points^2) for -log10 p of 0 and 3 (p = 1 and p <= 0.001).
_AREA = (12.0, 150.0)
_KEYS = ["source", "target", "ligand", "receptor"]


def _binned_means(values: np.ndarray, t: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``values`` (cells x genes) over ``n_bins`` equal-count bins of ``t``.

    Returns genes x bins means and the bins' median pseudotimes.
    """
    order = np.argsort(t, kind="stable")
    bins = np.arange(len(t)) * n_bins // len(t)  # sorted cells -> 0..n_bins-1, equal counts
    frame = pd.DataFrame(values[order]).groupby(bins, sort=True)
    means = frame.mean().to_numpy(dtype=np.float64).T
    medians = pd.Series(t[order]).groupby(bins, sort=True).median().to_numpy()
    return means, medians


def _scaled(means: np.ndarray) -> np.ndarray:
    """Each row min-max scaled to [0, 1]; constant (or all-NaN) rows become 0."""
    with np.errstate(all="ignore"):
        low = np.nanmin(np.where(np.isnan(means), np.inf, means), axis=1, keepdims=True)
        span = np.nanmax(np.where(np.isnan(means), -np.inf, means), axis=1, keepdims=True) - low
        out = (means - low) / np.where(np.isfinite(span) & (span > 0), span, 1.0)
    flat = ~(np.isfinite(span) & (span > 0))
    return np.where(flat, 0.0, np.nan_to_num(out, nan=0.0))


def _drawn_genes(expression: pd.DataFrame, genes: pd.DataFrame, max_genes: int) -> pd.DataFrame:
    """The first ``max_genes`` rows of ``genes`` present in ``expression``, by peak then name."""
    require_columns(genes, ["gene", "direction", "peak_pseudotime"], "the trajectory genes table")
    present = genes[genes["gene"].isin(expression.columns)].drop_duplicates("gene")
    if present.empty:
        raise InputError(
            f"none of the {len(genes)} genes of the table is a column of the expression",
            key="genes",
            hint="Pass the expression of the genes trajectory_genes returned "
            f"(e.g. {', '.join(map(str, genes['gene'].head(3)))})",
        )
    top = present.head(int(max_genes)).assign(_name=lambda d: d["gene"].astype(str))
    return top.sort_values(["peak_pseudotime", "_name"], kind="mergesort", na_position="last")


def trajectory_heatmap(
    expression: pd.DataFrame,
    pseudotime: pd.Series | np.ndarray,
    genes: pd.DataFrame,
    *,
    n_bins: int = 50,
    max_genes: int = 40,
    title: str | None = None,
) -> Figure:
    """Heatmap of trajectory genes: each gene's mean expression over pseudotime bins.

    Cells with a finite pseudotime are split into ``n_bins`` bins of equal cell numbers
    (fewer when there are fewer cells); each gene's bin means are scaled to [0, 1] (its
    lowest bin 0, its highest 1; a constant gene is 0 throughout). Rows are ordered by the
    gene's ``peak_pseudotime`` (then name), so falling genes come first and rising ones
    last; gene names are coloured by ``direction`` (`DIRECTION_COLOURS`). The x ticks give
    the median pseudotime of their bins (bins of equal counts are not of equal width).

    Parameters
    ----------
    expression
        Cells x genes log-normalised expression (dense; columns are gene names).
    pseudotime
        One value per row of ``expression``, in the same order (NaN: the cell is left out).
    genes
        `sccohort.tl.trajectory_genes`'s table (``gene, direction, peak_pseudotime`` are
        used); its first ``max_genes`` genes present in ``expression`` are drawn.
    n_bins, max_genes
        Number of pseudotime bins and largest number of genes drawn.
    title
        Figure title (default: the numbers of genes, cells and bins).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputError
        ``pseudotime`` and ``expression`` of different lengths, fewer than 2 finite
        pseudotimes, no gene of ``genes`` in ``expression``, ``n_bins`` or ``max_genes`` < 1.

    Examples
    --------
    >>> from sccohort.pl import trajectory_heatmap
    >>> t = np.linspace(0, 1, 200)
    >>> expression = pd.DataFrame({"up": t, "down": 1 - t, "bump": np.sin(np.pi * t)})
    >>> genes = pd.DataFrame({"gene": ["up", "down", "bump"],
    ...                       "direction": ["rising", "falling", "transient"],
    ...                       "peak_pseudotime": [1.0, 0.0, 0.5]})
    >>> fig = trajectory_heatmap(expression, t, genes, n_bins=20)
    >>> len(fig.axes) >= 1
    True
    >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
    ['down', 'bump', 'up']
    """
    if not isinstance(expression, pd.DataFrame):
        raise InputError(
            f"expression must be a pandas DataFrame, got {type(expression).__name__}",
            hint="Cells x genes, columns named by gene",
        )
    t = np.asarray(pseudotime, dtype=np.float64).ravel()
    if len(t) != len(expression):
        raise InputError(
            f"{len(t)} pseudotimes for {len(expression)} cells of the expression",
            key="pseudotime",
            hint="Pass one pseudotime per row of expression, in the same order",
        )
    if int(n_bins) < 1 or int(max_genes) < 1:
        raise InputError(f"n_bins={n_bins}, max_genes={max_genes}: both must be >= 1")
    finite = np.isfinite(t)
    if finite.sum() < 2:
        raise InputError(
            f"{int(finite.sum())} cell(s) with a finite pseudotime; at least 2 are needed",
            key="pseudotime",
        )
    drawn = _drawn_genes(expression, genes, max_genes)
    names = drawn["gene"].tolist()
    values = expression.loc[finite, names].to_numpy(dtype=np.float64)
    bins = min(int(n_bins), int(finite.sum()))
    means, medians = _binned_means(values, t[finite], bins)
    fig = new_figure(7.0, max(2.6, 0.2 * len(names) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(
        _scaled(means), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    ticks = np.unique(np.linspace(0, bins - 1, min(5, bins)).round().astype(int))
    ax.set_xticks(ticks, [f"{medians[i]:.2f}" for i in ticks], fontsize=FONT["tick"])
    ax.set_xlabel("pseudotime (median of the bin)", fontsize=FONT["label"])
    ax.set_yticks(range(len(names)), [str(n) for n in names], fontsize=FONT["small"])
    directions = drawn["direction"].astype(str).tolist()
    for label, direction in zip(ax.get_yticklabels(), directions, strict=True):
        label.set_color(DIRECTION_COLOURS.get(direction, _OTHER))
    shown = [d for d in DIRECTION_COLOURS if d in directions]
    if shown:  # a legend without entries fails in matplotlib
        ax.legend(
            handles=[Line2D([], [], marker="s", ls="", color=DIRECTION_COLOURS[d]) for d in shown],
            labels=shown, title="gene label", loc="upper left", bbox_to_anchor=(1.25, 1.0),
            frameon=False, fontsize=FONT["small"], title_fontsize=FONT["small"],
        )  # fmt: skip
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label("scaled mean expression", fontsize=FONT["small"])
    bar.ax.tick_params(labelsize=FONT["small"])
    fig.suptitle(
        title or f"{len(names)} genes along pseudotime ({int(finite.sum()):,} cells, {bins} bins)",
        fontsize=FONT["title"],
    )
    return fig


def _dot_areas(scores: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Dot areas from ``specificity_pvalue`` and whether they vary (False: one middle size)."""
    column = "specificity_pvalue"
    if column not in scores or scores[column].isna().all():
        return np.full(len(scores), (_AREA[0] + _AREA[1]) / 2), False
    p = pd.to_numeric(scores[column], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        strength = np.clip(np.nan_to_num(-np.log10(p), nan=0.0, posinf=3.0), 0.0, 3.0)
    return _AREA[0] + (_AREA[1] - _AREA[0]) * strength / 3.0, True


def _top_pairs(scores: pd.DataFrame, max_pairs: int) -> tuple[pd.DataFrame, list[str]]:
    """Checked rows of the top pairs (``pair``, ``groups`` columns added); pairs, best first."""
    require_columns(scores, [*_KEYS, "score"], "the interaction scores")
    if int(max_pairs) < 1:
        raise InputError(f"max_pairs={max_pairs} draws nothing", key="max_pairs")
    table = scores.reset_index(drop=True)
    keys = table[_KEYS].astype(str)
    duplicated = keys.duplicated()
    if duplicated.any():
        first = keys[duplicated].iloc[0]
        raise InputError(
            f"{int(duplicated.sum())} repeated (source, target, ligand, receptor) row(s), "
            f"first {' / '.join(first)}",
            hint="Pass one row per pair, e.g. per-sample scores averaged over the samples",
        )
    table = table.assign(
        pair=keys["ligand"] + " > " + keys["receptor"],
        groups=keys["source"] + " > " + keys["target"],
        score=pd.to_numeric(table["score"], errors="coerce"),
    ).dropna(subset=["score"])
    if table.empty:
        raise InputError("no row of the interaction scores has a score", column="score")
    best = table.groupby("pair", sort=False)["score"].max()
    best = best.sort_values(ascending=False, kind="mergesort", na_position="last")
    pairs = [str(p) for p in best.index[: int(max_pairs)]]
    return table[table["pair"].isin(pairs)], pairs


def interaction_dots(
    scores: pd.DataFrame, *, max_pairs: int = 30, title: str | None = None
) -> Figure:
    """Dot plot of ligand-receptor scores: pairs (rows) by source > target groups (columns).

    The ``max_pairs`` ligand-receptor pairs with the highest best score are drawn, best at
    the top; columns are the source > target groups in order of first appearance in
    ``scores`` (groups without a drawn dot are left out). Dot colour: the score; dot area:
    ``-log10(specificity_pvalue)`` clipped to [0, 3] (a missing p-value counts as 1; one
    middle size for all when there are no p-values); a black ring: ``padj < 0.05``.

    Parameters
    ----------
    scores
        One row per ``source, target, ligand, receptor`` with ``score`` (e.g.
        `sccohort.tl.ligand_receptor`'s table), optionally ``specificity_pvalue`` and
        ``padj`` (NaN allowed in both).
    max_pairs
        Largest number of ligand-receptor pairs drawn.
    title
        Figure title (default: the numbers of pairs and groups).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputError
        A missing column, an empty table, repeated rows, ``max_pairs`` < 1.

    Examples
    --------
    >>> from sccohort.pl import interaction_dots
    >>> scores = pd.DataFrame({"source": ["T", "T", "Mac", "Mac"],
    ...                        "target": ["Mac", "Mac", "T", "T"],
    ...                        "ligand": ["CCL5", "THBS1", "CCL5", "THBS1"],
    ...                        "receptor": ["CCR5", "CD47", "CCR5", "CD47"],
    ...                        "score": [3.5, 0.2, 0.4, 1.1],
    ...                        "specificity_pvalue": [0.005, 0.12, 0.6, np.nan],
    ...                        "padj": [0.02, 0.3, 0.9, np.nan]})
    >>> fig = interaction_dots(scores)
    >>> len(fig.axes) >= 1
    True
    >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
    ['CCL5 > CCR5', 'THBS1 > CD47']
    """
    table, pairs = _top_pairs(scores, max_pairs)
    columns = [str(g) for g in pd.unique(table["groups"])]
    areas, sized = _dot_areas(table)
    ringed = table["padj"].lt(0.05).to_numpy() if "padj" in table else np.zeros(len(table), bool)
    fig = new_figure(max(5.0, 0.42 * len(columns) + 4.2), max(3.0, 0.3 * len(pairs) + 2.4))
    grid = fig.add_gridspec(1, 2, width_ratios=[max(len(columns), 2), 2.2])
    ax = fig.add_subplot(grid[0, 0])
    cmap = colormaps["viridis"]
    low, high = table["score"].min(), table["score"].max()
    norm = Normalize(low, high if high > low else low + 1)
    points = ax.scatter(
        [columns.index(g) for g in table["groups"]], [pairs.index(p) for p in table["pair"]],
        s=areas, c=table["score"].to_numpy(), cmap=cmap, norm=norm,
        edgecolors=np.where(ringed, "black", "none").tolist(), linewidths=1.2, zorder=3,
    )  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=FONT["tick"])
    ax.set_yticks(range(len(pairs)), pairs, fontsize=FONT["tick"])
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(len(pairs) - 0.5, -0.5)
    ax.set_xlabel("source > target", fontsize=FONT["label"])
    ax.set_ylabel("ligand > receptor", fontsize=FONT["label"])
    ax.grid(color="#eeeeee", lw=0.5)
    ax.set_axisbelow(True)
    legend_ax = fig.add_subplot(grid[0, 1])
    legend_ax.axis("off")
    _dot_legend(legend_ax, sized, "padj" in table)
    bar = fig.colorbar(points, ax=legend_ax, location="bottom", shrink=0.9, pad=0.0, fraction=0.2)
    bar.set_label("score", fontsize=FONT["small"])
    bar.ax.tick_params(labelsize=FONT["small"])
    fig.suptitle(
        title or f"Top {len(pairs)} ligand-receptor pairs, {len(columns)} source > target groups",
        fontsize=FONT["title"],
    )
    return fig


def _dot_legend(ax, sized: bool, ringed: bool) -> None:
    """Legend of the dot sizes (when they vary) and of the ring (when drawn) on ``ax``."""
    handles, labels = [], []
    if sized:
        for strength, text in [(0, "p = 1"), (1, "p = 0.1"), (2, "p = 0.01"), (3, "p <= 0.001")]:
            area = _AREA[0] + (_AREA[1] - _AREA[0]) * strength / 3.0
            handles.append(Line2D([], [], marker="o", ls="", color="#999999", ms=np.sqrt(area)))
            labels.append(text)
    if ringed:
        handles.append(
            Line2D([], [], marker="o", ls="", color="#dddddd", ms=np.sqrt(_AREA[1]), mec="black",
                   mew=1.2)
        )  # fmt: skip
        labels.append("padj < 0.05")
    if handles:  # a legend without entries fails in matplotlib
        ax.legend(
            handles=handles, labels=labels, loc="upper left", frameon=False, labelspacing=1.2,
            fontsize=FONT["small"], title="specificity" if sized else None,
            title_fontsize=FONT["small"],
        )  # fmt: skip

"""Cell-type composition: stacked bars per donor, group comparisons, the PCA biplot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ._common import (
    FONT,
    box_strip,
    category_colours,
    format_p,
    new_figure,
    ordered_levels,
    panel_title,
    require_columns,
)


def _donor_groups(group: pd.Series, donors: Sequence[str], what: str) -> pd.Series:
    group = pd.Series(group)
    group.index = group.index.astype(str)
    missing = [d for d in donors if d not in group.index]
    if missing:
        raise InputError(
            f"donor '{missing[0]}' of {what} has no group",
            key="group",
            hint="Pass a Series indexed by donor_id covering every donor (clinical table column)",
        )
    return group.loc[list(donors)].astype(str)


def composition_bars(
    shares: pd.DataFrame,
    group: pd.Series,
    *,
    top: int = 20,
    order: Sequence[str] | None = None,
    title: str | None = None,
    ylabel: str = "share of cells (%)",
) -> Figure:
    """Stacked bars of subset shares, one bar per donor, donors grouped by clinical group.

    Parameters
    ----------
    shares
        Donors x subsets (index ``donor_id``), shares in [0, 1] (e.g.
        ``stats.composition.donor_shares``); rows need not sum to 1.
    group
        Donor -> clinical group (e.g. ``clinical.table["group"]``).
    top
        The ``top`` subsets with the largest mean share get their own colour; the rest are
        drawn together as ``"other"``.
    order
        Order of the groups (default: sorted).
    title, ylabel
        Figure title and y-axis label.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> shares = data.counts / data.totals
    >>> fig = pl.composition_bars(shares, data.design.group)
    >>> type(fig).__name__
    'Figure'
    """
    if not isinstance(shares, pd.DataFrame) or shares.empty:
        raise InputError(
            "shares must be a non-empty donors x subsets DataFrame",
            hint="Use sccohort.stats.composition.donor_shares",
        )
    shares = shares.fillna(0.0).astype(float)
    shares.index = shares.index.astype(str)
    groups = _donor_groups(group, list(shares.index), "the shares table")
    levels = ordered_levels(groups, order)
    ranked = shares.mean().sort_values(ascending=False, kind="stable").index
    shown = [str(s) for s in ranked[:top]]
    plot = shares[list(ranked[:top])].copy()
    plot.columns = shown
    if len(ranked) > top:
        plot["other"] = shares[list(ranked[top:])].sum(axis=1)
    colours = category_colours(shown)
    colours["other"] = "#d0d0d0"
    donors: list[str] = []
    bounds: list[tuple[str, int, int]] = []
    for level in levels:
        members = [d for d in shares.index if groups[d] == level]
        bounds.append((level, len(donors), len(donors) + len(members)))
        donors.extend(members)
    x = np.arange(len(donors), dtype=float)
    for i, (_, start, _) in enumerate(bounds):  # a gap between groups
        x[start:] += 0.6 * (i > 0)
    fig = new_figure(max(7.0, 0.32 * len(donors) + 4.5), 5.5)
    ax = fig.add_subplot()
    bottom = np.zeros(len(donors))
    for column in plot.columns:
        height = 100 * plot.loc[donors, column].to_numpy()
        ax.bar(x, height, bottom=bottom, width=0.85, color=colours[column], label=column)
        bottom += height
    ax.set_xticks(x, donors, rotation=90, fontsize=FONT["tick"] if len(donors) <= 40 else 6)
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.set_xlabel("donor", fontsize=FONT["label"])
    top_y = max(bottom.max(), 1e-9)
    for level, start, stop in bounds:
        if stop > start:
            ax.text(
                (x[start] + x[stop - 1]) / 2, top_y * 1.02, f"{level} (n={stop - start})",
                ha="center", va="bottom", fontsize=FONT["label"], weight="bold",
            )  # fmt: skip
    ax.set_ylim(0, top_y * 1.1)
    ax.set_xlim(x.min() - 0.6, x.max() + 0.6)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1], labels[::-1], title="subset", loc="upper left", bbox_to_anchor=(1.01, 1),
        frameon=False, fontsize=FONT["small"], title_fontsize=FONT["tick"],
    )  # fmt: skip
    ax.set_title(
        title or f"Composition per donor ({len(donors)} donors)", fontsize=FONT["title"], pad=18
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def group_comparison(
    values: pd.Series,
    group: pd.Series,
    *,
    subset: str,
    pvalues: pd.DataFrame | None = None,
    order: Sequence[str] | None = None,
    ylabel: str = "share of cells (%)",
    percent: bool = True,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """Box plot plus one point per donor of one subset's share, by clinical group.

    Parameters
    ----------
    values
        Donor -> value (e.g. the subset's share in [0, 1]; ``percent`` scales it by 100).
    group
        Donor -> group label; donors without a group or value are left out.
    subset
        The subset's name, for the title.
    pvalues
        Optional tidy table with ``group1, group2, pvalue`` and optionally ``method``: one
        bracket per row between the two groups, labelled ``"<method> p = ..."``.
    order
        Group order on the x axis (default sorted).
    ylabel, percent, title
        Axis label, whether to show values x 100, figure title.
    seed
        Seed of the horizontal jitter of the points.

    Returns
    -------
    matplotlib.figure.Figure
        Tick labels carry the number of donors per group.

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> shares = data.counts["Mono_A"] / data.totals["Mono_A"]
    >>> fig = pl.group_comparison(shares, data.design.group, subset="Mono_A")
    >>> type(fig).__name__
    'Figure'
    """
    data = pd.DataFrame({"value": pd.Series(values, dtype=float)})
    data.index = data.index.astype(str)
    grp = pd.Series(group)
    grp.index = grp.index.astype(str)
    data["group"] = grp.reindex(data.index)
    data = data.dropna()
    if data.empty:
        raise InputError(
            f"no donor has both a value and a group for subset '{subset}'",
            key="group",
            hint="values and group must be Series indexed by the same donor ids",
        )
    data["group"] = data["group"].astype(str)
    levels = ordered_levels(data["group"], order)
    scale = 100.0 if percent else 1.0
    fig = new_figure(max(3.8, 1.4 * len(levels) + 2.0), 4.8)
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    colours = category_colours(levels)
    arrays = [scale * data.loc[data["group"] == lv, "value"].to_numpy() for lv in levels]
    box_strip(ax, arrays, levels, colours, rng, size=28)
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(axis="y", labelsize=FONT["tick"])
    high = max(float(np.nanmax(a)) if len(a) else 0.0 for a in arrays)
    low = min(float(np.nanmin(a)) if len(a) else 0.0 for a in arrays)
    span = (high - low) or max(abs(high), 1.0)
    if pvalues is not None and len(pvalues):
        require_columns(pvalues, ("group1", "group2", "pvalue"), "the p-value table")
        step = 0.12 * span
        for k, row in enumerate(pvalues.itertuples(index=False)):
            g1, g2 = str(row.group1), str(row.group2)
            if g1 not in levels or g2 not in levels:
                raise InputError(
                    f"p-value row compares '{g1}' and '{g2}', not both among the groups",
                    column="group1",
                    hint=f"Groups: {', '.join(levels)}",
                )
            a, b = sorted((levels.index(g1), levels.index(g2)))
            y = high + step * (k + 0.6)
            ax.plot([a, a, b, b], [y - step * 0.2, y, y, y - step * 0.2], color="black", lw=0.8)
            method = getattr(row, "method", "")
            label = f"{method} {format_p(row.pvalue)}".strip()
            ax.text((a + b) / 2, y, label, ha="center", va="bottom", fontsize=FONT["small"])
        ax.set_ylim(top=high + step * (len(pvalues) + 0.8))
    ax.set_title(title or subset, fontsize=FONT["title"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def _pca_tables(
    pca: Mapping[str, pd.DataFrame | np.ndarray], components: tuple[int, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The PCA's scores and loadings as DataFrames, after checking the components exist."""
    for key in ("scores", "loadings"):
        if key not in pca:
            raise InputError(
                f"the PCA result has no '{key}'",
                key=key,
                hint="Pass a dict with 'scores' (donors x PCs) and 'loadings' (subsets x PCs)",
            )
    scores = pd.DataFrame(pca["scores"])
    loadings = pd.DataFrame(pca["loadings"])
    c1, c2 = components
    if max(c1, c2) >= min(scores.shape[1], loadings.shape[1]):
        raise InputError(
            f"components {components} requested but the PCA has {scores.shape[1]}",
            key="components",
        )
    return scores, loadings


def _draw_pca_donors(
    ax: Axes,
    donors: pd.Index,
    sx: np.ndarray,
    sy: np.ndarray,
    groups: pd.Series,
    levels: list[str],
    colours: Mapping[str, str],
    centroids: pd.DataFrame,
    components: tuple[int, int],
) -> None:
    """Donor points coloured by group, each group's centroid and each donor's name."""
    c1, c2 = components
    for lv in levels:
        mask = (groups == lv).to_numpy()
        ax.scatter(
            sx[mask], sy[mask], s=36, color=colours[lv], edgecolors="black", linewidths=0.4,
            label=f"{lv} (n={int(mask.sum())})", zorder=3,
        )  # fmt: skip
    for lv in levels:
        if lv in centroids.index:
            cx, cy = centroids.loc[lv].iloc[c1], centroids.loc[lv].iloc[c2]
            ax.scatter(
                [cx], [cy], s=180, marker="X", color=colours[lv], edgecolors="black",
                linewidths=1.0, zorder=4,
            )  # fmt: skip
    for donor, px, py in zip(donors, sx, sy, strict=True):
        ax.annotate(
            donor, (px, py), xytext=(3, 3), textcoords="offset points", fontsize=6.5,
            color="#444444",
        )  # fmt: skip


def _draw_loadings(
    ax: Axes,
    loadings: pd.DataFrame,
    components: tuple[int, int],
    sx: np.ndarray,
    sy: np.ndarray,
    n_loadings: int,
) -> None:
    """Arrows of the ``n_loadings`` longest loadings, scaled to the reach of the scores."""
    c1, c2 = components
    lx, ly = loadings.iloc[:, c1].to_numpy(), loadings.iloc[:, c2].to_numpy()
    length = np.hypot(lx, ly)
    chosen = np.argsort(-length, kind="stable")[:n_loadings]
    if len(chosen) and length[chosen[0]] > 0:
        reach = 0.9 * min(np.abs(sx).max() or 1.0, np.abs(sy).max() or 1.0)
        factor = reach / length[chosen[0]]
        for i in chosen:
            ax.annotate(
                "", xy=(lx[i] * factor, ly[i] * factor), xytext=(0, 0),
                arrowprops={"arrowstyle": "->", "color": "#b22222", "lw": 1.1},
            )  # fmt: skip
            ax.text(
                lx[i] * factor * 1.08, ly[i] * factor * 1.08, str(loadings.index[i]),
                color="#b22222", fontsize=FONT["small"], ha="center", va="center",
            )  # fmt: skip


def _pc_label(explained: Sequence[float] | np.ndarray | None, c: int) -> str:
    """Axis label of component ``c``, with its share of the variance when known."""
    if explained is not None and len(explained) > c:
        return f"PC{c + 1} ({100 * float(explained[c]):.1f}% of variance)"
    return f"PC{c + 1}"


def pca_biplot(
    pca: Mapping[str, pd.DataFrame | np.ndarray],
    group: pd.Series,
    *,
    n_loadings: int = 8,
    components: tuple[int, int] = (0, 1),
    title: str | None = None,
) -> Figure:
    """PCA biplot of donor composition: donors and group centroids, top subset loadings.

    Parameters
    ----------
    pca
        ``"scores"``: donors x components DataFrame; ``"loadings"``: subsets x components;
        optionally ``"centroids"``: groups x components (default: mean score per group) and
        ``"explained"``: explained variance ratio per component (array-like, in [0, 1]).
    group
        Donor -> group label.
    n_loadings
        The ``n_loadings`` subsets with the longest loading vectors are drawn as arrows.
    components
        The two components drawn (0-based).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.stats import proportion_biplot
    >>> rng = np.random.default_rng(0)
    >>> shares = pd.DataFrame(rng.dirichlet(np.ones(5), size=8), columns=list("ABCDE"))
    >>> group = pd.Series(["x"] * 4 + ["y"] * 4, index=shares.index)
    >>> pca = proportion_biplot(shares, group)
    >>> scores = pca["scores"][[c for c in pca["scores"].columns if str(c).startswith("PC")]]
    >>> fig = pl.pca_biplot(
    ...     {"scores": scores, "loadings": pca["loadings"],
    ...      "explained": np.asarray(pca["variance_explained"]), "centroids": pca["centroids"]},
    ...     group,
    ... )
    >>> type(fig).__name__
    'Figure'
    """
    scores, loadings = _pca_tables(pca, components)
    c1, c2 = components
    scores.index = scores.index.astype(str)
    groups = _donor_groups(group, list(scores.index), "the PCA scores")
    levels = ordered_levels(groups)
    colours = category_colours(levels)
    if "centroids" in pca:
        centroids = pd.DataFrame(pca["centroids"])
        centroids.index = centroids.index.astype(str)
    else:
        centroids = scores.groupby(groups).mean()
    explained = pca.get("explained")
    fig = new_figure(7.5, 6.2)
    ax = fig.add_subplot()
    sx, sy = scores.iloc[:, c1].to_numpy(), scores.iloc[:, c2].to_numpy()
    _draw_pca_donors(ax, scores.index, sx, sy, groups, levels, colours, centroids, components)
    _draw_loadings(ax, loadings, components, sx, sy, n_loadings)
    ax.axhline(0, color="#cccccc", lw=0.7, zorder=0)
    ax.axvline(0, color="#cccccc", lw=0.7, zorder=0)
    ax.set_xlabel(_pc_label(explained, c1), fontsize=FONT["label"])
    ax.set_ylabel(_pc_label(explained, c2), fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="X", ls="", color="grey", markersize=10))
    labels.append("group centroid")
    handles.append(Line2D([], [], color="#b22222"))
    labels.append("subset loading (scaled)")
    ax.legend(handles, labels, loc="best", fontsize=FONT["small"], frameon=False)
    ax.set_title(
        title or f"PCA of subset proportions ({len(scores)} donors)", fontsize=FONT["title"]
    )
    return fig


def label_shares(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Horizontal bars of each label's share of all cells, coloured by its l1 lineage.

    Parameters
    ----------
    table
        ``tables/cell_types.csv``: ``l1``, ``l2``, ``n_cells``, ``share`` (in [0, 1]).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Bars sorted by l1 then share; each labelled with its cell count.

    Examples
    --------
    >>> from sccohort import pl
    >>> table = pd.DataFrame({"l1": ["Mono", "Mono", "B"]})
    >>> table["l2"] = ["CD14 Mono", "CD16 Mono", "B naive"]
    >>> table["n_cells"], table["share"] = [60, 10, 30], [0.6, 0.1, 0.3]
    >>> type(pl.label_shares(table)).__name__
    'Figure'
    """
    require_columns(table, ("l1", "l2", "n_cells", "share"), "the cell type table")
    data = table.sort_values(["l1", "share"], ascending=[True, False], kind="stable")
    lineages = ordered_levels(data["l1"].astype(str))
    colours = category_colours(lineages)
    n = len(data)
    fig = new_figure(8.0, max(3.0, 0.26 * n + 1.4))
    ax = fig.add_subplot()
    y = np.arange(n)
    share = 100 * data["share"].to_numpy(dtype=float)
    ax.barh(y, share, color=[colours[str(v)] for v in data["l1"]], height=0.8)
    for yi, s, count in zip(y, share, data["n_cells"], strict=True):
        ax.text(s, yi, f" {int(count):,}", va="center", fontsize=FONT["small"])
    ax.set_yticks(y, data["l2"].astype(str), fontsize=FONT["tick"])
    ax.set_ylim(n - 0.4, -0.6)  # first lineage on top
    ax.set_xlim(0, share.max() * 1.18)
    ax.set_xlabel("share of all cells (%)", fontsize=FONT["label"])
    ax.tick_params(axis="x", labelsize=FONT["tick"])
    ax.legend(
        handles=[Line2D([], [], lw=6, color=colours[lv]) for lv in lineages],
        labels=lineages, title="lineage (l1)", loc="lower right", frameon=False,
        fontsize=FONT["small"], title_fontsize=FONT["tick"],
    )  # fmt: skip
    total = int(data["n_cells"].sum())
    ax.set_title(title or f"Cell types (l2) of {total:,} cells", fontsize=FONT["title"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def paired_lines(
    panels: Sequence[Mapping[str, object]],
    *,
    percent: bool = True,
    title: str | None = None,
) -> Figure:
    """Samples of a sample-level contrast by arm, one line per donor joining its samples.

    Parameters
    ----------
    panels
        One dict per panel: ``values`` (Series sample -> value, e.g. a subset's share in
        [0, 1]), ``arm`` (Series sample -> arm label), ``donor`` (Series sample -> donor),
        ``title``, and optionally ``ylabel``, ``order`` (arm order) and ``pvalues`` (list of
        ``(label, p)`` pairs, written under the title). A donor's line passes through the mean
        of its samples in each arm; a donor sampled in one arm only is a point without a line.
    percent
        Show values x 100.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Tick labels carry the number of samples per arm.

    Examples
    --------
    >>> from sccohort import pl
    >>> samples = ["D1_pre", "D1_post", "D2_pre", "D2_post", "D3_pre"]
    >>> panel = {
    ...     "values": pd.Series([0.02, 0.05, 0.03, 0.04, 0.025], index=samples),
    ...     "arm": pd.Series(["pre", "post"] * 2 + ["pre"], index=samples),
    ...     "donor": pd.Series([s.split("_")[0] for s in samples], index=samples),
    ...     "title": "Mono_A", "order": ["pre", "post"],
    ... }
    >>> fig = pl.paired_lines([panel])
    >>> [" ".join(t.get_text().split()) for t in fig.axes[0].get_xticklabels()]
    ['pre (n=3)', 'post (n=2)']
    """
    if not panels:
        raise InputError("no paired comparison to draw", key="panels")
    scale = 100.0 if percent else 1.0
    fig = new_figure(max(4.0, 3.3 * len(panels)), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        data = pd.DataFrame(
            {key: pd.Series(panel[key]) for key in ("values", "arm", "donor")}
        ).dropna()
        if data.empty:
            raise InputError(
                f"no sample has a value, an arm and a donor in panel '{panel.get('title', '')}'",
                key="panels",
            )
        data["arm"] = data["arm"].astype(str)
        levels = ordered_levels(data["arm"], panel.get("order"))  # type: ignore[arg-type]
        data["x"] = data["arm"].map({lv: i for i, lv in enumerate(levels)})
        data["y"] = scale * data["values"].astype(float)
        colours = category_colours(levels)
        means = data.groupby(["donor", "x"])["y"].mean().reset_index()
        for _, line in means.groupby("donor"):
            if len(line) > 1:
                ax.plot(line["x"], line["y"], color="0.6", lw=0.9, zorder=1)
        ax.scatter(
            data["x"], data["y"], c=[colours[a] for a in data["arm"]], s=26, zorder=2,
            edgecolors="white", linewidths=0.5,
        )  # fmt: skip
        counts = data["arm"].value_counts()
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"{lv}\n(n={counts.get(lv, 0)})" for lv in levels])
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.tick_params(labelsize=FONT["tick"])
        ax.set_ylabel(str(panel.get("ylabel", "share of cells (%)")), fontsize=FONT["label"])
        panel_title(ax, panel)  # type: ignore[arg-type]
    if title:
        fig.suptitle(title, fontsize=FONT["title"])
    return fig

"""Associations with clinical contrasts: effect heatmap, volcano, neighbourhood beeswarm."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ._common import FONT, new_figure, require_columns

UP, DOWN, NS = "#c0392b", "#2e6fba", "#b8b8b8"


def _effect_label(table: pd.DataFrame) -> str:
    methods = table["method"].dropna().astype(str).unique() if "method" in table else []
    return f"effect ({methods[0]})" if len(methods) == 1 else "effect (log2 fold change)"


def association_heatmap(
    table: pd.DataFrame,
    *,
    alpha: float = 0.05,
    subsets: Sequence[str] | None = None,
    contrasts: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of subsets (rows) x contrasts (columns): effect colour, significance marks.

    Parameters
    ----------
    table
        Tidy association table with ``contrast, subset, effect, padj`` (the core columns of
        every statistics function; one row per contrast and subset; ``level`` rows of a
        categorical contrast appear as ``"<contrast>: <level>"``).
    alpha
        Cells with ``padj < alpha`` get ``*`` (``**`` below alpha / 5, ``***`` below alpha / 50).
    subsets, contrasts
        Row and column order (default: subsets by smallest padj, contrasts as they appear).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Colours are centred at 0 (red: higher in cases).

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.stats import compare_abundance
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> tests = compare_abundance(data.counts, data.totals, data.design, level="subset", seed=0)
    >>> fig = pl.association_heatmap(tests, alpha=0.1)
    >>> type(fig).__name__
    'Figure'
    """
    require_columns(table, ("contrast", "subset", "effect", "padj"), "the association table")
    data = table.copy()
    data["column"] = data["contrast"].astype(str)
    if "level" in data and data["level"].notna().any():
        several = data.groupby("column")["level"].transform(lambda s: s.nunique() > 1)
        data.loc[several, "column"] = (
            data.loc[several, "column"] + ": " + data.loc[several, "level"].astype(str)
        )
    data["subset"] = data["subset"].astype(str)
    if data.duplicated(["subset", "column"]).any():
        dup = data[data.duplicated(["subset", "column"])].iloc[0]
        raise InputError(
            f"two rows for subset '{dup['subset']}' in contrast '{dup['column']}'",
            column="subset",
            hint="Pass one method's results (filter the table on 'method')",
        )
    effect = data.pivot(index="subset", columns="column", values="effect")
    padj = data.pivot(index="subset", columns="column", values="padj")
    cols = list(contrasts) if contrasts is not None else list(pd.unique(data["column"]))
    rows = (
        list(subsets)
        if subsets is not None
        else list(padj.min(axis=1).sort_values(kind="stable").index)
    )
    effect, padj = effect.reindex(index=rows, columns=cols), padj.reindex(index=rows, columns=cols)
    values = effect.to_numpy(dtype=float)
    finite = np.abs(values[np.isfinite(values)])
    # a robust colour range: a few extreme effects of tiny subsets must not wash out the rest
    bound = float(np.percentile(finite, 95)) if finite.size else 1.0
    bound = bound or (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    extend = "both" if finite.size and finite.max() > bound else "neither"
    fig = new_figure(max(5.5, 1.1 * len(cols) + 3.2), max(3.0, 0.27 * len(rows) + 1.6))
    ax = fig.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, aspect="auto",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), interpolation="nearest",
    )  # fmt: skip
    p = padj.to_numpy(dtype=float)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(p[i, j]) and p[i, j] < alpha:
                mark = "***" if p[i, j] < alpha / 50 else "**" if p[i, j] < alpha / 5 else "*"
                dark = abs(values[i, j]) > 0.6 * bound
                ax.text(
                    j, i, mark, ha="center", va="center", fontsize=FONT["label"],
                    color="white" if dark else "black", weight="bold",
                )  # fmt: skip
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=FONT["tick"])
    ax.set_yticks(range(len(rows)), rows, fontsize=FONT["tick"] if len(rows) <= 50 else 6)
    ax.set_xlabel(
        f"contrast\n* padj < {alpha:g}   ** < {alpha / 5:g}   *** < {alpha / 50:g}   "
        "grey: not tested",
        fontsize=FONT["label"],
    )
    ax.set_ylabel("subset", fontsize=FONT["label"])
    bar = fig.colorbar(
        image, ax=ax, shrink=min(1.0, 8 / max(len(rows), 1) + 0.3), pad=0.02, extend=extend
    )
    bar.set_label(_effect_label(data), fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"])
    ax.set_title(
        title or f"Subset associations ({len(rows)} subsets, {len(cols)} contrasts)",
        fontsize=FONT["title"],
    )
    return fig


def volcano(
    table: pd.DataFrame,
    *,
    label: str = "subset",
    alpha: float = 0.05,
    n_labels: int = 12,
    title: str | None = None,
) -> Figure:
    """Volcano plot: effect against -log10 p-value, significant features coloured and named.

    Parameters
    ----------
    table
        Tidy table with ``effect``, ``pvalue``, ``padj`` and the ``label`` column (e.g. a
        pseudobulk DE table with ``feature``); one row per point.
    label
        Column naming each point.
    alpha
        Points with ``padj < alpha`` are coloured (red up, blue down).
    n_labels
        The most significant ``n_labels`` points (of the significant ones) are labelled.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> rng = np.random.default_rng(0)
    >>> table = pd.DataFrame({"feature": [f"G{i}" for i in range(50)]})
    >>> table["effect"] = rng.normal(size=50)
    >>> table["pvalue"] = rng.uniform(size=50) ** 3
    >>> table["padj"] = np.minimum(table["pvalue"] * 5, 1)
    >>> type(pl.volcano(table, label="feature")).__name__
    'Figure'
    """
    require_columns(table, ("effect", "pvalue", "padj", label), "the volcano table")
    data = table.dropna(subset=["effect", "pvalue"])
    if data.empty:
        raise InputError("no row has both an effect and a p-value", column="pvalue")
    x = data["effect"].to_numpy(dtype=float)
    p = np.clip(data["pvalue"].to_numpy(dtype=float), 1e-300, 1.0)
    y = -np.log10(p)
    sig = data["padj"].fillna(1.0).to_numpy(dtype=float) < alpha
    colour = np.where(sig & (x > 0), UP, np.where(sig & (x < 0), DOWN, NS))
    fig = new_figure(6.8, 5.4)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=14, c=colour, linewidths=0, rasterized=len(x) > 2000)
    order = np.argsort(p, kind="stable")
    named = [i for i in order if sig[i]][:n_labels]
    for i in named:
        ax.annotate(
            str(data[label].iloc[i]), (x[i], y[i]), xytext=(3, 2), textcoords="offset points",
            fontsize=FONT["small"],
        )  # fmt: skip
    ax.axvline(0, color="#999999", lw=0.7)
    n_up, n_down = int((sig & (x > 0)).sum()), int((sig & (x < 0)).sum())
    n_ns = len(x) - n_up - n_down
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=UP, label=f"higher, padj < {alpha:g} ({n_up})"),
            Line2D(
                [], [], marker="o", ls="", color=DOWN, label=f"lower, padj < {alpha:g} ({n_down})"
            ),
            Line2D([], [], marker="o", ls="", color=NS, label=f"not significant ({n_ns})"),
        ],
        fontsize=FONT["small"], frameon=False, loc="upper left",
    )  # fmt: skip
    ax.set_xlabel(_effect_label(data), fontsize=FONT["label"])
    ax.set_ylabel("-log10 p-value", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.set_title(title or f"Volcano plot ({len(x):,} {label}s)", fontsize=FONT["title"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def _swarm_offsets(values: np.ndarray, width: float, bins: int = 40) -> np.ndarray:
    """Deterministic beeswarm-like offsets: points of a value bin spread evenly around 0."""
    offsets = np.zeros(len(values))
    if len(values) < 2:
        return offsets
    edges = np.linspace(values.min(), values.max() + 1e-12, bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    spread = width * counts / counts.max()
    for b in np.flatnonzero(counts):
        idx = np.flatnonzero(which == b)
        idx = idx[np.argsort(values[idx], kind="stable")]
        k = len(idx)
        offsets[idx] = np.linspace(-spread[b], spread[b], k) if k > 1 else 0.0
    return offsets


def nhood_beeswarm(
    nhoods: pd.DataFrame,
    *,
    label: str = "subset",
    logfc: str = "logFC",
    fdr: str = "spatial_fdr",
    alpha: float = 0.1,
    min_nhoods: int = 1,
    title: str | None = None,
) -> Figure:
    """Neighbourhood differential abundance: logFC of each neighbourhood by majority label.

    Parameters
    ----------
    nhoods
        One row per neighbourhood with its majority ``label``, log fold change ``logfc`` and
        (spatial) FDR ``fdr`` (Milo's ``plotDAbeeswarm`` layout).
    label, logfc, fdr
        Column names.
    alpha
        Neighbourhoods with ``fdr < alpha`` are coloured by direction; the rest grey.
    min_nhoods
        Labels with fewer neighbourhoods are left out.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Rows sorted by median logFC, each labelled with its number of neighbourhoods.

    Examples
    --------
    >>> from sccohort import pl
    >>> rng = np.random.default_rng(0)
    >>> nhoods = pd.DataFrame({"subset": np.repeat(["Mono_A", "T_B"], 30)})
    >>> nhoods["logFC"] = rng.normal(size=60)
    >>> nhoods["spatial_fdr"] = rng.uniform(size=60)
    >>> type(pl.nhood_beeswarm(nhoods)).__name__
    'Figure'
    """
    require_columns(nhoods, (label, logfc, fdr), "the neighbourhood table")
    data = nhoods.dropna(subset=[label, logfc]).copy()
    data[label] = data[label].astype(str)
    sizes = data[label].value_counts()
    data = data[data[label].isin(sizes.index[sizes >= min_nhoods])]
    if data.empty:
        raise InputError(
            f"no label has at least {min_nhoods} neighbourhoods", column=label, key="min_nhoods"
        )
    order = data.groupby(label)[logfc].median().sort_values(kind="stable").index
    fig = new_figure(7.5, max(3.0, 0.32 * len(order) + 1.6))
    ax = fig.add_subplot()
    for row, name in enumerate(order):
        part = data[data[label] == name]
        v = part[logfc].to_numpy(dtype=float)
        q = part[fdr].fillna(1.0).to_numpy(dtype=float)
        sig = q < alpha
        colour = np.where(sig & (v > 0), UP, np.where(sig & (v < 0), DOWN, NS))
        offsets = _swarm_offsets(v, 0.38)
        ax.scatter(v, row + offsets, s=9, c=colour, linewidths=0, rasterized=len(data) > 3000)
    ax.set_yticks(
        range(len(order)), [f"{o} ({sizes[o]})" for o in order],
        fontsize=FONT["tick"] if len(order) <= 45 else 6,
    )  # fmt: skip
    ax.axvline(0, color="#777777", lw=0.8)
    ax.set_xlabel(f"neighbourhood log fold change ({logfc})", fontsize=FONT["label"])
    ax.set_ylabel("majority subset (neighbourhoods)", fontsize=FONT["label"])
    ax.tick_params(axis="x", labelsize=FONT["tick"])
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=UP, label=f"enriched, FDR < {alpha:g}"),
            Line2D([], [], marker="o", ls="", color=DOWN, label=f"depleted, FDR < {alpha:g}"),
            Line2D([], [], marker="o", ls="", color=NS, label="not significant"),
        ],
        fontsize=FONT["small"], frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1),
    )  # fmt: skip
    ax.set_title(
        title or f"Differential abundance of {len(data):,} neighbourhoods",
        fontsize=FONT["title"],
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig

"""Figures that characterise an associated subset.

Gene-set enrichment bars, signature scores by group, the protein gating strategy step by
step, and time courses of donors sampled at several timepoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

__all__ = [
    "comparison_panels",
    "enrichment_bars",
    "gating_plot",
    "signature_scores",
    "timecourse_panels",
]

SIG, NS, TARGET, OTHER = "#c0392b", "#b8b8b8", "#c0392b", "#7f8c8d"


def _short_set(name: str, width: int = 38) -> str:
    text = str(name).removeprefix("HALLMARK_").replace("_", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def enrichment_bars(
    table: pd.DataFrame,
    *,
    n_sets: int = 10,
    alpha: float = 0.05,
    title: str | None = None,
) -> Figure:
    """Horizontal bars of the most enriched gene sets: -log10 padj, overlap written on each.

    Parameters
    ----------
    table
        Over-representation results of one gene list (``tables/enrichment.csv`` rows of one
        subset): ``set, padj`` and optionally ``overlap, set_size, odds_ratio``.
    n_sets
        The ``n_sets`` sets with the smallest padj are drawn.
    alpha
        Bars with ``padj < alpha`` are red, the rest grey; a dashed line marks ``alpha``.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.stats import ora
    >>> universe = [f"G{i}" for i in range(1, 41)]
    >>> sets = {"A": ["G1", "G2", "G3"], "B": ["G4", "G5"]}
    >>> table = ora(["G1", "G2"], sets, universe, min_size=2)
    >>> type(pl.enrichment_bars(table)).__name__
    'Figure'
    """
    require_columns(table, ("set", "padj"), "the enrichment table")
    data = table.dropna(subset=["padj"]).sort_values("padj", kind="stable").head(n_sets)
    if data.empty:
        raise InputError("no gene set has an adjusted p-value", column="padj")
    score = -np.log10(np.clip(data["padj"].to_numpy(dtype=float), 1e-300, 1.0))
    n = len(data)
    fig = new_figure(7.2, max(2.4, 0.34 * n + 1.3))
    ax = fig.add_subplot()
    y = np.arange(n)
    colours = [SIG if p < alpha else NS for p in data["padj"]]
    ax.barh(y, score, color=colours, height=0.7)
    for yi, s, row in zip(y, score, data.itertuples(index=False), strict=True):
        if hasattr(row, "overlap") and hasattr(row, "set_size"):
            ax.text(s, yi, f" {int(row.overlap)}/{int(row.set_size)}", va="center",
                    fontsize=FONT["small"])  # fmt: skip
    ax.axvline(-np.log10(alpha), color="#555555", ls="--", lw=0.8)
    ax.set_yticks(y, [_short_set(s) for s in data["set"]], fontsize=FONT["tick"])
    ax.set_ylim(n - 0.4, -0.6)
    ax.set_xlim(0, max(float(score.max()), -np.log10(alpha)) * 1.2)
    ax.set_xlabel(
        f"-log10 adjusted p-value (dashed: {alpha:g}; label: genes in list / in set)",
        fontsize=FONT["label"],
    )
    ax.tick_params(axis="x", labelsize=FONT["tick"])
    ax.set_title(title or "Gene-set enrichment", fontsize=FONT["title"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def comparison_panels(
    panels: Sequence[Mapping[str, Any]],
    *,
    percent: bool = True,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """Several two-group comparisons side by side: box plot plus one point per donor each.

    Parameters
    ----------
    panels
        One dict per panel: ``values`` (Series donor -> value, e.g. a subset's share in
        [0, 1]), ``group`` (Series donor -> group label), ``title``, and optionally
        ``ylabel``, ``order`` (group order) and ``pvalues`` (list of ``(label, p)`` pairs,
        written above the boxes as ``"<label> p = ..."``).
    percent
        Show values x 100.
    title, seed
        Figure title; seed of the horizontal jitter.

    Returns
    -------
    matplotlib.figure.Figure
        Tick labels carry the number of donors per group.

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> shares = data.counts / data.totals
    >>> panels = [{"values": shares[s], "group": data.design.group, "title": s} for s in shares]
    >>> len(pl.comparison_panels(panels).axes)
    2
    """
    if not panels:
        raise InputError("no comparison to draw", key="panels")
    scale = 100.0 if percent else 1.0
    rng = np.random.default_rng(seed)
    fig = new_figure(max(4.0, 3.3 * len(panels)), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        values = pd.Series(panel["values"], dtype=float)
        values.index = values.index.astype(str)
        grp = pd.Series(panel["group"])
        grp.index = grp.index.astype(str)
        data = pd.DataFrame({"value": values, "group": grp.reindex(values.index)}).dropna()
        if data.empty:
            raise InputError(
                f"no donor has both a value and a group in panel '{panel.get('title', '')}'",
                key="group",
            )
        data["group"] = data["group"].astype(str)
        levels = ordered_levels(data["group"], panel.get("order"))
        colours = category_colours(levels)
        arrays = [scale * data.loc[data["group"] == lv, "value"].to_numpy() for lv in levels]
        box_strip(ax, arrays, levels, colours, rng)
        ax.tick_params(axis="y", labelsize=FONT["tick"])
        ax.set_ylabel(panel.get("ylabel", "share of cells (%)"), fontsize=FONT["label"])
        panel_title(ax, panel)
    if title:
        fig.suptitle(title, fontsize=FONT["title"])
    return fig


def signature_scores(
    scores: pd.DataFrame,
    group: pd.Series,
    *,
    pvalues: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """Donor-level signature scores by clinical group, one panel per signature.

    Parameters
    ----------
    scores
        Long table, one row per donor x signature: ``donor_id, set, score`` (e.g. the rows of
        ``tables/signatures.csv`` for one subset).
    group
        Donor -> group label; donors without a group are left out.
    pvalues
        Signature -> p-value written in its panel (e.g. the default donor-level test's padj).
    labels
        Signature -> short panel title (default: the set name without ``HALLMARK_``).
    order
        Group order on the x axes.
    title, seed
        Figure title; seed of the horizontal jitter.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> scores = pd.DataFrame({"donor_id": data.design.donors, "set": "HALLMARK_X",
    ...                        "score": np.linspace(0, 1, 8)})
    >>> type(pl.signature_scores(scores, data.design.group)).__name__
    'Figure'
    """
    require_columns(scores, ("donor_id", "set", "score"), "the signature score table")
    grp = pd.Series(group).dropna().astype(str)
    grp.index = grp.index.astype(str)
    data = scores.assign(donor_id=scores["donor_id"].astype(str))
    data = data[data["donor_id"].isin(grp.index)].dropna(subset=["score"])
    if data.empty:
        raise InputError(
            "no donor of the signature table has a group",
            key="group",
            hint="group must be a Series indexed by donor_id",
        )
    data = data.assign(group=data["donor_id"].map(grp))
    sets = list(pd.unique(data["set"].astype(str)))
    levels = ordered_levels(data["group"], order)
    colours = category_colours(levels)
    rng = np.random.default_rng(seed)
    fig = new_figure(max(4.0, (1.1 * len(levels) + 1.4) * len(sets)), 4.4)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, name in zip(axes, sets, strict=True):
        part = data[data["set"].astype(str) == name]
        arrays = [part.loc[part["group"] == lv, "score"].to_numpy(dtype=float) for lv in levels]
        box_strip(ax, arrays, levels, colours, rng)
        ax.tick_params(axis="y", labelsize=FONT["tick"])
        head = (labels or {}).get(name, _short_set(name, 30))
        if pvalues is not None and name in pvalues:
            head += f"\n{format_p(float(pvalues[name]))}"
        ax.set_title(head, fontsize=FONT["label"])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_ylabel("mean signature score per donor", fontsize=FONT["label"])
    fig.suptitle(title or "Signature scores by group", fontsize=FONT["title"])
    return fig


def _gating_inputs(
    values: pd.DataFrame,
    target: np.ndarray,
    gates: pd.DataFrame,
    start: np.ndarray | None,
    subset: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The target and start population as boolean arrays, after checking them and the gates."""
    target = np.asarray(target, dtype=bool)
    n = len(values)
    if len(target) != n:
        raise InputError(
            f"target has {len(target)} cells but values has {n}", key="target", sample=subset
        )
    mask = np.ones(n, dtype=bool) if start is None else np.asarray(start, dtype=bool).copy()
    missing = [p for p in gates["protein"].astype(str) if p not in values.columns]
    if missing:
        raise InputError(
            f"protein '{missing[0]}' of the gates of '{subset}' is not in the protein data",
            column=missing[0],
            hint="Pass the protein modality the gates were found on",
        )
    return target, mask


def _gate_panel(
    ax: Axes,
    k: int,
    gate: Any,
    x: np.ndarray,
    mask: np.ndarray,
    target: np.ndarray,
    *,
    subset: str,
    bins: int,
) -> np.ndarray:
    """One gate's panel (histograms, kept side shaded); returns the cells the gate keeps."""
    pop_t, pop_o = x[mask & target], x[mask & ~target]
    edges = np.histogram_bin_edges(x[mask] if mask.any() else x, bins=bins)
    for arr, colour, name in ((pop_o, OTHER, "other cells"), (pop_t, TARGET, subset)):
        if len(arr):
            ax.hist(arr, bins=edges, density=True, histtype="stepfilled", alpha=0.45,
                    color=colour, label=f"{name} ({len(arr):,})")  # fmt: skip
    thr = float(gate.threshold)
    ax.axvline(thr, color="black", lw=1.2)
    lo, hi = edges[0], edges[-1]
    if gate.direction == ">":
        ax.axvspan(thr, hi, color="#f4d03f", alpha=0.15, zorder=0)
    else:
        ax.axvspan(lo, thr, color="#f4d03f", alpha=0.15, zorder=0)
    ax.set_xlim(lo, hi)
    ax.set_title(f"gate {k + 1}: {gate.protein} {gate.direction} {thr:.3g}",
                 fontsize=FONT["label"])  # fmt: skip
    ax.set_xlabel(f"{gate.protein} (normalised)", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.legend(fontsize=FONT["small"], frameon=False, loc="best")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return x > thr if gate.direction == ">" else x < thr


def _gating_metrics_panel(ax: Axes, metrics: pd.DataFrame) -> None:
    """Purity and recall after each gate, training vs held-out donors."""
    require_columns(metrics, ("step", "split", "purity", "recall"), "the gating metrics")
    for split, ls in (("train", "-"), ("test", "--")):
        part = metrics[metrics["split"].astype(str) == split].sort_values("step")
        if part.empty:
            continue
        name = "training donors" if split == "train" else "held-out donors"
        ax.plot(part["step"], part["purity"], ls=ls, marker="o", color="#1f77b4",
                label=f"purity, {name}")  # fmt: skip
        ax.plot(part["step"], part["recall"], ls=ls, marker="s", color="#ff7f0e",
                label=f"recall, {name}")  # fmt: skip
    steps = sorted(pd.unique(metrics["step"]))
    ax.set_xticks(steps, [str(int(s)) for s in steps], fontsize=FONT["tick"])
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("after gate (0 = start)", fontsize=FONT["label"])
    ax.set_title("purity and recall", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.legend(
        fontsize=FONT["small"], frameon=False, loc="upper center", ncol=2,
        bbox_to_anchor=(0.5, -0.2),
    )  # fmt: skip
    ax.grid(color="#eeeeee", lw=0.5)


def gating_plot(
    values: pd.DataFrame,
    target: np.ndarray,
    gates: pd.DataFrame,
    *,
    start: np.ndarray | None = None,
    metrics: pd.DataFrame | None = None,
    subset: str = "subset",
    bins: int = 50,
) -> Figure:
    """A gating strategy step by step: each gate's protein in the population it gates.

    Parameters
    ----------
    values
        Cells x proteins (at least every gate's protein), normalised as the gates were found.
    target
        Boolean (n_cells,): the cells of the subset.
    gates
        One row per gate in order: ``protein, direction`` (``">"`` / ``"<"``), ``threshold``.
    start
        Boolean (n_cells,) start population (default: all cells).
    metrics
        Optional ``tables/gating.csv`` rows of the subset (``step, split, purity, recall``):
        a last panel draws purity and recall after each step, training vs held-out donors.
    subset
        The subset's name, for titles.
    bins
        Histogram bins per panel.

    Returns
    -------
    matplotlib.figure.Figure
        Histograms of the target cells and the other cells (density, each normalised to 1);
        the kept side of each threshold is shaded.

    Examples
    --------
    >>> from sccohort import pl
    >>> rng = np.random.default_rng(0)
    >>> values = pd.DataFrame({"CD191": rng.normal(size=200)})
    >>> target = values["CD191"].to_numpy() > 1
    >>> gates = pd.DataFrame({"protein": ["CD191"], "direction": [">"], "threshold": [1.0]})
    >>> len(pl.gating_plot(values, target, gates).axes)
    1
    """
    require_columns(gates, ("protein", "direction", "threshold"), "the gate table")
    target, mask = _gating_inputs(values, target, gates, start, subset)
    has_metrics = metrics is not None and not metrics.empty
    n_panels = len(gates) + int(has_metrics)
    fig = new_figure(max(5.0, 3.0 * n_panels), 3.9)
    axes = fig.subplots(1, max(n_panels, 1), squeeze=False)[0]
    for k, gate in enumerate(gates.itertuples(index=False)):
        x = values[str(gate.protein)].to_numpy(dtype=float)
        mask = mask & _gate_panel(axes[k], k, gate, x, mask, target, subset=subset, bins=bins)
    if len(gates):
        axes[0].set_ylabel("density", fontsize=FONT["label"])
    if has_metrics:
        _gating_metrics_panel(axes[-1], metrics)
    if not len(gates) and not has_metrics:
        axes[0].text(0.5, 0.5, "no gate improves on the start population", ha="center",
                     va="center", transform=axes[0].transAxes)  # fmt: skip
        axes[0].axis("off")
    fig.suptitle(f"Gating strategy for {subset}", fontsize=FONT["title"])
    return fig


def _time_axis(frame: pd.DataFrame) -> list[str]:
    if "timepoint_order" in frame:
        ranks = frame.groupby("timepoint", sort=False)["timepoint_order"].min()
        return [str(t) for t in ranks.sort_values(kind="stable").index]
    return [str(t) for t in pd.unique(frame["timepoint"])]


def timecourse_panels(
    shares: pd.DataFrame | None = None,
    expression: pd.DataFrame | None = None,
    *,
    subsets: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Per-donor lines across timepoints: subset shares and mean gene expression.

    Parameters
    ----------
    shares
        ``tables/timecourse.csv``: ``donor_id, subset, timepoint, share`` (and
        ``timepoint_order``, the position in time); one panel per subset.
    expression
        ``tables/timecourse_expression.csv``: ``donor_id, timepoint, gene, mean`` (and
        ``timepoint_order``, ``frac``); one panel per gene.
    subsets, genes
        Which panels (default: all present).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One line per donor (same colour in every panel).

    Examples
    --------
    >>> from sccohort import pl
    >>> shares = pd.DataFrame({"donor_id": "D1", "subset": "Mono_A", "timepoint": ["pre", "post"],
    ...                        "timepoint_order": [0, 1], "share": [0.1, 0.05]})
    >>> type(pl.timecourse_panels(shares)).__name__
    'Figure'
    """
    panels: list[tuple[str, pd.DataFrame, str, str]] = []
    if shares is not None and len(shares):
        require_columns(shares, ("donor_id", "subset", "timepoint", "share"), "the time courses")
        for s in subsets if subsets is not None else pd.unique(shares["subset"].astype(str)):
            part = shares[shares["subset"].astype(str) == str(s)]
            if len(part):
                level = str(part["level"].iloc[0]) if "level" in part else ""
                ylabel = "share of its lineage (%)" if level.endswith("_in_l1") else "share (%)"
                panels.append((f"{s} share", part, "share", ylabel))
    if expression is not None and len(expression):
        require_columns(
            expression, ("donor_id", "timepoint", "gene", "mean"), "the expression time courses"
        )
        for g in genes if genes is not None else pd.unique(expression["gene"].astype(str)):
            part = expression[expression["gene"].astype(str) == str(g)]
            if len(part):
                cells = f" in {part['cells'].iloc[0]} cells" if "cells" in part else ""
                name = f"{g} expression{cells}"
                panels.append((name, part, "mean", "mean log-normalised expression"))
    if not panels:
        raise InputError(
            "no time course to draw", hint="Pass per-donor shares or expression across timepoints"
        )
    donors = sorted({str(d) for _, p, _, _ in panels for d in p["donor_id"]})
    colours = category_colours(donors)
    fig = new_figure(max(4.6, 3.7 * len(panels)), 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, part, column, ylabel) in zip(axes, panels, strict=True):
        axis = _time_axis(part)
        scale = 100.0 if column == "share" else 1.0
        for donor, rows in part.groupby(part["donor_id"].astype(str), sort=True):
            pos = rows["timepoint"].astype(str).map({t: i for i, t in enumerate(axis)})
            rows = rows.assign(pos=pos).sort_values("pos")
            ax.plot(rows["pos"], scale * rows[column].astype(float), marker="o", lw=1.6,
                    color=colours[donor], label=donor)  # fmt: skip
        ax.set_xticks(range(len(axis)), axis, rotation=20, ha="right", fontsize=FONT["tick"])
        ax.set_xlim(-0.3, len(axis) - 0.7)
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
        ax.tick_params(axis="y", labelsize=FONT["tick"])
        ax.set_title(name, fontsize=FONT["label"])
        ax.grid(color="#eeeeee", lw=0.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    handles = [Line2D([], [], color=colours[d], marker="o", label=d) for d in donors]
    axes[-1].legend(
        handles=handles, title="donor", fontsize=FONT["small"], title_fontsize=FONT["small"],
        frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1),
    )  # fmt: skip
    fig.suptitle(title or "Donors sampled at several timepoints", fontsize=FONT["title"])
    return fig

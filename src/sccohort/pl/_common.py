"""Shared pieces of the figure functions: figures without pyplot, colours, checks, p-values.

Figures are built as :class:`matplotlib.figure.Figure` objects directly (no ``pyplot``), so
no global figure registry grows and no interactive backend is ever touched; saving them
renders through Agg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from ..errors import InputError

#: Font sizes chosen to stay legible when a figure is shown at ~800 px wide in the report.
FONT = {"title": 12, "label": 10, "tick": 9, "small": 8}


def new_figure(width: float, height: float) -> Figure:
    """A blank Figure of ``width`` x ``height`` inches (constrained layout, white)."""
    return Figure(figsize=(width, height), layout="constrained", facecolor="white")


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise `InputError` naming the first column of ``columns`` missing from ``frame``."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            f"{what} must be a pandas DataFrame, got {type(frame).__name__}",
            hint="Pass the tidy table the statistics function returned",
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"{what} has no column '{missing[0]}'",
            column=missing[0],
            hint=f"Expected columns {', '.join(columns)}; "
            f"found {', '.join(map(str, frame.columns))}",
        )
    if frame.empty:
        raise InputError(f"{what} is empty", hint="There is nothing to plot")


def category_colours(labels: Sequence[str]) -> dict[str, str]:
    """Distinct colours for up to ~60 labels (tab20, tab20b, tab20c), in label order."""
    palette: list[str] = []
    for name in ("tab20", "tab20b", "tab20c"):
        cmap = colormaps[name]
        palette.extend(to_hex(cmap(i)) for i in range(cmap.N))
    if len(labels) <= 10:
        palette = [to_hex(colormaps["tab10"](i)) for i in range(10)]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def format_p(p: float) -> str:
    """A p-value as people read it: ``p = 0.032``, ``p = 2.1e-05``, ``p < 1e-300``."""
    if p is None or not np.isfinite(p):
        return "p = NA"
    if p == 0:
        return "p < 1e-300"
    if p < 1e-3:
        return f"p = {p:.1e}"
    return f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def stars(p: float) -> str:
    """Significance marks: ``***`` < 0.001, ``**`` < 0.01, ``*`` < 0.05, else ``""``."""
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else ""


def ordered_levels(values: pd.Series, order: Sequence[str] | None = None) -> list[str]:
    """Levels of ``values`` (categories order if categorical, else sorted) or ``order``."""
    present = [str(v) for v in pd.unique(values.dropna().astype(str))]
    if order is not None:
        unknown = [o for o in order if o not in present]
        if unknown:
            raise InputError(
                f"level '{unknown[0]}' of the requested order does not occur",
                hint=f"Levels present: {', '.join(present)}",
            )
        return [str(o) for o in order]
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories if str(c) in present]
    try:
        return sorted(present, key=float)  # numeric labels (Leiden clusters) in number order
    except ValueError:
        return sorted(present)


def box_strip(
    ax,
    arrays: Sequence[np.ndarray],
    levels: Sequence[str],
    colours: dict[str, str],
    rng: np.random.Generator,
    *,
    size: float = 24,
) -> None:
    """Boxes (no fliers) with every donor's value as a jittered dot; x labels ``level (n=..)``.

    ``arrays[i]`` holds the values of ``levels[i]``; dots take ``colours[level]``.
    """
    grey = {"color": "#555555"}
    ax.boxplot(
        arrays, positions=range(len(levels)), widths=0.55, showfliers=False,
        medianprops={"color": "black"}, boxprops=grey, whiskerprops=grey, capprops=grey,
    )  # fmt: skip
    for i, (level, values) in enumerate(zip(levels, arrays, strict=True)):
        ax.scatter(
            i + rng.uniform(-0.15, 0.15, len(values)), values, s=size, color=colours[level],
            edgecolors="black", linewidths=0.4, zorder=3,
        )  # fmt: skip
    ax.set_xticks(
        range(len(levels)),
        [f"{level}\n(n={len(a)})" for level, a in zip(levels, arrays, strict=True)],
        fontsize=FONT["tick"],
    )


def panel_title(ax, panel: Mapping[str, Any]) -> None:
    """A comparison panel's title with its ``(label, p)`` pairs under it; open top and right."""
    pvalues = [(str(lab), float(p)) for lab, p in panel.get("pvalues", []) if np.isfinite(p)]
    head = str(panel.get("title", ""))
    if pvalues:
        head += "\n" + "\n".join(f"{lab} {format_p(p)}" for lab, p in pvalues)
    ax.set_title(head, fontsize=FONT["label"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

"""UMAP (or any 2-D embedding) scatter of a random subsample of cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ._common import FONT, category_colours, new_figure, ordered_levels

#: The study drew 30,000 cells per UMAP.
MAX_CELLS = 30_000
#: Categories with fewer drawn cells get no name written on the plot (the legend has them).
MIN_LABELLED = 10


def _check_inputs(
    coords: np.ndarray, values: pd.Series | np.ndarray, name: str, max_cells: int, basis: str
) -> tuple[np.ndarray, pd.Series]:
    """The coordinates as floats and the values as a Series, after checking their shapes."""
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(
            f"embedding coordinates must be (n_cells, 2), got shape {coords.shape}",
            key=basis,
            hint="Pass e.g. mdata.obsm['X_umap']",
        )
    series = pd.Series(values).reset_index(drop=True)
    if len(series) != len(coords):
        raise InputError(
            f"{len(series)} values for {len(coords)} cells",
            column=name,
            hint="Pass one value per row of the coordinates",
        )
    if max_cells < 1:
        raise InputError("max_cells must be at least 1", key="max_cells")
    return coords, series


def _subsample(n_total: int, max_cells: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_cells`` cells drawn with ``seed``, in a random drawing order."""
    rng = np.random.default_rng(seed)
    keep = (
        np.sort(rng.choice(n_total, size=max_cells, replace=False))
        if n_total > max_cells
        else np.arange(n_total)
    )
    # draw in a random order so no category systematically hides another
    return keep[rng.permutation(len(keep))]


def _draw_categorical(
    ax: Axes,
    xy: np.ndarray,
    vals: pd.Series,
    series: pd.Series,
    levels: list[str],
    *,
    name: str,
    size: float,
    label_on_data: bool | None,
) -> None:
    """Points coloured by category, a legend with cell counts and names written on the data."""
    colours = category_colours(levels)
    text = vals.astype(str).to_numpy()
    ax.scatter(
        xy[:, 0], xy[:, 1], s=size, c=[colours.get(t, "#bbbbbb") for t in text],
        linewidths=0, rasterized=True,
    )  # fmt: skip
    counts = pd.Series(series.astype(str)).value_counts()
    handles = [
        Line2D([], [], marker="o", ls="", color=colours[lv], label=f"{lv} ({counts[lv]:,})")
        for lv in levels
    ]
    ax.legend(
        handles=handles, title=f"{name} (cells)", loc="upper left", bbox_to_anchor=(1.01, 1),
        fontsize=FONT["small"], title_fontsize=FONT["tick"], frameon=False,
        ncol=1 if len(levels) <= 26 else 2, handletextpad=0.2, borderaxespad=0,
    )  # fmt: skip
    if label_on_data if label_on_data is not None else len(levels) <= 40:
        _label_on_data(ax, xy, text, levels)


def _label_on_data(ax: Axes, xy: np.ndarray, text: np.ndarray, levels: list[str]) -> None:
    """Each category's name on its member cell nearest the members' median position."""
    for level in levels:
        members = np.flatnonzero(text == level)
        if len(members) < MIN_LABELLED:
            continue  # too few drawn cells for a name to point anywhere useful
        # write the name on the member cell nearest the median, so it sits on cells
        centre = np.median(xy[members], axis=0)
        nearest = members[np.argmin(((xy[members] - centre) ** 2).sum(axis=1))]
        ax.text(
            xy[nearest, 0], xy[nearest, 1], str(level), fontsize=FONT["small"],
            ha="center", va="center", weight="bold",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.6},
        )  # fmt: skip


def _draw_continuous(
    fig: Figure, ax: Axes, xy: np.ndarray, vals: pd.Series, *, name: str, size: float, cmap: str
) -> None:
    """Points coloured by a continuous value (high values on top) and its colour bar."""
    numbers = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(numbers).any():
        raise InputError(f"'{name}' has no finite value to colour by", column=name)
    order = np.argsort(numbers, kind="stable")  # high values on top
    points = ax.scatter(
        xy[order, 0], xy[order, 1], s=size, c=numbers[order], cmap=cmap, linewidths=0,
        rasterized=True, plotnonfinite=True,
    )  # fmt: skip
    bar = fig.colorbar(points, ax=ax, shrink=0.6, pad=0.01)
    bar.set_label(name, fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"])


def embedding(
    coords: np.ndarray,
    values: pd.Series | np.ndarray,
    *,
    name: str,
    title: str | None = None,
    max_cells: int = MAX_CELLS,
    seed: int = 0,
    categorical: bool | None = None,
    basis: str = "UMAP",
    label_on_data: bool | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Scatter of a random subsample of cells coloured by a categorical or continuous value.

    Parameters
    ----------
    coords
        (n_cells, 2) coordinates, e.g. ``mdata.obsm["X_umap"]``.
    values
        (n_cells,) the colour value of each cell, e.g. ``mdata.obs["l2"]``.
    name
        What ``values`` is, for the legend / colour bar title (e.g. ``"cell type (l2)"``).
    title
        Figure title; default ``"<basis> by <name>"`` plus the cells drawn.
    max_cells
        At most this many cells are drawn, chosen uniformly at random with ``seed``.
    seed
        Seed of the subsample (the same seed draws the same cells).
    categorical
        Force the colour scale; default: categorical unless ``values`` is numeric.
    basis
        Axis label prefix (``"UMAP"`` -> ``UMAP 1``, ``UMAP 2``).
    label_on_data
        Write each category's name at its median position; default when <= 40 categories.
    cmap
        Colour map of a continuous value.

    Returns
    -------
    matplotlib.figure.Figure
        Points are rasterised (an SVG of 30,000 points stays small).

    Examples
    --------
    >>> from sccohort import pl
    >>> rng = np.random.default_rng(0)
    >>> coords = rng.normal(size=(300, 2))
    >>> fig = pl.embedding(coords, pd.Series(rng.choice(["A", "B"], 300)), name="type")
    >>> type(fig).__name__
    'Figure'
    """
    coords, series = _check_inputs(coords, values, name, max_cells, basis)
    n_total = len(coords)
    keep = _subsample(n_total, max_cells, seed)
    xy = coords[keep, :2]
    vals = series.iloc[keep]
    if categorical is None:
        categorical = not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(
            series
        )
    size = float(np.clip(50_000 / max(len(keep), 1), 1.0, 30.0))

    levels = ordered_levels(series) if categorical else []
    wide = categorical and len(levels) > 12
    fig = new_figure(10.5 if wide else 8.0, 6.5)
    ax = fig.add_subplot()
    if categorical:
        _draw_categorical(
            ax, xy, vals, series, levels, name=name, size=size, label_on_data=label_on_data
        )
    else:
        _draw_continuous(fig, ax, xy, vals, name=name, size=size, cmap=cmap)
    drawn = f"{len(keep):,} of {n_total:,} cells" if len(keep) < n_total else f"{n_total:,} cells"
    ax.set_title(title or f"{basis} by {name} ({drawn})", fontsize=FONT["title"])
    ax.set_xlabel(f"{basis} 1", fontsize=FONT["label"])
    ax.set_ylabel(f"{basis} 2", fontsize=FONT["label"])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig

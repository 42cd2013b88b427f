"""Marker dot plot: mean expression and fraction of expressing cells per subset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ..pp.store import rna_columns, store_of
from ._common import FONT, new_figure


def dot_values(
    adata: AnnData,
    markers: Sequence[str],
    groups: pd.Series | str,
    *,
    layer: str | None = None,
    threshold: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean value and fraction of cells above ``threshold`` per group and marker.

    Parameters
    ----------
    adata
        Cells x features; ``.X`` (or ``layers[layer]``) dense or sparse.
    markers
        Feature names (``var_names``); only these columns are read, never the whole matrix.
    groups
        An ``obs`` column name or a Series indexed by ``obs_names`` (cells without a group
        are left out).
    layer, threshold
        Matrix to read; a cell "expresses" a marker when its value is > ``threshold``.

    Returns
    -------
    mean, fraction : pandas.DataFrame
        Groups x markers.

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> groups = pd.Series(mdata.obs["l1"].to_numpy(), index=mdata["rna"].obs_names)
    >>> mean, fraction = pl.dot_values(mdata["rna"], ["LYZ", "CD3E"], groups)
    >>> bool(mean.loc["Mono", "LYZ"] > mean.loc["CD4 T", "LYZ"])
    True
    """
    missing = [m for m in markers if m not in adata.var_names]
    if missing:
        raise InputError(
            f"{len(missing)} marker(s) not among the features, first '{missing[0]}'",
            key="markers",
            hint="Use names from var_names (gene symbols / antibody names)",
        )
    if not len(markers):
        raise InputError("no markers given", key="markers")
    if isinstance(groups, str):
        if groups not in adata.obs:
            raise InputError(
                f"no obs column '{groups}'", column=groups, hint="Pass a Series of labels instead"
            )
        labels = adata.obs[groups]
    else:
        labels = pd.Series(groups).reindex(adata.obs_names)
    labels = labels.astype("object").where(labels.notna(), None)
    keep = labels.notna().to_numpy()
    codes, uniques = pd.factorize(labels[keep].astype(str), sort=False)
    cols = adata.var_names.get_indexer(list(markers))
    matrix = adata.layers[layer] if layer is not None else adata.X
    rows = np.flatnonzero(keep)
    if matrix is None and layer is None and store_of(adata) is not None:  # RNA on disk
        sub = rna_columns(adata, cols)[rows]
    elif matrix is None:
        raise InputError("the AnnData has no matrix to read", key=layer or "X")
    elif sp.issparse(matrix):  # columns first: the few markers' columns, then their rows
        sub = matrix[:, cols][rows]
    else:
        sub = np.asarray(matrix)[np.ix_(rows, cols)]
    sub = sp.csr_matrix(sub, dtype=np.float64)
    onehot = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(uniques), len(codes))
    )
    size = np.asarray(onehot.sum(axis=1)).ravel()[:, None]
    mean = np.asarray((onehot @ sub).todense()) / size
    above = sub.copy()
    above.data = (above.data > threshold).astype(np.float64)
    frac = np.asarray((onehot @ above).todense()) / size
    if threshold < 0:  # implicit zeros are above a negative threshold too
        zeros = size - np.asarray((onehot @ (sub != 0).astype(np.float64)).todense())
        frac = frac + zeros / size
    index = pd.Index(uniques, name="group")
    return (
        pd.DataFrame(mean, index=index, columns=list(markers)),
        pd.DataFrame(frac, index=index, columns=list(markers)),
    )


def marker_dotplot(
    panels: Mapping[str, tuple[AnnData, Sequence[str]]],
    groups: pd.Series | str,
    *,
    order: Sequence[str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    layer: str | None = None,
    title: str | None = None,
) -> Figure:
    """Dot plot of markers per subset, one panel per modality (e.g. RNA and protein).

    Dot size: fraction of the subset's cells above the panel's threshold; colour: the mean
    value, scaled per marker from its lowest (0) to its highest (1) subset mean.

    Parameters
    ----------
    panels
        Panel title -> (AnnData, markers), e.g. ``{"RNA": (mdata["rna"], ["EGR1", "IL1B"]),
        "protein": (mdata["prot"], ["CD14", "CD16"])}``.
    groups
        An ``obs`` column present in every AnnData, or a Series indexed by cell id.
    order
        Subsets, top to bottom (default: in order of first appearance in the first panel).
    thresholds
        Panel title -> expression threshold (default 0: any count for log-normalised RNA;
        use e.g. 1.0 for CLR protein values).
    layer, title
        Matrix to read in every panel and the figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sccohort import pl
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> groups = pd.Series(mdata.obs["l1"].to_numpy(), index=mdata["rna"].obs_names)
    >>> fig = pl.marker_dotplot({"RNA": (mdata["rna"], ["LYZ", "CD3E", "MS4A1"])}, groups)
    >>> type(fig).__name__
    'Figure'
    """
    if not panels:
        raise InputError("no panels given", key="panels", hint="e.g. {'RNA': (rna, ['EGR1'])}")
    thresholds = dict(thresholds or {})
    computed = {
        name: dot_values(
            adata, list(markers), groups, layer=layer, threshold=thresholds.get(name, 0.0)
        )
        for name, (adata, markers) in panels.items()
    }
    first = next(iter(computed.values()))[0]
    rows = list(order) if order is not None else [str(g) for g in first.index]
    widths = [len(panels[name][1]) for name in panels]
    fig = new_figure(max(5.0, 0.36 * sum(widths) + 3.8), max(3.0, 0.3 * len(rows) + 2.2))
    grid = fig.add_gridspec(1, len(panels) + 1, width_ratios=[*widths, 1.6])
    cmap = colormaps["Reds"]
    axes = []
    for k, (name, (mean, frac)) in enumerate(computed.items()):
        unknown = [r for r in rows if r not in mean.index]
        if unknown:
            raise InputError(f"subset '{unknown[0]}' has no cells in panel '{name}'", key="order")
        mean, frac = mean.loc[rows], frac.loc[rows]
        low, high = mean.min(axis=0), mean.max(axis=0)
        scaled = (mean - low) / (high - low).replace(0, 1)
        ax = fig.add_subplot(grid[0, k], sharey=axes[0] if axes else None)
        yy, xx = np.meshgrid(np.arange(len(rows)), np.arange(mean.shape[1]), indexing="ij")
        ax.scatter(
            xx.ravel(), yy.ravel(), s=(frac.to_numpy().ravel() * 160) + 0.5,
            c=scaled.to_numpy().ravel(), cmap=cmap, norm=Normalize(0, 1), edgecolors="#555555",
            linewidths=0.3,
        )  # fmt: skip
        ax.set_xticks(range(mean.shape[1]), list(mean.columns), rotation=90, fontsize=FONT["tick"])
        ax.set_xlim(-0.6, mean.shape[1] - 0.4)
        ax.set_title(name, fontsize=FONT["label"])
        if not axes:
            ax.set_yticks(range(len(rows)), rows, fontsize=FONT["tick"])
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.set_ylabel("subset", fontsize=FONT["label"])
        else:
            ax.tick_params(axis="y", labelleft=False)
        ax.grid(color="#eeeeee", lw=0.5)
        ax.set_axisbelow(True)
        axes.append(ax)
    legend_ax = fig.add_subplot(grid[0, -1])
    legend_ax.axis("off")
    sizes = [0.25, 0.5, 0.75, 1.0]
    legend_ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color="#999999", markersize=np.sqrt(s * 160 + 0.5))
            for s in sizes
        ],
        labels=[f"{int(100 * s)}%" for s in sizes], title="cells expressing", loc="upper left",
        frameon=False, fontsize=FONT["small"], title_fontsize=FONT["small"], labelspacing=1.2,
    )  # fmt: skip
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap),
        ax=legend_ax, location="bottom", shrink=0.9, pad=0.0, fraction=0.25,
    )  # fmt: skip
    bar.set_label("mean, scaled per marker", fontsize=FONT["small"])
    bar.ax.tick_params(labelsize=FONT["small"])
    fig.suptitle(title or f"Markers of {len(rows)} subsets", fontsize=FONT["title"])
    return fig

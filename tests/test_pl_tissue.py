"""Tissue figures: the trajectory heatmap and the interaction dot plot draw what they were given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from sccohort import pl
from sccohort.errors import InputError
from sccohort.pl.tissue import DIRECTION_COLOURS


def _trajectory(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    expression = pd.DataFrame(
        {
            "UP": t + rng.normal(0, 0.05, n),
            "DOWN": 1 - t,
            "BUMP": np.sin(np.pi * t),
            "FLAT": np.full(n, 2.0),
            "OTHER": rng.normal(size=n),
        }
    )
    genes = pd.DataFrame(
        {
            "gene": ["UP", "BUMP", "DOWN", "FLAT", "ABSENT"],
            "effect": [2.0, 0.1, -2.0, 0.0, 1.0],
            "statistic": [90.0, 50.0, 80.0, 1.0, 5.0],
            "pvalue": [1e-9, 1e-6, 1e-8, 0.5, 0.01],
            "padj": [1e-8, 1e-5, 1e-7, 0.5, 0.02],
            "direction": ["rising", "transient", "falling", "rising", "rising"],
            "peak_pseudotime": [1.0, 0.5, 0.0, 0.3, 0.2],
            "mean_expression": [0.5, 0.6, 0.5, 2.0, 1.0],
            "n_cells": [n] * 5,
        }
    )
    return expression, t, genes


def _heat(fig: Figure):
    (ax,) = [ax for ax in fig.axes if ax.images]
    return ax, np.asarray(ax.images[0].get_array())


# --- trajectory heatmap ----------------------------------------------------------------


def test_heatmap_bins_scales_and_orders_the_genes():
    expression, t, genes = _trajectory()
    fig = pl.trajectory_heatmap(expression, t, genes, n_bins=12)
    ax, image = _heat(fig)
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == ["DOWN", "FLAT", "BUMP", "UP"]  # by peak; ABSENT and OTHER not drawn
    assert image.shape == (4, 12)
    assert np.allclose(image.min(axis=1)[[0, 2, 3]], 0) and np.allclose(
        image.max(axis=1)[[0, 2, 3]], 1
    )
    assert np.allclose(image[1], 0)  # a constant gene
    assert np.argmax(image[0]) == 0 and np.argmax(image[3]) == 11  # falling, rising
    assert 3 <= np.argmax(image[2]) <= 8  # transient peaks in the middle
    # equal-count bins: the first bin is the mean of the 50 earliest cells
    order = np.argsort(t, kind="stable")
    down = expression["DOWN"].to_numpy()[order]
    means = down.reshape(12, 50).mean(axis=1)
    assert np.allclose(image[0], (means - means.min()) / (means.max() - means.min()))
    colours = [to_hex(label.get_color()) for label in ax.get_yticklabels()]
    assert colours == [DIRECTION_COLOURS[d] for d in ["falling", "rising", "transient", "rising"]]
    ticks = [float(label.get_text()) for label in ax.get_xticklabels()]
    assert ticks == sorted(ticks) and 0 <= ticks[0] < 0.1 and 0.9 < ticks[-1] <= 1
    assert any(a.get_ylabel() == "scaled mean expression" for a in fig.axes)


def test_heatmap_caps_genes_drops_nan_cells_and_grows():
    expression, t, genes = _trajectory()
    t = t.copy()
    t[:100] = np.nan
    small = pl.trajectory_heatmap(expression, pd.Series(t), genes, max_genes=2, n_bins=50)
    big = pl.trajectory_heatmap(expression, t, genes)
    ax, image = _heat(small)
    # the table's first two present genes (by p-value order), then ordered by peak
    assert [label.get_text() for label in ax.get_yticklabels()] == ["BUMP", "UP"]
    assert image.shape == (2, 50)
    assert "500 cells" in small.get_suptitle()
    assert big.get_figheight() >= small.get_figheight()
    few = pl.trajectory_heatmap(expression.head(5), t[100:105], genes, n_bins=50)
    assert _heat(few)[1].shape == (4, 5)  # no more bins than cells


def test_heatmap_rejects_bad_input():
    expression, t, genes = _trajectory()
    with pytest.raises(InputError, match="pseudotimes for"):
        pl.trajectory_heatmap(expression, t[:-1], genes)
    with pytest.raises(InputError, match="none of the"):
        pl.trajectory_heatmap(expression, t, genes.assign(gene=["a", "b", "c", "d", "e"]))
    one = np.full(len(t), np.nan)
    one[0] = 0.5
    with pytest.raises(InputError, match="finite pseudotime"):
        pl.trajectory_heatmap(expression, one, genes)
    with pytest.raises(InputError, match="peak_pseudotime"):
        pl.trajectory_heatmap(expression, t, genes.drop(columns="peak_pseudotime"))
    with pytest.raises(InputError):
        pl.trajectory_heatmap(expression, t, genes, n_bins=0)
    with pytest.raises(InputError):
        pl.trajectory_heatmap(expression.to_numpy(), t, genes)
    unknown = genes.assign(direction="flat")  # no known direction: no legend, still a figure
    assert pl.trajectory_heatmap(expression, t, unknown).axes


# --- interaction dots ------------------------------------------------------------------


def _scores(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for source, target in [("T", "Mac"), ("Mac", "T"), ("B", "B")]:
        for k in range(8):
            rows.append((source, target, f"L{k}", f"R{k}", float(rng.gamma(2.0))))
    scores = pd.DataFrame(rows, columns=["source", "target", "ligand", "receptor", "score"])
    scores["specificity_pvalue"] = rng.uniform(0, 0.2, len(scores))
    scores.loc[[0, 5], "specificity_pvalue"] = [np.nan, 0.0]
    scores["padj"] = rng.uniform(0, 0.1, len(scores))
    scores.loc[3, "padj"] = np.nan
    return scores


def _dots(fig: Figure) -> tuple[object, PathCollection]:
    (ax,) = [ax for ax in fig.axes if any(isinstance(c, PathCollection) for c in ax.collections)]
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    return ax, points


def _drawn(ax, points) -> pd.DataFrame:
    """One row per dot: its pair, groups, colour value, area and whether it is ringed."""
    xs = [t.get_text() for t in ax.get_xticklabels()]
    ys = [t.get_text() for t in ax.get_yticklabels()]
    offsets = np.asarray(points.get_offsets())
    edges = np.asarray(points.get_edgecolors())
    return pd.DataFrame(
        {
            "groups": [xs[int(round(x))] for x in offsets[:, 0]],
            "pair": [ys[int(round(y))] for y in offsets[:, 1]],
            "score": np.asarray(points.get_array()),
            "area": np.broadcast_to(points.get_sizes(), len(offsets)),
            "ringed": edges[:, 3] > 0,
        }
    )


def test_dots_top_pairs_groups_colours_and_rings():
    scores = _scores()
    fig = pl.interaction_dots(scores, max_pairs=5)
    ax, points = _dots(fig)
    best = scores.assign(pair=scores["ligand"] + " > " + scores["receptor"])
    best = best.groupby("pair")["score"].max().sort_values(ascending=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(best.index[:5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["T > Mac", "Mac > T", "B > B"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the best pair at the top
    assert ax.get_xticklabels()[0].get_rotation() == 45
    drawn = _drawn(ax, points)
    expected = scores.assign(
        pair=scores["ligand"] + " > " + scores["receptor"],
        groups=scores["source"] + " > " + scores["target"],
    )
    expected = expected[expected["pair"].isin(best.index[:5])]
    merged = drawn.merge(expected, on=["groups", "pair"], suffixes=("", "_given"))
    assert len(merged) == len(drawn) == len(expected) == 15
    assert np.allclose(merged["score"], merged["score_given"])
    assert (merged["ringed"] == (merged["padj"] < 0.05)).all()  # NaN padj: no ring
    strength = np.clip(-np.log10(merged["specificity_pvalue"].fillna(1.0)), 0, 3)
    assert np.all(np.diff(merged["area"].to_numpy()[np.argsort(strength)]) >= -1e-9)
    legend = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    assert "padj < 0.05" in legend and "p = 0.01" in legend
    assert any(a.get_xlabel() == "score" for a in fig.axes)


def test_dots_without_pvalues_or_padj_have_one_size_and_no_ring():
    scores = _scores().drop(columns="padj").assign(specificity_pvalue=np.nan)
    fig = pl.interaction_dots(scores)
    ax, points = _dots(fig)
    drawn = _drawn(ax, points)
    assert len(drawn) == len(scores)
    assert drawn["area"].nunique() == 1 and not drawn["ringed"].any()
    legend = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    assert "padj < 0.05" not in legend and "p = 0.01" not in legend
    plain = pl.interaction_dots(scores.drop(columns="specificity_pvalue").head(8))
    assert fig.get_figwidth() > plain.get_figwidth()  # 3 groups against 1


def test_dots_reject_bad_input():
    scores = _scores()
    with pytest.raises(InputError, match="receptor"):
        pl.interaction_dots(scores.drop(columns="receptor"))
    with pytest.raises(InputError, match="empty"):
        pl.interaction_dots(scores.iloc[:0])
    with pytest.raises(InputError, match="repeated"):
        pl.interaction_dots(pd.concat([scores, scores.head(1)]))
    with pytest.raises(InputError):
        pl.interaction_dots(scores, max_pairs=0)
    with pytest.raises(InputError):
        pl.interaction_dots(scores.assign(score=np.nan))

"""Figure functions: what they draw matches the numbers they were given."""

from __future__ import annotations

import ast
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_auc_score

from sccohort import pl
from sccohort.errors import InputError
from sccohort.report.figures import png_bytes

SRC = Path(__file__).resolve().parents[1] / "src" / "sccohort"


def _scatters(fig: Figure) -> list[PathCollection]:
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


# --- embedding ------------------------------------------------------------------------


def test_embedding_subsamples_deterministically_and_counts_all_cells():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(5000, 2))
    labels = np.array(["T cell"] * 4000 + ["B cell"] * 900 + ["pDC"] * 100)
    fig = pl.embedding(coords, labels, name="cell type", max_cells=1000, seed=3)
    (points,) = _scatters(fig)
    drawn = points.get_offsets()
    assert len(drawn) == 1000
    # drawn points are real cells, no duplicates
    rows = {tuple(r) for r in coords.round(12)}
    assert all(tuple(r) in rows for r in np.asarray(drawn).round(12))
    assert len({tuple(r) for r in np.asarray(drawn)}) == 1000
    again = _scatters(pl.embedding(coords, labels, name="cell type", max_cells=1000, seed=3))[0]
    other = _scatters(pl.embedding(coords, labels, name="cell type", max_cells=1000, seed=4))[0]
    assert np.array_equal(drawn, again.get_offsets())
    assert not np.array_equal(np.sort(drawn, axis=0), np.sort(other.get_offsets(), axis=0))
    # the legend counts every cell of the cohort, not only the drawn ones
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["B cell (900)", "T cell (4,000)", "pDC (100)"]
    assert points.get_rasterized()
    assert "1,000 of 5,000 cells" in fig.axes[0].get_title()
    assert set(_texts(fig)) == {"B cell", "T cell", "pDC"}  # names written on the clusters


def test_embedding_continuous_has_colour_bar_and_keeps_all_cells_below_limit():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(300, 2))
    weight = rng.uniform(0, 1, 300)
    fig = pl.embedding(coords, pd.Series(weight), name="WNN RNA weight")
    (points,) = _scatters(fig)
    assert len(points.get_offsets()) == 300
    assert np.allclose(np.sort(points.get_array()), np.sort(weight))
    assert fig.axes[-1].get_ylabel() == "WNN RNA weight"  # the colour bar


def test_embedding_rejects_bad_shapes():
    with pytest.raises(InputError, match=r"\(n_cells, 2\)"):
        pl.embedding(np.zeros(10), np.zeros(10), name="x")
    with pytest.raises(InputError, match="9 values for 10 cells"):
        pl.embedding(np.zeros((10, 2)), np.zeros(9), name="x")


# --- qc -------------------------------------------------------------------------------


def _qc_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["S1", "S2", "S3"],
            "cells_in": [600, 500, 100],
            "removed_doublet": [30, 20, 0],
            "removed_low_quality": [10, 5, 60],
            "removed_platelet": [0, 0, 0],
            "cells_out": [560, 475, 40],
        }
    )


def test_qc_bars_add_up_to_cells_in_and_skip_empty_reasons():
    qc = _qc_table()
    fig = pl.qc_cells(qc)
    ax = fig.axes[0]
    ends: dict[float, float] = {}
    for bar in _bars(ax):
        y = round(bar.get_y() + bar.get_height() / 2, 6)
        ends[y] = max(ends.get(y, 0.0), bar.get_x() + bar.get_width())
    # y positions run top to bottom in table order
    assert [ends[y] for y in sorted(ends, reverse=True)] == [600, 500, 100]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["kept (1,075)", "doublet (50)", "low quality (75)"]
    assert " 40% kept" in _texts(fig)


def test_qc_inconsistent_counts_name_the_sample():
    qc = _qc_table()
    qc.loc[1, "cells_out"] = 400
    with pytest.raises(InputError, match="sample 'S2'"):
        pl.qc_cells(qc)
    with pytest.raises(InputError, match="column 'cells_out'"):
        pl.qc_cells(qc.drop(columns="cells_out"))


# --- composition ----------------------------------------------------------------------


def _shares() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(2)
    donors = [f"D{i}" for i in range(8)]
    raw = rng.dirichlet(np.ones(6), size=8)
    shares = pd.DataFrame(raw, index=donors, columns=[f"sub{j}" for j in range(6)])
    group = pd.Series(["SSc", "HD"] * 4, index=donors)
    return shares, group


def test_composition_bars_stack_to_100_and_group_donors():
    shares, group = _shares()
    fig = pl.composition_bars(shares, group, top=3)
    ax = fig.axes[0]
    totals: dict[float, float] = {}
    for bar in _bars(ax):
        x = round(bar.get_x() + bar.get_width() / 2, 6)
        totals[x] = totals.get(x, 0.0) + bar.get_height()
    assert np.allclose(list(totals.values()), 100.0)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["D1", "D3", "D5", "D7", "D0", "D2", "D4", "D6"]  # HD first, then SSc
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "other" and len(legend) == 4  # 3 named subsets + other
    assert {"HD (n=4)", "SSc (n=4)"} <= set(_texts(fig))


def test_composition_bars_need_a_group_for_every_donor():
    shares, group = _shares()
    with pytest.raises(InputError, match="donor 'D7'"):
        pl.composition_bars(shares, group.drop("D7"))


def test_group_comparison_shows_n_and_pvalues():
    shares, group = _shares()
    pvalues = pd.DataFrame(
        {"group1": ["HD"], "group2": ["SSc"], "pvalue": [0.00042], "method": ["KS"]}
    )
    fig = pl.group_comparison(shares["sub0"], group, subset="sub0", pvalues=pvalues)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["HD\n(n=4)", "SSc\n(n=4)"]
    assert "KS p = 4.2e-04" in _texts(fig)
    points = np.concatenate([c.get_offsets()[:, 1] for c in _scatters(fig)])
    assert np.allclose(np.sort(points), np.sort(100 * shares["sub0"].to_numpy()))
    bad = pvalues.assign(group2="ILD")
    with pytest.raises(InputError, match="'HD' and 'ILD'"):
        pl.group_comparison(shares["sub0"], group, subset="sub0", pvalues=bad)


def test_pca_biplot_draws_donors_centroids_and_top_loadings():
    shares, group = _shares()
    centred = shares - shares.mean()
    u, s, vt = np.linalg.svd(centred.to_numpy(), full_matrices=False)
    pca = {
        "scores": pd.DataFrame(u * s, index=shares.index),
        "loadings": pd.DataFrame(vt.T, index=shares.columns),
        "explained": s**2 / (s**2).sum(),
    }
    fig = pl.pca_biplot(pca, group, n_loadings=2)
    ax = fig.axes[0]
    n_points = sum(len(c.get_offsets()) for c in _scatters(fig))
    assert n_points == 8 + 2  # donors + one centroid per group
    arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert len(arrows) == 2
    assert ax.get_xlabel().startswith("PC1 (") and "% of variance" in ax.get_xlabel()
    with pytest.raises(InputError, match="'loadings'"):
        pl.pca_biplot({"scores": pca["scores"]}, group)


def test_label_shares_orders_lineages_and_counts():
    table = pd.DataFrame(
        {
            "l1": ["Mono", "Mono", "B"],
            "l2": ["CD16 Mono", "CD14 Mono", "B naive"],
            "n_cells": [10, 40, 50],
            "share": [0.1, 0.4, 0.5],
        }
    )
    fig = pl.label_shares(table)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["B naive", "CD14 Mono", "CD16 Mono"]
    assert ax.yaxis_inverted()
    assert [" 50", " 40", " 10"] == _texts(fig)


# --- association ----------------------------------------------------------------------


def _association() -> pd.DataFrame:
    rows = []
    for contrast in ("SRC", "ILD"):
        for subset, effect, padj in (
            ("CD14_EGR1", 1.6 if contrast == "SRC" else 0.1, 1e-4 if contrast == "SRC" else 0.8),
            (
                "CD8_TEM_T2ISG",
                0.2 if contrast == "SRC" else 1.2,
                0.5 if contrast == "SRC" else 0.01,
            ),
            ("B naive", -0.1, 0.9),
        ):
            rows.append(
                {"contrast": contrast, "level": "yes", "subset": subset, "effect": effect,
                 "pvalue": padj / 3, "padj": padj, "method": "logit difference"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_heatmap_marks_exactly_the_significant_cells():
    table = _association()
    fig = pl.association_heatmap(table)
    ax = fig.axes[0]
    marks = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows[:2] == ["CD14_EGR1", "CD8_TEM_T2ISG"]  # most significant first
    assert cols == ["SRC", "ILD"]
    assert marks == {(0, 0): "***", (1, 1): "*"}
    image = ax.images[0].get_array()
    assert image[0, 0] == pytest.approx(1.6) and image[2, 1] == pytest.approx(-0.1)
    norm = ax.images[0].norm
    assert norm.vmin == -norm.vmax  # centred at no effect
    assert "logit difference" in fig.axes[1].get_ylabel()
    with pytest.raises(InputError, match="two rows for subset 'B naive'"):
        pl.association_heatmap(pd.concat([table, table.tail(1)]))


def test_volcano_colours_and_names_significant_points():
    rng = np.random.default_rng(5)
    n = 200
    de = pd.DataFrame(
        {
            "feature": [f"G{i}" for i in range(n)],
            "effect": rng.normal(size=n),
            "pvalue": rng.uniform(size=n),
        }
    )
    de.loc[:4, "pvalue"] = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4]
    de.loc[:4, "effect"] = [3, -2, 2.5, 1.5, -1]
    de["padj"] = np.minimum(de["pvalue"] * n, 1)
    fig = pl.volcano(de, label="feature", n_labels=3)
    assert _texts(fig) == ["G0", "G1", "G2"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    n_sig = int((de["padj"] < 0.05).sum())
    n_up = int(((de["padj"] < 0.05) & (de["effect"] > 0)).sum())
    assert legend[0].endswith(f"({n_up})")
    assert legend[2].endswith(f"({n - n_sig})")


def test_beeswarm_rows_sorted_by_median_and_significance_coloured():
    rng = np.random.default_rng(6)
    nh = pd.DataFrame(
        {
            "subset": ["CD14_EGR1"] * 40 + ["NK"] * 30 + ["B naive"] * 20,
            "logFC": np.r_[rng.normal(2, 0.3, 40), rng.normal(0, 0.3, 30), rng.normal(-1, 0.3, 20)],
        }
    )
    nh["spatial_fdr"] = np.where(nh["logFC"].abs() > 1.5, 0.01, 0.6)
    fig = pl.nhood_beeswarm(nh)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "B naive (20)", "NK (30)", "CD14_EGR1 (40)"
    ]  # fmt: skip
    collections = _scatters(fig)
    assert sum(len(c.get_offsets()) for c in collections) == 90
    for row, coll in enumerate(collections):  # points stay within their row
        offsets = coll.get_offsets()[:, 1] - row
        assert np.all(np.abs(offsets) <= 0.38 + 1e-9)
    egr1 = collections[2]
    colours = {tuple(np.round(c, 3)) for c in egr1.get_facecolors()}
    assert len(colours) == 2  # significant red and non-significant grey


# --- markers and ROC ------------------------------------------------------------------


def test_dot_values_match_a_direct_computation_dense_and_sparse():
    rng = np.random.default_rng(7)
    x = rng.poisson(0.8, size=(60, 5)).astype(float)
    groups = np.array(["a"] * 20 + ["b"] * 25 + ["c"] * 15)
    adata = ad.AnnData(x, obs=pd.DataFrame({"subset": groups}, index=[f"c{i}" for i in range(60)]))
    adata.var_names = ["EGR1", "IL1B", "CD3E", "MS4A1", "GNLY"]
    for matrix in (x, sp.csr_matrix(x)):
        adata.X = matrix
        mean, frac = pl.dot_values(adata, ["IL1B", "GNLY"], "subset")
        for g in ("a", "b", "c"):
            rows = x[groups == g]
            assert np.allclose(mean.loc[g].to_numpy(), rows[:, [1, 4]].mean(axis=0))
            assert np.allclose(frac.loc[g].to_numpy(), (rows[:, [1, 4]] > 0).mean(axis=0))
    _, frac = pl.dot_values(adata, ["EGR1"], "subset", threshold=-1.0)
    assert np.allclose(frac.to_numpy(), 1.0)  # implicit zeros are above a negative threshold
    fig = pl.marker_dotplot(
        {"RNA": (adata, ["EGR1", "IL1B"]), "protein": (adata, ["CD3E"])}, "subset",
        order=["c", "a", "b"],
    )  # fmt: skip
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c", "a", "b"]
    sizes = fig.axes[0].collections[0].get_sizes()
    assert len(sizes) == 6 and sizes.max() <= 160.5
    with pytest.raises(InputError, match="first 'CD14'"):
        pl.dot_values(adata, ["CD14"], "subset")


def test_roc_auc_matches_sklearn_and_needs_both_classes():
    rng = np.random.default_rng(8)
    truth = np.r_[np.ones(6), np.zeros(15)].astype(int)
    score = truth * 0.6 + rng.uniform(size=21)
    table = pd.DataFrame({"donor_id": [f"D{i}" for i in range(21)], "truth": truth, "score": score})
    fig = pl.roc(table)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[1] == f"AUC {roc_auc_score(truth, score):.2f}"
    assert "6 cases, 15 controls" in fig.axes[0].get_title()
    two = pd.concat([table.assign(model="shares"), table.assign(model="age", score=-score)])
    legend = [t.get_text() for t in pl.roc(two).axes[0].get_legend().get_texts()]
    assert legend[1:] == [
        f"shares: AUC {roc_auc_score(truth, score):.2f}",
        f"age: AUC {roc_auc_score(truth, -score):.2f}",
    ]
    with pytest.raises(InputError, match="both cases and controls"):
        pl.roc(table.assign(truth=1))


def test_every_figure_renders_to_png():
    shares, group = _shares()
    png = png_bytes(pl.composition_bars(shares, group))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_layering_stats_never_import_pl_or_report_and_pl_writes_nothing():
    for path in sorted((SRC / "stats").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert not any(p in module for p in (".pl", "pl.", "report")), (path, module)
            elif isinstance(node, ast.Import):
                assert not any("sccohort.pl" in a.name or "report" in a.name for a in node.names)
    for path in sorted((SRC / "pl").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names]
                assert not any("pyplot" in n or n in ("io", "report") for n in names), path
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("savefig", "to_csv", "write_text", "write_bytes"), path
            if isinstance(node, ast.Name):
                assert node.id != "open", path

"""Automatic subsets per lineage on the session's simulated run (8 donors x 400 cells)."""

from __future__ import annotations

import importlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from sccohort import read_h5mu
from sccohort.errors import InputError
from sccohort.pp.store import CompactRows
from sccohort.tl.lineage_graph import (
    _graph_from_knn,
    _knn,
    _leiden,
    _stable_resolution,
    _subgraph,
)
from sccohort.tl.lineage_sums import _LineageRNA
from sccohort.tl.markers import rank_markers
from sccohort.tl.subset_names import EGR1_GENES, T2ISG_GENES, _top_features
from sccohort.tl.subsets import RESOLUTIONS, subsets

graph_module = importlib.import_module("sccohort.tl.lineage_graph")


@pytest.fixture(scope="module")
def run(simulated_run):
    """The run's cohort object, its subsets table and the simulation's true subsets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = read_h5mu(simulated_run / "out" / "cohort.h5mu")
    table = subsets(mdata, seed=0)
    truth = pd.read_csv(simulated_run / "cohort" / "truth" / "cells.csv.gz", index_col="cell_id")
    return mdata, table, truth["subset"].reindex(mdata.obs_names)


def _best_f1(found: pd.Series, truth: pd.Series, name: str) -> tuple[str, float]:
    """The found subset that best matches truth subset ``name`` and its F1."""
    is_true = (truth == name).to_numpy()
    best = ("", 0.0)
    for subset in pd.unique(found[is_true]):
        pred = (found == subset).to_numpy()
        f1 = 2 * (pred & is_true).sum() / (pred.sum() + is_true.sum())
        best = max(best, (subset, float(f1)), key=lambda b: b[1])
    return best


def test_every_cell_has_one_named_subset_and_the_table_adds_up(run):
    mdata, table, _ = run
    found = mdata.obs["subset"]
    assert isinstance(found.dtype, pd.CategoricalDtype)
    assert found.notna().all()
    assert table["subset"].is_unique
    assert set(table["subset"]) == set(found.unique())
    counts = found.value_counts()
    assert (table.set_index("subset")["n_cells"] == counts.reindex(table["subset"])).all()
    assert table["n_cells"].sum() == mdata.n_obs
    donors = mdata.obs.groupby("subset", observed=True)["donor_id"].nunique()
    assert (table.set_index("subset")["n_donors"] == donors.reindex(table["subset"])).all()
    # lineage subsets are named after their l2 and carry markers; other cells keep their l2
    sub = table[table["lineage"] != ""]
    assert len(sub) > len(table[table["lineage"] == ""]) // 2
    assert all(s.startswith(("CD14", "CD16", "CD4", "CD8", "B", "NK", "cDC", "pDC", "ASDC", "Treg",
                             "Plasmablast")) for s in sub["subset"])  # fmt: skip
    assert (sub["rna_markers"].str.count(";") <= 4).all() and (sub["rna_markers"] != "").any()
    assert (sub["protein_markers"].str.count(";") <= 2).all()
    assert ((sub["stability"] >= 0.8) | (sub["resolution"] == 0.2)).all()
    other = table[table["lineage"] == ""]
    assert (other["subset"] == other["l2"]).all()


def test_planted_egr1_monocytes_are_one_subset_named_by_their_program(run):
    mdata, table, truth = run
    name, f1 = _best_f1(mdata.obs["subset"].astype(str), truth, "CD14_EGR1")
    assert f1 >= 0.8, (name, f1)
    assert name.startswith("CD14_")
    assert "EGR1" in name or any(g.replace("-", "") in name for g in EGR1_GENES), name
    markers = table.set_index("subset").loc[name, "rna_markers"].split(";")
    assert len(set(markers) & EGR1_GENES) >= 3, markers


def test_planted_type2_interferon_cd8_tem_are_one_subset_named_by_their_program(run):
    mdata, table, truth = run
    name, f1 = _best_f1(mdata.obs["subset"].astype(str), truth, "CD8_TEM_T2ISG")
    assert f1 >= 0.8, (name, f1)
    assert name.startswith("CD8_TEM_")
    assert "T2ISG" in name or any(g.replace("-", "") in name for g in T2ISG_GENES), name
    # expanded in SSc1 (ILD) relative to the healthy donors
    share = pd.crosstab(mdata.obs["donor_id"], mdata.obs["subset"] == name, normalize="index")
    healthy = share.loc[share.index.str.startswith("HD"), True].mean()
    assert share.loc["SSc1", True] > healthy


def test_same_seed_same_subsets_with_or_without_worker_processes(run):
    mdata, table, _ = run  # clustered with the default two worker processes
    again = mdata.copy()
    table2 = subsets(again, seed=0, key_added="subset_again", n_jobs=1)
    pd.testing.assert_frame_equal(table, table2)
    np.testing.assert_array_equal(
        mdata.obs["subset"].astype(str), again.obs["subset_again"].astype(str)
    )


def test_missing_annotation_is_an_input_error(run):
    mdata, _, _ = run
    bare = mdata.copy()
    del bare.obs["l2"]
    with pytest.raises(InputError, match="l2"):
        subsets(bare)
    with pytest.raises(InputError, match="resolution"):
        subsets(mdata, resolution="high")
    with pytest.raises(InputError, match="two lineages|lineages"):
        subsets(mdata, lineages={"a": ["CD14 Mono"], "b": ["CD14 Mono", "NK"]})
    with pytest.raises(InputError, match="neighbour search"):
        subsets(mdata, knn_method="annoy")


def test_the_approximate_lineage_graph_finds_the_planted_subsets_too(run):
    """What large lineages get (`neighbours = "auto"` above 100,000 cells), forced here."""
    mdata, table, truth = run
    approx = mdata.copy()
    table2 = subsets(approx, knn_method="approximate", seed=0, key_added="subset_ivf")
    found = approx.obs["subset_ivf"].astype(str)
    for planted in ("CD14_EGR1", "CD8_TEM_T2ISG"):
        assert _best_f1(found, truth, planted)[1] >= 0.8
    ari = adjusted_rand_score(mdata.obs["subset"].astype(str), found)
    assert ari > 0.8, ari
    assert set(table2["lineage"]) == set(table["lineage"])


def _scan_every_resolution(g, resolutions, n_resamples, threshold, seed):
    """The reference search: every resolution clustered and scored, the last passing kept."""
    rng = np.random.default_rng(seed)
    n = g.shape[0]
    subsamples = [np.sort(rng.choice(n, int(0.8 * n), replace=False)) for _ in range(n_resamples)]
    chosen, labels, scores = resolutions[0], None, {}
    for r in resolutions:
        full = _leiden(g, r, seed)
        aris = [
            adjusted_rand_score(full[s], _leiden(_subgraph(g, s), r, seed + 1 + i))
            for i, s in enumerate(subsamples)
        ]
        scores[r] = float(np.mean(aris))
        if labels is None or scores[r] >= threshold:
            chosen, labels = r, full
    return chosen, labels, scores


@pytest.mark.parametrize("threshold", [0.0, 0.9, 0.97, 1.01])
def test_resolution_search_from_the_top_equals_scoring_every_resolution(threshold, monkeypatch):
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=4.0, size=(6, 10))
    x = np.concatenate([c + rng.normal(size=(80, 10)) for c in centres])
    g = _graph_from_knn(_knn(x, 15, "exact", 0))
    assert g.shape == (480, 480) and g.nnz // 2 >= 480 * 15 // 2 and (g != g.T).nnz == 0
    ref_chosen, ref_labels, ref_scores = _scan_every_resolution(g, RESOLUTIONS, 2, threshold, 4)
    calls = []
    monkeypatch.setattr(graph_module, "_leiden", lambda *a: calls.append(a) or _leiden(*a))
    chosen, labels, scores = _stable_resolution(g, RESOLUTIONS, 2, threshold, seed=4)
    assert chosen == ref_chosen
    np.testing.assert_array_equal(labels, ref_labels)
    assert scores[chosen] == ref_scores[chosen]
    assert len(calls) < 3 * len(RESOLUTIONS) or chosen == RESOLUTIONS[0]
    if threshold == 0.0:  # the highest resolution passes: three clusterings only
        assert chosen == RESOLUTIONS[-1] and len(calls) == 3
    if threshold > 1:  # nothing passes: the lowest resolution, scored in full
        assert chosen == RESOLUTIONS[0] and np.isfinite(scores[chosen])


@pytest.mark.parametrize("lineage", ["CD8 T", "Mono/DC"])
def test_markers_equal_those_of_ranking_every_gene(run, lineage):
    """Ranking only the genes that can be markers gives the markers of ranking them all."""
    mdata, table, _ = run
    rna = mdata.mod["rna"][mdata.obs_names]
    found = mdata.obs["subset"].astype(str).to_numpy()
    rows_of = table[table["lineage"] == lineage]
    assert len(rows_of) >= 2
    for _, group in rows_of.groupby("l2"):
        reference = group["subset"] if len(group) > 1 else rows_of["subset"]
        cells = np.flatnonzero(np.isin(found, reference))
        x = sp.csr_matrix(rna.X[cells], dtype=np.float32)  # as subsets() reads it
        sub = ad.AnnData(x, var=pd.DataFrame(index=rna.var_names.astype(str)))
        sub.obs["c"] = pd.Categorical(found[cells])
        res = rank_markers(sub, "c", groups=group["subset"].tolist(), min_fraction=0.1)
        for name, markers in zip(group["subset"], group["rna_markers"], strict=True):
            assert ";".join(_top_features(res, name, None, 5)["feature"]) == markers, name


def test_lineage_rna_sums_and_blocks_equal_scipy_on_the_rows_of_the_shared_matrix() -> None:
    rng = np.random.default_rng(1)
    x = sp.random(3000, 500, density=0.1, format="csr", dtype=np.float32, random_state=2)
    x.data = np.log1p(rng.gamma(1, 3, x.nnz)).astype(np.float32)
    x.data[::97] = 0  # stored zeros count as values, not as non-zeros
    rows = np.sort(rng.choice(3000, 1700, replace=False))
    labels = rng.integers(0, 7, rows.size)
    lineage = _LineageRNA(x, rows)
    sums = lineage.sums(labels, 7)
    xl = x[rows]
    onehot = sp.csr_matrix(
        (np.ones(labels.size), (labels, np.arange(labels.size))), shape=(7, labels.size)
    )
    nonzero = sp.csr_matrix(((xl.data != 0).astype(np.float32), xl.indices, xl.indptr), xl.shape)
    np.testing.assert_array_equal(sums.total, (onehot @ xl).toarray())  # bit for bit
    np.testing.assert_array_equal(sums.nonzero, (onehot @ nonzero).toarray())
    cells = np.flatnonzero(labels < 3)
    genes = np.sort(rng.choice(500, 120, replace=False))
    block = lineage.take(cells, genes, sums.nonzero[:3].sum(axis=0)[genes])
    expected = xl.tocsc()[:, genes][cells]
    expected.eliminate_zeros()
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(block, name), getattr(expected, name))
    # a narrow range of columns, genes in any order, and a matrix with unsorted indices: each
    # row is read from the block's first column on, so these must come out the same
    unsorted = x.copy()
    for r in range(0, 3000, 7):
        a, b = unsorted.indptr[r], unsorted.indptr[r + 1]
        unsorted.indices[a:b], unsorted.data[a:b] = (
            unsorted.indices[a:b][::-1],
            unsorted.data[a:b][::-1],
        )
    unsorted.has_sorted_indices = False
    compact = CompactRows(xl.data, xl.indices.astype(np.int16), xl.indptr, xl.shape)
    compact_sums = _LineageRNA(compact, np.arange(rows.size)).sums(labels, 7)
    np.testing.assert_array_equal(compact_sums.total, sums.total)  # the store's int16 rows
    for matrix, lineage_rows in ((x, rows), (unsorted, rows), (compact, np.arange(rows.size))):
        part = _LineageRNA(matrix, lineage_rows)
        for cols in (np.arange(200, 260), np.array([499, 3, 250]), np.array([0])):
            got = part.take(cells, cols, sums.nonzero[:3].sum(axis=0)[cols])
            want = xl.tocsc()[:, cols][cells]
            want.eliminate_zeros()
            assert (got != want).nnz == 0 and got.nnz == want.nnz
    with pytest.raises(ValueError):  # counts that do not match the cells are refused
        lineage.take(cells, genes, sums.nonzero[:2].sum(axis=0)[genes])

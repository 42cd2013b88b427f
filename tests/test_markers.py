"""rank_markers equals scanpy's Wilcoxon rank_genes_groups, column by column."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from sccohort.errors import InputError
from sccohort.tl.markers import COLUMNS, rank_markers

N_MARKERS = 5


def _rna(seed: int = 0) -> ad.AnnData:
    """600 cells x 300 genes, sparse float32 log1p values, 5 groups, planted markers."""
    rng = np.random.default_rng(seed)
    n, g = 600, 300
    groups = rng.choice(5, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    counts = rng.poisson(0.4, (n, g)).astype(np.float64)
    for k in range(5):
        rows = groups == k
        counts[np.ix_(rows, np.arange(k * N_MARKERS, (k + 1) * N_MARKERS))] += rng.poisson(
            4, (rows.sum(), N_MARKERS)
        )
    values = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(values))
    adata.var_names = [f"gene{j}" for j in range(g)]
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.obs["cluster"] = pd.Categorical([f"c{k}" for k in groups])
    return adata


def _protein(seed: int = 1) -> ad.AnnData:
    """600 cells x 40 proteins, dense float32 with heavy ties, zeros and negatives."""
    rng = np.random.default_rng(seed)
    n, g = 600, 40
    groups = rng.choice(4, size=n)
    values = np.round(rng.normal(0.5, 1.0, (n, g)), 1)
    values[rng.random((n, g)) < 0.2] = 0.0
    values[:, 0] += 2.0 * (groups == 0)
    adata = ad.AnnData(values.astype(np.float32))
    adata.var_names = [f"prot{j}" for j in range(g)]
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.obs["celltype"] = pd.Categorical([f"t{k}" for k in groups])
    return adata


def _scanpy(adata: ad.AnnData, groupby: str, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            adata,
            groupby,
            method="wilcoxon",
            use_raw=False,
            n_genes=adata.n_vars,
            pts=True,
            **kwargs,
        )
    return adata.uns["rank_genes_groups"]


def _assert_same_as_scanpy(ours: pd.DataFrame, res: dict, rest: bool = True) -> None:
    groups = list(res["names"].dtype.names)
    assert list(ours["group"].cat.categories) == groups
    for group in groups:
        mine = ours[ours["group"] == group].set_index("feature")
        names = list(res["names"][group])
        assert len(mine) == len(names)
        # scanpy stores float32 scores and fold changes; ours are float64
        for col, key, atol in [
            ("statistic", "scores", 1e-5),
            ("logfoldchange", "logfoldchanges", 1e-5),
            ("pvalue", "pvals", 0),
            ("padj", "pvals_adj", 0),
        ]:
            np.testing.assert_allclose(
                mine.loc[names, col], res[key][group].astype(np.float64), rtol=1e-5, atol=atol
            )
        np.testing.assert_allclose(mine.loc[res["pts"].index, "pct_in"], res["pts"][group])
        if rest:
            np.testing.assert_allclose(
                mine.loc[res["pts_rest"].index, "pct_out"], res["pts_rest"][group]
            )


def _cat(df: pd.DataFrame, res: dict) -> pd.DataFrame:
    """Order the group categories as scanpy does."""
    return df.assign(group=pd.Categorical(df["group"], categories=list(res["names"].dtype.names)))


@pytest.mark.parametrize("tie_correct", [False, True])
def test_sparse_rna_equals_scanpy(tie_correct: bool) -> None:
    adata = _rna()
    ours = rank_markers(adata, "cluster", tie_correct=tie_correct, chunk_genes=64)
    assert list(ours.columns) == COLUMNS
    assert len(ours) == 5 * adata.n_vars
    _assert_same_as_scanpy(ours, _scanpy(adata, "cluster", tie_correct=tie_correct))


@pytest.mark.parametrize("tie_correct", [False, True])
def test_dense_protein_with_ties_and_negatives_equals_scanpy(tie_correct: bool) -> None:
    adata = _protein()
    ours = rank_markers(adata, "celltype", tie_correct=tie_correct)
    _assert_same_as_scanpy(ours, _scanpy(adata, "celltype", tie_correct=tie_correct))
    if tie_correct:
        plain = rank_markers(adata, "celltype")
        # heavy ties shrink the variance, so corrected |z| is larger
        merged = ours.merge(plain, on=["group", "feature"], suffixes=("", "_plain"))
        assert (merged["statistic"].abs() >= merged["statistic_plain"].abs() - 1e-12).all()
        assert (merged["statistic"].abs() > merged["statistic_plain"].abs()).any()


def test_reference_group_and_subset_of_groups_equal_scanpy() -> None:
    adata = _rna()
    ours = rank_markers(adata, "cluster", reference="c0", tie_correct=True)
    _assert_same_as_scanpy(ours, _scanpy(adata, "cluster", reference="c0", tie_correct=True), False)
    ours = rank_markers(adata, "cluster", groups=["c3", "c1"])
    res = _scanpy(adata, "cluster", groups=["c3", "c1"])
    assert set(ours["group"]) == {"c1", "c3"}
    _assert_same_as_scanpy(ours.assign(group=ours["group"].astype(str)).pipe(_cat, res), res)


def test_unlabelled_cells_count_in_every_rest_as_in_scanpy() -> None:
    adata = _rna()
    labels = adata.obs["cluster"].astype(object).to_numpy()
    labels[::10] = np.nan
    adata.obs["cluster"] = pd.Categorical(labels)
    ours = rank_markers(adata, "cluster", tie_correct=True)
    _assert_same_as_scanpy(ours, _scanpy(adata, "cluster", tie_correct=True))


def test_auroc_equals_sklearn_and_means_are_group_means() -> None:
    adata = _rna()
    ours = rank_markers(adata, "cluster")
    mine = ours[ours["group"] == "c2"].set_index("feature").loc[adata.var_names]
    y = (adata.obs["cluster"] == "c2").to_numpy()
    dense = adata.X.toarray()
    expected = [roc_auc_score(y, dense[:, j]) for j in range(adata.n_vars)]
    np.testing.assert_allclose(mine["auroc"], expected, rtol=1e-12)
    np.testing.assert_allclose(mine["mean_in"], dense[y].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(mine["mean_out"], dense[~y].mean(axis=0), rtol=1e-6)


def test_planted_markers_rank_first_and_rows_are_sorted() -> None:
    adata = _rna()
    ours = rank_markers(adata, "cluster")
    for k in range(5):
        top = ours[ours["group"] == f"c{k}"].head(N_MARKERS)
        expected = {f"gene{j}" for j in range(k * N_MARKERS, (k + 1) * N_MARKERS)}
        assert set(top["feature"]) == expected
        assert (top["padj"] < 1e-10).all() and (top["logfoldchange"] > 1).all()
    for _, sub in ours.groupby("group", observed=True):
        assert np.all(np.diff(sub["statistic"].to_numpy()) <= 0)
    assert list(ours["group"].drop_duplicates()) == [f"c{k}" for k in range(5)]


def test_layouts_dtypes_and_blocks_give_the_same_table() -> None:
    adata = _rna()
    base = rank_markers(adata, "cluster", n_jobs=1)
    variants = {
        "csc": adata.X.tocsc(),
        "float64": adata.X.astype(np.float64),
        "dense": adata.X.toarray(),
    }
    for name, x in variants.items():
        adata.layers[name] = x
        other = rank_markers(adata, "cluster", layer=name, chunk_genes=7, n_jobs=2)
        pd.testing.assert_frame_equal(other, base, check_exact=False, rtol=1e-12, obj=name)
    # explicit stored zeros count as zeros
    x = adata.X.copy()
    x.data[::7] = 0.0
    adata.layers["stored_zeros"] = x
    y = x.copy()
    y.eliminate_zeros()
    adata.layers["no_zeros"] = y
    pd.testing.assert_frame_equal(
        rank_markers(adata, "cluster", layer="stored_zeros"),
        rank_markers(adata, "cluster", layer="no_zeros"),
    )


def test_min_fraction_filters_rows_after_adjustment() -> None:
    adata = _rna()
    full = rank_markers(adata, "cluster")
    kept = rank_markers(adata, "cluster", min_fraction=0.5)
    assert (kept["pct_in"] >= 0.5).all()
    assert len(kept) == (full["pct_in"] >= 0.5).sum() < len(full)
    merged = kept.merge(full, on=["group", "feature"], suffixes=("", "_full"))
    np.testing.assert_array_equal(merged["padj"], merged["padj_full"])


def test_log1p_base_is_honoured() -> None:
    adata = _rna()
    adata.uns["log1p"] = {"base": 2}
    ours = rank_markers(adata, "cluster")
    _assert_same_as_scanpy(ours, _scanpy(adata, "cluster"))


def test_key_added_stores_table() -> None:
    adata = _rna()
    table = rank_markers(adata, "cluster", key_added="markers", tie_correct=True)
    assert adata.uns["markers"]["table"] is table
    assert adata.uns["markers"]["params"]["tie_correct"] is True


def test_input_errors() -> None:
    adata = _rna()
    with pytest.raises(InputError, match="obs has no column 'leiden'"):
        rank_markers(adata, "leiden")
    labels = adata.obs["cluster"].astype(str).to_numpy()
    labels[0] = "lonely"
    adata.obs["cluster"] = pd.Categorical(labels)
    with pytest.raises(InputError, match="group 'lonely'.*1 cell"):
        rank_markers(adata, "cluster")
    ok = rank_markers(adata, "cluster", groups=["c0", "c1"])
    assert set(ok["group"]) == {"c0", "c1"}
    with pytest.raises(InputError, match="'c9'"):
        rank_markers(adata, "cluster", groups=["c9"])
    with pytest.raises(InputError, match="reference group 'c9'"):
        rank_markers(adata, "cluster", reference="c9")
    with pytest.raises(InputError, match="no layer 'counts'"):
        rank_markers(adata, "cluster", layer="counts")
    x = adata.X.copy()
    x.data[3] = np.nan
    adata.layers["nan"] = x
    with pytest.raises(InputError, match="NaN"):
        rank_markers(adata, "cluster", layer="nan", groups=["c0", "c1"])

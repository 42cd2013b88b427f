"""Pseudotime and genes along it (issue 23) on the simulated kidney continuum."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import patsy
import pytest
import scanpy as sc
import scipy.sparse as sp
import statsmodels.api as sm
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from sccohort.errors import InputError
from sccohort.io import read_sample
from sccohort.simulate import simulate_cohort
from sccohort.simulate.tissue import STATES
from sccohort.tl import fate_probabilities, pseudotime, trajectory_genes

DONORS = ["SSc1", "SSc19", "SSc2", "SSc3"]
ROOT = "CD14_EGR1"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kidney_traj")
    return simulate_cohort(
        out, "paper", donors=DONORS, tissue="kidney", cells_per_donor=800, seed=3, n_empty=100
    )


@pytest.fixture(scope="module")
def continuum(cohort: Path) -> ad.AnnData:
    """Singlet, good-quality continuum cells: log-normalised, HVGs, 20 PCs, truth in obs."""
    samples = pd.read_csv(cohort / "samples.csv")
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", keep_default_na=False)
    truth = truth.set_index("cell_id")
    traj = pd.read_csv(cohort / "truth" / "trajectory.csv").set_index("cell_id")
    parts = []
    for row in samples[samples["tissue"] == "kidney"].itertuples():
        rna = read_sample(cohort / row.path, row.sample_id).mod["rna"]
        var = pd.DataFrame(index=rna.var_names)
        parts.append(ad.AnnData(sp.csr_matrix(rna.layers["counts"]), var=var,
                                obs=pd.DataFrame(index=rna.obs_names)))  # fmt: skip
    adata = ad.concat(parts)
    t = truth.loc[adata.obs_names]
    keep = adata.obs_names.isin(traj.index) & ~t["doublet"].to_numpy(bool)
    keep &= ~t["low_quality"].to_numpy(bool)
    adata = adata[keep].copy()
    adata.obs["state"] = traj.loc[adata.obs_names, "state"].to_numpy()
    adata.obs["planted"] = traj.loc[adata.obs_names, "pseudotime"].to_numpy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=1000)
    sc.pp.pca(adata, n_comps=20, mask_var="highly_variable", random_state=0)
    pseudotime(adata, "state", ROOT)
    return adata


@pytest.fixture(scope="module")
def planted(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "truth" / "trajectory_genes.csv")


@pytest.fixture(scope="module")
def genes(continuum: ad.AnnData) -> pd.DataFrame:
    return trajectory_genes(continuum)


def test_pseudotime_follows_the_planted_one(continuum: ad.AnnData) -> None:
    assert continuum.n_obs > 250
    t = continuum.obs["pseudotime"].to_numpy()
    assert t.min() == 0.0 and t.max() == 1.0
    assert spearmanr(t, continuum.obs["planted"])[0] >= 0.8
    root = continuum.uns["pseudotime"]["root_cell"]
    assert continuum.obs.loc[root, "state"] == ROOT and t[continuum.obs_names == root] == 0.0


def test_pseudotime_orders_the_states(continuum: ad.AnnData) -> None:
    again = continuum.copy()
    order = pseudotime(again, "state", ROOT, key_added="dpt")
    assert list(order.columns) == ["group", "n_cells", "median_pseudotime"]
    assert order["group"].tolist() == list(STATES)
    assert order["n_cells"].sum() == again.n_obs
    assert order["median_pseudotime"].is_monotonic_increasing
    np.testing.assert_array_equal(again.obs["dpt"], continuum.obs["pseudotime"])  # seeded


def test_trajectory_genes_recover_the_planted_genes(
    genes: pd.DataFrame, planted: pd.DataFrame, continuum: ad.AnnData
) -> None:
    assert list(genes.columns) == ["gene", "effect", "statistic", "pvalue", "padj", "direction",
                                   "peak_pseudotime", "mean_expression", "n_cells"]  # fmt: skip
    assert genes["pvalue"].is_monotonic_increasing and (genes["n_cells"] >= 20).all()
    expressed = np.asarray((continuum.X > 0).sum(axis=0)).ravel() >= 20
    assert set(genes["gene"]) == set(continuum.var_names[expressed])
    label = genes["gene"].isin(planted["gene"])
    assert average_precision_score(label, genes["statistic"]) >= 0.8
    found = genes.merge(planted, on="gene", suffixes=("", "_planted"))
    found = found[found["padj"] < 0.05]
    assert len(found) >= 0.7 * len(planted)
    assert (found["direction"] == found["direction_planted"]).mean() >= 0.9
    assert (np.sign(found["effect"]) == np.sign(found["planted_log2fc"])).mean() >= 0.9
    rising = found["direction"] == "rising"
    # an early-rising gene plateaus: its fitted maximum may lie anywhere on the plateau
    assert (found.loc[rising, "peak_pseudotime"] > 0.4).all()
    assert found.loc[rising, "peak_pseudotime"].median() > 0.8
    # a falling gene with a shallow fold may fit a late bump in a few noisy cells
    assert (found.loc[~rising, "peak_pseudotime"] < 0.3).mean() >= 0.9


def test_trajectory_genes_null_on_shuffled_pseudotime(continuum: ad.AnnData) -> None:
    shuffled = continuum.copy()
    rng = np.random.default_rng(0)
    shuffled.obs["pseudotime"] = rng.permutation(shuffled.obs["pseudotime"].to_numpy())
    res = trajectory_genes(shuffled)
    assert 0.02 <= (res["pvalue"] < 0.05).mean() <= 0.08


def test_trajectory_genes_match_ols_sparse_or_dense(
    genes: pd.DataFrame, continuum: ad.AnnData
) -> None:
    some = genes["gene"].iloc[::40].tolist()
    sub = continuum[:, some].copy()
    dense = sub.copy()
    dense.X = sub.X.toarray().astype(np.float32)
    for res in (trajectory_genes(sub, genes=some), trajectory_genes(dense, genes=some)):
        full = genes.set_index("gene").loc[res["gene"]].reset_index()
        pd.testing.assert_frame_equal(
            res.drop(columns="padj"), full.drop(columns="padj"), rtol=1e-5
        )
    # statsmodels: the same spline space (patsy's natural cubic spline, knots at quartiles)
    t = continuum.obs["pseudotime"].to_numpy()
    knots = np.quantile(t, [0.25, 0.5, 0.75])
    spline = np.asarray(patsy.dmatrix("cr(t, knots=k) - 1", {"t": t, "k": knots}))
    basis = sm.add_constant(spline[:, 1:])  # its columns sum to 1: drop one for the constant
    row = genes.iloc[0]
    y = continuum[:, row["gene"]].X.toarray().ravel()
    fit = sm.OLS(y, basis).fit()
    assert np.isclose(fit.fvalue, row["statistic"], rtol=1e-6)
    assert np.isclose(fit.f_pvalue, row["pvalue"], rtol=1e-6, atol=1e-300)


def test_bad_input_is_named(continuum: ad.AnnData) -> None:
    with pytest.raises(InputError, match="root 'Mac' is not a group.*choose the root among"):
        pseudotime(continuum, "state", "Mac")
    with pytest.raises(InputError, match="no embedding 'X_harmony'.*X_pca"):
        pseudotime(continuum, "state", ROOT, use_rep="X_harmony")
    with pytest.raises(InputError, match="no column 'cluster'"):
        pseudotime(continuum, "cluster", ROOT)
    with pytest.raises(InputError, match="no pseudotime column 'dpt_pseudotime'"):
        trajectory_genes(continuum, pseudotime_key="dpt_pseudotime")
    with pytest.raises(InputError, match="NOTAGENE"):
        trajectory_genes(continuum, genes=["C1QA", "NOTAGENE"])


def test_disconnected_cells_are_counted() -> None:
    rng = np.random.default_rng(1)
    far = np.r_[rng.normal(0, 1, (60, 5)), rng.normal(1000, 1, (40, 5))]
    obs = pd.DataFrame({"g": ["a"] * 30 + ["b"] * 30 + ["c"] * 40},
                       index=[f"c{i}" for i in range(100)])  # fmt: skip
    adata = ad.AnnData(obs=obs, obsm={"X_pca": far})
    with pytest.raises(InputError, match="40 of 100 cells are not connected to the root"):
        pseudotime(adata, "g", "a", n_neighbors=10)
    assert "pseudotime" not in adata.obs


def test_fate_probabilities_on_the_continuum(continuum: ad.AnnData) -> None:
    """One continuum: one terminal state, its last; every cell reaches it."""
    again = continuum.copy()
    table = fate_probabilities(again, "state")
    assert again.uns["fate"]["terminal_states"] == ["Mac_THBS1"]
    fate = again.obsm["fate"]
    assert list(fate.columns) == ["Mac_THBS1"] and np.allclose(fate["Mac_THBS1"], 1.0)
    assert table["group"].tolist() == list(STATES)
    assert table["is_terminal"].tolist() == [False, False, False, True]

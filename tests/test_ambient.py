"""Ambient RNA (SoupX's method, issue 23): soup, contamination, subtraction against truth."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io import read_sample
from sccohort.pp import estimate_contamination, remove_ambient, soup_profile
from sccohort.simulate import simulate_cohort
from sccohort.simulate.tissue import TISSUE_AMBIENT

KIDNEY = "SSc1_kidney"


def _mixture(rho: float, seed: int = 0) -> tuple[ad.AnnData, pd.Series]:
    """4 cell types with 50 markers each over 800 shared genes; a share rho of soup."""
    rng = np.random.default_rng(seed)
    markers = np.c_[np.ones((4, 800)), np.kron(np.eye(4), np.ones((1, 50))) * 20]
    soup = markers.mean(axis=0) / markers.mean(axis=0).sum()
    types = np.repeat(np.arange(4), 200)
    cells = markers[types] / markers[types].sum(axis=1, keepdims=True)
    counts = rng.poisson(1500 * ((1 - rho) * cells + rho * soup)).astype(np.int32)
    obs = pd.DataFrame({"type": types.astype(str)}, index=[f"c{i}" for i in range(800)])
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(1000)]))
    adata.layers["counts"] = sp.csr_matrix(counts)
    return adata, pd.Series(soup, index=adata.var_names)


@pytest.mark.parametrize("rho", [0.02, 0.05, 0.1, 0.2, 0.3])
def test_contamination_is_recovered(rho: float) -> None:
    adata, soup = _mixture(rho)
    estimate, pairs = estimate_contamination(adata, soup, "type")
    assert abs(estimate - rho) <= 0.01 + 0.05 * rho
    assert list(pairs.columns) == ["gene", "cluster", "observed", "expected", "estimate", "used"]
    assert pairs["used"].sum() >= 100


@pytest.mark.parametrize("groupby", [None, "type"])
def test_subtraction_removes_the_soup_and_only_it(groupby: str | None) -> None:
    adata, soup = _mixture(0.1, seed=1)
    before = adata.layers["counts"].copy()
    removed = remove_ambient(adata, soup, 0.1, groupby=groupby)
    assert removed == pytest.approx(0.1, abs=1e-4)
    after = adata.layers["decontaminated"]
    assert (adata.layers["counts"] != before).nnz == 0  # the counts are left as they are
    assert after.dtype == np.float32 and (after.toarray() <= before.toarray() + 1e-4).all()
    assert (after.data >= 0).all()
    # the markers of type 0 in the cells of the other types: what is left of the soup's share
    other = (adata.obs["type"] != "0").to_numpy()
    marker0 = np.arange(800, 850)
    left = after[other][:, marker0].sum() / before[other][:, marker0].sum()
    assert left < (0.5 if groupby is None else 0.1)
    # per cell, every cell lost a tenth of its counts
    lost = 1 - np.asarray(after.sum(axis=1)).ravel() / np.asarray(before.sum(axis=1)).ravel()
    if groupby is None:
        np.testing.assert_allclose(lost, 0.1, atol=1e-4)
    else:
        assert abs(lost.mean() - 0.1) < 0.01


@pytest.fixture(scope="module")
def kidney(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ad.AnnData, pd.DataFrame]:
    out = tmp_path_factory.mktemp("ambient")
    cohort = simulate_cohort(out, "paper", donors=["SSc1"], tissue="kidney",
                             cells_per_donor=1600, n_empty=2000, seed=1)  # fmt: skip
    rna = read_sample(cohort / KIDNEY / "filtered_feature_bc_matrix.h5", KIDNEY).mod["rna"]
    work = rna.copy()
    sc.pp.normalize_total(work)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=20, random_state=0)
    sc.pp.neighbors(work, random_state=0)
    sc.tl.leiden(work, flavor="igraph", n_iterations=2, random_state=0)
    rna.obs["leiden"] = work.obs["leiden"].to_numpy()
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", keep_default_na=False)
    return cohort, rna, truth.set_index("cell_id").loc[rna.obs_names]


def test_kidney_soup_is_estimated_and_removed(kidney) -> None:
    cohort, rna, truth = kidney
    soup = soup_profile(cohort / KIDNEY / "raw_feature_bc_matrix.h5", rna.obs_names, KIDNEY)
    assert np.isclose(soup.sum(), 1.0) and soup["ALDOB"] > 10 * soup["CD3E"]  # mostly tubule
    rho, _ = estimate_contamination(rna, soup, "leiden")
    assert abs(rho - TISSUE_AMBIENT) <= 0.02
    remove_ambient(rna, soup, rho, groupby="leiden")
    for gene, cells in (("ALDOB", "CD8_TEM_T2ISG"), ("CCL5", "PT")):  # neither expresses it
        j = rna.var_names.get_loc(gene)
        mask = (truth["subset"] == cells).to_numpy()
        before = rna.layers["counts"][mask][:, j].sum()
        after = rna.layers["decontaminated"][mask][:, j].sum()
        assert after < 0.5 * before, (gene, cells, before, after)
    j = rna.var_names.get_loc("CCL5")  # the T cells' own chemokine is kept
    mask = (truth["subset"] == "CD8_TEM_T2ISG").to_numpy()
    assert (
        rna.layers["decontaminated"][mask][:, j].sum()
        > 0.9 * rna.layers["counts"][mask][:, j].sum()
    )


def test_bad_input_is_named(kidney) -> None:
    cohort, rna, _ = kidney
    raw = cohort / KIDNEY / "raw_feature_bc_matrix.h5"
    with pytest.raises(InputError, match="too few to estimate the ambient RNA"):
        soup_profile(raw, rna.obs_names, KIDNEY, max_counts=0)
    soup = pd.Series(1.0 / rna.n_vars, index=rna.var_names)
    with pytest.raises(InputError, match="no column 'cluster'"):
        estimate_contamination(rna, soup, "cluster")
    one = rna.copy()
    one.obs["one"] = "a"
    with pytest.raises(InputError, match="has 1 cluster"):
        estimate_contamination(one, soup, "one")
    with pytest.raises(InputError, match="not a share from 0 to 1"):
        remove_ambient(rna, soup, 1.5)

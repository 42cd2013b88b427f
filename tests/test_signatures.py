"""Per-cell signature scores (scanpy's score_genes, mean z-score) and donor-level means."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from sccohort import read_h5mu
from sccohort.errors import InputError
from sccohort.stats.signatures import SIGNATURES, donor_scores, score_cells, signature_sets

TNFA = "HALLMARK_TNFA_SIGNALING_VIA_NFKB"
IFNG = "HALLMARK_INTERFERON_GAMMA_RESPONSE"


def _adata(seed: int = 0, n: int = 600, g: int = 500, dense: bool = False) -> ad.AnnData:
    """Log-normalised counts; cells of group "hi" express genes 0-19 three times as much."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 1.0, size=g)
    hi = rng.random(n) < 0.3
    lam = np.tile(rate, (n, 1))
    lam[np.ix_(hi, np.arange(20))] *= 3
    counts = rng.poisson(lam)
    x = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    adata = ad.AnnData(x if dense else sp.csr_matrix(x))
    adata.var_names = [f"G{j}" for j in range(g)]
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.obs["group"] = np.where(hi, "hi", "lo")
    return adata


SETS = {"planted": [f"G{j}" for j in range(20)], "other": [f"G{j}" for j in range(200, 260, 2)]}


@pytest.mark.parametrize("dense", [False, True])
def test_score_genes_equals_scanpy_when_controls_are_whole_bins(dense: bool) -> None:
    adata = _adata(dense=dense)
    ours = score_cells(adata, SETS, ctrl_size=10_000)  # every bin gene is a control: no draw
    for name, genes in SETS.items():
        sc.tl.score_genes(adata, genes, ctrl_size=10_000, score_name=name)
        np.testing.assert_allclose(ours[name], adata.obs[name], atol=1e-6)
    assert list(ours.index) == list(adata.obs_names) and list(ours.columns) == list(SETS)


def test_score_genes_random_controls_are_seeded_per_set() -> None:
    adata = _adata()
    a = score_cells(adata, SETS, ctrl_size=10, seed=1)
    pd.testing.assert_frame_equal(a, score_cells(adata, SETS, ctrl_size=10, seed=1))
    alone = score_cells(adata, {"other": SETS["other"]}, ctrl_size=10, seed=1)
    np.testing.assert_array_equal(alone["other"], a["other"])
    b = score_cells(adata, SETS, ctrl_size=10, seed=2)
    assert not np.allclose(a["other"], b["other"])
    # another control draw barely changes the planted program's scores
    assert np.corrcoef(a["planted"], b["planted"])[0, 1] > 0.9


def test_mean_z_equals_dense_formula() -> None:
    adata = _adata()
    ours = score_cells(adata, SETS, method="mean_z")
    x = adata.X.toarray().astype(np.float64)
    for name, genes in SETS.items():
        idx = [adata.var_names.get_loc(g) for g in genes]
        z = (x[:, idx] - x[:, idx].mean(0)) / x[:, idx].std(0)
        np.testing.assert_allclose(ours[name], z.mean(1), atol=1e-5)  # E[x^2] - E[x]^2 rounding


@pytest.mark.parametrize("method", ["score_genes", "mean_z"])
def test_planted_program_separates_cells(method: str) -> None:
    adata = _adata(seed=3)
    scores = score_cells(adata, SETS, method=method)
    hi = adata.obs["group"].eq("hi").to_numpy()
    assert roc_auc_score(hi, scores["planted"]) > 0.95
    assert 0.4 < roc_auc_score(hi, scores["other"]) < 0.6


def test_score_cells_errors() -> None:
    adata = _adata()
    with pytest.raises(InputError, match="gene set 'few'"):
        score_cells(adata, {"few": ["G1", "G2", "NOPE"]})
    with pytest.raises(InputError, match="no layer"):
        score_cells(adata, SETS, layer="counts")
    with pytest.raises(InputError, match="unknown method"):
        score_cells(adata, SETS, method="aucell")


def test_signature_sets_are_the_named_hallmarks() -> None:
    sets = signature_sets()
    assert list(sets) == list(SIGNATURES) == [TNFA, IFNG, "HALLMARK_INTERFERON_ALPHA_RESPONSE"]
    assert "NFKBIA" in sets[TNFA] and "STAT1" in sets[IFNG]
    with pytest.raises(InputError, match="not a Hallmark"):
        signature_sets(["NFKB"])


def _obs() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(4)
    n = 400
    obs = pd.DataFrame(
        {
            "donor_id": rng.choice(["D1", "D2", "D3"], n),
            "subset": rng.choice(["A", "B", "rare"], n, p=[0.5, 0.49, 0.01]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    obs["sample_id"] = obs["donor_id"] + "_t0"
    scores = pd.DataFrame({"s1": rng.normal(size=n), "s2": rng.normal(size=n)}, index=obs.index)
    return scores, obs


def test_donor_scores_are_group_means() -> None:
    scores, obs = _obs()
    out = donor_scores(scores, obs, min_cells=5)
    assert list(out.columns) == ["donor_id", "subset", "set", "score", "sd", "n_cells"]
    assert "rare" not in set(out["subset"]) and (out["n_cells"] >= 5).all()
    expected = scores.groupby([obs["donor_id"], obs["subset"]]).mean()
    for row in out.itertuples():
        assert row.score == pytest.approx(expected.loc[(row.donor_id, row.subset), row.set])
    assert len(out) == 2 * 3 * 2  # donors x subsets (no "rare") x sets


def test_donor_scores_never_pools_timepoints_silently() -> None:
    scores, obs = _obs()
    obs.loc[obs.index[:50], "sample_id"] = "D1_t1"
    obs.loc[obs.index[:50], "donor_id"] = "D1"
    with pytest.raises(InputError, match="several samples: D1"):
        donor_scores(scores, obs)
    kept = ["D1_t0", "D2_t0", "D3_t0"]
    out = donor_scores(scores, obs, samples=kept)
    sizes = obs[obs["sample_id"].isin(kept)].groupby(["donor_id", "subset"]).size()
    got = out.drop_duplicates(["donor_id", "subset"]).set_index(["donor_id", "subset"])["n_cells"]
    pd.testing.assert_series_equal(got, sizes[sizes >= 5], check_names=False)
    by_sample = donor_scores(scores, obs, by=("sample_id", "subset"))
    assert {"D1_t0", "D1_t1"} <= set(by_sample["sample_id"])
    with pytest.raises(InputError, match="without scored cells"):
        donor_scores(scores, obs, samples=["D9_t0"])
    with pytest.raises(InputError, match="lacks the grouping"):
        donor_scores(scores, obs, by=("patient", "subset"))
    # the caller's names: the same check and the same means, under the caller's columns
    renamed = obs.rename(columns={"donor_id": "patient", "sample_id": "run"})
    with pytest.raises(InputError, match="several samples: D1"):
        donor_scores(scores, renamed, sample_key="run", donor_key="patient")
    keyed = donor_scores(scores, renamed, samples=kept, sample_key="run", donor_key="patient")
    pd.testing.assert_frame_equal(keyed.rename(columns={"patient": "donor_id"}), out)


def test_signatures_on_the_simulated_cohort(simulated_run: Path) -> None:
    """CD14_EGR1 cells score highest for TNF-alpha/NF-kB, CD8_TEM_T2ISG above CD8_TEM for IFN-g."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mudata notices
        mdata = read_h5mu(simulated_run / "out" / "cohort.h5mu")
    scores = score_cells(mdata.mod["rna"], signature_sets())
    subset = mdata.obs.loc[scores.index, "subset"].astype(str)
    means = scores.groupby(subset).mean()
    assert means[TNFA].idxmax() == "CD14_EGR1"
    assert means.loc["CD8_TEM_T2ISG", IFNG] > means.loc["CD8_TEM", IFNG]
    per_donor = donor_scores(scores, mdata.obs, min_cells=5)
    tnfa = per_donor[per_donor["set"] == TNFA].pivot(
        index="donor_id", columns="subset", values="score"
    )
    both = tnfa[["CD14_EGR1", "CD14_Mono"]].dropna()
    assert len(both) >= 5
    assert (both["CD14_EGR1"] > both["CD14_Mono"]).all()  # in every donor


@pytest.mark.parametrize("block_values", [1, 1000, 50_000, 10**9])
def test_scores_product_over_row_blocks_equals_the_whole_product(
    block_values: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scipy.sparse as sp

    from sccohort.stats import signatures

    rng = np.random.default_rng(0)
    x = sp.random(3000, 800, density=0.05, format="csr", dtype=np.float32, random_state=0)
    empty = sp.csr_matrix((200, 800), dtype=np.float32)
    x = sp.vstack([x[:1500], empty, x[1500:]]).tocsr()  # empty rows inside
    weights = rng.normal(size=(800, 3))
    monkeypatch.setattr(signatures, "_SCORE_BLOCK_VALUES", block_values)
    np.testing.assert_array_equal(signatures._product(x, weights), np.asarray(x @ weights))

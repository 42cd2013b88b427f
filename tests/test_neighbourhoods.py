"""Neighbourhood differential abundance (Milo-style) on synthetic embeddings with known truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sccohort.cohort import ClinicalTable, Contrast, ContrastDesign
from sccohort.errors import InputError
from sccohort.stats import spatial_fdr
from sccohort.stats.neighbourhoods import PRESETS, neighbourhoods


def blobs(
    seed: int,
    fold: float = 3.0,
    n_case: int = 6,
    n_control: int = 6,
    cells: int = 300,
    dims: int = 10,
    n_blobs: int = 5,
    base_share: float = 0.08,
) -> tuple[np.ndarray, pd.DataFrame, ContrastDesign, list[str]]:
    """Gaussian blobs as cell types; blob0's share is ``fold`` x in case donors; age covariate."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (n_blobs, dims))
    base = np.r_[base_share, np.full(n_blobs - 1, (1 - base_share) / (n_blobs - 1))]
    donors = [f"C{i}" for i in range(n_case)] + [f"H{i}" for i in range(n_control)]
    emb, rows = [], []
    for donor in donors:
        share = base.copy()
        if donor.startswith("C"):
            share[0] *= fold
        kind = rng.choice(n_blobs, size=cells, p=share / share.sum())
        emb.append(centres[kind] + rng.normal(0, 1, (cells, dims)))
        rows += [(f"{donor}_s:{i}", f"{donor}_s", donor, f"blob{b}") for i, b in enumerate(kind)]
    obs = pd.DataFrame(rows, columns=["cell", "sample_id", "donor_id", "subset"]).set_index("cell")
    clinical = pd.DataFrame(
        {
            "grp": ["case" if d.startswith("C") else "ctrl" for d in donors],
            "age": rng.normal(60, 10, len(donors)).round(),
        },
        index=pd.Index(donors, name="donor_id"),
    )
    table = ClinicalTable(clinical, {"grp": "binary", "age": "continuous"})
    design = Contrast("T", "grp", case="case", control="ctrl", covariates=["age"]).design(table)
    return np.vstack(emb), obs, design, [f"{d}_s" for d in donors]


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, tuple]:
    data = blobs(0)
    emb, obs, design, samples = data
    return neighbourhoods(emb, obs, design, samples=samples, d=10, seed=1), data


def test_planted_blob_found_and_nothing_else(planted):
    res, _ = planted
    assert list(res.columns[:11]) == [
        "contrast", "level", "subset", "effect", "ci_low", "ci_high", "pvalue", "padj",
        "method", "n_case", "n_control",
    ]  # fmt: skip
    assert (res["method"] == "milo_nb_qlf").all() and (res["n_case"] == 6).all()
    assert res["nhood"].is_unique and (res["label_fraction"] > 0.9).all()
    hit = res[res["subset"] == "blob0"]
    rest = res[res["subset"] != "blob0"]
    assert len(hit) >= 10
    # true log2 fold change of blob0's share: log2(3 / 1.16) = 1.37
    assert (hit["effect"] > 0).all() and 0.9 < hit["effect"].median() < 2.2
    assert (hit["padj"] < 0.1).mean() >= 0.8
    assert (rest["padj"] < 0.1).mean() <= 0.05
    assert (res["ci_low"] <= res["effect"]).all() and (res["effect"] <= res["ci_high"]).all()
    assert (hit["ci_low"] > 0).mean() >= 0.8
    # spatial FDR is at least the raw p-value and sorted by p
    assert (res["padj"] >= res["pvalue"] - 1e-12).all() and res["pvalue"].is_monotonic_increasing


def test_null_is_calibrated():
    pvalues, any_hit = [], 0
    for seed in range(4):
        emb, obs, design, samples = blobs(100 + seed, fold=1.0, cells=200)
        res = neighbourhoods(emb, obs, design, samples=samples, d=10, seed=seed)
        any_hit += bool((res["padj"] < 0.1).any())
        pvalues.append(res["pvalue"].to_numpy())
    assert any_hit <= 1
    p = np.concatenate(pvalues)
    assert 0.01 <= (p < 0.05).mean() <= 0.1
    assert stats.kstest(p, "uniform").statistic < 0.15


def test_deterministic_and_subsampling(planted):
    res, (emb, obs, design, samples) = planted
    again = neighbourhoods(emb, obs, design, samples=samples, d=10, seed=1)
    pd.testing.assert_frame_equal(res, again)
    renamed = obs.rename(columns={"donor_id": "patient", "sample_id": "run", "subset": "cluster"})
    keyed = neighbourhoods(
        emb, renamed, design, samples=samples, d=10, seed=1,
        sample_key="run", donor_key="patient", label="cluster",
    )  # fmt: skip
    assert (keyed["level"] == "cluster").all()  # the level is the label column's name
    pd.testing.assert_frame_equal(res, keyed.assign(level=res["level"]))
    small = neighbourhoods(emb, obs, design, samples=samples, d=10, cells_per_sample=60, k=10)
    # at most prop * 60 cells * 12 samples index cells; nhoods hold <= the kept cells
    assert len(small) <= round(0.1 * 60 * 12)
    assert small["n_cells"].max() <= 720


def test_presets(planted):
    assert PRESETS["study"] == dataclasses.replace(PRESETS["default"], k=5, prop=0.5)
    assert PRESETS["study_lineage"].prop == 0.2 and PRESETS["study"].cells_per_sample == 1000
    res, (emb, obs, design, samples) = planted
    study = neighbourhoods(emb, obs, design, samples=samples, preset="study", d=10, seed=1)
    assert study["n_cells"].median() < res["n_cells"].median() / 3
    assert len(study) > 2 * len(res)
    hit = study[study["subset"] == "blob0"]
    assert hit["effect"].median() > 0.5
    with pytest.raises(InputError, match="preset"):
        neighbourhoods(emb, obs, design, samples=samples, preset="nope")


def test_total_normalisation_agrees_with_tmm(planted):
    res, (emb, obs, design, samples) = planted
    total = neighbourhoods(emb, obs, design, samples=samples, d=10, seed=1, normalisation="total")
    both = res.merge(total, on="nhood", suffixes=("", "_total"))
    assert len(both) == len(res)
    assert stats.spearmanr(both["effect"], both["effect_total"]).statistic > 0.9
    hit = both[both["subset"] == "blob0"]
    assert (hit["effect_total"] > 0).all() and (hit["padj_total"] < 0.1).mean() >= 0.8
    with pytest.raises(InputError, match="normalisation"):
        neighbourhoods(emb, obs, design, samples=samples, normalisation="cpm")


def test_spatial_fdr_is_weighted_bh():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=50) ** 2
    bh = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(spatial_fdr(p, np.ones(50)), bh)
    # a zero-weight test adds nothing to the running weight sum
    w = np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(spatial_fdr(np.array([0.01, 0.04, 0.02]), w), [0.02, 0.04, 0.04])
    assert np.isnan(spatial_fdr(np.array([np.nan, 0.5]), np.ones(2))[0])


def test_bad_inputs(planted):
    _, (emb, obs, design, samples) = planted
    with pytest.raises(InputError, match="case and .* control"):
        neighbourhoods(emb, obs, dataclasses.replace(design, n_case=1), samples=samples)
    with pytest.raises(InputError, match="sample 'ghost'"):
        neighbourhoods(emb, obs, design, samples=[*samples, "ghost"])
    with pytest.raises(InputError, match="donor.*C0"):
        neighbourhoods(emb, obs, design, samples=samples[1:])
    empty = obs.assign(sample_id=pd.Categorical(obs["sample_id"], [*samples, "C0_b"]))
    with pytest.raises(InputError, match="'C0_b' has no cells"):
        neighbourhoods(emb, empty, design, samples=[*samples, "C0_b"])
    with pytest.raises(InputError, match="column 'l2'"):
        neighbourhoods(emb, obs, design, samples=samples, label="l2")
    with pytest.raises(InputError, match="shape"):
        neighbourhoods(emb[:10], obs, design, samples=samples)
    with pytest.raises(InputError, match="prop"):
        neighbourhoods(emb, obs, design, samples=samples, prop=1.5)

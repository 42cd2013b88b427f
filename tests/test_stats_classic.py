"""The study's classic tests: KS + Bonferroni, Kruskal-Wallis + Dunn, PCA biplot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sccohort.cohort import ClinicalTable, Contrast, ContrastDesign
from sccohort.errors import InputError
from sccohort.io import CORE_COLUMNS
from sccohort.stats.tests import (
    dunn_z,
    kruskal_dunn,
    ks_test,
    proportion_biplot,
    pseudo_share,
)


def _clinical(tmp_path: Path, n_case: int, n_control: int, seed: int = 0) -> ClinicalTable:
    rng = np.random.default_rng(seed)
    donors = [f"P{i}" for i in range(n_case)] + [f"H{i}" for i in range(n_control)]
    frame = pd.DataFrame(
        {
            "donor_id": donors,
            "group": ["SSc"] * n_case + ["HD"] * n_control,
            "age": rng.integers(30, 80, len(donors)),
        }
    )
    path = tmp_path / "clinical.csv"
    frame.to_csv(path, index=False)
    return ClinicalTable.from_csv(path)


def _design(tmp_path: Path, n_case: int = 8, n_control: int = 6) -> ContrastDesign:
    clinical = _clinical(tmp_path, n_case, n_control)
    return Contrast("SSc_vs_HD", "group", "SSc", "HD").design(clinical)


def _shares(donors: pd.Index, n_subsets: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(n_subsets, 5.0), size=len(donors))
    return pd.DataFrame(x, index=donors, columns=[f"s{j}" for j in range(n_subsets)])


# ---------------------------------------------------------------------------------------
# Kolmogorov-Smirnov


def test_ks_matches_scipy_and_bonferroni(tmp_path: Path) -> None:
    design = _design(tmp_path)
    shares = _shares(design.donors, 30, seed=1)
    shares.iloc[: design.n_case, 0] *= 4  # a planted difference so one p-value is small
    res = ks_test(shares, design, "subset")
    assert list(res.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    case = design.group == "case"
    for j, subset in enumerate(shares.columns):
        ref = stats.ks_2samp(shares.loc[case, subset], shares.loc[~case, subset])
        assert res["pvalue"].iloc[j] == pytest.approx(ref.pvalue, rel=1e-12)
        assert res["statistic"].iloc[j] == pytest.approx(ref.statistic)
    np.testing.assert_allclose(res["padj"], np.minimum(res["pvalue"] * 30, 1.0))
    assert res["padj"].max() == 1.0  # capped
    assert res["padj"].iloc[0] == pytest.approx(res["pvalue"].iloc[0] * 30)
    assert res["padj"].iloc[0] < 0.05
    assert (res["method"] == "ks_bonferroni").all()
    assert (res["n_case"] == 8).all() and (res["n_control"] == 6).all()


def test_ks_effect_and_bootstrap_ci(tmp_path: Path) -> None:
    design = _design(tmp_path, 12, 12)
    rng = np.random.default_rng(5)
    base = rng.uniform(0.05, 0.15, size=(24, 3))
    base[:12, 0] *= 3.0  # case donors: 3x the share of s0
    shares = pd.DataFrame(base, index=design.donors, columns=["s0", "s1", "s2"])
    res = ks_test(shares, design, "subset", seed=4).set_index("subset")
    means = shares.groupby(design.group).mean()
    c = pseudo_share(shares.to_numpy())
    expected = np.log2((means.loc["case"] + c) / (means.loc["control"] + c))
    np.testing.assert_allclose(res["effect"], expected.loc[res.index])
    assert res.loc["s0", "ci_low"] < np.log2(3) < res.loc["s0", "ci_high"]
    assert res.loc["s0", "ci_low"] > 1.0  # clearly positive
    assert ((res["ci_low"] <= res["effect"]) & (res["effect"] <= res["ci_high"])).all()
    again = ks_test(shares, design, "subset", seed=4).set_index("subset")
    pd.testing.assert_frame_equal(res, again)
    other = ks_test(shares, design, "subset", seed=5).set_index("subset")
    assert not np.allclose(other["ci_low"], res["ci_low"])
    np.testing.assert_allclose(other["effect"], res["effect"])


def test_ks_nan_share_leaves_donor_out(tmp_path: Path) -> None:
    design = _design(tmp_path)
    shares = _shares(design.donors, 4, seed=2)
    shares.iloc[0, 1] = np.nan  # first case donor has no cells of s1's parent
    res = ks_test(shares, design, "subset_in_l1").set_index("subset")
    assert res.loc["s1", "n_case"] == 7 and res.loc["s0", "n_case"] == 8
    case = (design.group == "case").to_numpy()
    ref = stats.ks_2samp(shares["s1"][case].dropna(), shares["s1"][~case])
    assert res.loc["s1", "pvalue"] == pytest.approx(ref.pvalue)
    assert res[["effect", "ci_low", "ci_high"]].notna().all().all()


def test_ks_errors(tmp_path: Path) -> None:
    clinical = _clinical(tmp_path, 5, 5)
    continuous = Contrast("age", "age").design(clinical)
    shares = _shares(continuous.donors, 3, seed=0)
    with pytest.raises(InputError, match="continuous"):
        ks_test(shares, continuous, "subset")
    design = Contrast("SSc_vs_HD", "group", "SSc", "HD").design(clinical)
    with pytest.raises(InputError, match="have no shares: P0"):
        ks_test(shares.iloc[1:], design, "subset")


# ---------------------------------------------------------------------------------------
# Kruskal-Wallis + Dunn

# Small example with ties. Pooled ranks (average for ties):
#   0.10->1, 0.15->2, 0.20 x3->4, 0.30->6, 0.35->7, 0.40 x2->8.5, 0.50->10, 0.55->11, 0.60->12
#   mean ranks: a (1, 4, 4, 7) = 4.0; b (2, 6, 8.5, 8.5) = 6.25; c (10, 11, 12, 4) = 9.25
#   N = 12: N(N+1)/12 = 13; ties: (3^3 - 3 + 2^3 - 2) / (12 * 11) = 30 / 132
#   z_ab = (4 - 6.25) / sqrt((13 - 30/132) * (1/4 + 1/4)) = -0.890340...
VALUES = [0.10, 0.20, 0.20, 0.35, 0.15, 0.30, 0.40, 0.40, 0.50, 0.55, 0.60, 0.20]
GROUPS = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
# scikit-posthocs 0.17.1 posthoc_dunn(p_adjust=None) on the same data (ab, ac, bc)
SKPH_P = [0.373283556845, 0.037759206677, 0.235180494039]
SKPH_HOLM = [0.470360988077, 0.11327762003, 0.470360988077]


def test_dunn_z_by_hand_and_against_scikit_posthocs() -> None:
    res = dunn_z(np.array(VALUES), np.array(GROUPS), ["a", "b", "c"])
    var = 13 - 30 / 132
    hand = [(4 - 6.25), (4 - 9.25), (6.25 - 9.25)] / np.sqrt(var * 0.5)
    np.testing.assert_allclose(res["z"], hand, rtol=1e-12)
    assert res["z"].iloc[0] == pytest.approx(-0.890340, abs=1e-6)
    np.testing.assert_allclose(res["mean_rank1"], [4.0, 4.0, 6.25])
    np.testing.assert_allclose(res["pvalue"], SKPH_P, rtol=1e-9)
    shares = pd.DataFrame({"s": VALUES}, index=[f"d{i}" for i in range(12)])
    groups = pd.Series(GROUPS, index=shares.index, name="ARA")
    omnibus, pairs = kruskal_dunn(shares, groups, "subset", adjust="holm")
    np.testing.assert_allclose(pairs["padj"], SKPH_HOLM, rtol=1e-9)
    _, bonf = kruskal_dunn(shares, groups, "subset")
    np.testing.assert_allclose(bonf["padj"], np.minimum(np.array(SKPH_P) * 3, 1), rtol=1e-9)
    assert list(pairs["contrast"]) == ["ARA: a vs b", "ARA: a vs c", "ARA: b vs c"]
    ref = stats.kruskal(VALUES[:4], VALUES[4:8], VALUES[8:])
    assert omnibus["pvalue"].iloc[0] == pytest.approx(ref.pvalue)
    assert omnibus["H"].iloc[0] == pytest.approx(ref.statistic)
    assert omnibus["method"].iloc[0] == "kruskal_wallis_holm"


def test_kruskal_null_pvalues_uniform_and_adjustment() -> None:
    rng = np.random.default_rng(0)
    donors = [f"d{i}" for i in range(18)]
    shares = pd.DataFrame(rng.random((18, 400)), index=donors).add_prefix("s")
    groups = pd.Series(np.repeat(["x", "y", "z"], 6), index=donors, name="g")
    omnibus, pairs = kruskal_dunn(shares, groups, "subset", n_boot=20)
    p = omnibus["pvalue"].to_numpy()
    assert stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.02 < np.mean(p < 0.05) < 0.08
    assert 0.02 < np.mean(pairs["pvalue"] < 0.05) < 0.08
    np.testing.assert_allclose(omnibus["padj"], np.minimum(p * 400, 1.0))
    holm, _ = kruskal_dunn(shares, groups, "subset", adjust="holm", n_boot=20)
    assert (holm["padj"] <= omnibus["padj"] + 1e-12).all()
    np.testing.assert_allclose(holm["padj"], multipletests(p, method="holm")[1], rtol=1e-12)
    assert len(pairs) == 400 * 3
    # pairs effect: log2 mean ratio of group1 over group2
    row = pairs[(pairs["subset"] == "s7") & (pairs["group1"] == "x") & (pairs["group2"] == "z")]
    c = pseudo_share(shares.to_numpy())
    means = shares["s7"].groupby(groups).mean()
    assert row["effect"].iloc[0] == pytest.approx(np.log2((means["x"] + c) / (means["z"] + c)))


def test_kruskal_dunn_errors() -> None:
    shares = pd.DataFrame({"s": [0.1, 0.2, 0.3, 0.4]}, index=list("abcd"))
    with pytest.raises(InputError, match=">= 3 levels"):
        kruskal_dunn(shares, pd.Series(["u", "u", "v", "v"], index=shares.index), "subset")
    groups = pd.Series(["u", "v", "w", "w"], index=shares.index)
    with pytest.raises(InputError, match="unknown adjustment"):
        kruskal_dunn(shares, groups, "subset", adjust="fdr")
    with pytest.raises(InputError, match="have no shares"):
        kruskal_dunn(shares.iloc[:3], groups, "subset")
    # all values tied: untestable, NaN rather than a p-value
    tied = pd.DataFrame({"s": [0.0] * 4}, index=list("abcd"))
    omnibus, pairs = kruskal_dunn(tied, groups, "subset", n_boot=5)
    assert omnibus["pvalue"].isna().all() and pairs["z"].isna().all()


# ---------------------------------------------------------------------------------------
# PCA biplot

# Compositions (rows sum to 1). R 4.2: p <- prcomp(x, scale. = TRUE); p$sdev^2 and
# p$rotation[, 1:2] %*% diag(p$sdev[1:2]) (= FactoMineR var$coord), see the values below.
BIPLOT_X = np.array(
    [
        [0.10, 0.30, 0.05, 0.55],
        [0.12, 0.28, 0.07, 0.53],
        [0.20, 0.25, 0.02, 0.53],
        [0.08, 0.35, 0.10, 0.47],
        [0.15, 0.20, 0.15, 0.50],
        [0.25, 0.22, 0.03, 0.50],
    ]
)
R_EIGEN = [1.95707002418, 1.34132870793, 0.701601267884]
R_VAR_COORD = [
    [0.909845549984, 0.319584010406],
    [-0.731771383019, -0.578457473336],
    [-0.636401244461, 0.644653647534],
    [0.434459662572, -0.699287776590],
]
R_SCORES_POP = [  # p$x[, 1:2] * sqrt(n / (n - 1)) (FactoMineR ind$coord)
    [-0.260474623554, -1.660366411009],
    [-0.273049935571, -0.656610544504],
    [1.436002046205, -0.610896319366],
    [-2.461661094130, 0.216578235907],
    [-0.284037095333, 1.973853545892],
    [1.843220702383, 0.737441493080],
]


def test_biplot_matches_r_prcomp() -> None:
    shares = pd.DataFrame(BIPLOT_X, index=[f"d{i}" for i in range(6)], columns=list("ABCD"))
    groups = pd.Series(list("xxxyyy"), index=shares.index)
    res = proportion_biplot(shares, groups)
    np.testing.assert_allclose(res["eigenvalues"].iloc[:3], R_EIGEN, rtol=1e-8)
    assert res["eigenvalues"].sum() == pytest.approx(4.0)  # trace of the correlation matrix
    # PC signs are arbitrary: align on the sign of each column
    sign = np.sign(res["loadings"].to_numpy()[0] * np.array(R_VAR_COORD)[0])
    np.testing.assert_allclose(res["loadings"].to_numpy() * sign, R_VAR_COORD, rtol=1e-8)
    np.testing.assert_allclose(
        res["scores"][["PC1", "PC2"]].to_numpy() * sign, R_SCORES_POP, rtol=1e-8
    )
    ve = res["variance_explained"]
    assert ve.sum() <= 1.0 and ve.iloc[0] == pytest.approx(R_EIGEN[0] / 4)
    centroids = res["scores"].groupby("group")[["PC1", "PC2"]].mean()
    pd.testing.assert_frame_equal(res["centroids"], centroids)


def test_biplot_properties_and_planted_groups() -> None:
    rng = np.random.default_rng(2)
    n, p = 20, 12
    x = rng.dirichlet(np.full(p, 20.0), size=n)
    x[:10, 0] *= 2.5  # group "case": subset s0 expanded
    x[:, 5] = 0.01  # constant subset
    x = x / x.sum(axis=1, keepdims=True)
    x[:, 5] = 0.01
    donors = [f"d{i}" for i in range(n)]
    shares = pd.DataFrame(x, index=donors).add_prefix("s")
    shares["s11"] = np.nan
    shares.loc["d3", "s11"] = 0.2
    groups = pd.Series(["case"] * 10 + ["control"] * 10, index=donors)
    res = proportion_biplot(shares, groups)
    assert res["dropped"] == {"s5": "constant across donors", "s11": "missing share in some donors"}
    loadings, scores = res["loadings"], res["scores"]
    assert loadings.shape == (p - 2, 2) and scores.shape == (n, 3)
    assert 0 < res["variance_explained"].sum() <= 1
    np.testing.assert_allclose(scores[["PC1", "PC2"]].mean(), 0, atol=1e-10)
    # loadings are correlations of each subset with the component scores
    for subset in ("s0", "s3"):
        r = np.corrcoef(shares[subset], scores["PC1"])[0, 1]
        assert loadings.loc[subset, "PC1"] == pytest.approx(r)
    # the planted subset dominates PC1 and separates the groups along it
    assert loadings["PC1"].abs().idxmax() == "s0"
    by_group = scores.groupby("group")["PC1"]
    assert stats.ttest_ind(by_group.get_group("case"), by_group.get_group("control")).pvalue < 1e-3
    assert res["arrow_scale"] > 0
    with pytest.raises(InputError, match=">= 3 donors"):
        proportion_biplot(shares.iloc[:2])

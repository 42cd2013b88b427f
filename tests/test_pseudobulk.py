"""Pseudobulk sums and DESeq2 pseudobulk DE: planted truth, null calibration, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy import stats

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.errors import InputError
from sccohort.simulate import EGR1_PROGRAM, simulate_cohort
from sccohort.stats.deseq2 import _fit_dispersion, _Posterior, _SymStack
from sccohort.stats.pseudobulk import pseudobulk
from sccohort.stats.pseudobulk_de import (
    DE_COLUMNS,
    filter_by_expr,
    pseudobulk_de,
    pseudobulk_de_all,
)

#: The four SRC donors (SSc4 also has pre- and post-onset samples) and six SSc donors without.
DONORS = ["SSc1", "SSc4", "SSc19", "SSc20", "SSc2", "SSc3", "SSc5", "SSc6", "SSc7", "SSc8"]
#: Three SRC donors and three without, for the null design.
NULL_DONORS = ["SSc1", "SSc19", "SSc20", "SSc2", "SSc3", "SSc5"]
#: Genes of the CD14_EGR1 program (the subset's planted markers).
EGR1_GENES = (*EGR1_PROGRAM, "FOS", "JUN", "DUSP1", "KLF6", "TNFAIP3", "PPP1R15A")
SRC = Contrast("SRC", "SRC", case="yes", control="no", covariates=["age"])


def _simulated(
    root: Path, design: str, seed: int, donors: list[str], cells: int
) -> tuple[ad.AnnData, ClinicalTable]:
    """Cells x genes of a small simulated cohort, labelled with the truth l2 cell types."""
    out = simulate_cohort(
        root / design, design=design, cells_per_donor=cells, seed=seed, donors=donors, n_empty=10
    )
    sheet = pd.read_csv(out / "samples.csv")
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in sheet.itertuples():
            part = sc.read_10x_h5(out / row.path, gex_only=True)
            part.obs_names = [f"{row.sample_id}:{b}" for b in part.obs_names]
            part.obs["sample_id"] = row.sample_id
            part.obs["donor_id"] = row.donor_id
            parts.append(part)
        adata = ad.concat(parts, merge="same")
    adata.layers["counts"] = adata.X.copy()
    truth = pd.read_csv(out / "truth" / "cells.csv.gz", index_col=0).reindex(adata.obs_names)
    adata.obs["l2"] = truth["l2"].where(~truth["doublet"].astype(bool)).to_numpy()
    return adata, ClinicalTable.from_csv(out / "clinical.csv")


def _top_genes(counts: pd.DataFrame, n: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The n most-counted genes plus ``extra`` (keeps DESeq2 fits short in tests)."""
    top = counts.sum().sort_values(ascending=False, kind="stable").index[:n]
    return list(dict.fromkeys([*top, *(g for g in extra if g in counts.columns)]))


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory):
    adata, clinical = _simulated(tmp_path_factory.mktemp("pb"), "paper", 11, DONORS, 400)
    counts, meta = pseudobulk(adata, groupby="l2", samples=DONORS)
    return adata, clinical, counts, meta


@pytest.fixture(scope="module")
def null(tmp_path_factory: pytest.TempPathFactory):
    adata, clinical = _simulated(tmp_path_factory.mktemp("pb"), "null", 4, NULL_DONORS, 250)
    counts, _ = pseudobulk(adata, groupby="l2", samples=NULL_DONORS)
    return clinical, counts


def test_pseudobulk_sums_match_dense_groupby(paper) -> None:
    adata, _, counts, meta = paper
    labels = adata.obs["l2"].to_numpy()
    samples = adata.obs["sample_id"].to_numpy()
    for group in ("CD14 Mono", "CD4 Naive"):
        n = meta[meta["group"] == group].set_index("donor_id")["n_cells"]
        assert list(counts[group].index) == sorted(counts[group].index)
        for donor in DONORS:  # baseline sample id == donor id
            cells = (labels == group) & (samples == donor)
            expected = np.asarray(adata.layers["counts"][cells].sum(axis=0)).ravel()
            assert np.array_equal(counts[group].loc[donor].to_numpy(), expected)
            assert n.loc[donor] == cells.sum()
    # combinations under min_cells are listed, not returned
    dropped = meta[~meta["kept"]]
    assert (dropped["n_cells"] < 10).all() and (meta.loc[meta["kept"], "n_cells"] >= 10).all()
    for row in dropped.itertuples():
        assert row.group not in counts or row.donor_id not in counts[row.group].index
    assert len(dropped) > 0


def test_pseudobulk_same_sums_for_every_storage(paper) -> None:
    adata, _, counts, _ = paper
    float_csr = adata.layers["counts"]
    for stored in (
        sp.csr_matrix(float_csr, dtype=np.int32),  # integer CSR: summed in int64
        sp.csc_matrix(float_csr),
        float_csr.toarray().astype(np.int64),  # dense
    ):
        other = adata.copy()
        other.layers["counts"] = stored
        again, _ = pseudobulk(other, groupby="l2", samples=DONORS)
        assert list(again) == list(counts)
        for group, frame in counts.items():  # (a frame comparison per column is slow)
            assert again[group].index.equals(frame.index)
            assert again[group].columns.equals(frame.columns)
            assert again[group].dtypes.eq(np.int64).all()
            assert np.array_equal(again[group].to_numpy(), frame.to_numpy())
    for bad in (-1, np.inf, np.nan):
        broken = adata.copy()
        values = sp.csr_matrix(float_csr, dtype=np.float64 if bad != -1 else np.int32)
        values.data[7] = bad
        broken.layers["counts"] = values
        with pytest.raises(InputError, match="negative or non-integer"):
            pseudobulk(broken, groupby="l2")


def test_pseudobulk_by_sample_and_errors(paper) -> None:
    adata, _, _, _ = paper
    by_sample, meta = pseudobulk(adata, groupby="l2", min_cells=1)
    assert by_sample["CD14 Mono"].index.name == "sample_id"
    assert meta["kept"].all()
    assert {"SSc4_pre", "SSc4", "SSc4_post"} <= set(meta["sample_id"])
    assert (meta.loc[meta["sample_id"] == "SSc4_post", "donor_id"] == "SSc4").all()
    with pytest.raises(InputError, match="donor 'SSc4' has several"):
        pseudobulk(adata, groupby="l2", samples=["SSc1", "SSc4_post", "SSc4"])
    with pytest.raises(InputError, match="have no cells"):
        pseudobulk(adata, groupby="l2", samples=["SSc99"])
    scaled = adata.copy()
    scaled.layers["counts"] = sp.csr_matrix(adata.layers["counts"] * 0.5)
    with pytest.raises(InputError, match="non-integer"):
        pseudobulk(scaled, groupby="l2")
    with pytest.raises(InputError, match="no column 'subset'"):
        pseudobulk(adata, groupby="subset")
    # the caller's column names: the same sums, under sccohort's names
    renamed = adata.copy()
    renamed.obs = renamed.obs.rename(columns={"donor_id": "patient", "sample_id": "run"})
    again, meta_again = pseudobulk(
        renamed, groupby="l2", min_cells=1, sample_key="run", donor_key="patient"
    )
    pd.testing.assert_frame_equal(meta_again, meta)
    pd.testing.assert_frame_equal(again["CD14 Mono"], by_sample["CD14 Mono"])


def test_planted_egr1_program_found_in_cd14_monocytes(paper) -> None:
    _, clinical, counts, _ = paper
    y = counts["CD14 Mono"]
    y = y[_top_genes(y, 120, EGR1_GENES)]
    design = SRC.design(clinical, list(y.index))
    res = pseudobulk_de(y, design, group="CD14 Mono", level="l2")
    assert list(res.columns) == DE_COLUMNS
    assert (res["n_case"] == 4).all() and (res["n_control"] == 6).all()
    planted = res[res["gene"].isin(EGR1_GENES)].set_index("gene")
    assert len(planted) >= 10
    # the SRC donors' 3x CD14_EGR1 share lifts the program in the CD14 Mono pseudobulk
    assert (planted["effect"] > 0).mean() >= 0.9
    found = planted.index[planted["padj"] < 0.05]
    assert len(found) >= 3, planted[["effect", "pvalue", "padj"]]
    top = res.nsmallest(10, "pvalue")["gene"]
    assert top.isin(EGR1_GENES).sum() >= 4
    others = res[~res["gene"].isin(EGR1_GENES)]
    # planted genes rank above the others, and few others are called
    assert stats.mannwhitneyu(planted["pvalue"], others["pvalue"], alternative="less")[1] < 1e-3
    assert (others["padj"] < 0.05).mean() < 0.05
    ok = res.dropna(subset=["pvalue"])
    assert (ok["ci_low"] < ok["effect"]).all() and (ok["effect"] < ok["ci_high"]).all()


def test_null_design_gives_uniform_pvalues_and_is_deterministic(null) -> None:
    clinical, counts = null
    y = counts["CD14 Mono"]
    y = y[_top_genes(y, 150)]
    design = SRC.design(clinical, list(y.index))
    res = pseudobulk_de(y, design, group="CD14 Mono", level="l2")
    p = res["pvalue"].dropna()
    assert len(p) >= 120
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert (res["padj"] < 0.05).sum() <= 2
    again = pseudobulk_de(y.iloc[:, :40], design, group="CD14 Mono", level="l2")
    pd.testing.assert_frame_equal(
        again, pseudobulk_de(y.iloc[:, :40], design, group="CD14 Mono", level="l2")
    )


@pytest.fixture
def age_case(tmp_path: Path):
    rng = np.random.default_rng(0)
    donors = [f"D{i}" for i in range(12)]
    age = np.round(np.linspace(20, 75, 12), 1)
    path = tmp_path / "clinical.csv"
    pd.DataFrame({"donor_id": donors, "age": age, "sex": ["F", "M"] * 6}).to_csv(path, index=False)
    clinical = ClinicalTable.from_csv(path)
    n_genes = 80
    base = rng.lognormal(4, 1, n_genes)
    slope = np.zeros(n_genes)
    slope[:8] = 0.04  # log2 fold change per year
    mu = base[None, :] * 2 ** (slope[None, :] * (age[:, None] - age.mean()))
    mu *= rng.lognormal(0, 0.1, (12, n_genes))
    y = pd.DataFrame(rng.poisson(mu), index=donors, columns=[f"g{i}" for i in range(n_genes)])
    return clinical, y, slope


def test_continuous_effect_is_per_unit(age_case) -> None:
    clinical, y, slope = age_case
    design = Contrast("age_trend", "age", covariates=["sex"]).design(clinical, list(y.index))
    res = pseudobulk_de(y, design, group="B naive").set_index("gene")
    assert res["method"].iloc[0].endswith("per unit")
    assert (res["n_case"] == 12).all() and (res["n_control"] == 0).all()
    planted = res.loc[[f"g{i}" for i in range(8)]]
    assert np.allclose(planted["effect"], 0.04, atol=0.015)
    assert (planted["ci_low"] < 0.04).mean() >= 0.75 and (planted["ci_high"] > 0.04).mean() >= 0.75
    assert (planted["padj"] < 0.05).all()
    flat = res.drop(planted.index)
    assert (flat["padj"] < 0.05).sum() <= 2


def test_bad_inputs_and_skips(paper) -> None:
    _, clinical, counts, _ = paper
    y = counts["CD14 Mono"].iloc[:, :30]
    design = SRC.design(clinical, list(y.index))
    with pytest.raises(InputError, match="needs 5 donors per side"):
        pseudobulk_de(y, design, group="CD14 Mono", min_donors=5)
    with pytest.raises(InputError, match="non-integer"):
        pseudobulk_de(y * 0.5, design, group="CD14 Mono")
    renamed = y.rename(index=lambda d: f"{d}_baseline")
    with pytest.raises(InputError, match="Index the counts by donor_id"):
        pseudobulk_de(renamed, design, group="CD14 Mono")
    with pytest.raises(InputError, match="unknown pseudobulk DE engine"):
        pseudobulk_de(y, design, group="CD14 Mono", engine="limma")
    # a group missing two SRC donors is skipped with its reason, the others run
    sparse_group = y.drop(index=["SSc1", "SSc19", "SSc20"])
    results, skipped = pseudobulk_de_all(
        {"CD14 Mono": sparse_group, "gone": y.iloc[:0]}, design, level="l2", groups=None
    )
    assert results.empty and list(results.columns) == DE_COLUMNS
    assert set(skipped["subset"]) == {"CD14 Mono", "gone"}
    reason = skipped.set_index("subset").loc["CD14 Mono", "reason"]
    assert "1 case / 6 control" in reason
    results, skipped = pseudobulk_de_all(
        {"CD14 Mono": y}, design, level="l2", groups=["CD14 Mono", "pDC"]
    )
    assert set(results["subset"]) == {"CD14 Mono"} and list(skipped["subset"]) == ["pDC"]


def test_filter_by_expr_follows_edger_rule() -> None:
    # 3 vs 5 donors, library 1e6 each: CPM cutoff 10; smallest group 3 donors
    y = pd.DataFrame(
        {
            "in_three": [20, 20, 20, 0, 0, 0, 0, 0],
            "in_two": [50, 50, 0, 0, 0, 0, 0, 0],
            "low_total": [9, 9, 9, 9, 9, 9, 9, 9],
        },
        index=[f"d{i}" for i in range(8)],
    )
    y["filler"] = 1_000_000 - y.sum(axis=1)
    design = pd.DataFrame({"intercept": 1.0, "case": [1.0] * 3 + [0.0] * 5}, index=y.index)
    keep = filter_by_expr(y, design)
    assert keep.to_dict() == {
        "in_three": True,
        "in_two": False,
        "low_total": False,
        "filler": True,
    }


def test_engines_agree(paper) -> None:
    pytest.importorskip("pydeseq2")
    _, clinical, counts, _ = paper
    y = counts["CD14 Mono"]
    y = y[_top_genes(y, 80, EGR1_GENES)]
    design = SRC.design(clinical, list(y.index))
    ours = pseudobulk_de(y, design, group="CD14 Mono").set_index("gene")
    ref = pseudobulk_de(y, design, group="CD14 Mono", engine="pydeseq2").set_index("gene")
    ref = ref.loc[ours.index]
    assert stats.spearmanr(ours["effect"], ref["effect"])[0] > 0.99
    assert np.nanmax(np.abs(ours["effect"] - ref["effect"])) < 0.05
    assert stats.spearmanr(ours["pvalue"], ref["pvalue"], nan_policy="omit")[0] > 0.98
    assert ours["method"].iloc[0] != ref["method"].iloc[0]


def test_symmetric_stack_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    for p in (1, 2, 3, 5):
        a = rng.normal(size=(40, p, p))
        spd = a @ a.transpose(0, 2, 1) + p * np.eye(p)
        stack = _SymStack({(i, j): spd[:, i, j] for i in range(p) for j in range(i, p)}, p)
        assert np.allclose(stack.logdet(), np.linalg.slogdet(spd)[1])
        rhs = rng.normal(size=(40, p))
        solved = np.column_stack(stack.solve([rhs[:, i] for i in range(p)]))
        assert np.allclose(solved, np.linalg.solve(spd, rhs[..., None])[..., 0])
        inv = np.linalg.inv(spd)
        for (i, j), value in stack.inverse().items():
            assert np.allclose(value, inv[:, i, j])


def test_dispersion_fit_reaches_the_posterior_maximum() -> None:
    rng = np.random.default_rng(5)
    n_genes, n = 200, 14
    x = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.normal(50, 10, n)])
    alpha = np.exp(rng.normal(-2.5, 1.0, n_genes))
    mu = rng.lognormal(4, 1.2, (n_genes, 1)) * np.exp(rng.normal(0, 0.2, (n_genes, n)))
    y = rng.negative_binomial(1 / alpha[:, None], 1 / (1 + alpha[:, None] * mu)).astype(float)
    genes = np.arange(n_genes)
    for prior in (None, np.log(alpha) + rng.normal(0, 0.5, n_genes)):
        post = _Posterior(y, mu, x, prior, 0.6)
        t = np.log(alpha) + rng.normal(0, 0.3, n_genes)
        h = 1e-5
        numeric = (post.value(t + h, genes) - post.value(t - h, genes)) / (2 * h)
        assert np.allclose(post.slope(t, genes), numeric, rtol=1e-4, atol=1e-4)
        fit = _fit_dispersion(y, mu, x, max(10.0, n), alpha, prior, 0.6)
        # away from the flat near-Poisson region, where the posterior barely moves
        inner = (fit > 1e-4) & (fit < 10)
        assert inner.mean() > 0.8
        # a brute-force search around each estimate finds nothing higher
        best = post.value(np.log(fit), genes)
        for offset in np.linspace(-0.5, 0.5, 41):
            assert np.all(post.value(np.log(fit) + offset, genes)[inner] <= best[inner] + 1e-8)
        # the estimates track the true dispersions
        assert np.corrcoef(np.log(fit[inner]), np.log(alpha[inner]))[0, 1] > 0.8

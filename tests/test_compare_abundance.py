"""The default donor-level abundance test on count-level simulations with known truth."""

from __future__ import annotations

import math
from itertools import combinations, permutations

import numpy as np
import pandas as pd
import pytest

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.errors import InputError
from sccohort.stats.abundance import compare_abundance as abundance
from sccohort.stats.permutation import precision_weights

#: 20 subsets with realistic PBMC shares; S10 is the 3% subset that gets planted effects and S3
#: the one whose share falls with age.
SHARES = np.array(
    [0.20, 0.14, 0.11, 0.09, 0.07, 0.06, 0.05, 0.045, 0.04, 0.035]
    + [0.03, 0.025, 0.02, 0.02, 0.015, 0.012, 0.01, 0.008, 0.006, 0.004]
)
SHARES = SHARES / SHARES.sum()
SUBSETS = [f"S{i}" for i in range(len(SHARES))]
PLANTED, AGED = 10, 3
#: Dirichlet concentration of the donors' compositions (the simulator's default).
CONCENTRATION = 300.0


def dm_counts(
    rng: np.random.Generator, age: np.ndarray, fold: np.ndarray, cells: int = 2000
) -> pd.DataFrame:
    """Donors x subsets counts: Dirichlet-multinomial around SHARES, S3 falling with age
    (log share -0.03 per year), S10 multiplied by ``fold`` per donor (then renormalised)."""
    rows = []
    for a, f in zip(age, fold, strict=True):
        expected = SHARES.copy()
        expected[AGED] *= np.exp(-0.03 * (a - 60))
        share = rng.dirichlet(CONCENTRATION * expected / expected.sum())
        share[PLANTED] *= f
        rows.append(rng.multinomial(rng.poisson(cells), share / share.sum()))
    donors = [f"D{i}" for i in range(len(age))]
    return pd.DataFrame(rows, index=donors, columns=SUBSETS)


def totals_of(counts: pd.DataFrame) -> pd.DataFrame:
    """Every subset's denominator: all cells of the donor."""
    return pd.DataFrame(
        np.repeat(counts.sum(axis=1).to_numpy()[:, None], counts.shape[1], axis=1),
        index=counts.index,
        columns=counts.columns,
    )


def binary_cohort(
    rng: np.random.Generator, fold: float = 1.0, n: int = 21, n_case: int = 4
) -> tuple[pd.DataFrame, ClinicalTable]:
    """Counts and a clinical table: ``n_case`` random cases (independent of age), age 40-85."""
    age = rng.uniform(40, 85, n)
    case = np.zeros(n, dtype=bool)
    case[rng.choice(n, n_case, replace=False)] = True
    counts = dm_counts(rng, age, np.where(case, fold, 1.0))
    table = pd.DataFrame(
        {"SRC": np.where(case, "yes", "no").astype(object), "age": age},
        index=pd.Index(counts.index, name="donor_id"),
    )
    return counts, ClinicalTable(table, {"SRC": "binary", "age": "continuous"})


def src_design(clinical: ClinicalTable, covariates: tuple[str, ...] = ("age",)):
    return Contrast("SRC", "SRC", "yes", "no", covariates=list(covariates)).design(clinical)


def test_null_type_one_error_with_age_covariate() -> None:
    # 4 vs 17 with an age covariate that moves S3: 120 null cohorts x 20 subsets.
    rng = np.random.default_rng(2024)
    pvalues, aged = [], []
    for k in range(120):
        counts, clinical = binary_cohort(rng)
        result = abundance(
            counts, totals_of(counts), src_design(clinical), level="subset", n_perm=500, seed=k
        )
        assert (result["scheme"] == "freedman-lane").all()
        pvalues.append(result["pvalue"].to_numpy())
        aged.append(result["pvalue"].iloc[AGED])
    p = np.concatenate(pvalues)
    assert p.size == 2400
    assert 0.03 <= (p < 0.05).mean() <= 0.07
    assert 0.005 <= (p < 0.01).mean() <= 0.02
    assert 0.45 <= (p < 0.5).mean() <= 0.55
    # the subset that moves with age is not a false positive once age is in the model
    assert (np.array(aged) < 0.05).mean() <= 0.1


def test_null_exact_enumeration_without_covariates() -> None:
    rng = np.random.default_rng(7)
    pvalues = []
    for _ in range(40):
        counts, clinical = binary_cohort(rng)
        result = abundance(counts, totals_of(counts), src_design(clinical, ()), level="subset")
        assert (result["scheme"] == "exact").all() and (result["n_perm"] == 5985).all()
        pvalues.append(result["pvalue"].to_numpy())
    p = np.concatenate(pvalues)
    assert 0.03 <= (p < 0.05).mean() <= 0.07
    # exact p-values are multiples of 1 / 5985
    assert np.allclose(p * 5985, np.round(p * 5985))


def test_planted_expansion_is_found() -> None:
    rng = np.random.default_rng(5)
    found, effects, covered, others, ratios = 0, [], 0, [], []
    truth = np.log2(2.5 / (1 + 1.5 * SHARES[PLANTED]))  # fold of the share after renormalising
    for k in range(20):
        counts, clinical = binary_cohort(rng, fold=2.5)
        result = abundance(
            counts, totals_of(counts), src_design(clinical), level="subset", n_perm=2000, seed=k
        )
        row = result.iloc[PLANTED]
        found += row["padj"] < 0.05
        effects.append(row["effect"])
        covered += row["ci_low"] <= truth <= row["ci_high"]
        ratios.append(row["mean_share_case"] / row["mean_share_control"])
        others.append(result.drop(index=PLANTED)[["pvalue", "padj"]])
    rest = pd.concat(others)
    assert found >= 14
    assert 2.0 < np.median(ratios) < 3.0
    assert abs(np.mean(effects) - truth) < 0.2
    assert covered >= 17
    assert (rest["padj"] < 0.05).mean() < 0.02
    assert (rest["pvalue"] < 0.05).mean() < 0.08


def test_categorical_phenotype() -> None:
    rng = np.random.default_rng(3)
    groups = np.array(["ACA"] * 8 + ["ATA"] * 8 + ["ARA"] * 6, dtype=object)
    age = rng.uniform(40, 85, groups.size)
    counts = dm_counts(rng, age, np.where(groups == "ARA", 3.0, 1.0))
    table = pd.DataFrame(
        {"autoantibody": groups, "age": age}, index=pd.Index(counts.index, name="donor_id")
    )
    clinical = ClinicalTable(table, {"autoantibody": "categorical", "age": "continuous"})
    design = Contrast("ARA", "autoantibody", "ARA", covariates=["age"]).design(clinical)
    assert design.kind == "categorical"
    result = abundance(counts, totals_of(counts), design, level="subset", n_perm=2000)
    assert (result[["n_case", "n_control"]] == [6, 16]).all().all()
    planted = result.iloc[PLANTED]
    assert planted["padj"] < 0.05 and planted["effect"] > 1.0
    assert (result.drop(index=PLANTED)["padj"] >= 0.05).all()
    assert set(result["contrast"]) == {"ARA"} and set(result["level"]) == {"subset"}


def test_continuous_phenotype_effect_per_unit() -> None:
    rng = np.random.default_rng(4)
    n = 21
    skin = rng.uniform(0, 30, n)  # e.g. modified Rodnan skin score
    slope = 0.04  # natural-log share per unit
    counts = dm_counts(rng, np.full(n, 60.0), np.exp(slope * (skin - 15)))
    table = pd.DataFrame({"mRSS": skin}, index=pd.Index(counts.index, name="donor_id"))
    clinical = ClinicalTable(table, {"mRSS": "continuous"})
    design = Contrast("skin", "mRSS").design(clinical)
    result = abundance(counts, totals_of(counts), design, level="subset", n_perm=2000)
    planted = result.iloc[PLANTED]
    assert planted["scheme"] == "random" and planted["n_perm"] == 2000
    assert planted["padj"] < 0.05
    assert planted["ci_low"] < slope / math.log(2) < planted["ci_high"]
    assert result["mean_share_case"].isna().all()  # no groups for a continuous variable
    assert (result.drop(index=PLANTED)["padj"] < 0.05).sum() <= 1


def _ols_t(y: np.ndarray, x: np.ndarray, term: int) -> np.ndarray:
    """Ordinary t of column ``term`` of ``x`` for every column of ``y`` (the slow way)."""
    coef, rss, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = rss / (x.shape[0] - x.shape[1])
    return coef[term] / np.sqrt(s2 * np.linalg.inv(x.T @ x)[term, term])


def _small_cohort(n: int, n_case: int, seed: int) -> tuple[pd.DataFrame, ClinicalTable]:
    rng = np.random.default_rng(seed)
    counts, clinical = binary_cohort(rng, fold=2.0, n=n, n_case=n_case)
    return counts, clinical


def test_exact_p_values_match_brute_force_enumeration() -> None:
    counts, clinical = _small_cohort(8, 3, seed=1)
    design = src_design(clinical, ())
    result = abundance(
        counts, totals_of(counts), design, level="l2", moderate=False, weighted=False
    )
    assert (result["scheme"] == "exact").all() and (result["n_perm"] == 56).all()
    y = np.arcsin(np.sqrt(counts.to_numpy() / totals_of(counts).to_numpy()))
    x = design.matrix.to_numpy()
    observed = np.abs(_ols_t(y, x, 1))
    extreme = np.zeros(y.shape[1])
    for cases in combinations(range(8), 3):
        xp = x.copy()
        xp[:, 1] = 0
        xp[list(cases), 1] = 1
        extreme += np.abs(_ols_t(y, xp, 1)) >= observed * (1 - 1e-9)
    assert np.allclose(result["statistic"].abs(), observed)
    assert np.array_equal(result["pvalue"].to_numpy(), extreme / 56)
    log2_share = np.log2((counts.to_numpy() + 0.5) / (totals_of(counts).to_numpy() + 1))
    coef = np.linalg.lstsq(x, log2_share, rcond=None)[0][1]
    assert np.allclose(result["effect"], coef)


def test_freedman_lane_exact_matches_brute_force() -> None:
    counts, clinical = _small_cohort(7, 3, seed=2)
    design = src_design(clinical)
    result = abundance(
        counts, totals_of(counts), design, level="l2", moderate=False, weighted=False
    )
    assert (result["scheme"] == "freedman-lane-exact").all()
    assert (result["n_perm"] == math.factorial(7)).all()
    y = np.arcsin(np.sqrt(counts.to_numpy() / totals_of(counts).to_numpy()))
    x = design.matrix.to_numpy()
    z = x[:, [0, 2]]
    fitted = z @ np.linalg.lstsq(z, y, rcond=None)[0]
    resid = y - fitted
    observed = np.abs(_ols_t(y, x, 1))
    extreme = np.zeros(y.shape[1])
    for order in permutations(range(7)):
        extreme += np.abs(_ols_t(fitted + resid[list(order)], x, 1)) >= observed * (1 - 1e-9)
    assert np.array_equal(result["pvalue"].to_numpy(), extreme / math.factorial(7))


def _wls_t(y: np.ndarray, x: np.ndarray, term: int, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares t of column ``term`` for every column of ``y`` (weights ``w``)."""
    out = []
    for g in range(y.shape[1]):
        root = np.sqrt(w[:, g])
        out.append(_ols_t((root * y[:, g])[:, None], root[:, None] * x, term)[0])
    return np.array(out)


def _weighted_inputs(counts: pd.DataFrame, design) -> tuple[np.ndarray, ...]:
    """Arcsine shares, design matrix and precision weights as the test computes them."""
    totals = totals_of(counts).to_numpy()
    y = np.arcsin(np.sqrt(counts.to_numpy() / totals))
    x = design.matrix.to_numpy()
    return y, x, precision_weights(y, 1 / (4 * totals), np.delete(x, 1, axis=1))


@pytest.mark.parametrize("covariates", [(), ("age",)])
def test_weighted_p_values_match_brute_force(covariates) -> None:
    """Precision weights stay with their donors while the design's rows are rearranged."""
    counts, clinical = _small_cohort(7, 3, seed=3)
    counts.iloc[0] = np.maximum(counts.iloc[0] // 200, 1)  # a donor with a handful of cells
    design = src_design(clinical, covariates)
    result = abundance(counts, totals_of(counts), design, level="l2", moderate=False)
    y, x, w = _weighted_inputs(counts, design)
    assert (w[0] < 0.5 * w[1:].min(axis=0)).all()  # the small donor weighs least everywhere
    reduced = np.delete(x, 1, axis=1)
    resid = np.empty_like(y)
    for g in range(y.shape[1]):
        root = np.sqrt(w[:, g])
        coef = np.linalg.lstsq(root[:, None] * reduced, root * y[:, g], rcond=None)[0]
        resid[:, g] = y[:, g] - reduced @ coef
    observed = np.abs(_wls_t(y, x, 1, w))
    extreme = np.zeros(y.shape[1])
    orders = list(permutations(range(7)))
    if not covariates:  # the 35 distinct relabellings
        orders = [order for order in orders if list(x[list(order), 1]).count(1) == 3]
        orders = list({tuple(x[list(o), 1]): o for o in orders}.values())
    for order in orders:
        extreme += np.abs(_wls_t(resid, x[list(order)], 1, w)) >= observed * (1 - 1e-9)
    assert np.allclose(result["statistic"].abs(), observed)
    assert np.array_equal(result["pvalue"].to_numpy(), extreme / len(orders))


# Reference values from R 4.2, limma 3.54.1, eBayes(lmFit(t(y), X)) coefficient 2 on LIMMA_COUNTS
# (cases: the last four donors): y = asin(sqrt(share)) for the t, log2((count + 0.5) / 1001) for
# the effect and its confidence interval (topTable(confint=TRUE)).
LIMMA_COUNTS = np.array(
    [
        [120, 40, 30, 9, 300],
        [98, 55, 22, 14, 310],
        [130, 35, 41, 7, 280],
        [105, 61, 18, 12, 330],
        [140, 48, 25, 30, 290],
        [90, 52, 33, 26, 305],
        [115, 39, 29, 28, 295],
        [125, 58, 20, 22, 320],
    ]
)
LIMMA_ASIN_T = [0.3835, 0.2675, -0.1085, 3.8436, -0.1639]  # df.prior Inf
LIMMA_LOG2_EFFECT = [0.04340, 0.06544, -0.00709, 1.33169, -0.01035]
LIMMA_LOG2_CI_LOW = [-0.31917, -0.39857, -0.60731, 0.85090, -0.22444]
LIMMA_LOG2_CI_HIGH = [0.40598, 0.52946, 0.59312, 1.81247, 0.20373]


def test_moderated_statistics_match_limma() -> None:
    donors = [f"D{i}" for i in range(8)]
    counts = pd.DataFrame(LIMMA_COUNTS, index=donors, columns=[f"S{j}" for j in range(5)])
    totals = pd.DataFrame(1000, index=donors, columns=counts.columns)
    status = np.array(["no"] * 4 + ["yes"] * 4, dtype=object)
    table = pd.DataFrame({"SRC": status}, index=pd.Index(donors, name="donor_id"))
    design = src_design(ClinicalTable(table, {"SRC": "binary"}), ())
    result = abundance(counts, totals, design, level="l1", weighted=False)
    assert (result["method"] == "perm_lm_asin_log2share").all()
    assert np.allclose(result["statistic"], LIMMA_ASIN_T, atol=1e-4)
    assert np.isinf(result["df_prior"]).all()
    assert np.allclose(result["effect"], LIMMA_LOG2_EFFECT, atol=1e-5)
    assert np.allclose(result["ci_low"], LIMMA_LOG2_CI_LOW, atol=1e-5)
    assert np.allclose(result["ci_high"], LIMMA_LOG2_CI_HIGH, atol=1e-5)
    # 4 of 8: 70 relabellings; S3 is the most extreme of them in both directions
    assert (result["n_perm"] == 70).all() and result["pvalue"].iloc[3] == 2 / 70


# R 4.2, limma 3.54.1: the same as above with the first donor cut to 150 cells (counts * 0.15,
# rounded) and lmFit(..., weights = t(w)), w = precision_weights of each scale (the values this
# test computes), eBayes; the reference checks the weighted moderated fit, not the weights.
LIMMA_WEIGHTED_T = [0.5144, -0.0106, 0.0646, 3.7386, -0.2421]
LIMMA_WEIGHTED_EFFECT = [0.06939, -0.03768, -0.05274, 1.25297, -0.02232]
LIMMA_WEIGHTED_CI_LOW = [-0.30186, -0.48111, -0.68051, 0.78457, -0.24500]
LIMMA_WEIGHTED_CI_HIGH = [0.44063, 0.40575, 0.57504, 1.72136, 0.20037]


def test_weighted_moderated_statistics_match_limma() -> None:
    donors = [f"D{i}" for i in range(8)]
    values = LIMMA_COUNTS.copy()
    values[0] = np.round(values[0] * 0.15)
    counts = pd.DataFrame(values, index=donors, columns=[f"S{j}" for j in range(5)])
    totals = pd.DataFrame(1000, index=donors, columns=counts.columns)
    totals.iloc[0] = 150
    status = np.array(["no"] * 4 + ["yes"] * 4, dtype=object)
    table = pd.DataFrame({"SRC": status}, index=pd.Index(donors, name="donor_id"))
    design = src_design(ClinicalTable(table, {"SRC": "binary"}), ())
    result = abundance(counts, totals, design, level="l1")
    assert np.allclose(result["statistic"], LIMMA_WEIGHTED_T, atol=1e-4)
    assert np.allclose(result["effect"], LIMMA_WEIGHTED_EFFECT, atol=1e-5)
    assert np.allclose(result["ci_low"], LIMMA_WEIGHTED_CI_LOW, atol=1e-5)
    assert np.allclose(result["ci_high"], LIMMA_WEIGHTED_CI_HIGH, atol=1e-5)


def test_deterministic_for_a_seed() -> None:
    counts, clinical = binary_cohort(np.random.default_rng(9))
    design = src_design(clinical)
    a = abundance(counts, totals_of(counts), design, level="subset", n_perm=300, seed=1)
    b = abundance(counts, totals_of(counts), design, level="subset", n_perm=300, seed=1)
    c = abundance(counts, totals_of(counts), design, level="subset", n_perm=300, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a["pvalue"], c["pvalue"])
    assert np.array_equal(a["effect"], c["effect"])


# --- bad inputs -------------------------------------------------------------------------------


@pytest.fixture
def small() -> tuple[pd.DataFrame, pd.DataFrame, object]:
    counts, clinical = binary_cohort(np.random.default_rng(12), n=10, n_case=4)
    return counts, totals_of(counts), src_design(clinical)


def test_missing_donors_are_named(small) -> None:
    counts, totals, design = small
    with pytest.raises(InputError, match=r"D3, D7 of contrast 'SRC' have no row"):
        abundance(counts.drop(["D3", "D7"]), totals.drop(["D3", "D7"]), design, level="l1")


def test_subset_absent_from_all_donors_is_not_tested(small) -> None:
    counts, totals, design = small
    counts = counts.assign(S5=0)
    result = abundance(counts, totals, design, level="subset", n_perm=200)
    row = result.set_index("subset").loc["S5"]
    assert row["note"].startswith("not tested: no cells")
    assert np.isnan(row["pvalue"]) and np.isnan(row["padj"]) and np.isnan(row["effect"])
    tested = result[result["subset"] != "S5"]
    assert tested["pvalue"].notna().all() and (tested["note"] == "").all()


def test_zero_total_for_some_subsets_of_a_donor_is_not_tested(small) -> None:
    counts, totals, design = small
    # within-parent shares: the parent of S1 and S2 has no cells in D4
    counts.loc["D4", ["S1", "S2"]] = 0
    totals.loc["D4", ["S1", "S2"]] = 0
    result = abundance(counts, totals, design, level="subset", n_perm=200).set_index("subset")
    assert result.loc["S1", "note"] == ("not tested: total is 0 (share undefined) in donor(s) D4")
    assert result.loc[["S1", "S2"], "pvalue"].isna().all()
    assert result.drop(index=["S1", "S2"])["pvalue"].notna().all()


def test_constant_share_is_not_tested(small) -> None:
    counts, totals, design = small
    totals["S7"] = counts["S7"]  # the only child of its parent: share 1 in every donor
    result = abundance(counts, totals, design, level="subset", n_perm=200).set_index("subset")
    assert result.loc["S7", "note"] == "not tested: the share is 1 in every donor"
    assert np.isnan(result.loc["S7", "pvalue"])
    assert result.drop(index="S7")["pvalue"].notna().all()


def test_donor_without_cells(small) -> None:
    counts, totals, design = small
    counts.loc["D2"] = 0
    totals.loc["D2"] = 0
    with pytest.raises(InputError, match="D2 have no cells"):
        abundance(counts, totals, design, level="l1")


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "is missing"), (-1, "is -1;"), (2.5, "is 2.5;")],
)
def test_bad_count_values(small, value, message) -> None:
    counts, totals, design = small
    counts = counts.astype(float)
    counts.loc["D1", "S4"] = value
    with pytest.raises(InputError, match=rf"donor 'D1', subset 'S4'.*{message}"):
        abundance(counts, totals, design, level="l1")


def test_count_above_total(small) -> None:
    counts, totals, design = small
    totals.loc["D6", "S0"] = counts.loc["D6", "S0"] - 1
    with pytest.raises(InputError, match=r"donor 'D6', subset 'S0'.*but a total of"):
        abundance(counts, totals, design, level="l1")


def test_mismatched_tables(small) -> None:
    counts, totals, design = small
    with pytest.raises(InputError, match="different donors or subsets"):
        abundance(counts, totals.drop(columns="S0"), design, level="l1")


def test_group_with_one_donor_is_refused_by_the_design() -> None:
    counts, clinical = binary_cohort(np.random.default_rng(1), n=10, n_case=1)
    with pytest.raises(InputError, match="has 1 donor"):
        src_design(clinical)


def test_compare_donor_values_finds_a_planted_score_shift() -> None:
    from sccohort.stats.abundance import compare_donor_values

    rng = np.random.default_rng(3)
    _, clinical = binary_cohort(rng)
    design = src_design(clinical)
    values = pd.DataFrame(
        rng.normal(0.1, 0.02, size=(len(design.donors), 12)),
        index=design.donors,
        columns=[f"s{i}" for i in range(12)],
    )
    is_case = (design.group == "case").to_numpy()
    values.loc[is_case, "s0"] += 0.06
    values.iloc[0, 5] = np.nan  # a donor without enough cells of s5
    result = compare_donor_values(values, design, level="signature:X", n_perm=2000).set_index(
        "subset"
    )
    assert result.loc["s0", "padj"] < 0.05
    assert result.loc["s0", "ci_low"] < 0.06 < result.loc["s0", "ci_high"]
    assert (result.drop(index=["s0", "s5"])["padj"] > 0.05).all()
    # s5 lacks one donor: tested on the others
    assert np.isfinite(result.loc["s5", "pvalue"]) and "no value" in result.loc["s5", "note"]
    assert result.loc["s5", ["n_case", "n_control"]].sum() == len(design.donors) - 1
    values.iloc[:20, 7] = np.nan  # one donor left: not testable
    again = compare_donor_values(values, design, level="x", n_perm=500).set_index("subset")
    assert np.isnan(again.loc["s7", "pvalue"]) and "too few donors" in again.loc["s7", "note"]


@pytest.mark.parametrize(
    ("n", "n_case", "covariates", "bound"),
    [
        (4, 2, (), 2 / 6),  # 6 relabellings; the observed one and its mirror tie
        (21, 4, (), 1 / math.comb(21, 4)),
        (5, 2, (), 1 / 10),
        (4, 2, ("age",), 1 / math.factorial(4)),  # Freedman-Lane, all 24 permutations
        (21, 4, ("age",), 1 / 10_001),  # random permutations
    ],
)
def test_attainable_significance_is_the_smallest_p_value(n, n_case, covariates, bound) -> None:
    from sccohort.stats.permutation import attainable_significance

    counts, clinical = binary_cohort(np.random.default_rng(3), n=n, n_case=n_case)
    design = src_design(clinical, covariates)
    reach = attainable_significance(design, n_perm=10_000, max_exact=20_000, alpha=0.05)
    assert reach["min_pvalue"] == pytest.approx(bound)
    assert reach["reachable"] == (bound < 0.05)
    if not covariates and n <= 5:
        # perfectly separated cases reach the bound, and nothing goes below it
        counts.loc[design.group == "case", "S10"] = 2000
        counts.loc[design.group == "control", "S10"] = 1
        result = abundance(counts, totals_of(counts), design, level="subset")
        assert result["pvalue"].min() == pytest.approx(bound)

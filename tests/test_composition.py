"""Composition table and donor x subset matrices (sccohort.stats.composition)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sccohort.errors import InputError
from sccohort.stats.composition import COLUMNS, composition, donor_counts, donor_shares

# label hierarchy of the synthetic cohorts: subset -> (l2, l1)
HIERARCHY = {
    "CD14_EGR1": ("CD14 Mono", "Mono"),
    "CD14 Mono": ("CD14 Mono", "Mono"),
    "CD16 Mono": ("CD16 Mono", "Mono"),
    "CD8_TEM_T2ISG": ("CD8 TEM", "CD8 T"),
    "CD8 TEM": ("CD8 TEM", "CD8 T"),
    "CD8 Naive": ("CD8 Naive", "CD8 T"),
    "B naive": ("B naive", "B"),
}


def _obs(counts: dict[str, dict[str, int]], donors: dict[str, str]) -> pd.DataFrame:
    """Cells from sample -> subset -> count; l2 and l1 from HIERARCHY."""
    rows = [
        (s, donors[s], sub) for s, per in counts.items() for sub, k in per.items() for _ in range(k)
    ]
    obs = pd.DataFrame(rows, columns=["sample_id", "donor_id", "subset"])
    obs["l2"] = obs["subset"].map(lambda x: HIERARCHY[x][0])
    obs["l1"] = obs["subset"].map(lambda x: HIERARCHY[x][1])
    obs["timepoint"] = "baseline"
    obs["tissue"] = "blood"
    obs.index = [f"{s}:{i}" for i, s in enumerate(obs["sample_id"])]
    return obs


@pytest.fixture
def random_obs() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    subsets = list(HIERARCHY)
    samples = [f"S{i}" for i in range(6)]
    counts = {
        s: dict(zip(subsets, rng.multinomial(300, rng.dirichlet(np.ones(7))), strict=True))
        for s in samples
    }
    counts["S5"]["CD14_EGR1"] = 0  # a subset absent from one sample
    donors = {s: f"D{i}" for i, s in enumerate(samples)}
    obs = _obs(counts, donors)
    obs["qc_pass"] = rng.random(len(obs)) > 0.1
    return obs.sample(frac=1.0, random_state=1)


def test_counts_match_crosstab_and_zeros_present(random_obs: pd.DataFrame) -> None:
    table = composition(random_obs)
    assert list(table.columns) == list(COLUMNS)
    passed = random_obs[random_obs["qc_pass"]]
    for level in ("l1", "l2", "subset"):
        rows = table[table["level"] == level]
        expected = pd.crosstab(passed["sample_id"], passed[level])
        got = rows.pivot(index="sample_id", columns="subset", values="count")
        pd.testing.assert_frame_equal(
            got.loc[expected.index, expected.columns], expected, check_names=False
        )
        n_samples, n_labels = random_obs["sample_id"].nunique(), random_obs[level].nunique()
        assert len(rows) == n_samples * n_labels  # one row per sample x label
    zero = table[(table["level"] == "subset") & (table["sample_id"] == "S5")]
    assert zero.set_index("subset").loc["CD14_EGR1", ["count", "share"]].tolist() == [0, 0.0]


def test_shares_sum_to_one_and_in_l1_totals_are_l1_counts(random_obs: pd.DataFrame) -> None:
    table = composition(random_obs)
    assert set(table["level"]) == {"l1", "l2", "l2_in_l1", "subset", "subset_in_l1"}
    sums = table.groupby(["sample_id", "level", "parent"])["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    np.testing.assert_array_equal(table["share"], table["count"] / table["total"])
    l1 = table[table["level"] == "l1"].set_index(["sample_id", "subset"])["count"]
    for level in ("subset_in_l1", "l2_in_l1"):
        rows = table[table["level"] == level]
        expected = l1.loc[list(zip(rows["sample_id"], rows["parent"], strict=True))]
        np.testing.assert_array_equal(rows["total"].to_numpy(), expected.to_numpy())
        # the parent of each label is its l1
        l1_of = {k: v[1] for k, v in HIERARCHY.items()} | {v[0]: v[1] for v in HIERARCHY.values()}
        assert (rows["parent"] == rows["subset"].map(l1_of)).all()
    egr1 = table[(table["level"] == "subset_in_l1") & (table["subset"] == "CD14_EGR1")]
    assert set(egr1["parent"]) == {"Mono"}


def test_qc_pass_and_determinism(random_obs: pd.DataFrame) -> None:
    cat = random_obs.assign(
        sample_id=pd.Categorical(random_obs["sample_id"], categories=[f"S{i}" for i in range(6)])
    )
    passed = cat[cat["qc_pass"]].drop(columns="qc_pass")
    pd.testing.assert_frame_equal(composition(cat), composition(passed))
    # same cells in another row order give the same table when sample ids are categorical
    shuffled = cat.sample(frac=1.0, random_state=7)
    pd.testing.assert_frame_equal(composition(cat), composition(shuffled))
    assert list(pd.unique(composition(cat)["sample_id"])) == [f"S{i}" for i in range(6)]


def test_majority_parent_and_missing_parent_sample() -> None:
    obs = _obs(
        {"A": {"CD14_EGR1": 4, "CD14 Mono": 6, "B naive": 5}, "B": {"B naive": 3}},
        {"A": "D1", "B": "D2"},
    )
    # one CD14_EGR1 cell labelled B at l1: the subset's parent stays Mono (3 of 4 cells)
    obs.loc[obs.index[0], "l1"] = "B"
    table = composition(obs, levels=("l1", "subset"))
    rows = table[table["level"] == "subset_in_l1"].set_index(["sample_id", "subset"])
    assert rows.loc[("A", "CD14_EGR1"), "parent"] == "Mono"
    assert rows.loc[("A", "CD14_EGR1"), "total"] == 10  # cells of subsets whose parent is Mono
    assert rows.loc[("A", "CD14_EGR1"), "share"] == pytest.approx(0.4)
    # sample B has no monocytes: its Mono-parent rows have total 0 and share NaN
    assert rows.loc[("B", "CD14 Mono"), "total"] == 0
    assert np.isnan(rows.loc[("B", "CD14 Mono"), "share"])
    assert rows.loc[("B", "B naive"), "share"] == 1.0


def test_composition_errors() -> None:
    obs = _obs({"A": {"B naive": 2}}, {"A": "D1"})
    with pytest.raises(InputError, match="no column 'l2'"):
        composition(obs.drop(columns="l2"))
    with pytest.raises(InputError, match=r"no column 'patient' \(donor_key\)"):
        composition(obs, donor_key="patient")
    renamed = obs.rename(columns={"donor_id": "patient", "sample_id": "run"})
    pd.testing.assert_frame_equal(
        composition(renamed, sample_key="run", donor_key="patient"), composition(obs)
    )
    bad = obs.copy()
    bad.loc[bad.index[0], "donor_id"] = "D9"
    with pytest.raises(InputError, match="sample 'A'.*donor_id"):
        composition(bad)


def test_donor_counts_matrices(random_obs: pd.DataFrame) -> None:
    table = composition(random_obs)
    samples = ["S2", "S0", "S4"]
    counts, totals = donor_counts(table, "subset_in_l1", samples)
    assert list(counts.index) == ["D2", "D0", "D4"]
    assert counts.shape == totals.shape == (3, 7)
    passed = random_obs[random_obs["qc_pass"]]
    mono = passed[(passed["sample_id"] == "S2") & (passed["l1"] == "Mono")]
    assert totals.loc["D2", "CD14_EGR1"] == len(mono)
    assert counts.loc["D2", "CD14_EGR1"] == (mono["subset"] == "CD14_EGR1").sum()
    c_all, t_all = donor_counts(table, "subset", samples)
    assert (t_all.nunique(axis=1) == 1).all()  # parent "all": one total per donor
    assert (t_all.iloc[:, 0] == c_all.sum(axis=1)).all()
    shares = donor_shares(table, "subset", samples)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)


def test_donor_counts_errors(random_obs: pd.DataFrame) -> None:
    table = composition(random_obs)
    twice = table.copy()
    twice.loc[twice["sample_id"] == "S1", "donor_id"] = "D0"
    with pytest.raises(InputError, match="same donor 'D0'"):
        donor_counts(twice, "subset", ["S0", "S1"])
    with pytest.raises(InputError, match="no rows at level 'leiden'"):
        donor_counts(table, "leiden", ["S0"])
    with pytest.raises(InputError, match="sample 'S9'"):
        donor_counts(table, "subset", ["S0", "S9"])
    with pytest.raises(InputError, match="listed twice"):
        donor_counts(table, "subset", ["S0", "S0"])
    with pytest.raises(InputError, match="not a composition table"):
        donor_counts(table.drop(columns="total"), "subset", ["S0"])

"""Per-donor trajectories across timepoints (sccohort.stats.longitudinal)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sccohort.cohort import SampleSheet
from sccohort.errors import InputError
from sccohort.io.read_cohort import read_cohort
from sccohort.pp.normalize import normalize_rna
from sccohort.simulate import simulate_cohort
from sccohort.stats.composition import composition
from sccohort.stats.longitudinal import (
    expression_trajectory,
    paired_test,
    timepoint_order,
    trajectories,
)


def _sheet(rows: list[tuple[str, str, str]], tissue: str = "blood") -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["sample_id", "donor_id", "timepoint"])
    frame["tissue"] = tissue
    return frame.set_index("sample_id")


# The simulator's sheet: baseline appears first, but SSc4's samples run pre -> base -> post.
SIM_SHEET = _sheet(
    [
        ("SSc2", "SSc2", "baseline"),
        ("SSc4_pre", "SSc4", "pre_onset"),
        ("SSc4", "SSc4", "baseline"),
        ("SSc4_post", "SSc4", "post_treatment"),
        ("HD1", "HD1", "baseline"),
    ]
)


def test_timepoint_order_merges_donor_orders() -> None:
    assert timepoint_order(SIM_SHEET) == ["pre_onset", "baseline", "post_treatment"]
    two = _sheet([("a1", "A", "t0"), ("a2", "A", "t2"), ("b1", "B", "t1"), ("b2", "B", "t2")])
    assert timepoint_order(two) == ["t0", "t1", "t2"]  # t0/t1 unordered: first appearance
    assert timepoint_order(two, order=["t2", "t1", "t0"]) == ["t2", "t1", "t0"]
    with pytest.raises(InputError, match="t2.*missing"):
        timepoint_order(two, order=["t0", "t1"])
    conflict = _sheet([("a1", "A", "x"), ("a2", "A", "y"), ("b1", "B", "y"), ("b2", "B", "x")])
    with pytest.raises(InputError, match="conflicting timepoint orders"):
        timepoint_order(conflict)


def _long_table(shares: dict[str, dict[str, float]], sheet: pd.DataFrame) -> pd.DataFrame:
    """A composition table at level 'subset' with 100 cells per sample."""
    rows = []
    for sample, per in shares.items():
        for subset, share in per.items():
            count = round(share * 100)
            rows.append((sample, sheet.loc[sample, "donor_id"], sheet.loc[sample, "timepoint"],
                         "blood", "subset", "all", subset, count, 100, count / 100))  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["sample_id", "donor_id", "timepoint", "tissue", "level", "parent", "subset"]
        + ["count", "total", "share"],
    )


def test_trajectories_keep_followed_donors_in_time_order() -> None:
    sheet = _sheet(
        [
            ("A_t1", "A", "t1"), ("A_t2", "A", "t2"), ("B_t1", "B", "t1"), ("C_t0", "C", "t0"),
            ("C_t1", "C", "t1"), ("C_t2", "C", "t2"), ("A_t0", "A", "t0"),
        ]
    )  # fmt: skip
    sheet = sheet.loc[["C_t0", "C_t1", "C_t2", "A_t0", "A_t1", "A_t2", "B_t1"]]
    shares = {s: {"x": 0.1 * (i + 1), "y": 0.05} for i, s in enumerate(sheet.index)}
    table = _long_table(shares, sheet)
    traj = trajectories(table, sheet, "subset", ["x"])
    assert list(pd.unique(traj["donor_id"])) == ["C", "A"]  # B has one timepoint
    assert set(traj["subset"]) == {"x"}
    a = traj[traj["donor_id"] == "A"]
    assert list(a["timepoint"]) == ["t0", "t1", "t2"]
    assert list(a["timepoint_order"]) == [0, 1, 2]
    np.testing.assert_allclose(a["share"], [0.4, 0.5, 0.6])
    with pytest.raises(InputError, match="subset.*z.*not at level"):
        trajectories(table, sheet, "subset", ["z"])
    with pytest.raises(InputError, match="no rows at level"):
        trajectories(table, sheet, "subset_in_l1")
    kidney = pd.concat([sheet, _sheet([("A_k", "A", "t1")], tissue="kidney")])
    assert len(trajectories(table, kidney, "subset")) == len(trajectories(table, sheet, "subset"))
    with pytest.raises(InputError, match="several samples at timepoint 't1'"):
        trajectories(table, kidney, "subset", tissue=None)


def test_paired_test_wilcoxon_and_too_few_donors() -> None:
    rng = np.random.default_rng(1)
    donors = [f"D{i}" for i in range(8)]
    before = rng.uniform(0.05, 0.1, 8)
    after = before * rng.uniform(1.5, 3.0, 8)
    pairs = [("x", "pre", 0), ("x", "post", 1), ("y", "pre", 0), ("y", "post", 0)]
    rows = [
        (d, subset, tp, (b, a)[which])
        for d, b, a in zip(donors, before, after, strict=True)
        for subset, tp, which in pairs
    ]
    rows += [("E", "z", "pre", 0.1), ("E", "z", "post", 0.3)]
    traj = pd.DataFrame(rows, columns=["donor_id", "subset", "timepoint", "share"])
    res = paired_test(traj, "pre", "post").set_index("subset")
    ref = stats.wilcoxon(after, before)
    assert res.loc["x", "pvalue"] == pytest.approx(ref.pvalue)
    assert res.loc["x", "pvalue"] == pytest.approx(2 / 2**8)  # exact: all 8 differences > 0
    assert res.loc["x", "padj"] == pytest.approx(min(1.0, ref.pvalue * 2))  # x and y tested
    assert res.loc["x", "ci_low"] < res.loc["x", "effect"] < res.loc["x", "ci_high"]
    assert res.loc["x", "ci_low"] > 0
    c = 0.5 * before.min()  # no totals: half the smallest positive share
    expected = np.log2((after.mean() + c) / (before.mean() + c))
    assert res.loc["x", "effect"] == pytest.approx(expected)
    with_totals = paired_test(traj.assign(total=1000), "pre", "post").set_index("subset")
    expected = np.log2((after.mean() + 0.0005) / (before.mean() + 0.0005))
    assert with_totals.loc["x", "effect"] == pytest.approx(expected)  # half a cell of 1000
    assert res.loc["y", "pvalue"] == 1.0 and res.loc["y", "effect"] == 0.0
    assert np.isnan(res.loc["z", "pvalue"]) and np.isnan(res.loc["z", "padj"])
    assert ">= 2 donors" in res.loc["z", "note"] and res.loc["z", "n_case"] == 1
    assert res.loc["z", "effect"] > 1  # still reported for the plot
    with pytest.raises(InputError, match="timepoint 'later'"):
        paired_test(traj, "pre", "later")


@pytest.fixture(scope="module")
def followed_cohort(tmp_path_factory: pytest.TempPathFactory):
    """SSc4 (pre_onset, baseline, post_treatment) + SSc2 + HD1, 400 cells per sample."""
    root = simulate_cohort(
        tmp_path_factory.mktemp("followed") / "cohort", design="paper", cells_per_donor=400,
        seed=2, donors=["SSc2", "SSc4", "HD1"], n_empty=10,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = read_cohort(root / "samples.csv")
    normalize_rna(mdata.mod["rna"])
    truth = pd.read_csv(root / "truth" / "cells.csv.gz").set_index("cell_id").loc[mdata.obs_names]
    for col in ("l1", "l2", "subset"):
        mdata.obs[col] = truth[col].to_numpy()
    bad = truth["doublet"] | truth["low_quality"] | truth["contaminant"].notna()
    mdata.obs["qc_pass"] = ~bad.to_numpy()
    return root, mdata


def test_expression_trajectory_shows_planted_egr1_course(followed_cohort) -> None:
    _, mdata = followed_cohort
    res = expression_trajectory(mdata, ["EGR1", "NFKBIA", "LYZ"], {"l1": "Mono"})
    assert set(res["donor_id"]) == {"SSc4"}  # the only donor with >= 2 timepoints
    egr1 = res[res["gene"] == "EGR1"].set_index("timepoint")
    assert list(egr1.index) == ["pre_onset", "baseline", "post_treatment"]
    # planted program fold 1 / 3 / 1.3: rises at onset, falls after treatment
    assert egr1.loc["baseline", "mean"] > egr1.loc["pre_onset", "mean"] + 0.5
    assert egr1.loc["post_treatment", "mean"] < egr1.loc["baseline", "mean"] - 0.3
    nfkbia = res[res["gene"] == "NFKBIA"].set_index("timepoint")
    assert nfkbia.loc["baseline", "mean"] > nfkbia.loc["pre_onset", "mean"]
    # against a direct computation for one sample
    obs = mdata.obs
    cells = (obs["sample_id"] == "SSc4_pre") & (obs["l1"] == "Mono") & obs["qc_pass"]
    x = mdata.mod["rna"][cells.to_numpy(), "EGR1"].X.toarray().ravel()
    assert egr1.loc["pre_onset", "n_cells"] == cells.sum()
    assert egr1.loc["pre_onset", "mean"] == pytest.approx(x.mean(), rel=1e-5)
    assert egr1.loc["pre_onset", "frac"] == pytest.approx((x > 0).mean())
    with pytest.raises(InputError, match="NOTAGENE"):
        expression_trajectory(mdata, ["NOTAGENE"], {"l1": "Mono"})
    with pytest.raises(InputError, match="column 'lineage'"):
        expression_trajectory(mdata, ["EGR1"], {"lineage": "Mono"})


def test_share_trajectory_shows_planted_rise(followed_cohort) -> None:
    root, mdata = followed_cohort
    table = composition(mdata.obs)
    sheet = SampleSheet.from_csv(root / "samples.csv")
    traj = trajectories(table, sheet, "subset_in_l1", ["CD14_EGR1"]).set_index("timepoint")
    assert list(traj.index) == ["pre_onset", "baseline", "post_treatment"]
    assert (traj["parent"] == "Mono").all()
    # counts are the truth's cells (qc-passed)
    obs = mdata.obs[mdata.obs["qc_pass"]]
    for tp, sample in (("pre_onset", "SSc4_pre"), ("baseline", "SSc4")):
        cells = obs[obs["sample_id"] == sample]
        assert traj.loc[tp, "count"] == (cells["subset"] == "CD14_EGR1").sum()
        assert traj.loc[tp, "total"] == (cells["l1"] == "Mono").sum()
    # planted CD14_EGR1 share fold 1 / 3 / 1.5: highest at onset
    assert traj.loc["baseline", "share"] > traj.loc["pre_onset", "share"]
    assert traj.loc["baseline", "share"] > traj.loc["post_treatment", "share"]
    full = trajectories(table, sheet, "subset_in_l1")
    res = paired_test(full, "pre_onset", "baseline")
    assert res["pvalue"].isna().all() and (res["n_case"] == 1).all()
    c = 0.5 / full.loc[full["total"] > 0, "total"].median()  # half a cell
    expected = np.log2((traj.loc["baseline", "share"] + c) / (traj.loc["pre_onset", "share"] + c))
    assert res.set_index("subset").loc["CD14_EGR1", "effect"] == pytest.approx(expected)

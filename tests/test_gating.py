"""Protein markers and gating strategies, on simulated truth and on planted toy data."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from sccohort.errors import InputError
from sccohort.io.read import read_sample
from sccohort.pp.normalize import clr
from sccohort.simulate import simulate_cohort
from sccohort.stats import gating as G
from sccohort.stats.gating import GatingOptions, gating_strategy
from sccohort.stats.gating_result import GATING_COLUMNS, Gate
from sccohort.stats.protein_markers import MARKER_COLUMNS, protein_markers

#: Three renal-crisis donors (CD14_EGR1 3x) and five others.
DONORS = ["SSc1", "SSc19", "SSc20", "SSc2", "SSc5", "HD1", "HD2", "HD3"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Simulated cells with CLR-normalised proteins and the simulator's truth labels."""
    out = simulate_cohort(
        tmp_path_factory.mktemp("gating") / "cohort",
        design="paper",
        cells_per_donor=400,
        seed=3,
        donors=DONORS,
        n_empty=10,
    )
    samples = pd.read_csv(out / "samples.csv")
    prot = ad.concat(
        [read_sample(out / r.path, r.sample_id).mod["prot"] for r in samples.itertuples()],
        merge="same",
    )
    truth = pd.read_csv(out / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.reindex(prot.obs_names)
    # the pipeline's QC would remove these
    clean = ~(truth["doublet"] | truth["low_quality"] | truth["contaminant"].notna()).to_numpy()
    prot, truth = prot[clean].copy(), truth[clean]
    clr(prot)
    donor_of = samples.set_index("sample_id")["donor_id"]
    return {
        "prot": prot,
        "target": (truth["subset"] == "CD14_EGR1").to_numpy(),
        "parent": (truth["l1"] == "Mono").to_numpy(),
        "donors": donor_of.reindex(truth["sample_id"]).to_numpy(),
    }


def _toy(seed: int = 0, n_donors: int = 6, n_per: int = 600) -> dict:
    """Target = parent cells with A > 1 and B < 0; C is noise; an isotype mimics A."""
    rng = np.random.default_rng(seed)
    n = n_donors * n_per
    x = rng.normal(size=(n, 4))
    parent = rng.random(n) < 0.4
    x[parent, 3] += 6.0  # D marks the parent lineage
    target = parent & (x[:, 0] > 1.0) & (x[:, 1] < 0.0)
    x[:, 2] = x[:, 0] + rng.normal(scale=0.01, size=n)  # isotype copying A: must be ignored
    prot = ad.AnnData(
        x.astype(np.float32),
        var=pd.DataFrame({"isotype": [False, False, True, False]}, index=["A", "B", "Iso", "D"]),
    )
    donors = np.repeat([f"d{i}" for i in range(n_donors)], n_per)
    return {"prot": prot, "target": target, "parent": parent, "donors": donors}


def test_markers_rank_ccr1_first_and_match_sklearn(sim):
    table = protein_markers(sim["prot"], sim["target"], sim["parent"], subset="CD14_EGR1")
    assert list(table.columns) == MARKER_COLUMNS
    iso = sim["prot"].var_names[sim["prot"].var["isotype"].to_numpy(bool)]
    assert len(iso) > 0 and not set(iso) & set(table["protein"])
    assert len(table) == sim["prot"].n_vars - len(iso)
    top = table.iloc[0]
    # the simulator gives CD14_EGR1 its CCR1 (CD191) surface level
    assert top["protein"] == "CD191" and top["direction"] == "up"
    assert top["auroc_parent"] > 0.9 and top["auroc_all"] > 0.95
    assert top["median_target"] > top["median_parent_rest"] > top["median_rest"] - 1
    sep = (table["auroc_parent"] - 0.5).abs().to_numpy()
    assert np.all(np.diff(sep) <= 1e-12) and table["rank"].tolist() == list(
        range(1, len(table) + 1)
    )
    x = sim["prot"].X
    names = list(sim["prot"].var_names)
    pr = sim["parent"] & ~sim["target"]
    for protein in ["CD191", "CD14", "CD3", "HLA-DR"]:
        row = table.set_index("protein").loc[protein]
        j = names.index(protein)
        both = sim["target"] | pr
        ref_parent = roc_auc_score(sim["target"][both], x[both, j])
        ref_all = roc_auc_score(sim["target"], x[:, j])
        assert row["auroc_parent"] == pytest.approx(ref_parent, abs=1e-9)
        assert row["auroc_all"] == pytest.approx(ref_all, abs=1e-9)
        assert row["direction"] == ("up" if ref_parent >= 0.5 else "down")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_marker_aurocs_and_medians_exact_with_ties(dtype):
    """AUROC from sorted counts equals the midrank Mann-Whitney U bit for bit, ties included."""
    rng = np.random.default_rng(5)
    n = 4000
    x = rng.integers(0, 6, size=(n, 4)).astype(float)  # heavy ties
    x[:, 3] = rng.normal(size=n)  # float32-exact only when stored as float32
    parent = rng.random(n) < 0.5
    # mostly inside the parent lineage, a few outside it (U against the lineage's rest is
    # U against the lineage minus U against the subset's own cells in it)
    target = np.where(parent, rng.random(n) < 0.3, rng.random(n) < 0.02)
    x[target, 0] += 1.0
    prot = ad.AnnData(x.astype(dtype), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    x = np.asarray(prot.X, dtype=float)
    table = protein_markers(prot, target, parent).set_index("protein")
    n1 = int(target.sum())
    for j, name in enumerate(["A", "B", "C", "D"]):
        for column, neg in (("auroc_parent", parent & ~target), ("auroc_all", ~target)):
            both = target | neg
            ranks = rankdata(x[both, j])
            u = ranks[target[both]].sum() - n1 * (n1 + 1) / 2.0
            assert table.loc[name, column] == u / (n1 * int(neg.sum()))
        assert table.loc[name, "median_target"] == np.median(x[target, j])
        assert table.loc[name, "median_parent_rest"] == np.median(x[parent & ~target, j])
        assert table.loc[name, "median_rest"] == np.median(x[~target, j])
    assert table.loc["A", "auroc_parent"] > 0.6


def test_gate_subsets_equal_one_subset_at_a_time():
    """Shared sorts (all cells, lineages, training donors) change no result, bit for bit."""
    toy = _toy(n_donors=6, n_per=500)
    prot, parent, donors = toy["prot"], toy["parent"], toy["donors"]
    x = prot.X
    subsets = {
        "T": (toy["target"], parent),
        "B_low": (parent & (x[:, 1] < -1.0), parent),
        "outside": (~parent & (x[:, 0] > 1.5), ~parent),
    }
    results = G.gate_subsets(prot, subsets, donors, GatingOptions(max_gates=2, seed=4))
    assert len(results) == len(subsets)
    for (name, (target, lineage)), (result, table) in zip(subsets.items(), results, strict=True):
        one = gating_strategy(
            prot, target, lineage, donors, subset=name, options=GatingOptions(max_gates=2, seed=4)
        )
        pd.testing.assert_frame_equal(result.to_frame(), one.to_frame(), check_exact=True)
        pd.testing.assert_frame_equal(result.markers, one.markers, check_exact=True)
        pd.testing.assert_frame_equal(result.per_donor, one.per_donor, check_exact=True)
        alone = protein_markers(prot, target, lineage, subset=name)
        pd.testing.assert_frame_equal(table, alone, check_exact=True)
    with pytest.raises(InputError, match="no cells"):
        G.gate_subsets(prot, {"none": (np.zeros(prot.n_obs, dtype=bool), parent)}, donors)


def test_best_thresholds_match_brute_force():
    rng = np.random.default_rng(8)
    values = np.round(rng.normal(size=300), 1)  # ties
    target = values + rng.normal(scale=0.5, size=300) > 0.8
    order = np.argsort(values, kind="stable")
    found = {
        d: (t, q, f1)
        for d, t, q, f1 in G._best_thresholds(values[order], target[order], int(target.sum()))
    }
    distinct = np.unique(values)
    for direction in (">", "<"):
        best = -1.0
        for t in (distinct[1:] + distinct[:-1]) / 2.0:
            kept = values > t if direction == ">" else values < t
            best = max(best, 2.0 * (kept & target).sum() / (kept.sum() + target.sum()))
        t, q, f1 = found[direction]
        kept = values > t if direction == ">" else values < t
        assert f1 == pytest.approx(best) and f1 == pytest.approx(
            2.0 * (kept & target).sum() / (kept.sum() + target.sum())
        )
        assert q == pytest.approx((values < t).mean())


def test_gating_egr1_on_held_out_donors(sim):
    res = gating_strategy(
        sim["prot"],
        sim["target"],
        sim["parent"],
        sim["donors"],
        subset="CD14_EGR1",
        options=GatingOptions(test_donors=["SSc20", "HD2"]),
    )
    assert res.test_donors == ["HD2", "SSc20"] and "SSc20" not in res.train_donors
    assert 1 <= len(res.gates) <= 3
    assert res.gates[0].protein == "CD191" and res.gates[0].direction == ">"
    assert res.f1 >= 0.7 and res.purity >= 0.7 and res.recall >= 0.6
    frame = res.to_frame()
    assert list(frame.columns) == GATING_COLUMNS
    assert len(frame) == 2 * (len(res.gates) + 1)
    assert set(frame["split"]) == {"train", "test"}
    start = frame[frame["step"] == 0]
    assert (start["recall"] == 1.0).all() and (start["gate"] == "all cells").all()
    # the reported test figures are those of the gates applied to the held-out cells
    test = np.isin(sim["donors"], res.test_donors)
    gated = res.apply(sim["prot"]) & test
    tp = (gated & sim["target"]).sum()
    assert res.purity == pytest.approx(tp / gated.sum())
    assert res.recall == pytest.approx(tp / (sim["target"] & test).sum())
    masks = res.step_masks(sim["prot"])
    assert len(masks) == len(res.gates) + 1 and masks[0].all()
    assert all((b <= a).all() for a, b in zip(masks, masks[1:], strict=False))
    q = res.gates[0].quantile
    train_values = sim["prot"][~test, "CD191"].X.ravel()
    assert q == pytest.approx((train_values < res.gates[0].threshold).mean(), abs=1e-9)
    assert set(res.per_donor["donor"]) == {"HD2", "SSc20"}
    assert (res.per_donor["n_target"].sum()) == (sim["target"] & test).sum()


def test_gating_from_parent_and_seeded_split(sim):
    a = gating_strategy(
        sim["prot"], sim["target"], sim["parent"], sim["donors"], options=GatingOptions(seed=4)
    )
    b = gating_strategy(
        sim["prot"], sim["target"], sim["parent"], sim["donors"], options=GatingOptions(seed=4)
    )
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    assert not set(a.test_donors) & set(a.train_donors)
    assert len(a.test_donors) == round(0.3 * len(DONORS))
    par = gating_strategy(
        sim["prot"],
        sim["target"],
        sim["parent"],
        sim["donors"],
        options=GatingOptions(start="parent", seed=4),
    )
    first = par.to_frame().query("step == 0 and split == 'train'").iloc[0]
    assert first["gate"] == "parent"
    assert first["n_gated"] == (sim["parent"] & np.isin(sim["donors"], par.train_donors)).sum()
    with pytest.raises(InputError, match="parent"):
        par.apply(sim["prot"])


def test_toy_two_gates_recovered_and_isotype_ignored():
    toy = _toy()
    res = gating_strategy(
        toy["prot"],
        toy["target"],
        toy["parent"],
        toy["donors"],
        options=GatingOptions(max_gates=3, seed=1),
    )
    used = {(g.protein, g.direction) for g in res.gates}
    assert {("A", ">"), ("B", "<")} <= used and "Iso" not in {g.protein for g in res.gates}
    by = {g.protein: g for g in res.gates}
    assert by["A"].threshold == pytest.approx(1.0, abs=0.25)
    assert by["B"].threshold == pytest.approx(0.0, abs=0.25)
    assert res.f1 > 0.9
    one = gating_strategy(
        toy["prot"], toy["target"], toy["parent"], toy["donors"], options=GatingOptions(max_gates=1)
    )
    assert len(one.gates) == 1 and one.f1 < res.f1
    assert str(Gate("A", ">", 1.0, 0.8)) == "A > 1"


def test_gating_stops_when_a_gate_does_not_help():
    rng = np.random.default_rng(2)
    n = 3000
    x = rng.normal(size=(n, 3))
    target = x[:, 0] > 1.5  # one threshold says it all
    prot = ad.AnnData(x, var=pd.DataFrame(index=["A", "B", "C"]))
    donors = np.repeat(["d1", "d2", "d3"], n // 3)
    res = gating_strategy(prot, target, np.ones(n, bool) & (x[:, 0] > 0), donors)
    assert [(g.protein, g.direction) for g in res.gates] == [("A", ">")]
    assert res.f1 == pytest.approx(1.0, abs=0.02)


def test_gating_warns_without_held_out_target_cells():
    toy = _toy(n_donors=4)
    toy["target"][toy["donors"] == "d3"] = False
    with pytest.warns(UserWarning, match="no cells in the held-out donors"):
        res = gating_strategy(
            toy["prot"],
            toy["target"],
            toy["parent"],
            toy["donors"],
            options=GatingOptions(test_donors=["d3"]),
        )
    assert np.isnan(res.recall)


def test_gating_input_errors():
    toy = _toy(n_donors=3, n_per=200)
    prot, target, parent, donors = toy["prot"], toy["target"], toy["parent"], toy["donors"]
    with pytest.raises(InputError, match="shape"):
        gating_strategy(prot, target[:-1], parent, donors)
    with pytest.raises(InputError, match="boolean"):
        protein_markers(prot, target.astype(int), parent)
    with pytest.raises(InputError, match="no cells"):
        protein_markers(prot, np.zeros_like(target), parent)
    with pytest.raises(InputError, match="outside the subset"):
        protein_markers(prot, target, target)
    with pytest.raises(InputError, match="d9"):
        gating_strategy(prot, target, parent, donors, options=GatingOptions(test_donors=["d9"]))
    with pytest.raises(InputError, match="Hold out at least one donor"):
        gating_strategy(
            prot, target, parent, donors, options=GatingOptions(test_donors=["d0", "d1", "d2"])
        )
    with pytest.raises(InputError, match="fraction"):
        gating_strategy(prot, target, parent, donors, options=GatingOptions(test_donors=1.5))
    with pytest.raises(InputError, match="at least 2 donors"):
        gating_strategy(prot, target, parent, np.full(len(target), "d0"))
    with pytest.raises(InputError, match="max_gates"):
        gating_strategy(prot, target, parent, donors, options=GatingOptions(max_gates=0))
    with pytest.raises(InputError, match="no cells in the training donors"):
        only_d0 = target & (donors == "d0")
        gating_strategy(prot, only_d0, parent, donors, options=GatingOptions(test_donors=["d0"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="AnnData"):
            protein_markers(prot.X, target, parent)

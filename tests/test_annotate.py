"""Offline l1/l2 annotation: accuracy on a simulated cohort with truth, agreement with
protein gates on real ECCITE-seq PBMCs, and marker-table validation."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.mixture import GaussianMixture

from sccohort import read_h5mu
from sccohort.errors import InputError
from sccohort.tl.annotate import L1_LABELS, UNASSIGNED, annotate, load_markers

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ECCITE = DATA / "eccite_pbmc" / "eccite_control_500.h5mu"


@pytest.fixture(scope="module")
def cohort(simulated_run: Path) -> tuple[md.MuData, pd.DataFrame]:
    """The session's simulated run (8 donors x 400 cells) with the truth of kept cells."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = read_h5mu(simulated_run / "out" / "cohort.h5mu")
    truth = pd.read_csv(simulated_run / "cohort" / "truth" / "cells.csv.gz").set_index("cell_id")
    return mdata, truth.loc[mdata.obs_names]


def _macro_f1(mdata: md.MuData, truth: pd.DataFrame, level: str) -> float:
    """Macro-F1 over the truth labels of clean cells; 'unassigned' counts as wrong."""
    clean = ~(truth["doublet"].astype(bool) | truth["low_quality"].astype(bool))
    clean &= truth["contaminant"].isna()
    y = truth.loc[clean, level].to_numpy()
    pred = mdata.obs.loc[clean.to_numpy(), level].astype(str).to_numpy()
    return f1_score(y, pred, labels=sorted(set(y)), average="macro")


@pytest.mark.parametrize(
    ("use", "l1_min", "l2_min"),
    [(("rna", "prot"), 0.95, 0.75), (("rna",), 0.90, None), (("prot",), 0.85, None)],
)
def test_recovers_simulated_labels(cohort, use, l1_min, l2_min) -> None:
    mdata, truth = cohort
    annotate(mdata, use=use, key_prefix="")
    assert _macro_f1(mdata, truth, "l1") >= l1_min
    if l2_min is not None:
        assert _macro_f1(mdata, truth, "l2") >= l2_min
    obs = mdata.obs
    assert set(obs["l1"].cat.categories) == {*L1_LABELS, UNASSIGNED}
    assert obs["l1_confidence"].between(0, 1).all() and obs["l2_confidence"].between(0, 1).all()
    # hierarchy: every l2 label lies under its l1 label, unassigned l1 -> unassigned l2
    parents = load_markers("rna").query("level == 'l2'").set_index("label")["parent"]
    assigned = obs["l2"].astype(str) != UNASSIGNED
    l2_parent = obs.loc[assigned, "l2"].astype(str).map(parents.groupby(level=0).first())
    assert (l2_parent == obs.loc[assigned, "l1"].astype(str)).all()
    assert (obs.loc[obs["l1"] == UNASSIGNED, "l2"] == UNASSIGNED).all()


def test_strict_confidence_leaves_cells_unassigned(cohort) -> None:
    mdata, _ = cohort
    annotate(mdata, min_confidence=0.999999, key_prefix="strict_")
    annotate(mdata, key_prefix="default_")
    strict = (mdata.obs["strict_l1"] == UNASSIGNED).mean()
    default = (mdata.obs["default_l1"] == UNASSIGNED).mean()
    assert strict > default
    low = mdata.obs["default_l1_confidence"] < 0.999999
    assert (mdata.obs.loc[low, "strict_l1"] == UNASSIGNED).all()


def test_bad_inputs(cohort, tmp_path: Path) -> None:
    mdata, _ = cohort
    with pytest.raises(InputError, match="no column 'nope'"):
        annotate(mdata, cluster_key="nope")
    with pytest.raises(InputError, match="no usable modality"):
        annotate(mdata, use=("atac",))
    table = load_markers("rna").rename(columns={"feature": "gene"})
    table.loc[3, "direction"] = "up"
    bad = tmp_path / "markers.csv"
    table.to_csv(bad, index=False)
    with pytest.raises(InputError, match="line 5, column 'direction'"):
        load_markers("rna", bad)


def test_shipped_tables_cover_the_azimuth_vocabulary() -> None:
    l2 = {
        "Mono": {"CD14 Mono", "CD16 Mono"},
        "DC": {"cDC1", "cDC2", "pDC", "ASDC"},
        "B": {"B naive", "B intermediate", "B memory", "Plasmablast"},
        "CD4 T": {"CD4 Naive", "CD4 TCM", "CD4 TEM", "CD4 CTL", "Treg"},
        "CD8 T": {"CD8 Naive", "CD8 TCM", "CD8 TEM"},
        "other T": {"MAIT", "gdT", "dnT"},
        "NK": {"NK", "NK_CD56bright"},
        "other": {"HSPC", "Platelet", "Eryth", "ILC", "Proliferating"},
    }
    for modality in ("rna", "prot"):
        table = load_markers(modality)
        assert set(table.query("level == 'l1'")["label"]) == set(L1_LABELS)
        rows = table.query("level == 'l2'")
        found = rows.groupby("parent")["label"].agg(set).to_dict()
        for parent, labels in l2.items():
            # protein panels have no marker of proliferation: RNA only there
            assert found[parent] == labels - ({"Proliferating"} if modality == "prot" else set())
    genes = set(pd.read_csv(Path(__file__).resolve().parents[1] / "src" / "sccohort"
                            / "resources" / "genes_human.tsv.gz", sep="\t")["symbol"])  # fmt: skip
    assert set(load_markers("rna")["feature"]) <= genes


def _positive(values: np.ndarray) -> np.ndarray:
    """Cells clearly in the upper component of a 2-component Gaussian mixture (p > 0.95)."""
    gmm = GaussianMixture(2, random_state=0).fit(values[:, None])
    upper = int(np.argmax(gmm.means_.ravel()))
    return gmm.predict_proba(values[:, None])[:, upper] > 0.95


def _negative(values: np.ndarray) -> np.ndarray:
    gmm = GaussianMixture(2, random_state=0).fit(values[:, None])
    lower = int(np.argmin(gmm.means_.ravel()))
    return gmm.predict_proba(values[:, None])[:, lower] > 0.95


def test_real_eccite_agrees_with_protein_gates() -> None:
    if not ECCITE.exists():
        pytest.skip(f"real ECCITE-seq data not found at {ECCITE}")
    from sccohort.io.read import read_sample
    from sccohort.pp.normalize import clr, normalize_rna
    from sccohort.tl import highly_variable_genes, leiden, pca_prot, pca_rna
    from sccohort.tl.wnn import wnn

    mdata = read_sample(ECCITE, "ctrl")
    rna, prot = mdata.mod["rna"], mdata.mod["prot"]
    normalize_rna(rna)
    clr(prot, margin="cell")
    highly_variable_genes(rna, n_top_genes=2000, batch_key=None)
    pca_rna(rna, n_comps=30)
    pca_prot(prot)
    graph = ad.AnnData(obs=pd.DataFrame(index=mdata.obs_names))
    graph.obsm["rna"] = rna[mdata.obs_names].obsm["X_pca"]
    graph.obsm["prot"] = prot[mdata.obs_names].obsm["X_pca_prot"]
    wnn(graph, {"rna": "rna", "prot": "prot"}, n_neighbors=20, seed=0)
    leiden(graph, neighbors_key="wnn", resolution=1.0, seed=0)
    mdata.obs["leiden"] = graph.obs["leiden"].to_numpy()
    mdata.obsp["wnn_connectivities"] = graph.obsp["wnn_connectivities"]
    annotate(mdata)

    alias = prot.var["alias"].astype(str).to_numpy()
    x = prot[mdata.obs_names].X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    values = {
        name: x[:, list(alias).index(name)]
        for name in ("CD3", "CD4", "CD8", "CD19", "CD14", "CD56")
    }
    pos = {k: _positive(v) for k, v in values.items()}
    neg = {k: _negative(v) for k, v in values.items()}
    gates = {
        "CD4 T": pos["CD3"] & pos["CD4"] & neg["CD8"] & neg["CD19"] & neg["CD14"],
        "CD8 T": pos["CD3"] & pos["CD8"] & neg["CD4"] & neg["CD19"] & neg["CD14"],
        "B": pos["CD19"] & neg["CD3"] & neg["CD14"] & neg["CD56"],
        "Mono": pos["CD14"] & neg["CD3"] & neg["CD19"] & neg["CD56"],
        "NK": pos["CD56"] & neg["CD3"] & neg["CD19"] & neg["CD14"],
    }
    called = np.full(mdata.n_obs, "", dtype=object)
    for label, gate in gates.items():
        called[gate & (called == "")] = label
        called[gate & (called != label)] = "ambiguous"
    clear = np.isin(called, list(gates))
    assert clear.sum() >= 0.2 * mdata.n_obs
    agreement = (mdata.obs["l1"].astype(str).to_numpy()[clear] == called[clear]).mean()
    print(f"gated {clear.sum()} cells, agreement {agreement:.3f}")
    assert agreement >= 0.90


def test_label_coverage_of_a_nine_antibody_panel() -> None:
    from sccohort.io.features import protein_var
    from sccohort.tl.annotate import label_coverage

    panel = ["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "CD127"]
    prot = ad.AnnData(np.zeros((2, len(panel)), np.float32), var=protein_var(panel))
    coverage = label_coverage({"prot": load_markers("prot")}, {"prot": prot})
    called = coverage.set_index(["level", "label"])["callable"]
    for label in ("Mono", "B", "CD4 T", "CD8 T", "NK"):
        assert called[("l1", label)], label
    assert not called[("l1", "DC")]  # no CD1c, CD11c, HLA-DR, CD123 ...
    assert called[("l2", "Treg")] and called[("l2", "CD4 Naive")]
    for label in ("CD16 Mono", "B memory", "MAIT", "gdT", "CD4 TEM"):
        assert not called[("l2", label)], label
    row = coverage.set_index("label").loc["CD16 Mono"]
    assert "CD16" in row["missing_markers"].split(";")
    # CD3 alone does not make a gamma-delta T cell; with TCR g/d it does
    with_tcr = ad.AnnData(
        np.zeros((2, len(panel) + 1), np.float32), var=protein_var([*panel, "TCR g/d"])
    )
    coverage = label_coverage({"prot": load_markers("prot")}, {"prot": with_tcr})
    assert coverage.set_index(["level", "label"]).loc[("l2", "gdT"), "callable"]


def test_uncallable_labels_are_never_assigned_and_named_in_a_warning(cohort) -> None:
    mdata, truth = cohort
    prot = mdata.mod["prot"]
    keep = prot.var["alias"].isin(["CD3", "CD4", "CD8", "CD14", "CD19", "CD56", "CD45RA"])
    small = md.MuData({"prot": prot[:, keep.to_numpy()].copy()})
    small.obs["leiden"] = mdata.obs["leiden"].to_numpy()
    small.obsp["wnn_connectivities"] = mdata.obsp["wnn_connectivities"]
    with pytest.warns(UserWarning, match=r"cannot be called .* l1 DC \(missing"):
        coverage = annotate(small, use=("prot",))
    lost = coverage[~coverage["callable"]]
    for level in ("l1", "l2"):
        uncallable = set(lost.loc[lost["level"] == level, "label"])
        called = set(small.obs[level].astype(str))
        # an l2 named like its lineage (NK, the l1 name) stands for the whole lineage
        assert not (called - set(small.obs["l1"].astype(str))) & uncallable
    # lineages whose subtypes the panel cannot separate keep the lineage name at l2
    assert (small.obs.loc[small.obs["l1"] == "B", "l2"] == "B").all()
    clean = truth["contaminant"].isna() & ~truth["doublet"].astype(bool)
    named = clean & truth["l1"].isin(["B", "CD4 T", "CD8 T", "Mono", "NK"]).to_numpy()
    pred = small.obs.loc[named.to_numpy(), "l1"].astype(str)
    lineages = ["B", "CD4 T", "CD8 T", "Mono", "NK"]
    assert f1_score(truth.loc[named, "l1"], pred, labels=lineages, average="macro") >= 0.9

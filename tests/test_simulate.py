"""The cohort simulator: files, truth, and statistics against the planted parameters."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccohort.config import build_designs, load_config, load_inputs
from sccohort.errors import InputError
from sccohort.simulate import (
    DESIGNS,
    EGR1_PROGRAM,
    protein_panel,
    simulate_cohort,
    subset_table,
)
from sccohort.simulate.design import (
    MIN_DONORS,
    SimParams,
    clinical_table,
    default_batches,
    effects_table,
    group_sizes,
    sample_specs,
)
from sccohort.simulate.writers import CONFIG_TEMPLATE

CELLS = 300
N_EMPTY = 300
SRC = {"SSc1", "SSc4", "SSc19", "SSc20"}
ILD = {f"SSc{i}" for i in (1, 3, 4, 6, 7, 8, 10, 11, 13, 14, 16, 17)}
NULL_DONORS = ["SSc1", "SSc19", "SSc20", "SSc2", "SSc5", "SSc9", "SSc12", "SSc3"]


def read_h5(path: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
    """Cells x features CSR, barcodes, features of a Cell Ranger v3 h5."""
    with h5py.File(path, "r") as fh:
        m = fh["matrix"]
        n_feat, n_bc = m["shape"][:]
        x = sp.csr_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_bc, n_feat))
        bcs = m["barcodes"][:].astype(str)
        feats = pd.DataFrame(
            {k: m["features"][k][:].astype(str) for k in ("id", "name", "feature_type", "genome")}
        )
    return x, bcs, feats


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper")
    calls = []
    simulate_cohort(
        out,
        "paper",
        cells_per_donor=CELLS,
        seed=0,
        n_empty=N_EMPTY,
        progress=lambda d, n: calls.append((d, n)),
    )
    assert calls[-1] == (29, 29) and [d for d, _ in calls] == list(range(1, 30))
    return out


@pytest.fixture(scope="module")
def data(cohort: Path) -> dict:
    """Everything read back: per sample RNA, ADT, barcodes; truth; tables."""
    samples = pd.read_csv(cohort / "samples.csv")
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", keep_default_na=False)
    rna, adt, feats = {}, {}, None
    for row in samples.itertuples():
        x, bcs, feats = read_h5(cohort / row.path)
        gene = (feats["feature_type"] == "Gene Expression").to_numpy()
        rna[row.sample_id] = x[:, gene].tocsr()
        adt[row.sample_id] = x[:, ~gene].toarray()
        t = truth[truth["sample_id"] == row.sample_id]
        assert list(t["cell_id"]) == [f"{row.sample_id}:{b}" for b in bcs]
    return {"samples": samples, "truth": truth, "rna": rna, "adt": adt, "features": feats}


def _cat(d: dict, key: str) -> np.ndarray:
    blocks = [d[key][s] for s in d["samples"]["sample_id"]]
    return sp.vstack(blocks).tocsr() if key == "rna" else np.vstack(blocks)


def test_layout_tables_and_config(cohort: Path, data: dict) -> None:
    samples = data["samples"]
    assert list(samples.columns) == [
        "sample_id",
        "donor_id",
        "path",
        "raw_path",
        "batch",
        "timepoint",
        "tissue",
        "format",
    ]
    assert len(samples) == 29 and samples["sample_id"].is_unique
    assert set(samples["format"]) == {"10x_h5"} and set(samples["tissue"]) == {"blood"}
    ssc4 = samples[samples["donor_id"] == "SSc4"].set_index("sample_id")["timepoint"]
    assert ssc4.to_dict() == {
        "SSc4_pre": "pre_onset",
        "SSc4": "baseline",
        "SSc4_post": "post_treatment",
    }
    assert (samples.loc[samples["donor_id"] != "SSc4", "timepoint"] == "baseline").all()
    assert samples["batch"].nunique() == 4
    clin = pd.read_csv(cohort / "clinical.csv", keep_default_na=False).set_index("donor_id")
    assert list(clin.columns) == ["group", "age", "sex", "SRC", "ILD", "ARA"]
    assert (clin["group"] == "SSc").sum() == 21 and (clin["group"] == "HD").sum() == 6
    assert set(clin.index[clin["SRC"] == "yes"]) == SRC
    assert set(clin.index[clin["ILD"] == "yes"]) == ILD
    ssc = clin[clin["group"] == "SSc"]
    assert (ssc.loc[list(SRC), "ARA"] == "positive").all()
    assert (ssc["ARA"] == "positive").sum() == 9 and (ssc["ARA"] == "negative").sum() == 12
    assert (clin.loc[clin["group"] == "HD", ["SRC", "ILD", "ARA"]] == "").all().all()
    assert clin.loc["SSc3", "age"] == 82 and clin.loc["HD6", "age"] == 84
    toml_text = (cohort / "sccohort.toml").read_text()
    assert toml_text == CONFIG_TEMPLATE.format(seed=0)
    cfg = tomllib.loads(toml_text)
    assert cfg["contrasts"]["SRC"]["within"] == {"group": "SSc"}
    assert (cohort / cfg["inputs"]["samples"]).exists()
    feats = data["features"]
    genes = feats[feats["feature_type"] == "Gene Expression"]
    abs_ = feats[feats["feature_type"] == "Antibody Capture"]
    assert len(genes) >= 15000 and genes["id"].str.startswith("ENSG").all()
    assert feats["id"].is_unique and set(feats["genome"]) == {"GRCh38"}
    assert list(abs_["name"]) == list(protein_panel()["name"]) and len(abs_) >= 100
    assert not list(cohort.rglob("*.tmp"))


def test_tables_for_later_code() -> None:
    subsets = subset_table()
    assert {"CD14_EGR1", "CD8_TEM_T2ISG", "Treg", "B_ABC", "HSPC"} <= set(subsets["subset"])
    assert set(subsets["l1"]) == {"Mono", "DC", "B", "CD4 T", "CD8 T", "other T", "NK", "other"}
    egr1 = subsets.set_index("subset").loc["CD14_EGR1"]
    assert egr1["l2"] == "CD14 Mono" and egr1["markers"][:6] == list(EGR1_PROGRAM)
    panel = protein_panel().set_index("name")
    assert panel.loc["CD191", "target_genes"] == "CCR1" and not panel.loc["CD3", "isotype"]
    assert panel["isotype"].sum() >= 4 and (panel.loc[panel["isotype"], "target_genes"] == "").all()
    assert DESIGNS == ("paper", "null", "stim", "prepost")


def test_barcodes_raw_and_empty_droplets(cohort: Path, data: dict) -> None:
    pattern = re.compile(r"^[ACGT]{16}-1$")
    for row in data["samples"].iloc[::6].itertuples():
        x, bcs, _ = read_h5(cohort / row.path)
        raw, raw_bcs, _ = read_h5(cohort / row.raw_path)
        assert all(pattern.match(b) for b in raw_bcs) and len(set(raw_bcs)) == len(raw_bcs)
        assert list(raw_bcs) == sorted(raw_bcs) and len(raw_bcs) == CELLS + N_EMPTY
        pos = {b: i for i, b in enumerate(raw_bcs)}
        idx = np.array([pos[b] for b in bcs])  # KeyError if a cell were missing from raw
        assert (raw[idx] != x).nnz == 0
        empty = np.setdiff1d(np.arange(len(raw_bcs)), idx)
        n_genes = int((data["features"]["feature_type"] == "Gene Expression").sum())
        empty_umis = np.asarray(raw[empty][:, :n_genes].sum(axis=1)).ravel()
        assert 10 <= np.median(empty_umis) <= 100
        empty_adt = np.asarray(raw[empty][:, n_genes:].sum(axis=1)).ravel()
        assert np.median(empty_adt) > 20  # protein background in every droplet


def test_composition_matches_planted(cohort: Path, data: dict) -> None:
    comp = pd.read_csv(cohort / "truth" / "donor_composition.csv")
    truth = data["truth"]
    np.testing.assert_allclose(comp.groupby("sample_id")["donor_share"].sum(), 1.0)
    worst = 0.0
    for sid, t in truth.groupby("sample_id"):
        p = comp[comp["sample_id"] == sid].set_index("subset")["donor_share"]
        obs = t["subset"].value_counts().reindex(p.index, fill_value=0) / len(t)
        z = (obs - p).abs() / np.sqrt(p * (1 - p) / len(t) + 1e-4)
        worst = max(worst, float(z.max()))
    assert worst < 5.0


def _fold(truth: pd.DataFrame, subset: str, cases: set[str], donors: set[str]) -> float:
    base = truth[truth["sample_id"].isin(donors)]  # cross-sectional samples: id == donor
    share = base.groupby("sample_id")["subset"].apply(lambda s: (s == subset).mean())
    case = share[share.index.isin(cases)].mean()
    return float(case / share[~share.index.isin(cases)].mean())


def test_planted_folds_recovered(cohort: Path, data: dict) -> None:
    ssc = {f"SSc{i}" for i in range(1, 22)}
    comp = pd.read_csv(cohort / "truth" / "donor_composition.csv")
    exp = comp[comp["sample_id"].isin(ssc)].pivot(
        index="sample_id", columns="subset", values="expected_share"
    )
    # The design plants exactly the fold; the donors' Dirichlet draws scatter around it.
    assert exp.loc[list(SRC), "CD14_EGR1"].mean() / exp.loc[
        list(ssc - SRC), "CD14_EGR1"
    ].mean() == (pytest.approx(3.0))
    planted = comp[comp["sample_id"].isin(ssc)].pivot(
        index="sample_id", columns="subset", values="donor_share"
    )
    truth = data["truth"]
    for subset, cases in (("CD14_EGR1", SRC), ("CD8_TEM_T2ISG", ILD)):
        donor_fold = (
            planted.loc[list(cases), subset].mean() / planted.loc[list(ssc - cases), subset].mean()
        )
        observed = _fold(truth, subset, cases, ssc)
        assert 1.5 < donor_fold < 6.0
        assert observed == pytest.approx(donor_fold, rel=0.35)
    effects = pd.read_csv(cohort / "truth" / "effects.csv", keep_default_na=False)
    comp_eff = effects[effects["kind"] == "composition"].set_index("subset")
    assert comp_eff.loc["CD14_EGR1", "variable"] == "SRC"
    assert comp_eff.loc["CD8_TEM_T2ISG", "fold"] == 3.0


def test_null_design_has_no_clinical_effect(tmp_path: Path) -> None:
    out = simulate_cohort(
        tmp_path, "null", cells_per_donor=400, seed=1, n_empty=0, donors=NULL_DONORS
    )
    truth = pd.read_csv(out / "truth" / "cells.csv.gz", keep_default_na=False)
    comp = pd.read_csv(out / "truth" / "donor_composition.csv")
    assert set(truth["sample_id"]) == set(NULL_DONORS)
    exp = comp.pivot(index="sample_id", columns="subset", values="expected_share")
    # Only age changes the expected composition; the planted subsets keep their base share.
    assert np.allclose(exp["CD14_EGR1"], 0.02) and np.allclose(exp["CD8_TEM_T2ISG"], 0.015)
    ssc = set(NULL_DONORS)
    assert 0.4 < _fold(truth, "CD14_EGR1", SRC, ssc) < 2.0
    assert 0.4 < _fold(truth, "CD8_TEM_T2ISG", ILD, ssc) < 2.0
    effects = pd.read_csv(out / "truth" / "effects.csv")
    assert list(effects["kind"]) == ["age_slope"]
    assert len(pd.read_csv(out / "clinical.csv")) == len(NULL_DONORS)


def test_prepost_design_has_uneven_samples_and_the_planted_shift(tmp_path: Path) -> None:
    out = simulate_cohort(
        tmp_path, "prepost", cells_per_donor=200, seed=2, n_empty=0, donors=["P1", "P2", "P3"]
    )
    samples = pd.read_csv(out / "samples.csv")
    assert list(samples["sample_id"]) == ["P1_pre", "P1_post1", "P2_pre", "P2_post1", "P2_post2",
                                          "P3_pre"]  # fmt: skip
    assert list(samples["treated"]) == ["no", "yes", "no", "yes", "yes", "no"]
    comp = pd.read_csv(out / "truth" / "donor_composition.csv")
    expected = comp[comp["subset"] == "CD14_EGR1"].set_index("sample_id")["expected_share"]
    treated = samples.set_index("sample_id")["treated"] == "yes"
    assert np.allclose(expected[treated[treated].index], 0.04)  # 2-fold of 0.02
    assert np.allclose(expected[treated[~treated].index], 0.02)
    effects = pd.read_csv(out / "truth" / "effects.csv").set_index("kind")
    assert effects.loc["composition", "variable"] == "treated"
    assert effects.loc["composition", "fold"] == 2.0
    config = load_config(out / "sccohort.toml")
    design = build_designs(config, *load_inputs(config))["treated"]
    assert design.mixed and "mixed model (3 donors, 2 on both sides)" in design.describe()
    with pytest.raises(InputError, match="n_donors must be a whole number >= 3"):
        simulate_cohort(tmp_path / "x", "prepost", n_donors=2)


def test_artefact_rates_and_library_sizes(data: dict) -> None:
    truth, x = data["truth"], _cat(data, "rna")
    feats = data["features"]
    genes = feats.loc[feats["feature_type"] == "Gene Expression", "name"].to_numpy()
    umis = np.asarray(x.sum(axis=1)).ravel()
    ngenes = np.diff(x.indptr)
    mito = np.asarray(x[:, np.char.startswith(genes.astype(str), "MT-")].sum(axis=1)).ravel()
    mito = mito / umis
    dbl, lq = truth["doublet"].to_numpy(), truth["low_quality"].to_numpy()
    contam = truth["contaminant"].to_numpy() != ""
    good = ~dbl & ~lq & ~contam
    assert abs(dbl.mean() - 0.05) < 0.012
    assert abs(lq.mean() - 0.03) < 0.01
    assert 2000 <= np.median(umis[good]) <= 6000 and 1000 <= np.median(ngenes[good]) <= 2500
    assert 0.02 <= np.median(mito[good]) <= 0.08 and np.median(mito[lq]) > 0.2
    assert np.median(ngenes[lq]) < 0.5 * np.median(ngenes[good])
    assert np.median(umis[dbl]) > 1.4 * np.median(umis[good])
    l1 = truth["l1"].to_numpy()
    assert np.median(umis[good & (l1 == "Mono")]) > 1.3 * np.median(umis[good & (l1 == "CD4 T")])
    # Contaminants: platelets (PPBP) and red cells (HBB) with tiny libraries.
    sym = {g: i for i, g in enumerate(genes)}
    plt = (truth["contaminant"] == "platelet").to_numpy() & ~dbl
    rbc = (truth["contaminant"] == "red_cell").to_numpy() & ~dbl
    assert plt.sum() > 10 and rbc.sum() > 3
    ppbp = np.asarray(x[:, sym["PPBP"]].todense()).ravel() / umis
    hbb = np.asarray(x[:, sym["HBB"]].todense()).ravel() / umis
    assert np.median(ppbp[plt]) > 0.1 and np.median(ppbp[good]) == 0
    assert np.median(hbb[rbc]) > 0.2 and np.median(umis[plt]) < 0.3 * np.median(umis[good])
    # Lineage markers follow the truth labels.
    lyz = np.asarray(x[:, sym["LYZ"]].todense()).ravel() / umis
    cd3 = np.asarray(x[:, sym["CD3E"]].todense()).ravel() / umis
    t = good & np.isin(l1, ["CD4 T", "CD8 T"])
    mono = good & (l1 == "Mono")
    assert lyz[mono].mean() > 20 * lyz[t].mean() and cd3[t].mean() > 20 * cd3[mono].mean()


def test_egr1_subset_differs_by_tens_of_genes_lineages_by_hundreds(data: dict) -> None:
    truth, x = data["truth"], _cat(data, "rna")
    good = ~truth["doublet"] & ~truth["low_quality"] & (truth["contaminant"] == "")
    norm = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x

    def mean(mask: pd.Series) -> np.ndarray:
        return np.asarray(norm[(good & mask).to_numpy()].mean(axis=0)).ravel()

    egr1 = mean(truth["subset"] == "CD14_EGR1")
    cd14 = mean((truth["l2"] == "CD14 Mono") & (truth["subset"] != "CD14_EGR1"))
    cd4 = mean(truth["l1"] == "CD4 T")
    expressed = (egr1 + cd14) / 2 > 0.5

    def n_changed(a: np.ndarray, b: np.ndarray) -> int:
        lfc = np.log2((a + 0.05) / (b + 0.05))
        return int((expressed & (np.abs(lfc) > 1.5)).sum())

    assert 10 <= n_changed(egr1, cd14) <= 80
    assert n_changed(cd14, cd4) > 150
    sym = {g: i for i, g in enumerate(data["features"]["name"])}
    for g in EGR1_PROGRAM:
        assert egr1[sym[g]] > 2.5 * cd14[sym[g]], g


def test_protein_levels(data: dict) -> None:
    truth, adt = data["truth"], _cat(data, "adt")
    panel = protein_panel()
    col = {n: i for i, n in enumerate(panel["name"])}
    good = (~truth["doublet"] & ~truth["low_quality"] & (truth["contaminant"] == "")).to_numpy()
    l1, subset = truth["l1"].to_numpy(), truth["subset"].to_numpy()
    t = good & np.isin(l1, ["CD4 T", "CD8 T"])
    mono = good & (l1 == "Mono")
    lib = adt.sum(axis=1)
    assert 300 <= np.median(lib[good]) <= 5000
    iso = panel["isotype"].to_numpy()
    iso_t, iso_m = adt[t][:, iso].mean(axis=0), adt[mono][:, iso].mean(axis=0)
    assert (iso_t < 10).all() and np.allclose(iso_t, iso_m, rtol=0.35)
    assert adt[t, col["CD3"]].mean() > 5 * adt[mono, col["CD3"]].mean()
    assert adt[mono, col["CD14"]].mean() > 5 * adt[t, col["CD14"]].mean()
    b = good & (l1 == "B")
    assert adt[b, col["CD19"]].mean() > 5 * adt[t, col["CD19"]].mean()
    naive = good & (subset == "CD4_Naive")
    mem = good & np.isin(subset, ["CD4_TCM", "CD4_TEM"])
    assert adt[naive, col["CD45RA"]].mean() > 3 * adt[mem, col["CD45RA"]].mean()
    egr1 = good & (subset == "CD14_EGR1")
    cd14 = good & (truth["l2"].to_numpy() == "CD14 Mono") & (subset != "CD14_EGR1")
    assert adt[egr1, col["CD191"]].mean() > 2 * adt[cd14, col["CD191"]].mean()
    t2 = good & (subset == "CD8_TEM_T2ISG")
    cd8 = good & (l1 == "CD8 T") & (subset != "CD8_TEM_T2ISG")
    assert adt[t2, col["CD183"]].mean() > 2 * adt[cd8, col["CD183"]].mean()
    assert adt[t2, col["HLA-DR"]].mean() > 3 * adt[cd8, col["HLA-DR"]].mean()
    # A marker outside the planted programs does not separate CD14_EGR1 from its siblings.
    assert adt[egr1, col["CD14"]].mean() == pytest.approx(adt[cd14, col["CD14"]].mean(), rel=0.5)


def test_egr1_timecourse_in_ssc4_monocytes(data: dict) -> None:
    sym = {g: i for i, g in enumerate(data["features"]["name"])}
    level = {}
    for sid in ("SSc4_pre", "SSc4", "SSc4_post"):
        t = data["truth"][data["truth"]["sample_id"] == sid]
        x = data["rna"][sid]
        mono = ((t["l1"] == "Mono") & ~t["doublet"] & ~t["low_quality"]).to_numpy()
        umis = np.asarray(x.sum(axis=1)).ravel()
        egr1 = np.asarray(x[:, sym["EGR1"]].todense()).ravel() / umis * 1e4
        level[sid] = egr1[mono].mean()
    assert level["SSc4"] > 1.8 * level["SSc4_pre"]
    assert level["SSc4"] > 1.5 * level["SSc4_post"]


def test_seeded_and_byte_identical(tmp_path: Path) -> None:
    kw = {"cells_per_donor": 60, "n_empty": 30, "donors": ["HD1", "SSc4"]}
    a = simulate_cohort(tmp_path / "a", seed=5, **kw)
    b = simulate_cohort(tmp_path / "b", seed=5, **kw)
    c = simulate_cohort(tmp_path / "c", seed=6, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 6
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    differ = [f for f in files if (a / f).read_bytes() != (c / f).read_bytes()]
    assert Path("HD1/filtered_feature_bc_matrix.h5") in differ
    assert Path("truth/cells.csv.gz") in differ
    # A sample does not depend on which other donors are simulated.
    d = simulate_cohort(tmp_path / "d", seed=5, cells_per_donor=60, n_empty=30, donors=["HD1"])
    f = Path("HD1/raw_feature_bc_matrix.h5")
    assert (d / f).read_bytes() == (a / f).read_bytes()


def test_bad_input_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="design"):
        simulate_cohort(tmp_path, design="nope")
    with pytest.raises(InputError, match="egr1_fld"):
        simulate_cohort(tmp_path, egr1_fld=2.0)
    with pytest.raises(InputError, match="doublet_rate"):
        simulate_cohort(tmp_path, doublet_rate=0.9)
    with pytest.raises(InputError, match="donors"):
        simulate_cohort(tmp_path, donors=["SSc99"])


# --- Cohorts of N donors drawn in the paper's proportions (n_donors) ---

N_DONORS = 40
N_CELLS = 150


@pytest.fixture(scope="module")
def cohort_n(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("n_donors")
    return simulate_cohort(out, n_donors=N_DONORS, cells_per_donor=N_CELLS, seed=2, n_empty=50)


@pytest.mark.parametrize("n", [MIN_DONORS, 27, 40, 100, 1000])
def test_n_donor_table_has_the_paper_proportions(n: int) -> None:
    table = clinical_table(n)
    assert table.equals(clinical_table(n))  # fixed for N, whatever the cohort seed
    assert len(table) == n and table["donor_id"].is_unique
    ssc, hd = table[table["group"] == "SSc"], table[table["group"] == "HD"]
    assert list(table["donor_id"]) == [f"SSc{i}" for i in range(1, len(ssc) + 1)] + [
        f"HD{i}" for i in range(1, len(hd) + 1)
    ]
    assert abs(len(ssc) - n * 21 / 27) <= 0.5
    assert abs((ssc["SRC"] == "yes").sum() - len(ssc) * 4 / 21) <= 0.5
    assert abs((ssc["ILD"] == "yes").sum() - len(ssc) * 12 / 21) <= 0.5
    for col in ("SRC", "ILD"):  # every contrast group has the 2 donors a test needs
        assert ssc[col].value_counts().reindex(["yes", "no"]).min() >= 2
    assert len(hd) >= 2 and (hd[["SRC", "ILD", "ARA"]] == "").all().all()
    no_src = ssc[ssc["SRC"] == "no"]
    assert (ssc.loc[ssc["SRC"] == "yes", "ARA"] == "positive").all()
    assert abs((no_src["ARA"] == "positive").sum() - len(no_src) * 5 / 17) <= 0.5
    assert abs((ssc["sex"] == "M").sum() - len(ssc) * 4 / 21) <= 0.5
    assert abs((hd["sex"] == "M").sum() - len(hd) * 2 / 6) <= 0.5
    ssc4 = table.set_index("donor_id").loc["SSc4"]  # the longitudinal donor, as in the paper
    assert (ssc4["SRC"], ssc4["ILD"], ssc4["ARA"]) == ("yes", "yes", "positive")
    assert table["age"].between(18, 90).all() and table["age"].dtype.kind == "i"
    if n == 1000:  # ages drawn like the paper's: SSc 64.9 +- 11.3, HD 67.7 +- 8.9 years
        assert ssc["age"].mean() == pytest.approx(64.9, abs=1.5)
        assert ssc["age"].std() == pytest.approx(11.3, abs=1.5)
        assert hd["age"].mean() == pytest.approx(67.7, abs=2.0)
        assert hd["age"].std() == pytest.approx(8.9, abs=1.5)


def test_n_donor_sizes_and_lanes() -> None:
    assert group_sizes(27) == {
        "SSc": 21, "HD": 6, "SRC": 4, "ILD": 12, "ARA_no_SRC": 5, "male_SSc": 4, "male_HD": 2
    }  # fmt: skip
    assert default_batches(None) == 4 and default_batches(100) == 14
    assert default_batches(MIN_DONORS) == 2
    specs = sample_specs(default_batches(100), 100)
    assert len(specs) == 102 and [s.index for s in specs] == list(range(102))
    lanes = pd.Series([s.batch for s in specs]).value_counts()
    assert len(lanes) == 14 and lanes.max() - lanes.min() <= 1
    assert [s.sample_id for s in specs if s.donor_id == "SSc4"] == ["SSc4_pre", "SSc4", "SSc4_post"]


def test_n_donor_inputs_validate_as_the_pipeline_loads_them(cohort_n: Path) -> None:
    cfg = load_config(cohort_n / "sccohort.toml")
    samples, clinical = load_inputs(cfg)
    assert clinical is not None
    designs = build_designs(cfg, samples, clinical)
    sizes = group_sizes(N_DONORS)
    counts = {k: (d.n_case, d.n_control) for k, d in designs.items()}
    assert counts == {
        "SSc_vs_HD": (sizes["SSc"], sizes["HD"]),
        "SRC": (sizes["SRC"], sizes["SSc"] - sizes["SRC"]),
        "ILD": (sizes["ILD"], sizes["SSc"] - sizes["ILD"]),
    }
    assert all(list(d.matrix.columns)[2:] == ["age"] for d in designs.values())
    assert (cohort_n / "sccohort.toml").read_text() == CONFIG_TEMPLATE.format(seed=2)
    sheet = samples.table
    assert len(sheet) == N_DONORS + 2 and sheet["donor_id"].nunique() == N_DONORS
    assert sorted(sheet.loc[sheet["donor_id"] == "SSc4", "timepoint"]) == [
        "baseline", "post_treatment", "pre_onset"
    ]  # fmt: skip
    lanes = sheet["batch"].value_counts()
    assert len(lanes) == default_batches(N_DONORS) and lanes.max() - lanes.min() <= 1
    hd_lanes = sheet.loc[sheet["donor_id"].str.startswith("HD"), "batch"]
    assert set(hd_lanes) == set(lanes.index)  # every lane has healthy donors
    written = pd.read_csv(cohort_n / "clinical.csv", keep_default_na=False)
    expected = clinical_table(N_DONORS)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)


def test_n_donor_truth_has_the_planted_effects(cohort_n: Path) -> None:
    clin = clinical_table(N_DONORS).set_index("donor_id")
    ssc = set(clin.index[clin["group"] == "SSc"])
    src = set(clin.index[clin["SRC"] == "yes"])
    ild = set(clin.index[clin["ILD"] == "yes"])
    comp = pd.read_csv(cohort_n / "truth" / "donor_composition.csv")
    base = comp[comp["sample_id"].isin(ssc)]  # baseline samples: sample id == donor id
    exp = base.pivot(index="sample_id", columns="subset", values="expected_share")
    real = base.pivot(index="sample_id", columns="subset", values="donor_share")
    truth = pd.read_csv(cohort_n / "truth" / "cells.csv.gz", keep_default_na=False)
    assert len(truth) == (N_DONORS + 2) * N_CELLS
    for subset, cases, share in (("CD14_EGR1", src, 0.02), ("CD8_TEM_T2ISG", ild, 0.015)):
        is_case = exp.index.isin(list(cases))
        np.testing.assert_allclose(exp.loc[is_case, subset], 3 * share)
        np.testing.assert_allclose(exp.loc[~is_case, subset], share)
        donor_fold = real.loc[is_case, subset].mean() / real.loc[~is_case, subset].mean()
        assert 2.0 < donor_fold < 4.5
        assert _fold(truth, subset, cases, ssc) == pytest.approx(donor_fold, rel=0.4)
    naive = comp[comp["subset"] == "CD8_Naive"].set_index("donor_id")["expected_share"]
    ages = clin.loc[naive.index, "age"]
    assert np.corrcoef(ages, np.log(naive))[0, 1] < -0.99  # the age effect, in every donor
    effects = pd.read_csv(cohort_n / "truth" / "effects.csv", keep_default_na=False)
    paper = effects_table("paper", SimParams()).astype(str)
    assert effects.astype(str)[["kind", "subset", "variable", "within", "donor"]].equals(
        paper[["kind", "subset", "variable", "within", "donor"]]
    )


def test_n_donor_sample_independent_of_the_others(cohort_n: Path, tmp_path: Path) -> None:
    one = simulate_cohort(
        tmp_path, n_donors=N_DONORS, cells_per_donor=N_CELLS, seed=2, n_empty=50, donors=["HD3"]
    )
    for f in ("HD3/filtered_feature_bc_matrix.h5", "HD3/raw_feature_bc_matrix.h5"):
        assert (one / f).read_bytes() == (cohort_n / f).read_bytes(), f
    full = pd.read_csv(cohort_n / "samples.csv").set_index("sample_id")
    assert list(pd.read_csv(one / "samples.csv")["batch"]) == [full.loc["HD3", "batch"]]


def test_n_donors_bad_input(tmp_path: Path) -> None:
    for bad in (MIN_DONORS - 1, 3, 0, -5):
        with pytest.raises(InputError, match=f"n_donors.*too few donors.*>= {MIN_DONORS}"):
            simulate_cohort(tmp_path / "x", n_donors=bad)
    for bad in (2.5, True, "50"):
        with pytest.raises(InputError, match="n_donors must be an integer"):
            simulate_cohort(tmp_path / "x", n_donors=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="SSc1..SSc78, HD1..HD22"):
        simulate_cohort(tmp_path / "x", n_donors=100, donors=["SSc79"])
    assert not (tmp_path / "x").exists()  # nothing written before the inputs are checked


def test_default_is_the_paper_cohort() -> None:
    assert clinical_table().equals(clinical_table(None)) and len(clinical_table()) == 27
    assert sample_specs(4) == sample_specs(4, None) and len(sample_specs(4)) == 29
    assert clinical_table(27)["SRC"].eq("yes").sum() == 4  # a drawn 27, not the paper's table
    assert not clinical_table(27).equals(clinical_table())

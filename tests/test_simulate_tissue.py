"""Kidney samples of the simulator (issue 23): files, trajectory and interaction truth."""

from __future__ import annotations

import tomllib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr
from typer.testing import CliRunner

from sccohort.cli import app
from sccohort.config import load_config, load_inputs
from sccohort.errors import InputError
from sccohort.io import read_sample
from sccohort.simulate import simulate_cohort
from sccohort.simulate.design import clinical_table
from sccohort.simulate.tissue import LR_FOLD, STATES, kidney_biology, kidney_donors
from sccohort.simulate.writers import CONFIG_TEMPLATE

CELLS = 300
N_EMPTY = 100
SEED = 3
# SSc1, SSc19: SRC; SSc2, SSc3, SSc7: without SRC; HD1: healthy, no kidney.
DONORS = ["SSc1", "SSc19", "SSc2", "SSc3", "SSc7", "HD1"]
KIDNEY = {"SSc1_kidney", "SSc19_kidney", "SSc2_kidney", "SSc3_kidney", "SSc7_kidney"}
SRC = {"SSc1", "SSc19"}
KW = {"cells_per_donor": CELLS, "seed": SEED, "n_empty": N_EMPTY}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kidney")
    return simulate_cohort(out, "paper", donors=DONORS, tissue="kidney", **KW)


@pytest.fixture(scope="module")
def kidney(cohort: Path) -> dict:
    """The kidney cells read back: log-normalised RNA, truth, pseudotime, genes."""
    samples = pd.read_csv(cohort / "samples.csv")
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", keep_default_na=False)
    blocks, ids = [], []
    for row in samples[samples["tissue"] == "kidney"].itertuples():
        rna = read_sample(cohort / row.path, row.sample_id).mod["rna"]
        blocks.append(sp.csr_matrix(rna.layers["counts"]))
        ids += list(rna.obs_names)
        genes = list(rna.var_names)
    x = sp.vstack(blocks).tocsr()
    norm = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x
    norm.data = np.log1p(norm.data)
    t = truth.set_index("cell_id").loc[ids]
    good = (~t["doublet"] & ~t["low_quality"]).to_numpy()
    traj = pd.read_csv(cohort / "truth" / "trajectory.csv").set_index("cell_id")
    return {"x": norm.tocsc(), "truth": t, "good": good, "genes": genes, "trajectory": traj}


def _gene(k: dict, symbol: str) -> np.ndarray:
    return np.asarray(k["x"][:, k["genes"].index(symbol)].todense()).ravel()


def test_kidney_samples_only_for_chosen_donors(cohort: Path) -> None:
    clinical = clinical_table()
    ssc = clinical.loc[clinical["group"] == "SSc", "donor_id"].tolist()
    assert kidney_donors(clinical, "paper") == ssc and len(ssc) == 21
    samples = pd.read_csv(cohort / "samples.csv")
    kid = samples[samples["tissue"] == "kidney"]
    assert set(kid["sample_id"]) == KIDNEY
    assert (kid["sample_id"] == kid["donor_id"] + "_kidney").all()
    assert set(kid["timepoint"]) == {"baseline"} and set(kid["batch"]) == {"K1", "K3"}  # SSc19: K3
    blood = samples[samples["tissue"] == "blood"]
    assert set(blood["sample_id"]) == set(DONORS)
    text = (cohort / "sccohort.toml").read_text()
    expected = tomllib.loads(CONFIG_TEMPLATE.format(seed=SEED))
    expected["run"]["primary_tissue"] = "blood"
    assert tomllib.loads(text) == expected
    added = text.split(CONFIG_TEMPLATE.format(seed=SEED).split("[contrasts")[-1])[-1]
    assert "the kidney samples go to the tissue stages" in " ".join(added.split()) and all(
        line.startswith("#") for line in added.split("\n") if line
    )
    assert load_config(cohort / "sccohort.toml").primary_tissue == "blood"


def test_kidney_h5_files_hold_rna_only(cohort: Path, kidney: dict) -> None:
    for sid in sorted(KIDNEY):
        mdata = read_sample(cohort / sid / "filtered_feature_bc_matrix.h5", sid)
        assert list(mdata.mod) == ["rna"] and mdata.n_obs == CELLS // 2  # half the cells
        with h5py.File(cohort / sid / "raw_feature_bc_matrix.h5", "r") as fh:
            assert fh["matrix"]["shape"][1] == CELLS // 2 + N_EMPTY
            assert set(fh["matrix"]["features"]["feature_type"][:]) == {b"Gene Expression"}
    t = kidney["truth"]
    assert set(t["l1"]) == {"Epithelial", "Endothelial", "Stromal", "Mono", "CD8 T", "CD4 T", "NK"}
    assert set(t["subset"]) == {"PT", "DCT", "Endo", "Fib", "Podo", *STATES, "CD8_TEM_T2ISG",
                                "CD4_TEM", "NK"}  # fmt: skip
    mt_co1 = _gene(kidney, "MT-CO1")  # nuclei of tissue carry more mitochondrial RNA
    assert np.expm1(mt_co1[kidney["good"]]).mean() > 150  # blood: ~90 cp10k
    lrp2 = _gene(kidney, "LRP2")
    pt = kidney["good"] & (t["subset"] == "PT").to_numpy()
    immune = kidney["good"] & t["l1"].isin(["CD8 T", "CD4 T", "NK"]).to_numpy()
    assert lrp2[pt].mean() > 5 * lrp2[immune].mean()


def test_trajectory_truth_covers_the_continuum(cohort: Path, kidney: dict) -> None:
    traj, t = kidney["trajectory"], kidney["truth"]
    assert list(traj.columns) == ["pseudotime", "state"]
    assert set(traj.index) == set(t.index[t["subset"].isin(STATES)])
    assert traj["pseudotime"].between(0, 1).all()
    assert (traj["state"] == t.loc[traj.index, "subset"]).all()
    spans = traj.groupby("state")["pseudotime"].agg(["min", "max"]).loc[list(STATES)]
    assert (spans["max"].to_numpy()[:-1] < spans["min"].to_numpy()[1:]).all()
    genes = pd.read_csv(cohort / "truth" / "trajectory_genes.csv")
    assert list(genes.columns[:3]) == ["gene", "direction", "planted_log2fc"]
    rising = genes["direction"] == "rising"
    assert (genes.loc[rising, "planted_log2fc"] > 0.5).all()
    assert (genes.loc[~rising, "planted_log2fc"] < -0.5).all()
    assert {"C1QA", "APOE", "THBS1"} <= set(genes.loc[rising, "gene"])
    assert {"S100A8", "LYZ", "EGR1"} <= set(genes.loc[~rising, "gene"])
    assert genes.equals(kidney_biology().trajectory_genes)


def test_planted_genes_follow_pseudotime(kidney: dict) -> None:
    t, traj = kidney["truth"], kidney["trajectory"]
    on = kidney["good"] & t["subset"].isin(STATES).to_numpy()
    pseudotime = traj.loc[t.index[on], "pseudotime"].to_numpy()
    for gene in ("C1QA", "APOE", "THBS1"):
        assert spearmanr(pseudotime, _gene(kidney, gene)[on])[0] > 0.5, gene
    for gene in ("S100A8", "LYZ", "FOS"):
        assert spearmanr(pseudotime, _gene(kidney, gene)[on])[0] < -0.5, gene
    assert abs(spearmanr(pseudotime, _gene(kidney, "GAPDH")[on])[0]) < 0.3


def test_planted_ligands_higher_in_src_source_cells(cohort: Path, kidney: dict) -> None:
    pairs = pd.read_csv(cohort / "truth" / "interactions.csv")
    assert list(pairs.columns[:6]) == [
        "ligand", "receptor", "source", "target", "planted_log2fc", "contrast"
    ]  # fmt: skip
    assert set(pairs["contrast"]) == {"SRC"}
    assert np.allclose(pairs["planted_log2fc"], np.log2(LR_FOLD), atol=1e-3)
    t = kidney["truth"]
    src = t["sample_id"].str.removesuffix("_kidney").isin(SRC).to_numpy()
    for ligand, source in (("CCL5", "CD8_TEM_T2ISG"), ("CXCL10", "Mac_THBS1")):
        cells = kidney["good"] & (t["subset"] == source).to_numpy()
        level = np.expm1(_gene(kidney, ligand))
        assert level[cells & src].mean() > 2 * level[cells & ~src].mean(), ligand
    t2isg = kidney["good"] & (t["subset"] == "CD8_TEM_T2ISG").to_numpy()
    assert np.expm1(_gene(kidney, "CXCR3"))[t2isg].mean() > 3  # the receptor is there


def test_blood_files_do_not_change_with_tissue(cohort: Path, tmp_path: Path) -> None:
    blood = simulate_cohort(tmp_path / "blood", "paper", donors=DONORS, **KW)
    files = sorted(p.relative_to(blood) for p in blood.rglob("*") if p.is_file())
    assert not any("kidney" in str(f) or "traj" in str(f) or "interact" in str(f) for f in files)
    assert (blood / "sccohort.toml").read_text() == CONFIG_TEMPLATE.format(seed=SEED)
    for f in files:
        if f.suffix == ".h5" or f.name in ("clinical.csv", "effects.csv"):
            assert (blood / f).read_bytes() == (cohort / f).read_bytes(), f
    for name in ("samples.csv", "truth/donor_composition.csv", "truth/cells.csv.gz"):
        alone = pd.read_csv(blood / name, keep_default_na=False)
        both = pd.read_csv(cohort / name, keep_default_na=False)
        pd.testing.assert_frame_equal(both.iloc[: len(alone)], alone)
    # A kidney sample does not depend on which other donors are simulated.
    one = simulate_cohort(tmp_path / "one", "paper", donors=["SSc2"], tissue="kidney", **KW)
    f = Path("SSc2_kidney/raw_feature_bc_matrix.h5")
    assert (one / f).read_bytes() == (cohort / f).read_bytes()


def test_bad_tissue_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--tissue", "lung"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "tissue 'lung'" in lines[0]
    with pytest.raises(InputError, match="tissue"):
        simulate_cohort(tmp_path / "y", tissue="lung")
    with pytest.raises(InputError, match="no SSc donors"):
        simulate_cohort(tmp_path / "z", "stim", cells_per_donor=50, tissue="kidney")
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


def test_a_run_sets_the_kidney_samples_aside(cohort: Path, tmp_path: Path) -> None:
    """The blood analyses take the primary tissue's samples; the others are named in a warning."""
    config = tmp_path / "src.toml"
    config.write_text(
        f'[inputs]\nsamples = "{cohort / "samples.csv"}"\nclinical = "{cohort / "clinical.csv"}"\n'
        '[run]\nprimary_tissue = "blood"\n[contrasts.SRC]\nvariable = "SRC"\ncase = "yes"\n'
        'control = "no"\nwithin = { group = "SSc" }\n'
    )
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "5 sample(s) of tissue kidney set aside" in " ".join(result.output.split())
    with pytest.warns(UserWarning, match="set aside"):
        sheet, _ = load_inputs(load_config(config))
    assert set(sheet.table["tissue"]) == {"blood"} and not KIDNEY & set(sheet.table.index)

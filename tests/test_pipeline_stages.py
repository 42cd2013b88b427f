"""The whole pipeline on a small simulated cohort: QC, normalisation, WNN embedding."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import pytest

from sccohort import pipeline, read_h5mu
from sccohort.config import load_config
from sccohort.tl.metrics import ari, ilisi


@pytest.fixture(scope="module")
def run_dir(simulated_run: Path) -> Path:
    return simulated_run


def test_qc_tables_and_removed_cells_match_the_truth(run_dir: Path) -> None:
    out = run_dir / "out"
    table = pd.read_csv(out / "tables" / "qc.csv")
    cells = pd.read_csv(out / "tables" / "qc_cells.csv.gz", index_col="cell_id")
    truth = pd.read_csv(run_dir / "cohort" / "truth" / "cells.csv.gz", index_col="cell_id")
    sheet = pd.read_csv(run_dir / "cohort" / "samples.csv")
    assert len(table) == (sheet["tissue"] == "blood").sum()  # the slides are not QC'd here
    assert (table["cells_in"] - table["cells_out"]).sum() == (~cells["qc_pass"]).sum()
    assert sorted(cells.index) == sorted(truth.index)
    truth = truth.loc[cells.index]
    bad = truth["doublet"] | truth["low_quality"] | truth["contaminant"].fillna("").ne("")
    assert (~cells.loc[truth["low_quality"], "qc_pass"]).mean() >= 0.9
    assert cells.loc[~bad, "qc_pass"].mean() >= 0.98

    cohort = mudata.read_h5mu(out / "cohort.h5mu")
    assert cohort.obs["qc_pass"].all()
    assert cohort.n_obs == int(table["cells_out"].sum())


def test_cohort_object_carries_the_embedding(run_dir: Path) -> None:
    cohort = read_h5mu(run_dir / "out")
    n = cohort.n_obs
    for key, dims in (("X_pca", 30), ("X_harmony", 30), ("X_umap", 2)):
        assert cohort.obsm[key].shape == (n, dims) and np.isfinite(cohort.obsm[key]).all()
    assert cohort.obsm["X_pca_prot"].shape[0] == n
    assert cohort.obsm["X_harmony_prot"].shape == cohort.obsm["X_pca_prot"].shape
    graph = cohort.obsp["wnn_connectivities"]
    assert graph.shape == (n, n) and graph.nnz > 0
    weights = cohort.obs[["rna_weight", "prot_weight"]].to_numpy()
    assert np.allclose(weights.sum(axis=1), 1.0) and ((weights >= 0) & (weights <= 1)).all()
    assert 0.1 < weights[:, 0].mean() < 0.9
    assert cohort.obs["leiden"].nunique() >= 5
    assert cohort.mod["prot"].uns["normalization"]["method"] == "dsb"  # raw droplets exist
    rna = cohort.mod["rna"]
    assert rna.layers["counts"].dtype.kind in "iu"
    sums = np.expm1(rna.X[:20].toarray()).sum(axis=1)
    assert np.allclose(sums, 1e4, rtol=1e-3)
    # the copies the file leaves out are back
    assert np.array_equal(rna.obsm["X_pca"], cohort.obsm["X_pca"])
    assert np.array_equal(cohort.mod["prot"].obsm["X_pca_prot"], cohort.obsm["X_pca_prot"])


def test_a_finished_run_keeps_one_compressed_cohort_file(run_dir: Path) -> None:
    import h5py

    out = run_dir / "out"
    assert (out / "cohort.h5mu").is_file()
    assert not list((out / "checkpoints").glob("*.h5mu"))  # dropped once the run finished
    with h5py.File(out / "cohort.h5mu") as f:
        assert f["mod/rna/X"].attrs["encoding-type"] == "null"  # rebuilt from the counts
        assert f["mod/rna/layers/counts/data"].compression == "gzip"
        assert f["obsp/wnn_connectivities/data"].compression == "gzip"
        assert "X_pca" not in f["mod/rna/obsm"] and "X_pca" in f["obsm"]
    plain = mudata.read_h5mu(out / "cohort.h5mu")
    assert plain.mod["rna"].X is None
    note = plain.uns["left_out"]
    assert "sccohort.read_h5mu" in note["about"]
    assert "normalize_rna" in note["rna"]["X"]
    assert not [c for c in plain.obs.columns if ":" in c]  # no modality copies pulled up


def test_the_report_header_shows_the_finished_run(run_dir: Path) -> None:
    import re

    out = run_dir / "out"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["keep_checkpoints"] is False
    html = (out / "report.html").read_text()
    header = html[: html.index("</header>")]
    assert re.search(r"<dt>status</dt><dd>finished</dd>", header)
    assert re.search(r"<dt>run finished</dt><dd>\d{4}-", header)
    assert "running" not in header
    assert "(status: finished)" in html  # the methods section


def test_harmony_mixes_samples_and_wnn_clusters_find_cell_types(run_dir: Path) -> None:
    cohort = mudata.read_h5mu(run_dir / "out" / "cohort.h5mu")
    truth = pd.read_csv(run_dir / "cohort" / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.loc[cohort.obs_names]
    batch = cohort.obs["batch"].astype(str).to_numpy()
    before = ilisi(cohort.obsm["X_pca"], batch)
    after = ilisi(cohort.obsm["X_harmony"], batch)
    assert after > before
    assert ari(cohort.obs["leiden"].to_numpy(), truth["l2"].to_numpy()) >= 0.8


def test_resume_restarts_from_the_last_saved_cohort(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_dir / "out"
    config = load_config(run_dir / "cohort" / "sccohort.toml")
    tables = {p.name: p.read_bytes() for p in (out / "tables").iterdir()}
    labels = read_h5mu(out).obs["leiden"].to_numpy()

    # a finished run resumes from its cohort.h5mu: nothing to do
    again = pipeline.run_pipeline(config, out, resume=True)
    assert all(stage["resumed"] for stage in again["stages"])
    assert not list((out / "checkpoints").glob("*.h5mu"))

    # a run killed during the annotation: it restarts after the embedding
    stages = pipeline.STAGES
    annotate = [s.name for s in stages].index("annotate")

    def killed(state: pipeline.RunState) -> list[Path]:
        raise KeyboardInterrupt

    crash = pipeline.Stage("annotate", "Annotating", killed, changes_cohort=True)
    monkeypatch.setattr(pipeline, "STAGES", (*stages[:annotate], crash, *stages[annotate + 1 :]))
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore")  # sccohort's own notes on the small cohort
        pipeline.run_pipeline(config, out)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    saved = sorted(p.name for p in (out / "checkpoints").glob("*.h5mu"))
    assert saved == [f"{annotate:02d}_embed.h5mu"]  # kept: the run did not finish

    monkeypatch.setattr(pipeline, "STAGES", stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = pipeline.run_pipeline(config, out, resume=True)
    assert [s["resumed"] for s in resumed["stages"]] == [True, True] + [False] * (
        len(pipeline.STAGES) - 2
    )
    assert {p.name: p.read_bytes() for p in (out / "tables").iterdir()} == tables
    assert (read_h5mu(out).obs["leiden"].to_numpy() == labels).all()
    assert not list((out / "checkpoints").glob("*.h5mu"))


def test_cell_types_are_annotated(run_dir: Path) -> None:
    cohort = mudata.read_h5mu(run_dir / "out" / "cohort.h5mu")
    truth = pd.read_csv(run_dir / "cohort" / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.loc[cohort.obs_names]
    clean = ~(truth["doublet"] | truth["low_quality"])
    agree = cohort.obs.loc[clean, "l1"].astype(str) == truth.loc[clean, "l1"]
    assert agree.mean() >= 0.95
    table = pd.read_csv(run_dir / "out" / "tables" / "cell_types.csv")
    assert table["n_cells"].sum() == cohort.n_obs
    assert {"CD14 Mono", "CD4 Naive", "NK", "B naive"} <= set(table["l2"])


def test_subsets_are_found_and_named(run_dir: Path) -> None:
    cohort = mudata.read_h5mu(run_dir / "out" / "cohort.h5mu")
    table = pd.read_csv(run_dir / "out" / "tables" / "subsets.csv")
    assert table["n_cells"].sum() == cohort.n_obs and table["subset"].is_unique
    assert set(cohort.obs["subset"].astype(str)) == set(table["subset"])
    assert any("EGR1" in name for name in table["subset"])


def test_marker_tables_rank_planted_program_genes_first(run_dir: Path) -> None:
    rna = pd.read_csv(run_dir / "out" / "tables" / "markers_rna.csv")
    prot = pd.read_csv(run_dir / "out" / "tables" / "markers_prot.csv")
    subsets = set(pd.read_csv(run_dir / "out" / "tables" / "subsets.csv")["subset"])
    assert set(rna["subset"]) <= subsets and set(prot["subset"]) <= subsets
    egr1 = next(name for name in subsets if "EGR1" in name)
    top = rna[rna["subset"] == egr1].head(10)["feature"]
    assert {"EGR1", "NFKBIA", "IER2"} & set(top)
    assert (rna.groupby("subset")["statistic"].apply(lambda x: x.is_monotonic_decreasing)).all()


CORE = ["contrast", "level", "subset", "effect", "ci_low", "ci_high", "pvalue", "padj", "method"]


def test_composition_and_association_tables(run_dir: Path) -> None:
    tables = run_dir / "out" / "tables"
    comp = pd.read_csv(tables / "composition.csv")
    assert {"l1", "l2", "subset", "subset_in_l1"} <= set(comp["level"])
    sums = comp[comp["parent"] == "all"].groupby(["sample_id", "level"])["share"].sum()
    assert np.allclose(sums, 1.0)

    assoc = pd.read_csv(tables / "association.csv")
    assert list(assoc.columns[: len(CORE)]) == CORE
    assert set(assoc["method"]) == {"perm_lm_asin_log2share", "ks_bonferroni"}
    assert set(assoc["level"]) == {"l1", "l2", "subset", "subset_in_l1"}
    tested = assoc.dropna(subset=["pvalue"])
    assert tested["pvalue"].between(0, 1).all()
    assert (tested["padj"] >= tested["pvalue"] - 1e-12).all()
    default = tested[tested["method"] == "perm_lm_asin_log2share"]
    # 4 SSc vs 4 HD without covariates: all C(8, 4) = 70 relabellings are enumerated
    assert (default["scheme"] == "exact").all() and (default["n_perm"] == 70).all()
    assert (default[["n_case", "n_control"]] == [4, 4]).all().all()

    nhoods = pd.read_csv(tables / "neighbourhoods.csv")
    assert list(nhoods.columns[: len(CORE)]) == CORE
    assert nhoods["nhood"].is_unique and len(nhoods) > 20
    assert nhoods["padj"].between(0, 1).all()


def test_characterisation_tables(run_dir: Path) -> None:
    tables = run_dir / "out" / "tables"
    prediction = pd.read_csv(tables / "prediction.csv")
    assert list(prediction["contrast"]) == ["SSc_vs_HD"]
    assert prediction["effect"].between(0, 1).all()  # AUROC
    signatures = pd.read_csv(tables / "signatures.csv")
    assert {"donor_id", "subset", "set", "score", "n_cells"} <= set(signatures.columns)
    assert signatures["donor_id"].nunique() == 8
    tests = pd.read_csv(tables / "signature_tests.csv")
    assert tests["level"].str.startswith("signature:HALLMARK_").all()
    assert tests["pvalue"].dropna().between(0, 1).all()


def test_characterised_subsets_are_the_significant_ones_by_padj() -> None:
    from sccohort.stats import associated_subsets, characterised_subsets

    method = "perm_lm_asin_log2share"
    table = pd.DataFrame(
        {
            "contrast": ["A", "B", "A", "A", "B"],
            "level": ["subset", "subset_in_l1", "subset", "l2", "subset"],
            "subset": ["X", "X", "Y", "CD14 Mono", "Z"],
            "effect": [1.0, 1.2, 0.3, 2.0, 0.8],
            "padj": [0.01, 0.001, 0.2, 0.0001, 0.04],
            "pvalue": [0.001, 0.0001, 0.1, 0.00001, 0.004],
            "method": [method, method, method, method, "ks_bonferroni"],
        }
    )
    table = associated_subsets(table, alpha=0.05, n_candidates=0)
    assert list(table["subset"]) == ["X", "X"] and list(table["contrast"]) == ["B", "A"]
    assert characterised_subsets(table, max_subsets=10, candidates=0) == (["X"], True)


def test_donors_with_too_few_cells_leave_the_donor_level_tests(
    run_dir: Path, tmp_path: Path
) -> None:
    from sccohort.cohort import ClinicalTable, SampleSheet
    from sccohort.stages import STAGES, RunState, Silent

    cohort = run_dir / "cohort"
    toml = cohort / "min_cells.toml"
    toml.write_text((cohort / "sccohort.toml").read_text() + "\n[association]\nmin_cells = 50\n")
    config = load_config(toml)
    samples = SampleSheet.from_csv(cohort / "samples.csv")
    mdata = read_h5mu(run_dir / "out" / "cohort.h5mu")
    # SSc1 keeps 3 cells: a share of 3 cells is not a measurement
    sample = mdata.obs["sample_id"].astype(str)
    keep = (sample != "SSc1").to_numpy() | (np.cumsum(sample == "SSc1") <= 3).to_numpy()
    clinical = ClinicalTable.from_csv(cohort / "clinical.csv")
    state = RunState(config, tmp_path, samples, clinical, Silent(), mdata=mdata[keep].copy())
    stage = next(s for s in STAGES if s.name == "association")
    with pytest.warns(UserWarning, match=r"1 donor\(s\) left out .*SSc1: 3\b"):
        stage.run(state)
    assoc = pd.read_csv(tmp_path / "tables" / "association.csv")
    default = assoc[assoc["method"] == "perm_lm_asin_log2share"]
    assert (default[["n_case", "n_control"]] == [3, 4]).all().all()
    reach = pd.read_csv(tmp_path / "tables" / "contrasts.csv")
    assert reach.loc[0, "left_out"] == "SSc1 (3 cells)"


def test_without_harmony_the_run_ends_in_a_report(run_dir: Path, tmp_path: Path) -> None:
    """``harmony_key = ""``: later stages read the uncorrected PCA that embed recorded."""
    config = tmp_path / "sccohort.toml"
    text = (run_dir / "cohort" / "sccohort.toml").read_text()
    base = (run_dir / "cohort").as_posix()
    text = text.replace('"samples.csv"', f'"{base}/samples.csv"')
    text = text.replace('"clinical.csv"', f'"{base}/clinical.csv"')
    config.write_text(text + '\n[embedding]\nharmony_key = ""\n')
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = pipeline.run_pipeline(load_config(config), out)
    assert record["status"] == "finished"
    assert (out / "report.html").is_file() and (out / "tables" / "association.csv").is_file()
    cohort = read_h5mu(out)
    assert cohort.uns["embed"]["use_rep"] == "X_pca"
    assert "X_harmony" not in cohort.obsm
    assert cohort.obs["subset"].nunique() > 5

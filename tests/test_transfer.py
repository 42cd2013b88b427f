"""Label transfer from a labelled reference: simulated reference and query with known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sccohort import read_h5mu
from sccohort.errors import InputError
from sccohort.io.read import read_samples
from sccohort.simulate import simulate_cohort
from sccohort.tl.transfer import load_reference, transfer_labels


def _cells(root: Path, donors: list[str], seed: int):
    """RNA of the clean simulated cells of ``donors`` with their true l1 / l2 labels."""
    cohort = simulate_cohort(
        root, design="paper", cells_per_donor=350, seed=seed, donors=donors, n_empty=0
    )
    sheet = pd.read_csv(cohort / "samples.csv", index_col="sample_id")
    sheet["path"] = [str(cohort / p) for p in sheet["path"]]
    sheet = sheet[sheet["timepoint"] == "baseline"]
    rna = read_samples(sheet.drop(columns=["raw_path"]), scheduler="sync").mod["rna"]
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.loc[rna.obs_names]
    clean = ~(truth["doublet"] | truth["low_quality"] | truth["contaminant"].notna())
    rna = rna[clean.to_numpy()].copy()
    rna.obs["sample_id"] = [c.split(":")[0] for c in rna.obs_names]
    for key in ("l1", "l2"):
        rna.obs[key] = truth.loc[rna.obs_names, key].to_numpy()
    return rna


@pytest.fixture(scope="module")
def reference_and_query(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    reference = _cells(root / "ref", ["SSc1", "SSc2", "HD1", "HD2"], seed=21)
    query = _cells(root / "query", ["SSc5", "SSc6", "HD3"], seed=22)
    truth = query.obs[["l1", "l2"]].copy()
    query.obs = query.obs.drop(columns=["l1", "l2"])
    path = root / "reference.h5ad"
    reference.layers["counts"] = reference.X.copy()
    reference.X = None
    reference.write_h5ad(path)
    return path, query, truth


def test_transfer_recovers_the_true_labels(reference_and_query):
    path, query, truth = reference_and_query
    reference = load_reference(path, ["l1", "l2"])
    table = transfer_labels(query, reference, keys=("l1", "l2"), seed=0)
    assigned = query.obs["ref_l2"].astype(str) != "unassigned"
    assert assigned.mean() > 0.9
    l1 = (query.obs["ref_l1"].astype(str) == truth["l1"])[assigned].mean()
    l2 = (query.obs["ref_l2"].astype(str) == truth["l2"])[assigned].mean()
    assert l1 > 0.97, l1
    assert l2 > 0.85, l2
    assert set(table["key"]) == {"l1", "l2"}
    assert np.isclose(table.loc[table["key"] == "l1", "share"].sum(), 1.0)
    confidence = query.obs["ref_l2_confidence"]
    assert ((confidence >= 0) & (confidence <= 1)).all()
    # determinism for a seed
    again = query.copy()
    transfer_labels(again, reference, keys=("l2",), seed=0)
    assert (again.obs["ref_l2"] == query.obs["ref_l2"]).all()


def test_agreement_with_existing_labels(reference_and_query):
    path, query, truth = reference_and_query
    query = query.copy()
    query.obs["l1"] = truth["l1"].to_numpy()
    table = transfer_labels(query, load_reference(path, ["l1"]), keys=("l1",), seed=0)
    t_cells = table.set_index("label").loc["CD4 T"]
    assert t_cells["agreement"] > 0.95


def test_reference_errors(reference_and_query, tmp_path):
    path, query, _ = reference_and_query
    with pytest.raises(InputError, match="no label column"):
        load_reference(path, ["celltype"])
    with pytest.raises(InputError, match="not found"):
        load_reference(tmp_path / "missing.h5ad", ["l1"])
    bad = tmp_path / "ref.csv"
    bad.write_text("a,b\n")
    with pytest.raises(InputError, match="unsupported reference format"):
        load_reference(bad, ["l1"])
    reference = load_reference(path, ["l1"])
    mouse = reference[:, :40].copy()
    mouse.var_names = [f"Gene{i}" for i in range(40)]
    with pytest.raises(InputError, match="shares only 0 genes"):
        transfer_labels(query.copy(), mouse, keys=("l1",))


def _state(simulated_run: Path, tmp_path: Path, annotation: str):
    import warnings

    from sccohort.cohort import SampleSheet
    from sccohort.config import load_config
    from sccohort.stages import RunState, Silent, check_inputs

    cohort = simulated_run / "cohort"
    toml = cohort / "transfer.toml"
    toml.write_text('[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n' + annotation)
    config = load_config(toml)
    samples = SampleSheet.from_csv(cohort / "samples.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the slides set aside
        samples = samples.of_tissue("blood")  # the run's samples, as `load_inputs` gives them
    check_inputs(config, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = read_h5mu(simulated_run / "out" / "cohort.h5mu")
    return RunState(config, tmp_path, samples, None, Silent(), mdata=mdata)


def test_annotate_stage_transfers_from_an_h5mu_reference(simulated_run, tmp_path):
    from sccohort.stages import STAGES

    reference = simulated_run / "out" / "cohort.h5mu"
    state = _state(
        simulated_run, tmp_path, f'[annotation]\nreference = "{reference}"\nlabels = "reference"\n'
    )
    markers = state.mdata.obs["l2"].astype(str).copy()
    stage = next(s for s in STAGES if s.name == "annotate")
    written = stage.run(state)
    assert tmp_path / "tables" / "label_transfer.csv" in written
    table = pd.read_csv(tmp_path / "tables" / "label_transfer.csv")
    assert {"key", "label", "n_cells", "agreement"} <= set(table.columns)
    obs = state.mdata.obs
    assert (obs["l2"].astype(str) == obs["ref_l2"].astype(str)).all()
    # transferring a cohort's own labels back to it reproduces them
    assert (obs["ref_l2"].astype(str) == markers).mean() > 0.9


def test_annotation_config_errors(simulated_run, tmp_path):
    with pytest.raises(InputError, match="no reference is given"):
        _state(simulated_run, tmp_path, '[annotation]\nlabels = "reference"\n')
    with pytest.raises(InputError, match="not an existing .h5ad or .h5mu"):
        _state(simulated_run, tmp_path, '[annotation]\nreference = "nowhere.h5ad"\n')
    reference = simulated_run / "out" / "cohort.h5mu"
    with pytest.raises(InputError, match='include "l1" and "l2"'):
        _state(
            simulated_run,
            tmp_path,
            f'[annotation]\nreference = "{reference}"\nlabels = "reference"\n'
            'reference_keys = ["l1"]\n',
        )


def test_missing_gene_set_file_fails_before_anything_runs(simulated_run, tmp_path):
    with pytest.raises(InputError, match="gene_sets file .* not found"):
        _state(simulated_run, tmp_path, '[characterise]\ngene_sets = "nowhere.gmt"\n')


def test_a_query_whose_rna_is_on_disk_gets_the_same_labels(reference_and_query, tmp_path):
    from anndata import AnnData

    from sccohort.pp.store import STORE_KEY, RnaStoreWriter

    path, query, _ = reference_and_query
    writer = RnaStoreWriter(tmp_path / "rna.h5", query.var_names)
    writer.add("q", query.layers["counts"], query.obs_names)
    writer.close(["q"], 1e4)
    disk = AnnData(obs=query.obs[["sample_id"]].copy(), var=query.var.copy())
    disk.uns[STORE_KEY] = str(tmp_path / "rna.h5")
    memory = AnnData(obs=query.obs[["sample_id"]].copy(), var=query.var.copy())
    memory.layers["counts"] = query.layers["counts"]
    reference = load_reference(path, ["l1", "l2"])
    tables = [transfer_labels(a, reference, keys=("l1", "l2"), seed=0) for a in (memory, disk)]
    pd.testing.assert_frame_equal(*tables)
    pd.testing.assert_frame_equal(memory.obs, disk.obs)

"""End to end on the simulator: reading a simulated cohort, the demo command."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sccohort import read_cohort
from sccohort.cli import app
from sccohort.simulate import simulate_cohort


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_cohort(
        tmp_path_factory.mktemp("sim") / "cohort", design="paper", cells_per_donor=120, seed=7
    )


def _filtered_barcodes(path: Path) -> list[str]:
    with h5py.File(path) as fh:
        return [b.decode() for b in fh["matrix/barcodes"][:]]


def test_read_cohort_gives_exactly_the_filtered_cells(small_cohort: Path) -> None:
    mdata = read_cohort(small_cohort / "samples.csv", small_cohort / "clinical.csv")
    sheet = pd.read_csv(small_cohort / "samples.csv")
    expected = [
        f"{row.sample_id}:{barcode}"
        for row in sheet.itertuples()
        for barcode in _filtered_barcodes(small_cohort / row.path)
    ]
    assert list(mdata.obs_names) == expected
    truth = pd.read_csv(small_cohort / "truth" / "cells.csv.gz")
    assert sorted(truth["cell_id"]) == sorted(expected)

    assert list(mdata.mod["rna"].obs_names) == expected
    assert list(mdata.mod["prot"].obs_names) == expected
    assert mdata.mod["rna"].n_vars >= 15_000
    assert mdata.mod["prot"].n_vars >= 100
    donors = mdata.obs["donor_id"].astype(str)
    assert (donors[mdata.obs["sample_id"].astype(str) == "SSc4_post"] == "SSc4").all()
    assert set(mdata.obs["timepoint"].astype(str)) == {"pre_onset", "baseline", "post_treatment"}
    assert set(mdata.uns["clinical"].index) == set(sheet["donor_id"])

    # counts are the file's integers, untouched
    first = sheet.iloc[0]
    with h5py.File(small_cohort / first.path) as fh:
        total = int(fh["matrix/data"][:].sum())
    cells = mdata.obs["sample_id"].astype(str) == first.sample_id
    got = sum(
        float(mdata.mod[m].layers["counts"][np.flatnonzero(cells.to_numpy())].sum())
        for m in ("rna", "prot")
    )
    assert got == total


def test_demo_command_runs_the_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--cells-per-donor", "60"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    table = pd.read_csv(out / "tables" / "samples.csv")
    assert len(table) == 29 and (table["n_cells"] == 60).all()
    assert (out / "cohort.h5mu").is_file() and (out / "input" / "truth" / "effects.csv").is_file()

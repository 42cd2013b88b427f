"""Spatial slides (issue 25): the simulator's CosMx and Xenium files read back as its truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from mudata import MuData
from sklearn.metrics import f1_score

from sccohort.config import load_config
from sccohort.errors import InputError
from sccohort.io import SampleSheet, probe_sample, read_cosmx, read_sample
from sccohort.io.cohort_file import read_h5mu
from sccohort.simulate import simulate_cohort
from sccohort.simulate.spatial import PANEL_SIZE
from sccohort.stages import RunState, Silent
from sccohort.stages.spatial import stage_spatial

DONORS = ["SSc1", "SSc2", "SSc3"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_cohort(tmp_path_factory.mktemp("spatial_io"), "paper", donors=DONORS,
                           cells_per_donor=60, spatial="cosmx", cells_per_slide=1500)  # fmt: skip


@pytest.mark.parametrize(("fmt", "id_column"), [("cosmx", "cell_id"), ("xenium", "xenium_cell_id")])
def test_slides_read_back_as_the_truth(cohort: Path, fmt: str, id_column: str) -> None:
    truth = pd.read_csv(cohort / "truth" / "spatial.csv")
    counts = {}
    for donor in DONORS:
        sid = f"{donor}_slide"
        rna = read_sample(cohort / sid / fmt, sid, format=fmt).mod["rna"]
        rows = truth[truth["sample_id"] == sid].set_index(id_column, drop=False)
        assert sorted(rna.obs_names) == sorted(rows.index)  # the same cells, none more
        xy = rows.loc[rna.obs_names, ["x", "y"]].to_numpy()
        np.testing.assert_allclose(rna.obsm["spatial"], xy, atol=1e-3)  # µm
        assert rna.n_vars == PANEL_SIZE and rna.layers["counts"].dtype == np.int32
        assert (rna.obs["cell_area"] > 0).all() and (rna.obs["n_negative"] >= 0).all()
        order = rows.loc[rna.obs_names, "cell_id"].to_numpy()  # one key for both formats
        counts[sid] = pd.DataFrame(rna.layers["counts"].toarray(), index=order).sort_index()
    for sid, table in counts.items():  # CosMx and Xenium hold the same counts per cell
        other = "xenium" if fmt == "cosmx" else "cosmx"
        rna = read_sample(cohort / sid / other, sid, format=other).mod["rna"]
        ids = truth.set_index("xenium_cell_id" if other == "xenium" else "cell_id", drop=False)
        keys = ids.loc[rna.obs_names, "cell_id"].to_numpy()
        again = pd.DataFrame(rna.layers["counts"].toarray(), index=keys).sort_index()
        np.testing.assert_array_equal(again.to_numpy(), table.to_numpy())


def test_truth_plants_a_larger_niche_with_src(cohort: Path) -> None:
    truth = pd.read_csv(cohort / "truth" / "spatial.csv")
    share = (
        truth.assign(inflamed=truth["niche"] == "inflammatory")
        .groupby("sample_id")["inflamed"]
        .mean()
    )
    assert share["SSc1_slide"] > 1.5 * max(share["SSc2_slide"], share["SSc3_slide"])  # SSc1: SRC
    niche = truth[truth["niche"] == "inflammatory"]["subset"].value_counts(normalize=True)
    assert niche.index[0] == "Mac_THBS1" and {"Fib", "CD8_TEM_T2ISG"} <= set(niche.index[:3])
    assert set(truth["niche"]) == {"tubule", "glomerulus", "interstitium", "inflammatory"}


def test_sample_sheet_routes_slides(cohort: Path) -> None:
    sheet = SampleSheet.from_csv(cohort / "samples.csv")
    assert list(sheet.slides().table.index) == [f"{d}_slide" for d in DONORS]
    assert set(sheet.slides().table["format"]) == {"cosmx"}
    assert sheet.other_tissues("blood") is None  # slides are not dissociated tissue samples
    with pytest.warns(UserWarning, match="3 spatial slide\\(s\\) set aside"):
        blood = sheet.of_tissue("blood")
    assert list(blood.table.index) == DONORS
    probe = probe_sample(cohort / "SSc1_slide" / "cosmx", format="cosmx", sample_id="SSc1_slide")
    assert probe.format == "cosmx" and probe.n_cells == 1500


def test_bad_slides_are_named(cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds a cosmx slide.*set the sample sheet's format"):
        read_sample(cohort / "SSc1_slide" / "cosmx", "SSc1_slide")
    broken = tmp_path / "cosmx"
    shutil.copytree(cohort / "SSc1_slide" / "cosmx", broken)
    meta = next(broken.glob("*_metadata_file.csv.gz"))
    table = pd.read_csv(meta)
    table.iloc[1:].to_csv(meta, index=False)
    with pytest.raises(InputError, match="1 cells of the expression matrix have no metadata"):
        read_cosmx(broken)
    meta.unlink()
    with pytest.raises(InputError, match="no file named \\*_metadata_file"):
        read_cosmx(broken)
    with pytest.raises(InputError, match="holds RNA, not 'prot'"):
        read_sample(cohort / "SSc1_slide" / "xenium", "SSc1_slide", format="xenium",
                    modality="prot")  # fmt: skip


def test_the_stage_annotates_slides_by_markers_without_tissue(cohort: Path, tmp_path: Path) -> None:
    """No tissue cells in the run: the blood cannot label tubule cells, the markers do."""
    toml = cohort / "slides_only.toml"
    toml.write_text('[inputs]\nsamples = "samples.csv"\n\n[spatial]\nenrichment_perm = 50\n')
    with pytest.warns(UserWarning, match="set aside"):
        blood = SampleSheet.from_csv(cohort / "samples.csv").of_tissue("blood")
    blood_rna = AnnData(np.zeros((1, 1), dtype=np.float32))  # the blood is not used here
    state = RunState(load_config(toml), tmp_path, blood, None, Silent(),
                     mdata=MuData({"rna": blood_rna}))  # fmt: skip
    state.slides = SampleSheet.from_csv(cohort / "samples.csv").slides()
    written = {p.name for p in stage_spatial(state)}
    assert {"spatial_qc.csv", "spatial_cell_types.csv", "niche_composition.csv",
            "cooccurrence.csv", "niche_shares.csv", "spatial.h5mu"} <= written  # fmt: skip
    assert "niches.csv" not in written  # no contrasts
    assert state.resolved["spatial.annotation"] == "markers"
    cells = read_h5mu(tmp_path / "spatial.h5mu").mod["rna"]
    truth = pd.read_csv(cohort / "truth" / "spatial.csv").set_index("cell_id")
    truth = truth.loc[cells.obs_names]
    classes = sorted(truth["l1"].unique())
    labels = cells.obs["l1"].astype(str)
    assert f1_score(truth["l1"], labels, average="macro", labels=classes) >= 0.8
    assert cells.obs["niche"].nunique() >= 3 and "spatial_connectivities" in cells.obsp

"""The pipeline skeleton: outputs, run.json, checkpoints, resume, atomicity, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from corpus import DONORS, PROTEINS, tiny_cohort
from typer.testing import CliRunner

from sccohort import pipeline
from sccohort.cli import app
from sccohort.config import load_config
from sccohort.errors import InputError
from sccohort.io import cohort_file
from sccohort.io.atomic import write_csv


def _count_cells(state: pipeline.RunState) -> list[Path]:
    """A light second stage: cells kept per sample -> ``tables/cells.csv``."""
    counts = state.mdata.obs["sample_id"].value_counts().sort_index().rename("n_cells")
    return [write_csv(counts.reset_index(), state.out / "tables" / "cells.csv")]


@pytest.fixture(autouse=True)
def light_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanics are tested on the first stage and a light one (tiny data cannot be
    embedded)."""
    count = pipeline.Stage("count", "Counting cells", _count_cells)
    monkeypatch.setattr(pipeline, "STAGES", (pipeline.STAGES[0], count))


@pytest.fixture
def cohort_dir(tmp_path: Path) -> Path:
    """Four donors, one sample each, small random counts, a config with one contrast."""
    return tiny_cohort(tmp_path).parent


def test_run_writes_tables_cohort_and_run_json(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)

    table = pd.read_csv(out / "tables" / "samples.csv")
    assert list(table["sample_id"]) == [f"S_{d}" for d in DONORS]
    assert list(table["n_cells"]) == [30, 35, 40, 45]
    assert (table["n_proteins"] == len(PROTEINS)).all()
    assert (table["median_genes"] > 0).all() and (
        table["median_umis"] > table["median_genes"]
    ).all()

    cohort = mudata.read_h5mu(out / "cohort.h5mu")
    cells = pd.read_csv(out / "tables" / "qc_cells.csv.gz", index_col="cell_id")
    assert len(cells) == 150 and cells["qc_pass"].sum() > 100
    assert list(cohort.obs_names) == list(cells.index[cells["qc_pass"]])
    qc = pd.read_csv(out / "tables" / "qc.csv")
    assert list(qc["cells_in"]) == [30, 35, 40, 45]
    assert (
        qc["cells_out"] == cohort.obs["sample_id"].value_counts()[qc["sample_id"]].to_numpy()
    ).all()
    assert cohort.obs_names[0].startswith("S_D1:")
    assert set(cohort.mod) >= {"rna", "prot"}

    saved = json.loads((out / "run.json").read_text())
    assert saved == json.loads(json.dumps(record, default=str))
    assert saved["status"] == "finished"
    assert [s["stage"] for s in saved["stages"]] == [s.name for s in pipeline.STAGES]
    assert all(s["wall_s"] >= 0 and s["peak_rss_gb"] > 0 for s in saved["stages"])
    assert saved["seeds"]["run"] == 3
    assert saved["versions"]["anndata"] and saved["versions"]["python"]
    assert str(cohort_dir / "samples.csv") in saved["inputs"]
    assert str(cohort_dir / "D1" / "filtered_feature_bc_matrix.h5") in saved["inputs"]
    assert saved["config"]["contrasts"]["status"]["case"] == "case"
    # no temporary files left behind
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_resume_after_interrupted_run_gives_identical_tables(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, tmp_path / "whole")

    def crash(state: pipeline.RunState) -> list[Path]:
        raise RuntimeError("simulated crash")

    stages = list(pipeline.STAGES)
    broken = pipeline.Stage("count", "Counting cells", crash)
    monkeypatch.setattr(pipeline, "STAGES", (stages[0], broken))
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(config, tmp_path / "broken")
    record = json.loads((tmp_path / "broken" / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "count"
    assert not (tmp_path / "broken" / "tables" / "cells.csv").exists()

    monkeypatch.setattr(pipeline, "STAGES", tuple(stages))
    resumed = pipeline.run_pipeline(config, tmp_path / "broken", resume=True)
    assert [s["resumed"] for s in resumed["stages"]] == [True, False]
    for name in ("samples.csv", "qc.csv", "qc_cells.csv.gz", "cells.csv"):
        whole = (tmp_path / "whole" / "tables" / name).read_bytes()
        assert (tmp_path / "broken" / "tables" / name).read_bytes() == whole


def test_resume_ignores_checkpoints_of_another_config(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    again = pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out, resume=True)
    assert all(s["resumed"] for s in again["stages"])

    toml = cohort_dir / "sccohort.toml"
    toml.write_text(toml.read_text().replace("seed = 3", "seed = 4"))
    changed = pipeline.run_pipeline(load_config(toml), out, resume=True)
    assert not any(s["resumed"] for s in changed["stages"])


def test_resume_reruns_a_stage_whose_output_was_damaged(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    good = (out / "tables" / "cells.csv").read_bytes()
    (out / "tables" / "cells.csv").write_text("damaged\n")
    again = pipeline.run_pipeline(config, out, resume=True)
    assert [s["resumed"] for s in again["stages"]] == [True, False]
    assert (out / "tables" / "cells.csv").read_bytes() == good


def test_bad_input_fails_before_writing_anything(cohort_dir: Path, tmp_path: Path) -> None:
    (cohort_dir / "D2" / "filtered_feature_bc_matrix.h5").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError, match="D2"):
        pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    assert not out.exists()


def test_refuses_a_folder_that_is_not_a_run_folder(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "mine.csv").write_text("precious\n")
    with pytest.raises(InputError, match="not an sccohort run folder"):
        pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    assert (out / "tables" / "mine.csv").read_text() == "precious\n"


def test_a_new_run_keeps_files_it_does_not_own(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    (out / "notes.txt").write_text("mine\n")
    pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    assert (out / "notes.txt").read_text() == "mine\n"


def _regular_files(out: Path) -> set[str]:
    return {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.is_symlink()
    }


def test_run_json_lists_every_file_the_run_wrote(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    assert record["files"] == sorted(_regular_files(out))
    assert {"run.json", "cohort.h5mu", "tables/cells.csv", "tables/qc_cells.csv.gz"} <= set(
        record["files"]
    )


def test_a_new_run_removes_only_what_the_earlier_run_wrote(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    (out / "notes.txt").write_text("mine\n")
    (out / "checkpoints" / "mine.json").write_text("{}\n")
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:1])  # no cells.csv this time
    record = pipeline.run_pipeline(config, out)
    assert not (out / "tables" / "cells.csv").exists()  # the earlier run's: removed
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "checkpoints" / "mine.json").read_text() == "{}\n"
    assert "notes.txt" not in record["files"] and "tables/qc.csv" in record["files"]


def test_own_files_in_tables_need_overwrite_and_are_kept(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    (out / "tables" / "mine.csv").write_text("precious\n")
    (out / "tables" / "cells.csv").unlink()
    before = _regular_files(out)
    with pytest.raises(InputError, match=r"tables/mine.csv.*--overwrite"):
        pipeline.run_pipeline(config, out)
    assert _regular_files(out) == before
    record = pipeline.run_pipeline(config, out, overwrite=True)
    assert (out / "tables" / "mine.csv").read_text() == "precious\n"
    assert "tables/mine.csv" not in record["files"] and "tables/cells.csv" in record["files"]


def test_links_are_refused_or_left_alone(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"mine")
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "linked.png").symlink_to(target)
    with pytest.raises(InputError, match="figures/linked.png"):
        pipeline.run_pipeline(config, out)
    pipeline.run_pipeline(config, out, overwrite=True)
    assert (out / "figures" / "linked.png").is_symlink() and target.read_bytes() == b"mine"

    saved = tmp_path / "saved"
    (out / "tables").rename(saved)
    (out / "tables").symlink_to(saved, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(InputError, match="'tables' in the output folder is a symbolic link"):
            pipeline.run_pipeline(config, out, overwrite=overwrite)
    assert (out / "run.json").is_file() and (saved / "cells.csv").is_file()


def test_resume_takes_over_files_an_interrupted_stage_left(
    cohort_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    # killed after the last stage wrote its table but before run.json listed it
    record = json.loads((out / "run.json").read_text())
    record["files"].remove("tables/cells.csv")
    record["status"] = "running"
    (out / "run.json").write_text(json.dumps(record))
    (out / "checkpoints" / "02_count.json").unlink()
    with pytest.raises(InputError, match="tables/cells.csv"):
        pipeline.run_pipeline(config, out)  # not known to be a run's file: kept
    resumed = pipeline.run_pipeline(config, out, resume=True)
    assert [s["resumed"] for s in resumed["stages"]] == [True, False]
    assert "tables/cells.csv" in resumed["files"]
    pipeline.run_pipeline(config, out)  # now a fresh run may replace it


def test_a_run_folder_from_before_the_file_list_keeps_its_tables(
    cohort_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = load_config(cohort_dir / "sccohort.toml")
    pipeline.run_pipeline(config, out)
    record = json.loads((out / "run.json").read_text())
    del record["files"]
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="were not written by an earlier run"):
        pipeline.run_pipeline(config, out)
    again = pipeline.run_pipeline(config, out, overwrite=True)
    assert "tables/cells.csv" in again["files"]


def test_cli_validate_and_run(cohort_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(cohort_dir / "sccohort.toml")])
    assert result.exit_code == 0, result.output
    assert "case (n=2) vs control (n=2)" in result.output
    result = runner.invoke(
        app, ["run", str(cohort_dir / "sccohort.toml"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "tables" / "samples.csv").is_file()


def test_cli_input_errors_exit_2_without_traceback(cohort_dir: Path, tmp_path: Path) -> None:
    clinical = cohort_dir / "clinical.csv"
    clinical.write_text(clinical.read_text().replace("D3,", "D9,"))
    runner = CliRunner()
    for args in (
        ["validate", str(cohort_dir / "sccohort.toml")],
        ["run", str(cohort_dir / "sccohort.toml"), "--out", str(tmp_path / "o")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert "D3" in result.output and "samples.csv" in result.output
    assert not (tmp_path / "o").exists()

    result = runner.invoke(app, ["validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "nope.toml" in result.output


def test_python_dash_m_and_help_on_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sccohort", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout and "simulate" in done.stdout
    for command in ("run", "validate", "simulate", "demo"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_input_error_survives_pickling() -> None:
    import pickle

    error = InputError("bad", file="a.csv", row=3, column="age", sample="S1", hint="fix it")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.row == 3 and again.sample == "S1"


def test_cli_error_messages_keep_brackets(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[inputs]\nsamples = "s.csv"\n[qc]\nmode = "[study]"\n')
    result = CliRunner().invoke(app, ["validate", str(toml)])
    assert result.exit_code == 2
    assert "[study]" in result.output  # user text is not taken for rich markup


def test_dsb_without_raw_droplets_fails_before_writing(cohort_dir: Path, tmp_path: Path) -> None:
    toml = cohort_dir / "sccohort.toml"
    toml.write_text(toml.read_text() + '\n[normalize]\nprotein = "dsb"\n')
    with pytest.raises(InputError, match="raw_path"):
        pipeline.run_pipeline(load_config(toml), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_broken_inputs_leave_an_earlier_report_untouched(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), out)
    (out / "report.html").write_text("<p>earlier report</p>")  # as an earlier full run left it
    config = cohort_dir / "sccohort.toml"
    config.write_text(config.read_text().replace('variable = "status"', 'variable = "statsu"'))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "statsu" in result.output and "Traceback" not in result.output
    assert (out / "report.html").read_text() == "<p>earlier report</p>"


def test_cohort_files_leave_out_rna_x_and_reading_rebuilds_it(tmp_path: Path) -> None:
    import anndata as ad
    import h5py

    from sccohort.pp.normalize import normalize_rna

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(0.8, (30, 12)).astype(np.int32))
    rna = ad.AnnData(
        X=counts.astype(np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(30)])
    )
    rna.layers["counts"] = counts
    normalize_rna(rna, target_sum=1e4)
    cohort = mudata.MuData({"rna": rna})
    x = rna.X.copy()
    cohort_file.write_cohort(cohort, tmp_path / "mid.h5mu", final=False)
    cohort_file.write_cohort(cohort, tmp_path / "final.h5mu", final=True)
    assert (cohort.mod["rna"].X != x).nnz == 0  # the object in memory keeps its .X
    assert "left_out" not in cohort.uns
    for name, filter_ in (("mid", "lzf"), ("final", "gzip")):
        plain = mudata.read_h5mu(tmp_path / f"{name}.h5mu")
        assert plain.mod["rna"].X is None
        assert "normalize_rna" in plain.uns["left_out"]["rna"]["X"]
        with h5py.File(tmp_path / f"{name}.h5mu") as f:
            assert f["mod/rna/layers/counts/data"].compression == filter_
        back = cohort_file.read_h5mu(tmp_path / f"{name}.h5mu")
        assert "left_out" not in back.uns
        assert back.mod["rna"].X.dtype == np.float32
        np.testing.assert_array_equal(back.mod["rna"].X.toarray(), x.toarray())


def test_a_modified_rna_x_is_kept(tmp_path: Path) -> None:
    """Only an .X that is normalize_rna's output of the counts is left out."""
    import anndata as ad

    from sccohort.pp.normalize import normalize_rna

    counts = sp.csr_matrix(np.random.default_rng(1).poisson(1.0, (20, 8)).astype(np.int32))
    rna = ad.AnnData(X=counts.astype(np.float32))
    rna.layers["counts"] = counts
    normalize_rna(rna, target_sum=1e4)
    rna.X = rna.X * 2  # no longer the log-normalised counts
    cohort_file.write_cohort(mudata.MuData({"rna": rna}), tmp_path / "c.h5mu", final=True)
    plain = mudata.read_h5mu(tmp_path / "c.h5mu")
    assert plain.mod["rna"].X is not None and "left_out" not in plain.uns
    np.testing.assert_array_equal(plain.mod["rna"].X.toarray(), rna.X.toarray())


def _decorate(state: pipeline.RunState) -> list[Path]:
    """Changes the cohort as the embed stage does: a shared embedding, obs copied down."""
    mdata = state.mdata
    embedding = np.random.default_rng(2).normal(size=(mdata.n_obs, 3)).astype(np.float32)
    mdata.obsm["X_test"] = embedding
    for adata in mdata.mod.values():
        adata.obsm["X_test"] = embedding
        adata.obs["sample_id"] = mdata.obs.loc[adata.obs_names, "sample_id"].to_numpy()
    return []


def _cohort_stages(keep: dict | None = None) -> tuple[pipeline.Stage, ...]:
    """Preprocess, a saved cohort change, a table, a final cohort change (kept in ``keep``)."""

    def last(state: pipeline.RunState) -> list[Path]:
        state.mdata.obs["last_seen"] = np.arange(state.mdata.n_obs) % 3 == 0
        if keep is not None:
            keep["mdata"] = state.mdata
        return []

    decorate = pipeline.Stage(
        "decorate", "Decorating", _decorate, changes_cohort=True, saves_cohort=True
    )
    count = pipeline.Stage("count", "Counting cells", _count_cells)
    final = pipeline.Stage("last", "Last change", last, changes_cohort=True)
    return (pipeline.STAGES[0], decorate, count, final)


def test_a_finished_run_drops_the_intermediate_checkpoints(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "STAGES", _cohort_stages())
    config = load_config(cohort_dir / "sccohort.toml")
    out = tmp_path / "out"
    record = pipeline.run_pipeline(config, out)
    assert record["keep_checkpoints"] is False
    assert (out / "cohort.h5mu").is_file()
    assert not list((out / "checkpoints").glob("*.h5mu"))
    again = pipeline.run_pipeline(config, out, resume=True)  # from cohort.h5mu
    assert all(s["resumed"] for s in again["stages"])

    kept = pipeline.run_pipeline(config, tmp_path / "kept", keep_checkpoints=True)
    assert kept["keep_checkpoints"] is True
    names = sorted(p.name for p in (tmp_path / "kept" / "checkpoints").glob("*.h5mu"))
    assert names == ["02_decorate.h5mu", "04_last.h5mu"]
    final = tmp_path / "kept" / "checkpoints" / "04_last.h5mu"
    assert os.path.samefile(final, tmp_path / "kept" / "cohort.h5mu")  # one file, two names

    # a run that stops before the end keeps its checkpoints, for --resume
    def crash(state: pipeline.RunState) -> list[Path]:
        raise RuntimeError("simulated crash")

    stages = _cohort_stages()
    monkeypatch.setattr(
        pipeline, "STAGES", (*stages[:2], pipeline.Stage("count", "", crash), stages[3])
    )
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(config, out)
    assert [p.name for p in (out / "checkpoints").glob("*.h5mu")] == ["02_decorate.h5mu"]
    monkeypatch.setattr(pipeline, "STAGES", stages)
    resumed = pipeline.run_pipeline(config, out, resume=True)
    assert [s["resumed"] for s in resumed["stages"]] == [True, True, False, False]
    assert not list((out / "checkpoints").glob("*.h5mu"))


def test_read_h5mu_gives_back_the_final_object(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    from sccohort import read_h5mu

    held: dict = {}
    monkeypatch.setattr(pipeline, "STAGES", _cohort_stages(held))
    pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), tmp_path / "out")
    memory = held["mdata"]
    capfd.readouterr()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_h5mu(tmp_path / "out" / "cohort.h5mu")
    assert not caught and capfd.readouterr() == ("", "")  # reading prints nothing

    assert list(back.mod) == list(memory.mod)
    _assert_same_frame(back.obs, memory.obs)
    assert set(back.obsm) == set(memory.obsm)
    for key in memory.obsm:
        np.testing.assert_array_equal(np.asarray(back.obsm[key]), np.asarray(memory.obsm[key]))
    for name, adata in memory.mod.items():
        again = back.mod[name]
        for layer in (None, "counts"):
            mine = adata.X if layer is None else adata.layers[layer]
            theirs = again.X if layer is None else again.layers[layer]
            assert theirs.dtype == mine.dtype, (name, layer)
            mine, theirs = (m.toarray() if sp.issparse(m) else m for m in (mine, theirs))
            np.testing.assert_array_equal(theirs, mine)  # bit for bit: no tolerance
        _assert_same_frame(again.obs, adata.obs)
        assert set(again.obsm) == set(adata.obsm)
        np.testing.assert_array_equal(again.obsm["X_test"], adata.obsm["X_test"])
    assert "left_out" not in back.uns and "left_out" not in memory.uns
    plain = mudata.read_h5mu(tmp_path / "out" / "cohort.h5mu")  # the file holds each value once
    assert plain.mod["rna"].X is None and "X_test" not in plain.mod["rna"].obsm
    assert "sample_id" not in plain.mod["rna"].obs and plain.uns["left_out"]["rna"]["obs"]


def _assert_same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same index, columns and values (categorical and object columns compare as values)."""
    assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
    for column in b.columns:
        mine = pd.Series(a[column].astype(object).to_numpy())
        theirs = pd.Series(b[column].astype(object).to_numpy())
        assert mine.equals(theirs), column


def _noisy(state: pipeline.RunState) -> list[Path]:
    """Warns as a run does: ours twice, a library's notices, numpy, a log record."""
    import logging
    import warnings

    from sccohort.pp.qc import QCWarning

    for _ in range(2):
        warnings.warn("sample 'S_D1': a note for the user", QCWarning, stacklevel=1)
    # a plain UserWarning raised by code of the package counts as sccohort's own
    package_file = str(Path(pipeline.__file__).parent / "stages" / "cells.py")
    warnings.warn_explicit("a plain note of the package", UserWarning, package_file, 1)
    warnings.warn("From 0.4 .update() will not pull", FutureWarning, stacklevel=1)
    warnings.warn("var_names are not unique", UserWarning, stacklevel=1)  # not from sccohort
    float(np.mean(np.array([])))  # numpy: Mean of empty slice
    logging.getLogger("somelib").warning("a library's log record")
    return _count_cells(state)


def test_warnings_are_recorded_and_only_ours_raised_again(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    noisy = pipeline.Stage("count", "Counting cells", _noisy)
    monkeypatch.setattr(pipeline, "STAGES", (pipeline.STAGES[0], noisy))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = pipeline.run_pipeline(load_config(cohort_dir / "sccohort.toml"), tmp_path / "o")
    raised = [str(w.message) for w in caught]
    assert raised.count("sample 'S_D1': a note for the user") == 1
    assert raised.count("a plain note of the package") == 1
    assert not [m for m in raised if "empty slice" in m or "not unique" in m or "0.4" in m]
    logged = {(w["stage"], w["category"], w["message"]) for w in record["warnings"]}
    assert {
        ("count", "sccohort.pp.qc.QCWarning", "sample 'S_D1': a note for the user"),
        ("count", "builtins.RuntimeWarning", "Mean of empty slice"),
        ("count", "builtins.FutureWarning", "From 0.4 .update() will not pull"),
        ("count", "builtins.UserWarning", "var_names are not unique"),
        ("count", "logging.WARNING", "a library's log record"),
    } <= logged
    saved = json.loads((tmp_path / "o" / "run.json").read_text())
    assert saved["warnings"] == record["warnings"]
    assert all(set(w) >= {"stage", "category", "message", "source"} for w in saved["warnings"])


def test_is_own_warning() -> None:
    from sccohort.errors import SccohortWarning, is_own_warning
    from sccohort.pp.qc import QCWarning

    inside = str(Path(pipeline.__file__))
    assert is_own_warning(QCWarning, "/anywhere/else.py")
    assert issubclass(QCWarning, SccohortWarning) and issubclass(SccohortWarning, UserWarning)
    assert is_own_warning(UserWarning, inside)
    assert not is_own_warning(UserWarning, "/site-packages/mudata/_core/mudata.py")
    assert not is_own_warning(FutureWarning, inside)  # a library's notice raised at our line
    assert not is_own_warning(RuntimeWarning, inside)


def test_cli_console_shows_only_sccohort_messages(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    noisy = pipeline.Stage("count", "Counting cells", _noisy)
    monkeypatch.setattr(pipeline, "STAGES", (pipeline.STAGES[0], noisy))
    result = CliRunner().invoke(
        app, ["run", str(cohort_dir / "sccohort.toml"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    console = result.stderr
    assert console.count("warning: sample 'S_D1': a note for the user") == 1
    assert console.count("warning: a plain note of the package") == 1
    assert "Warning:" not in console and "Traceback" not in console
    for noise in ("empty slice", "not unique", "0.4", "log record"):
        assert noise not in console, noise
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert "Mean of empty slice" in {w["message"] for w in record["warnings"]}


def test_cli_unexpected_error_is_one_line_and_run_json_has_the_traceback(
    cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(state: pipeline.RunState) -> list[Path]:
        return {}["no such key"]

    stage = pipeline.Stage("count", "Counting cells", broken)
    monkeypatch.setattr(pipeline, "STAGES", (pipeline.STAGES[0], stage))
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["run", str(cohort_dir / "sccohort.toml"), "--out", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "stage 'count' failed: KeyError" in errors[0] and "run.json" in result.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "count"
    assert record["error"].startswith("KeyError") and "Traceback" in record["traceback"]


def test_tree_memory_counts_pages_shared_with_a_forked_child_once() -> None:
    import multiprocessing as mp

    import psutil

    from sccohort.run_log import tree_memory

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    big = np.ones(2**27 // 8)  # 128 MB, touched
    me = psutil.Process()
    alone = tree_memory(me)
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def child() -> None:  # reads the shared array, writes nothing
        float(big[::4096].sum())
        ready.set()
        done.wait(30)

    proc = ctx.Process(target=child)
    proc.start()
    try:
        assert ready.wait(30)
        with_child = tree_memory(me)
        rss_sum = me.memory_info().rss + psutil.Process(proc.pid).memory_info().rss
    finally:
        done.set()
        proc.join(30)
    assert alone is not None and with_child is not None
    assert rss_sum > alone + 100 * 2**20  # summed RSS counts the shared array twice
    assert with_child < alone + 64 * 2**20  # tree_memory counts it once


def test_the_memory_sampler_waits_longer_while_samples_are_costly(monkeypatch) -> None:
    import time

    import sccohort.run_log as run_log

    assert run_log.sampler_wait(0.5, 0.001) == 0.5
    assert run_log.sampler_wait(0.5, 0.3) == pytest.approx(0.3 / run_log.SAMPLER_DUTY)
    calls = []

    def slow_sample(root):  # a sample taking 30 ms: the next one waits about 1 s
        calls.append(time.perf_counter())
        time.sleep(0.03)
        return 2**30

    monkeypatch.setattr(run_log, "tree_memory", slow_sample)
    with run_log.PeakMemory(interval=0.001) as memory:
        time.sleep(0.6)
    # entry, one loop sample after 1 ms, exit: every 1 ms it would be about 20
    assert len(calls) <= 3, len(calls)
    assert memory.peak_gb == 1.0

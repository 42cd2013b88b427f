"""Power planning (issue 24): the variation fit, the power engine, the grid, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sccohort.cohort import ClinicalTable
from sccohort.stats import (
    Contrast,
    DonorVariation,
    abundance_power,
    compare_abundance,
    detectable_fold,
    donors_needed,
    fit_donor_variation,
    reference_variation,
)
from sccohort.stats.power import _pvalues


def _design(n_case: int, n_control: int):
    donors = [f"D{i}" for i in range(n_case + n_control)]
    clinical = ClinicalTable(
        pd.DataFrame(
            {"g": ["yes"] * n_case + ["no"] * n_control},
            index=pd.Index(donors, name="donor_id"),
        ),
        {"g": "binary"},
    )
    return donors, Contrast("g", "g", case="yes", control="no").design(clinical, donors)


@pytest.mark.parametrize(("n_case", "n_control"), [(4, 17), (10, 10), (3, 4)])
def test_engine_gives_compare_abundances_pvalues(n_case: int, n_control: int) -> None:
    """The batched engine is the pipeline's default test: the same p-values, cohort by cohort."""
    ref = reference_variation(cells=1500)
    n = n_case + n_control
    counts = ref.sample(n, 4, np.random.default_rng(2), subset="CD4_TEM", fold=2.0, n_case=n_case)
    x = np.column_stack([np.ones(n), np.r_[np.ones(n_case), np.zeros(n_control)]])
    pvalues, scheme, _ = _pvalues(counts, x, n_perm=2000, max_exact=20_000, seed=9)
    donors, design = _design(n_case, n_control)
    for s in range(len(counts)):
        frame = pd.DataFrame(counts[s], index=donors, columns=ref.shares.index)
        totals = pd.DataFrame(
            np.repeat(counts[s].sum(axis=1)[:, None], counts.shape[2], axis=1),
            index=donors,
            columns=ref.shares.index,
        )
        expected = compare_abundance(frame, totals, design, level="subset", n_perm=2000, seed=9)
        assert expected["scheme"].iloc[0] == scheme
        np.testing.assert_allclose(pvalues[s], expected["pvalue"].to_numpy(), rtol=0, atol=1e-12)


def test_reference_power_matches_the_association_benchmark() -> None:
    """benchmarks/results/association_power.csv: 3.2 % subset, 4 vs 17, fold 2.5 -> 0.86."""
    ref = reference_variation(cells=2000)
    power = abundance_power(
        ref, n_case=[4], n_control=[17], fold=[2.5], base_share=[0.0323], n_sim=200, seed=1
    )
    assert power["subset"].iloc[0] == "CD4_TEM"
    assert abs(power["power"].iloc[0] - 0.86) <= 0.08
    assert power["ci_low"].iloc[0] < power["power"].iloc[0] < power["ci_high"].iloc[0]


def test_null_folds_find_nothing_and_power_grows_with_fold_and_donors() -> None:
    ref = reference_variation(cells=1000)
    power = abundance_power(
        ref, n_case=[4, 10], fold=[1.0, 1.5, 3.0], base_share=[0.05], n_sim=100, seed=3
    )
    null = power[power["fold"] == 1.0]
    assert (null["power"] <= 0.05).all()
    assert (null["other_found"] <= 0.1).all()
    for _, curve in power.groupby("n_case"):
        assert curve.sort_values("fold")["power"].is_monotonic_increasing
    at_3 = power[power["fold"] == 3.0].set_index("n_case")["power"]
    assert at_3[10] >= at_3[4]
    assert set(power["n_control"]) == {4, 10}  # as many controls as cases by default


def test_same_seed_same_numbers_on_any_scheduler() -> None:
    ref = reference_variation(cells=800)
    grid = {"n_case": [6, 10], "fold": [2.0, 3.0], "base_share": [0.05], "n_sim": 40, "seed": 4}
    threads = abundance_power(ref, **grid)
    assert threads["power"].between(0.05, 0.95).any()
    sync = abundance_power(ref, scheduler="sync", **grid)
    pd.testing.assert_frame_equal(threads, sync)
    other = abundance_power(ref, **(grid | {"seed": 5}))
    assert not other["power"].equals(threads["power"])


def test_fit_recovers_a_planted_dirichlet() -> None:
    truth = reference_variation()
    for seed in range(3):
        draw = truth.sample(30, 1, np.random.default_rng(seed), cells=2000)[0]
        fit = fit_donor_variation(pd.DataFrame(draw, columns=truth.shares.index))
        assert abs(fit.pooled_concentration / 300 - 1) < 0.2
        assert (abs(fit.concentration / 300 - 1) < 0.2).mean() >= 0.9
        assert fit.cells_per_sample == pytest.approx(2000, rel=0.05)


def test_fit_keeps_subsets_that_vary_more_apart() -> None:
    """Half the subsets vary 8 times more (in variance) than the others: the fit sees it."""
    ref = reference_variation()
    concentration = pd.Series(
        np.where(np.arange(len(ref.shares)) % 2, 50.0, 400.0), index=ref.shares.index
    )
    truth = DonorVariation(shares=ref.shares, concentration=concentration, cells_per_sample=3000)
    draw = truth.sample(60, 1, np.random.default_rng(0))[0]
    fit = fit_donor_variation(pd.DataFrame(draw, columns=ref.shares.index))
    assert np.isfinite(fit.prior_df)
    high = fit.concentration[concentration == 400.0]
    low = fit.concentration[concentration == 50.0]
    assert high.median() > 3 * low.median()
    assert abs(np.log(low.median() / 50)) < np.log(1.5)


def test_inverse_questions_read_the_grid() -> None:
    grid = pd.DataFrame(
        {
            "subset": "B", "base_share": 0.03, "cells_per_sample": 2000.0,
            "n_case": [4, 4, 4, 4, 8, 8, 8, 8], "n_control": [4, 4, 4, 4, 8, 8, 8, 8],
            "fold": [0.5, 1.5, 2.0, 3.0] * 2,
            "power": [0.3, 0.2, 0.5, 0.7, 0.85, 0.5, 0.9, 1.0],
        }
    )  # fmt: skip
    folds = detectable_fold(grid).set_index(["n_case", "direction"])
    assert np.isnan(folds.loc[(4, "expansion"), "fold"])
    assert "below 0.8" in folds.loc[(4, "expansion"), "note"]
    assert 1.5 < folds.loc[(8, "expansion"), "fold"] < 2.0
    assert folds.loc[(8, "expansion"), "fold_grid"] == 2.0
    assert folds.loc[(8, "depletion"), "fold"] == 0.5
    donors = donors_needed(grid).set_index("fold")
    assert donors.loc[2.0, "n_case"] == 8
    assert np.isnan(donors.loc[1.5, "n_case"])


def _power_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sccohort", "power", *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--design", "paper", "--n-case", "1,4"], "at least 2 donors"),
        (["--design", "paper", "--n-case", "4", "--n-control", "1"], "at least 2 donors"),
        (["--design", "paper", "--fold", "0,2"], "a fold must be > 0"),
        (["--design", "paper", "--fold", "-1"], "a fold must be > 0"),
        (["--design", "paper", "--n-case", "4,x"], "not a list of whole numbers"),
        (["--design", "paper", "--base-share", "0.7"], "baseline share"),
        (["--design", "paper", "--subset", "Nope"], "unknown subset"),
        (["--design", "elsewhere"], "unknown design"),
        ([], "exactly one"),
    ],
)
def test_bad_requests_get_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    done = _power_cli("--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()


def test_from_a_folder_that_is_not_a_finished_run(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text(json.dumps({"status": "running"}))
    for folder, says in ((tmp_path, "no readable run.json"), (tmp_path / "half", "running")):
        done = _power_cli("--from", str(folder), "--out", str(tmp_path / "out"))
        assert done.returncode == 2, done.stderr
        assert "is not a finished sccohort run" in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr


def test_power_command_writes_its_page(tmp_path: Path) -> None:
    out = tmp_path / "plan"
    done = _power_cli(
        "--design", "paper", "--n-case", "4,8", "--fold", "1.5,3", "--base-share", "0.03",
        "--cells-per-sample", "1000", "--n-sim", "20", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    power = pd.read_csv(out / "power.csv")
    assert list(power.columns[:10]) == [
        "subset", "base_share", "fold", "n_case", "n_control", "cells_per_sample", "power",
        "ci_low", "ci_high", "n_sim",
    ]  # fmt: skip
    assert len(power) == 4
    for name in ("detectable_fold.csv", "donors_needed.csv", "variation.csv"):
        assert (out / name).is_file()
    assert (out / "figures" / "power_curves.png").is_file()
    page = (out / "power.html").read_text()
    assert "Power curves" in page and "What reaches 80 % power" in page
    record = json.loads((out / "power.json").read_text())
    assert record["request"]["seed"] == 0 and record["versions"]["numpy"]


def test_power_from_a_pilot_run_and_the_runs_own_paragraph(simulated_run: Path) -> None:
    out = simulated_run / "plan"
    done = _power_cli(
        "--from", str(simulated_run / "out"), "--n-case", "4,8", "--fold", "2,4", "--n-sim",
        "20", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    variation = pd.read_csv(out / "variation.csv")
    assert variation["share"].sum() == pytest.approx(1.0)
    record = json.loads((out / "power.json").read_text())
    assert record["variation"]["n_donors"] == 8
    assert 0 < record["variation"]["qc_loss"] < 0.5
    contrasts = pd.read_csv(simulated_run / "out" / "tables" / "contrasts.csv")
    row = contrasts.set_index("contrast").loc["SSc_vs_HD"]
    # 4 vs 4 donors: p >= 2/70, so no subset alone reaches padj < 0.05 whatever the fold
    assert np.isnan(row["detectable_fold_up"]) and "out of reach" in row["detectable_note"]
    report = (simulated_run / "out" / "report.html").read_text()
    assert "What this cohort could detect" in report


def test_a_designs_numbers_do_not_depend_on_the_rest_of_the_grid() -> None:
    ref = reference_variation(cells=800)
    alone = abundance_power(ref, n_case=[6], fold=[2.0], base_share=[0.05], n_sim=30, seed=2)
    grid = abundance_power(
        ref, n_case=[4, 6], fold=[1.5, 2.0], base_share=[0.01, 0.05], n_sim=30, seed=2
    )
    same = grid[(grid["n_case"] == 6) & (grid["fold"] == 2.0) & (grid["base_share"] == 0.05)]
    pd.testing.assert_frame_equal(same.reset_index(drop=True), alone)

"""Shared fixtures: one small simulated cohort run through the whole pipeline per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from sccohort import pipeline
from sccohort.config import load_config
from sccohort.simulate import simulate_cohort

#: Four SSc and four healthy donors: enough for every cell type, small enough to be quick.
RUN_DONORS = ["SSc1", "SSc2", "SSc3", "SSc5", "HD1", "HD2", "HD3", "HD4"]


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/cohort`` (simulated, 8 donors x 400 cells, seed 11) and ``root/out`` (its run)."""
    root = tmp_path_factory.mktemp("simulated_run")
    cohort = simulate_cohort(
        root / "cohort", design="paper", cells_per_donor=400, seed=11, donors=RUN_DONORS,
        n_empty=300,
    )  # fmt: skip
    (cohort / "sccohort.toml").write_text(
        '[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n[run]\nseed = 5\n\n'
        '[contrasts.SSc_vs_HD]\nvariable = "group"\ncase = "SSc"\ncontrol = "HD"\n'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clinical donors without samples, library notices
        pipeline.run_pipeline(load_config(cohort / "sccohort.toml"), root / "out")
    return root

"""A run killed with SIGKILL at several stages resumes to the uninterrupted run's tables, byte
for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sccohort.simulate import simulate_cohort

#: Kill the run as soon as the checkpoint record of this stage appears (the next stage runs).
# after characterise: the run resumes from the cohort checkpoint of subsets and re-runs the
# later stages (one kill point: each costs a whole run, and CI has 20 minutes)
KILL_AFTER = ("characterise",)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated cohort (4 donors x 300 cells) and its config."""
    root = tmp_path_factory.mktemp("fault")
    simulate_cohort(
        root / "cohort", design="paper", cells_per_donor=300, seed=2,
        donors=["SSc1", "SSc2", "HD1", "HD2"], n_empty=200,
    )  # fmt: skip
    config = root / "cohort" / "sccohort.toml"
    config.write_text(
        '[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n'
        '[run]\nseed = 4\nscheduler = "threads"\n\n'
        '[contrasts.SSc_vs_HD]\nvariable = "group"\ncase = "SSc"\ncontrol = "HD"\n'
    )
    return config


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sccohort", "run", str(config), "--out", str(out), *extra]


def _tables(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tables").iterdir())}


@pytest.fixture(scope="module")
def reference(cohort: Path) -> dict[str, bytes]:
    """The tables of the uninterrupted run."""
    out = cohort.parent.parent / "whole"
    subprocess.run(_command(cohort, out), check=True, capture_output=True, timeout=900)
    return _tables(out)


def _assert_same_tables(found: dict[str, bytes], reference: dict[str, bytes]) -> None:
    """The same tables with the same text and numbers; numbers may differ in their last
    digits: threaded BLAS / numba sums are not bit-reproducible across processes (float32
    annotation confidences measured 1.4e-4 apart between two runs)."""
    import io

    import pandas as pd

    assert sorted(found) == sorted(reference)
    for name, data in reference.items():
        if found[name] == data:
            continue
        compression = "gzip" if name.endswith(".gz") else None
        a = pd.read_csv(io.BytesIO(found[name]), compression=compression, keep_default_na=False)
        b = pd.read_csv(io.BytesIO(data), compression=compression, keep_default_na=False)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-3, atol=1e-6, obj=name)


def _kill_after(config: Path, out: Path, stage: str) -> None:
    """Start a run and SIGKILL it once ``stage`` has written its checkpoint record."""
    process = subprocess.Popen(
        _command(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    try:
        while not list((out / "checkpoints").glob(f"*_{stage}.json")):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"stage {stage} never finished"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("stage", KILL_AFTER)
def test_killed_run_resumes_to_identical_tables(
    cohort: Path, reference: dict[str, bytes], tmp_path: Path, stage: str
) -> None:
    out = tmp_path / "out"
    _kill_after(cohort, out, stage)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running"  # killed: nothing could record the end
    assert not (out / "report.html").exists() or stage == "characterise"
    resumed = subprocess.run(
        _command(cohort, out, "--resume"), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    assert any(s["resumed"] for s in record["stages"])
    _assert_same_tables(_tables(out), reference)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert os.path.isfile(out / "report.html")

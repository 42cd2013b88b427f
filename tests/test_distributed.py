"""The same run on a real Dask cluster (``dask scheduler`` + two ``dask worker`` processes on
127.0.0.1) gives the same tables and cohort as a run in this process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sccohort import pipeline, read_h5mu
from sccohort.config import load_config
from sccohort.simulate import simulate_cohort

distributed = pytest.importorskip("distributed")

#: Per-sample work, the cohort-level embedding and the background UMAP job.
DISTRIBUTED_STAGES = ("preprocess", "embed", "umap")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two single-threaded workers, each its own OS process."""
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    logs = [open(tmp_path / f"dask-{i}.log", "w") for i in range(3)]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        )
    ]
    for i in (1, 2):
        procs.append(
            subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--local-directory", str(tmp_path / f"worker{i}")],
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    try:
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def test_a_run_on_a_dask_cluster_equals_the_local_run(
    tmp_path: Path, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = simulate_cohort(
        tmp_path / "cohort", design="paper", cells_per_donor=300, seed=4,
        donors=["SSc1", "SSc2", "HD1", "HD2"], n_empty=300,
    )  # fmt: skip
    (cohort / "sccohort.toml").write_text(
        '[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n[run]\nseed = 2\n\n'
        '[normalize]\nprotein = "dsb"\n\n'
        '[contrasts.SSc_vs_HD]\nvariable = "group"\ncase = "SSc"\ncontrol = "HD"\n'
    )
    stages = tuple(s for s in pipeline.STAGES if s.name in DISTRIBUTED_STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    config = load_config(cohort / "sccohort.toml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = pipeline.run_pipeline(config, tmp_path / "local", scheduler="sync")
        start = time.perf_counter()
        remote = pipeline.run_pipeline(config, tmp_path / "remote", scheduler=cluster)
    assert time.perf_counter() - start < 300
    assert local["scheduler"] == {"kind": "sync"}
    assert remote["scheduler"]["kind"] == "distributed"
    assert remote["scheduler"]["workers"] == 2

    names = sorted(p.name for p in (tmp_path / "local" / "tables").iterdir())
    assert {"samples.csv", "qc.csv", "qc_cells.csv.gz"} <= set(names)
    for name in names:
        here = (tmp_path / "local" / "tables" / name).read_bytes()
        assert (tmp_path / "remote" / "tables" / name).read_bytes() == here, name

    a = read_h5mu(tmp_path / "local" / "cohort.h5mu")
    b = read_h5mu(tmp_path / "remote" / "cohort.h5mu")
    assert list(a.obs_names) == list(b.obs_names)
    assert (a.obs["leiden"].to_numpy() == b.obs["leiden"].to_numpy()).all()
    assert (a["rna"].X != b["rna"].X).nnz == 0
    assert b["prot"].uns["normalization"]["method"] == "dsb"
    assert np.array_equal(a["prot"].X, b["prot"].X)
    assert np.array_equal(a.obsm["X_umap"], b.obsm["X_umap"])

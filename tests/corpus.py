"""The harness of the bad-input corpus: a tiny valid cohort, and the checks every case shares.

A case copies `tiny_cohort` into its own folder, breaks one thing, and calls `assert_refused`:
``sccohort validate`` and ``sccohort run`` both exit 2 with one line that names what is wrong
and where, no traceback, nothing written to the output folder, and no input file changed.
Both commands run in-process (typer's ``CliRunner``), so a case costs milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from typer.testing import CliRunner

from sccohort.cli import app
from sccohort.io.tenx import write_10x_h5

GENES = [f"GENE{i}" for i in range(40)] + ["MT-CO1", "MT-ND1"]
PROTEINS = ["CD3", "CD4", "CD14", "CD19", "Mouse IgG1"]
#: donor -> (group, age)
DONORS = {"D1": ("case", 50), "D2": ("control", 60), "D3": ("case", 70), "D4": ("control", 55)}
CONFIG = (
    '[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n'
    "[run]\nseed = 3\n\n"
    "[qc]\nmin_genes = 5\nmin_prot_umis = 0.0\nisotype_min_pct = 100.0\n"
    'doublet_method = "none"\n\n'
    '[contrasts.status]\nvariable = "status"\ncase = "case"\ncontrol = "control"\n'
)
#: A Python traceback or warning as Python prints them (our messages read "error: ...").
PYTHON_NOISE = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(Error|Warning): ")


def features() -> pd.DataFrame:
    """Cell Ranger's feature table of the tiny cohort: 42 genes and 5 antibodies."""
    return pd.DataFrame(
        {
            "id": [f"ENSG{i:011d}" for i in range(len(GENES))] + PROTEINS,
            "name": GENES + PROTEINS,
            "feature_type": ["Gene Expression"] * len(GENES) + ["Antibody Capture"] * len(PROTEINS),
        }
    )


def tiny_cohort(root: Path, seed: int = 1) -> Path:
    """Four donors, one Cell Ranger h5 each (30-45 cells), tables and a config; returns it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, donor in enumerate(DONORS):
        n_cells = 30 + 5 * i
        counts = sp.random(n_cells, len(GENES) + len(PROTEINS), density=0.4, random_state=rng)
        counts.data = rng.integers(1, 20, counts.nnz).astype(float)
        barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_cells)]
        (root / donor).mkdir(exist_ok=True)
        write_10x_h5(root / donor / "filtered_feature_bc_matrix.h5", counts, barcodes, features())
        rows.append((f"S_{donor}", donor, f"{donor}/filtered_feature_bc_matrix.h5", f"lane{i % 2}"))
    pd.DataFrame(rows, columns=["sample_id", "donor_id", "path", "batch"]).to_csv(
        root / "samples.csv", index=False
    )
    pd.DataFrame(
        [(d, g, a) for d, (g, a) in DONORS.items()], columns=["donor_id", "status", "age"]
    ).to_csv(root / "clinical.csv", index=False)
    (root / "sccohort.toml").write_text(CONFIG)
    return root / "sccohort.toml"


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (path relative to it)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def invoke(*args: str):
    """Run the command line in-process; returns typer's result (exit code, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(config: Path, out: Path, *mentions: str, commands=("validate", "run")) -> str:
    """Both commands exit 2 with one line naming ``mentions``; nothing written or changed.

    ``out`` must not exist before (it must not exist after either) unless it is a folder
    the case prepared, which must be left exactly as it was. Returns the message.
    """
    root = config.parent
    before = snapshot(root)
    out_before = snapshot(out) if out.is_dir() else None
    out_file = out.read_bytes() if out.is_file() else None  # an --out that is a file
    message = ""
    for command in commands:
        args = [command, config] + (["--out", out] if command == "run" else [])
        result = invoke(*args)
        text = result.output
        lines = [line for line in text.splitlines() if line.strip()]
        assert result.exit_code == 2, f"{command}: exit {result.exit_code}\n{text}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}:\n{text}"
        assert not PYTHON_NOISE.search(text), f"{command}:\n{text}"
        for mention in mentions:
            assert mention in lines[0], f"{command}: {mention!r} not in {lines[0]!r}"
        message = lines[0]
    assert snapshot(root) == before, "an input file changed"
    if out_file is not None:
        assert out.read_bytes() == out_file, "the run changed the file given as OUT"
    elif out_before is None:
        assert not out.exists() or not any(out.iterdir()), "the run wrote into OUT"
    else:
        assert snapshot(out) == out_before, "the run changed the output folder"
    return message


@contextlib.contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Turn a hang (a regression that opens a pipe) into a failure after ``seconds``."""

    def stop(signum, frame):  # noqa: ANN001
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

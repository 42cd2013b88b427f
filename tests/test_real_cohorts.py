"""Real cells end to end: each cohort shape a lab hands over runs to report.html.

Cohorts are built from ``../shared/data`` by ``tests/real_cohorts.py`` (RNA + protein, RNA
only in MTX folders, Ensembl ids, a 1,000-gene panel, and the 20-donor protein-only cohort)
and run with the command line, as a user would. Skips, saying why, when the data are absent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mudata as md
import pandas as pd
import pytest
from real_cohorts import ECCITE, KOTLIAROV, eccite_cohort, kotliarov_cohort
from sklearn.metrics import f1_score

#: Kotliarov cells per donor in the test (20 donors); the benchmark uses all of them.
KOTLIAROV_CELLS = 250
#: A Python warning as the warnings module prints it (ours print as "warning: ...").
PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")


def _run(config: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sccohort", "run", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )


VARIANTS = ("cite", "rna", "ensembl", "panel", "protein")
_RUNS: dict[str, tuple[Path, Path, subprocess.CompletedProcess]] = {}


@pytest.fixture(scope="module")
def finished(request, tmp_path_factory) -> tuple[str, Path, Path, subprocess.CompletedProcess]:
    """(variant, cohort folder, output folder, the run's process) of one real cohort.

    ``request.param`` names the variant; each cohort is built and run once per session.
    """
    variant = request.param
    source = KOTLIAROV if variant == "protein" else ECCITE
    if not source.is_file():
        pytest.skip(f"real test data not found at {source} (shared/data is absent here)")
    if variant not in _RUNS:
        root = tmp_path_factory.mktemp(f"real_{variant}")
        if variant == "protein":
            config = kotliarov_cohort(root / "cohort", cells_per_donor=KOTLIAROV_CELLS)
        else:
            config = eccite_cohort(root / "cohort", variant)
        _RUNS[variant] = (root / "cohort", root / "out", _run(config, root / "out"))
    return (variant, *_RUNS[variant])


def variants(*names: str):
    """Parametrise a test over the runs of these cohort variants."""
    return pytest.mark.parametrize("finished", names, indirect=True)


def _cohort(out: Path) -> md.MuData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.read_h5mu(out / "cohort.h5mu")


@variants(*VARIANTS)
def test_runs_to_a_report_with_our_messages_only(finished) -> None:
    variant, _, out, result = finished
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("report.html", "cohort.h5mu", "tables/association.csv", "run.json"):
        assert (out / name).is_file(), f"{variant}: {name} missing"
    assert "Traceback" not in result.stderr
    assert not PYTHON_WARNING.search(result.stderr), result.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    association = pd.read_csv(out / "tables" / "association.csv")
    assert {"l1", "subset"} <= set(association["level"])


@variants(*VARIANTS)
def test_modalities_and_what_could_not_run(finished) -> None:
    variant, _, out, _ = finished
    mdata = _cohort(out)
    expected = {"cite": {"rna", "prot"}, "protein": {"prot"}}.get(variant, {"rna"})
    assert set(mdata.mod) == expected
    assert "X_umap" in mdata.obsm and mdata.obs["subset"].notna().all()
    skipped = json.loads((out / "run.json").read_text()).get("skipped", [])
    report = (out / "report.html").read_text()
    if variant == "protein":
        # RNA analyses say why they are absent, in run.json and in the report
        stages = {entry["stage"] for entry in skipped}
        assert {"de", "characterise"} <= stages
        assert "the cohort has no RNA (protein only)" in report
        assert not (out / "tables" / "markers_rna.csv").exists()
        assert (out / "tables" / "markers_prot.csv").is_file()


@variants("rna", "ensembl", "panel")
def test_gene_identifiers_become_symbols(finished) -> None:
    variant, _, out, _ = finished
    rna = _cohort(out).mod["rna"]
    assert {"CD3E", "CD14", "MS4A1", "MT-CO1"} <= set(rna.var_names)
    assert rna.var["gene_ids"].astype(str).str.startswith("ENSG").all()
    if variant == "panel":
        assert rna.n_vars == 1000


@variants("panel")
def test_panel_defaults_adapt(finished) -> None:
    _, _, out, _ = finished
    record = json.loads((out / "run.json").read_text())
    resolved = record["resolved"]
    assert resolved["embedding.n_top_genes"] <= 1000
    assert resolved["qc.min_genes"] == 5
    qc = pd.read_csv(out / "tables" / "qc.csv")
    assert (qc["cells_out"] / qc["cells_in"]).min() > 0.8  # the panel keeps its cells
    types = pd.read_csv(out / "tables" / "cell_types.csv")
    assert {"callable", "marker_coverage", "missing_markers"} <= set(types.columns)
    # e.g. gamma-delta T cells: TRDC, TRGC1 ... are not among the panel's 1,000 genes
    assert not types.loc[types["l2"] == "gdT", "callable"].astype(bool).any()


@variants("cite", "rna", "ensembl", "panel")
def test_unreachable_significance_is_said_plainly(finished) -> None:
    _, _, out, result = finished
    reach = pd.read_csv(out / "tables" / "contrasts.csv")
    row = reach.iloc[0]
    assert (row["n_case"], row["n_control"]) == (2, 2)
    assert row["min_pvalue"] == pytest.approx(1 / 3) and not row["reachable"]
    assert "no subset can reach padj < 0.05" in result.stderr.replace("\n", " ")
    assert "no subset can reach" in (out / "report.html").read_text()


@variants("protein")
def test_protein_only_labels_match_manual_gating(finished) -> None:
    _, cohort, out, _ = finished
    reach = pd.read_csv(out / "tables" / "contrasts.csv")
    assert reach["reachable"].all()  # 10 vs 10 donors: 184,756 relabellings
    obs = _cohort(out).obs.join(pd.read_csv(cohort / "truth.csv", index_col=0), how="inner")
    named = {"CD4 T": "CD4 T", "CD8 T": "CD8 T", "monocytes": "Mono", "B": "B", "NK": "NK"}
    cells = obs["cell_type_l1"].isin(named)
    truth = obs.loc[cells, "cell_type_l1"].map(named)
    labels = list(named.values())
    assert f1_score(truth, obs.loc[cells, "l1"].astype(str), labels=labels, average="macro") >= 0.9


def test_validate_names_the_key_a_small_panel_cannot_satisfy(tmp_path: Path) -> None:
    if not ECCITE.is_file():
        pytest.skip(f"real test data not found at {ECCITE} (shared/data is absent here)")
    config = eccite_cohort(tmp_path / "panel", "panel")
    explicit = config.with_name("explicit.toml")
    explicit.write_text(config.read_text() + "\n[embedding]\nn_top_genes = 2000\n")
    command = [sys.executable, "-m", "sccohort", "validate"]
    failed = subprocess.run([*command, str(explicit)], capture_output=True, text=True)
    assert failed.returncode == 2
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    assert "sample 'S1'" in lines[0] and "key 'embedding.n_top_genes'" in lines[0]
    passed = subprocess.run([*command, str(config)], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr

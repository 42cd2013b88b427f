"""Two runs with one seed give byte-identical tables; no table carries a live formula.

The tiny cohort (`corpus.tiny_cohort`) runs every stage twice with the largest seed the
config accepts. One donor id is a spreadsheet formula and two sample ids start with ``@`` and
``-``: every CSV the run writes must show them inert (a leading single quote) while numbers,
negative ones included, stay numbers, and the report must show them as given.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import tiny_cohort

from sccohort.config import MAX_SEED, load_config
from sccohort.io.atomic import FORMULA_START, neutralise_formulas, read_csv, write_csv
from sccohort.pipeline import run_pipeline

HOSTILE_DONOR = '=HYPERLINK("http://x","y")'
HOSTILE_SAMPLES = {"S_D2": "@S_D2", "S_D3": "-S_D3"}


def _hostile_cohort(root: Path) -> Path:
    config = tiny_cohort(root)
    for name in ("samples.csv", "clinical.csv"):
        table = pd.read_csv(root / name)
        table["donor_id"] = table["donor_id"].replace({"D1": HOSTILE_DONOR})
        if "sample_id" in table:
            table["sample_id"] = table["sample_id"].replace(HOSTILE_SAMPLES)
        table.to_csv(root / name, index=False)
    # the largest seed (every consumer takes it); the tiny samples keep 30-45 cells: let
    # every donor into the donor-level tests
    text = config.read_text().replace("seed = 3", f"seed = {MAX_SEED}")
    config.write_text(text + "\n[association]\nmin_cells = 10\n")
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished runs of the hostile tiny cohort with one seed."""
    root = tmp_path_factory.mktemp("determinism")
    config = load_config(_hostile_cohort(root / "cohort"))
    outs = root / "first", root / "second"
    for out in outs:
        assert run_pipeline(config, out)["status"] == "finished"
    return outs


def _tables(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tables").iterdir())}


def _text(name: str, data: bytes) -> str:
    return (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8")


def test_every_table_is_byte_identical_between_two_runs(runs: tuple[Path, Path]) -> None:
    first, second = (_tables(out) for out in runs)
    assert {"qc_cells.csv.gz", "composition.csv", "association.csv"} <= set(first)
    assert list(first) == list(second)
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"tables differ between two runs with one seed: {differ}"


def test_compressed_tables_store_no_file_name_or_time(runs: tuple[Path, Path]) -> None:
    for name, data in _tables(runs[0]).items():
        if name.endswith(".gz"):
            flags, mtime = data[3], int.from_bytes(data[4:8], "little")
            assert not flags & 0x08, f"{name} stores a file name"
            assert mtime == 0, f"{name} stores a time"


def test_no_table_cell_starts_a_formula(runs: tuple[Path, Path]) -> None:
    seen = set()
    for name, data in _tables(runs[0]).items():
        for row in csv.reader(io.StringIO(_text(name, data))):
            for cell in row:
                if cell and cell[0] in FORMULA_START:
                    float(cell)  # only numbers may start with '-' or '+'
                if cell.startswith("'"):
                    seen.add(cell)
    assert "'" + HOSTILE_DONOR in seen
    assert {"'@S_D2", "'-S_D3"} <= seen


def test_numbers_stay_numbers(runs: tuple[Path, Path]) -> None:
    text = (runs[0] / "tables" / "association.csv").read_text()
    table = pd.read_csv(io.StringIO(text))
    assert table["ci_low"].dtype == float and (table["ci_low"] < 0).any()
    assert ",-0." in text and ",'-" not in text


def test_tables_read_back_as_given_and_the_report_escapes_them(runs: tuple[Path, Path]) -> None:
    out = runs[0]
    composition = read_csv(out / "tables" / "composition.csv")
    assert HOSTILE_DONOR in set(composition["donor_id"])
    assert {"@S_D2", "-S_D3"} <= set(composition["sample_id"])
    report = (out / "report.html").read_text()
    assert "=HYPERLINK(&#34;http://x&#34;,&#34;y&#34;)" in report
    assert HOSTILE_DONOR not in report and "'=HYPERLINK" not in report


def test_write_csv_neutralises_text_cells_only(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "text": ["=1+2", "+cmd", "-x", "@SUM(A1)", "\tlead", "'=quoted", "'plain", "ok", None],
            "number_text": ["-0.5", "+3", "1e-3", "-inf", "a", "b", "c", "d", "e"],
            "effect": [-0.5, 1.0, -2.0, 0.0, 3.5, -1e-9, 2.0, np.nan, 4.0],
            "label": pd.Categorical(["-a", "b", "b", "b", "b", "b", "b", "b", "b"]),
        }
    )
    write_csv(frame, tmp_path / "t.csv")
    rows = list(csv.reader((tmp_path / "t.csv").open(newline="")))
    assert rows[0] == ["text", "number_text", "effect", "label"]
    assert [r[0] for r in rows[1:9]] == [
        "'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "'\tlead", "''=quoted", "'plain", "ok",
    ]  # fmt: skip
    assert [r[1] for r in rows[1:5]] == ["-0.5", "+3", "1e-3", "-inf"]
    assert rows[1][2] == "-0.5" and rows[1][3] == "'-a"
    back = read_csv(tmp_path / "t.csv")
    assert back["text"].tolist()[:8] == frame["text"].tolist()[:8]
    assert back["effect"].tolist()[:7] == frame["effect"].tolist()[:7]
    assert back["label"].tolist() == frame["label"].tolist()
    assert neutralise_formulas(pd.DataFrame({"t": ["\rcmd"]}))["t"][0] == "'\rcmd"


def test_compressed_csv_bytes_do_not_depend_on_name_or_time(tmp_path: Path) -> None:
    frame = pd.DataFrame({"cell_id": [f"S:{i}" for i in range(100)], "x": np.arange(100.0)})
    a = write_csv(frame, tmp_path / "a.csv.gz").read_bytes()
    b = write_csv(frame, tmp_path / "other" / "b.csv.gz").read_bytes()
    assert a == b
    assert pd.read_csv(tmp_path / "a.csv.gz").equals(frame)

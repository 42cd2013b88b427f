"""The bad-input corpus, part 2: config values, table cells and output folders.

Every case builds the tiny cohort (`corpus.tiny_cohort`), breaks one thing and checks with
`corpus.assert_refused` that ``validate`` and ``run`` refuse it with one line naming what is
wrong and where, and that nothing is written or changed. Output-folder cases concern
``run`` only (``validate`` writes nothing); those that need an earlier run make one with the
first stage only (about a second).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from corpus import assert_refused, invoke, snapshot, tiny_cohort

from sccohort import pipeline

TOML = "sccohort.toml"


def set_key(config: Path, section: str, key: str, value: str) -> None:
    """Set ``key = value`` (TOML text) in ``[section]`` of ``config``, adding either."""
    text = config.read_text()
    header = f"[{section}]\n"
    if header not in text:
        text += f"\n{header}"
    head, _, rest = text.partition(header)
    body, nxt, tail = rest.partition("\n[")
    lines = [line for line in body.splitlines() if not re.match(rf"{re.escape(key)}\s*=", line)]
    body = "\n".join([f"{key} = {value}", *lines])
    config.write_text(head + header + body + ("\n" if body else "") + (nxt + tail if nxt else ""))


def config_case(section: str, key: str, value: str, *mentions: str):
    """A case that sets one config value; the message must name the full key."""

    def breaks(config: Path, tmp_path: Path) -> Path:
        set_key(config, section, key, value)
        return tmp_path / "out"

    name = f"{section}.{key}={value}"
    full = f"key '{section}.{key}'"
    return pytest.param(breaks, (TOML, full, *mentions), ("validate", "run"), id=name)


def cell_case(table: str, old: str, new: str, line: int, column: str, name: str):
    """A case that puts a control character into one cell of a table."""

    def breaks(config: Path, tmp_path: Path) -> Path:
        path = config.parent / table
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        return tmp_path / "out"

    mentions = (table, f"line {line}", f"column '{column}'", "control character")
    return pytest.param(breaks, mentions, ("validate", "run"), id=name)


def out_case(prepare: Callable[[Path, Path], Path], *mentions: str, name: str):
    """A case about ``--out``: ``prepare(config, tmp_path)`` returns the output path."""
    return pytest.param(prepare, mentions, ("run",), id=name)


@pytest.fixture
def first_stage_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier runs run the first stage only (reading and QC: about a second)."""
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:1])


def earlier_run(config: Path, tmp_path: Path) -> Path:
    """An output folder that a finished (first-stage) run wrote."""
    out = tmp_path / "earlier"
    result = invoke("run", config, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def symlinked_tables(config: Path, tmp_path: Path) -> Path:
    out = earlier_run(config, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.csv").write_text("mine\n")
    for path in sorted((out / "tables").iterdir()):
        path.unlink()
    (out / "tables").rmdir()
    (out / "tables").symlink_to(elsewhere, target_is_directory=True)
    return out


def own_file_in_tables(config: Path, tmp_path: Path) -> Path:
    out = earlier_run(config, tmp_path)
    (out / "tables" / "mine.csv").write_text("precious\n")
    return out


def link_in_figures(config: Path, tmp_path: Path) -> Path:
    out = earlier_run(config, tmp_path)
    (tmp_path / "target.png").write_bytes(b"mine")
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "linked.png").symlink_to(tmp_path / "target.png")
    return out


def out_is_a_file(config: Path, tmp_path: Path) -> Path:
    out = tmp_path / "results.txt"
    out.write_text("not a folder\n")
    return out


def out_under_a_file(config: Path, tmp_path: Path) -> Path:
    (tmp_path / "plain").write_text("a file\n")
    return tmp_path / "plain" / "out"


def out_in_read_only_folder(config: Path, tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        locked.chmod(0o700)
        pytest.skip("this user can write into a read-only folder (root)")
    return locked / "out"


CASES = [
    # seeds: harmonypy takes a 32-bit signed int (numpy, scikit-learn, UMAP up to 2**32 - 1)
    config_case("run", "seed", "-1", "from 0 to 2,147,483,647"),
    config_case("run", "seed", "9223372036854775807", "from 0 to 2,147,483,647"),
    config_case("run", "seed", "2147483648"),
    config_case("run", "seed", "1.5", "an integer"),
    config_case("run", "seed", '"0"', "an integer"),
    config_case("characterise", "alpha", "5.0", "above 0 and below 1"),
    config_case("characterise", "alpha", "0"),
    config_case("characterise", "alpha", "-0.1"),
    config_case("characterise", "gating_test_fraction", "1.0"),
    config_case("characterise", "prediction_perm", "0"),
    config_case("embedding", "n_pcs", "0", "from 1 to 1,000"),
    config_case("embedding", "n_pcs", "1000000"),
    config_case("embedding", "n_neighbors", "1"),
    config_case("embedding", "resolution", "-1", "above 0"),
    config_case("embedding", "harmony_key", '"nonexistent"'),
    config_case("qc", "nmads", "-1", "above 0"),
    config_case("qc", "hb_max_pct", "150", "from 0 to 100"),
    config_case("qc", "isotype_min_pct", "100.5"),
    config_case("qc", "mito_ceiling_pct", "5.0", "mito_floor_pct"),
    config_case("normalize", "target_sum", "nan", "finite"),
    config_case("association", "n_perm", "0", "from 1 to"),
    config_case("association", "max_exact", "1000000000"),
    config_case("association", "levels", "[]", "empty"),
    config_case("association", "levels", '["l1", "l1"]', "twice"),
    config_case("annotation", "min_confidence", "2.0"),
    config_case("run", "primary_tissue", '""', "empty"),
    config_case("run", "scheduler", '"banana"', "scheduler address"),
    config_case("run", "primary_timepoint", '"base\\u0000line"', "control character"),
    config_case("contrasts.status", "covariates", '["age", "age"]', "twice"),
    config_case("contrasts.status", "case", "nan", "finite"),
    config_case("contrasts.status", "variable", '""', "empty"),
    # control characters in table cells: file, line and column
    cell_case("samples.csv", ",lane1", ",lane\x001", 3, "batch", "samples-NUL"),
    cell_case("samples.csv", "S_D3,D3", "S_D3,D\x1b[31m3", 4, "donor_id", "samples-escape"),
    cell_case("clinical.csv", "D2,control", "D2,cont\x00rol", 3, "status", "clinical-NUL"),
    cell_case("clinical.csv", "D3,case", 'D3,"ca\nse"', 4, "status", "clinical-line-break"),
    cell_case(
        "clinical.csv",
        "donor_id,status",
        "donor_id,sta\x07tus",
        1,
        "header field 2",
        "clinical-header-bell",
    ),  # fmt: skip
    # output folders
    out_case(out_is_a_file, "results.txt", "not a folder", name="out-is-a-file"),
    out_case(out_under_a_file, "plain", "is a file", name="out-under-a-file"),
    out_case(out_in_read_only_folder, "locked", "not writable", name="out-read-only"),
    out_case(symlinked_tables, "'tables'", "symbolic link", name="earlier-run-tables-symlink"),
    out_case(own_file_in_tables, "tables/mine.csv", "--overwrite", name="earlier-run-own-file"),
    out_case(link_in_figures, "figures/linked.png", "--overwrite", name="earlier-run-link"),
]


@pytest.mark.parametrize(("breaks", "mentions", "commands"), CASES)
@pytest.mark.usefixtures("first_stage_only")
def test_refused(breaks, mentions: tuple[str, ...], commands, tmp_path: Path) -> None:
    config = tiny_cohort(tmp_path / "cohort")
    out = breaks(config, tmp_path)
    assert_refused(config, out, *mentions, commands=commands)


def test_a_contrast_name_must_start_with_a_letter_or_digit(tmp_path: Path) -> None:
    config = tiny_cohort(tmp_path / "cohort")
    config.write_text(config.read_text().replace("[contrasts.status]", '[contrasts."-status"]'))
    assert_refused(config, tmp_path / "out", "key 'contrasts.-status'", "letters, digits")


@pytest.mark.usefixtures("first_stage_only")
def test_overwrite_runs_and_keeps_the_users_files(tmp_path: Path) -> None:
    config = tiny_cohort(tmp_path / "cohort")
    out = own_file_in_tables(config, tmp_path)
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "sketch.svg").write_text("<svg/>\n")
    (out / "notes.txt").write_text("mine\n")
    before = snapshot(out)

    result = invoke("run", config, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    after = snapshot(out)
    for mine in ("tables/mine.csv", "figures/sketch.svg", "notes.txt"):
        assert after[mine] == before[mine]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    assert "tables/qc.csv" in record["files"] and "tables/mine.csv" not in record["files"]
    assert set(record["files"]) <= set(after)

    # the user's files still stop a run without --overwrite, and stay
    assert_refused(config, out, "tables/mine.csv", commands=("run",))

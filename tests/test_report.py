"""The HTML report: escaping, embedded figures, linked tables, atomic writes, sections."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sccohort.cohort import ClinicalTable
from sccohort.errors import InputError
from sccohort.report import (
    FigureBlock,
    Items,
    Note,
    Paragraph,
    Section,
    TableBlock,
    build_report,
    cell_types_section,
    cohort_section,
    format_value,
    methods_section,
    qc_section,
    umap_section,
)

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _figure(title: str = "x") -> Figure:
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_title(title)
    return fig


def _run_folder(root: Path, donor_names: list[str]) -> Path:
    """A small run folder with the tables the section builders read."""
    tables = root / "tables"
    tables.mkdir(parents=True)
    samples = pd.DataFrame(
        {
            "sample_id": donor_names,
            "donor_id": donor_names,
            "batch": "L1",
            "timepoint": "baseline",
            "tissue": "blood",
            "n_cells": [500, 400, 300, 200],
        }
    )
    samples.to_csv(tables / "samples.csv", index=False)
    qc = pd.DataFrame(
        {
            "sample_id": donor_names,
            "tissue": "blood",
            "mode": "adaptive",
            "cells_in": [500, 400, 300, 200],
            "removed_doublet": [20, 10, 5, 100],
            "removed_low_quality": [10, 10, 5, 20],
            "cells_out": [470, 380, 290, 80],
            "mito_max": [12.0, 11.0, 13.0, 9.0],
        }
    )
    qc.to_csv(tables / "qc.csv", index=False)
    pd.DataFrame(
        {
            "l1": ["Mono", "Mono", "B"],
            "l2": ["CD14 Mono", "CD16 Mono", "B naive"],
            "n_cells": [600, 200, 420],
            "share": [600 / 1220, 200 / 1220, 420 / 1220],
            "n_samples": [4, 4, 3],
            "median_confidence": [0.95, 0.4, 0.9],
        }
    ).to_csv(tables / "cell_types.csv", index=False)
    return root


def _clinical(donor_names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "group": ["SSc", "SSc", "SSc", "HD"],
            "SRC": ["yes", "no", "no", None],
            "age": [60.0, 50.0, 70.0, 40.0],
        },
        index=pd.Index(donor_names, name="donor_id"),
    )


def test_user_strings_are_shown_as_text_everywhere(tmp_path):
    donors = [EVIL, "SSc2", "SSc3", "HD1"]
    out = _run_folder(tmp_path / "run", donors)
    clinical = _clinical(donors).rename(columns={"SRC": EVIL})
    contrasts = {EVIL: {"variable": EVIL, "case": "yes", "control": "no", "within": {}}}
    evil_table = pd.DataFrame({EVIL: [EVIL, "<b>bold</b>"], "n": [1, 2]})
    sections = [
        cohort_section(out, clinical, contrasts=contrasts),
        qc_section(out),
        Section(
            EVIL,
            EVIL,
            [
                Paragraph(EVIL),
                Items([EVIL]),
                Note(EVIL, "warning"),
                FigureBlock(_figure(), EVIL, caption=EVIL, alt=EVIL),
                TableBlock(evil_table, caption=EVIL, csv="tables/evil.csv"),
                Section(EVIL, EVIL, [Paragraph("nested")]),
            ],
        ),
    ]
    path = build_report(out, sections, {"title": EVIL, "subtitle": EVIL, EVIL: EVIL})
    html = path.read_text()
    assert EVIL not in html
    assert "<script" not in html.lower()  # the report holds no script at all
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    # the donor shows as text in the cohort tables, the QC table and every custom block
    assert html.count(ESCAPED) >= 15
    assert f"<title>{ESCAPED}</title>" in html
    # anchors and file names made from user strings are safe
    assert re.search(r'id="script-alert-1-script"', html)
    assert (out / "figures" / "script_alert_1_script.png").is_file()
    assert pd.read_csv(out / "tables" / "evil.csv").columns[0] == EVIL


def test_report_embeds_figures_links_tables_and_loads_nothing(tmp_path):
    frame = pd.DataFrame({"subset": [f"S{i}" for i in range(80)], "pvalue": np.linspace(0, 1, 80)})
    existing = tmp_path / "tables" / "existing.csv"
    existing.parent.mkdir(parents=True)
    existing.write_text("kept as it is\n")
    sections = [
        Section("First", "first", [FigureBlock(_figure("a"), "fig_a", caption="Figure A")]),
        Section(
            "Second",
            "second",
            [
                TableBlock(frame, caption="Long", csv="tables/long.csv", max_rows=10),
                TableBlock(frame.head(3), caption="Old", csv="tables/existing.csv"),
                Section("Inner", "inner", [FigureBlock(_figure("b"), "fig_b")]),
            ],
        ),
    ]
    path = build_report(tmp_path, sections, {"title": "T"})
    assert path == tmp_path / "report.html"
    html = path.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2
    assert base64.b64decode(images[0]) == (tmp_path / "figures" / "fig_a.png").read_bytes()
    for name in ("fig_a", "fig_b"):
        svg = (tmp_path / "figures" / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # the full table is written once and linked; only max_rows are shown
    assert len(pd.read_csv(tmp_path / "tables" / "long.csv")) == 80
    assert existing.read_text() == "kept as it is\n"
    assert 'href="tables/long.csv"' in html
    assert "Showing the first 10 of 80 rows" in html
    assert html.count("<tr>") == 1 + 10 + 1 + 3
    # table of contents links every section, nested ones included
    toc = html.split('<nav class="toc"', 1)[1].split("</nav>", 1)[0]
    assert re.findall(r'href="#([^"]+)"', toc) == ["first", "second", "inner"]
    for anchor in ("first", "second", "inner"):
        assert f'id="{anchor}"' in html
    # self-contained: no external resources, and a policy that forbids loading any
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html


def test_failed_build_leaves_the_previous_report_untouched(tmp_path):
    build_report(tmp_path, [Section("Ok", "ok", [Paragraph("first version")])])
    before = (tmp_path / "report.html").read_text()
    with pytest.raises(InputError, match="holds a str, not a report block"):
        build_report(tmp_path, [Section("Bad", "bad", [Paragraph("x"), "not a block"])])
    with pytest.raises(InputError, match="two figures are named 'same'"):
        build_report(
            tmp_path,
            [Section("F", "f", [FigureBlock(_figure(), "same"), FigureBlock(_figure(), "same")])],
        )
    with pytest.raises(InputError, match="inside the output folder"):
        build_report(
            tmp_path, [Section("T", "t", [TableBlock(pd.DataFrame({"a": [1]}), csv="../x.csv")])]
        )
    assert (tmp_path / "report.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_duplicate_anchors_get_unique_ids(tmp_path):
    html = build_report(
        tmp_path, [Section("A", "x", []), Section("B", "x", []), Section("C", "X!", [])]
    ).read_text()
    assert re.findall(r'<section id="([^"]+)"', html) == ["x", "x-2", "x-3"]


@pytest.mark.parametrize(
    ("value", "column", "text"),
    [
        (3.2e-7, "padj", "3.20e-07"),
        (0.04567, "pvalue", "0.0457"),
        (0.123456, "effect", "0.1235"),
        (12345678.0, "n", "1.235e+07"),
        (np.int64(42), "n_cells", "42"),
        (float("nan"), "effect", ""),
        (None, "x", ""),
        (True, "qc_pass", "yes"),
        ("SSc1", "donor_id", "SSc1"),
    ],
)
def test_format_value(value, column, text):
    assert format_value(value, column) == text


def _run_json() -> dict:
    return {
        "status": "finished",
        "started": "2026-11-25T16:07:02+00:00",
        "finished": "2026-11-25T16:08:29+00:00",
        "command": ["sccohort", "run", "cfg.toml", "--out", "run"],
        "config": {
            "config": "cfg.toml",
            "run": {"seed": 3, "primary_timepoint": "baseline"},
            "qc": {
                "mode": "adaptive",
                "nmads": 5.0,
                "min_genes": 100,
                "mito_floor_pct": 10.0,
                "mito_ceiling_pct": 25.0,
                "mito_ceiling_tissue_pct": 50.0,
                "hb_max_pct": 10.0,
                "platelet_max_pct": 5.0,
                "doublet_method": "cite",
            },  # fmt: skip
            "normalize": {"target_sum": 10000.0, "protein": "auto"},
            "association": {"n_perm": 10000, "max_exact": 20000, "min_cells": 50},
            "embedding": {
                "n_top_genes": 2000,
                "n_pcs": 30,
                "harmony_key": "sample_id",
                "n_neighbors": 20,
                "resolution": 0.5,
            },  # fmt: skip
            "contrasts": {
                "SRC": {
                    "variable": "SRC",
                    "case": "yes",
                    "control": "no",
                    "within": {"group": "SSc"},
                    "covariates": ["age"],
                },  # fmt: skip
            },
        },
        "seeds": {"run": 3},
        "versions": {"python": "3.11.7", "sccohort": "0.1.0", "scanpy": "1.11.5"},
        "machine": {"cpus": 2, "memory_gb": 23.5},
        "inputs": {"a": "1" * 64, "b": "2" * 64},
        "fingerprint": "f" * 64,
        "stages": [
            {"stage": "ingest", "wall_s": 5.5, "peak_rss_gb": 1.2, "resumed": False},
            {"stage": "qc", "wall_s": 10.25, "peak_rss_gb": 1.3, "resumed": True},
        ],
    }


def test_methods_section_reports_tools_parameters_seeds_and_timings(tmp_path):
    section = methods_section(_run_json())
    assert section.anchor == "methods"
    html = build_report(tmp_path, [section]).read_text()
    for text in (
        "sccohort 0.1.0",
        "scanpy",
        "1.11.5",
        "Random seeds: run = 3",
        "total 15.8 s",
        "adaptive thresholds (5.0 MADs)",
        "2000 highly variable genes, 30 principal components, Harmony on sample_id",
        "Leiden clustering (resolution 0.5)",
        "group = SSc",
        "sccohort run cfg.toml --out run",
        "2 input files",
        "weighted by the precision of its share",
        "fewer than 50 cells after QC",
    ):
        assert text in html, text
    assert "primary_timepoint" in html  # every parameter is listed
    # a config from another version still gives a methods section (table, no prose)
    older = _run_json()
    older["config"]["embedding"] = {"n_pcs": 30}
    assert "principal components" not in str(methods_section(older).blocks)
    with pytest.raises(InputError, match="no 'config'"):
        methods_section({"versions": {}})


def test_sections_from_run_tables(tmp_path):
    donors = ["SSc1", "SSc2", "SSc3", "HD1"]
    out = _run_folder(tmp_path, donors)
    clinical = ClinicalTable(
        _clinical(donors), {"group": "binary", "SRC": "binary", "age": "continuous"}
    )
    contrasts = {
        "SRC": {"variable": "SRC", "case": "yes", "control": "no", "within": {"group": "SSc"}},
        "age": {"variable": "age", "case": None, "control": None, "within": {}},
        "ILD": {"variable": "ILD", "case": "yes", "control": "no", "within": {}},
    }
    # the designs the run tested (ILD was not: its row shows no donors)
    pd.DataFrame(
        {
            "contrast": ["SRC"] * 3 + ["age"] * 4,
            "variable": ["SRC"] * 3 + ["age"] * 4,
            "kind": ["binary"] * 3 + ["continuous"] * 4,
            "donor_id": ["SSc1", "SSc2", "SSc3", *donors],
            "group": ["case", "control", "control", "60.0", "50.0", "70.0", "40.0"],
            "arm": ["yes", "no", "no", "", "", "", ""],
        }
    ).to_csv(out / "tables" / "contrast_donors.csv", index=False)
    cohort = cohort_section(out, clinical, contrasts=contrasts)
    text = str(cohort.blocks[0].text)
    assert (
        text
        == "4 donors contributed 4 samples with 1,400 cells, of which 1,220 passed quality control."
    )
    groups = next(b for b in cohort.blocks if isinstance(b, TableBlock)).frame
    assert groups.set_index("group").loc["SSc", "donors"] == 3
    assert groups.set_index("group").loc["HD", "cells_after_qc"] == 80
    sizes = next(b for b in cohort.blocks if getattr(b, "csv", "") == "tables/report_contrasts.csv")
    src = sizes.frame.set_index("contrast").loc["SRC"]
    assert (src["n_case"], src["n_control"]) == (1, 2)
    assert sizes.frame.set_index("contrast").loc["age", "n_case"] == 4
    assert sizes.frame.set_index("contrast").loc["ILD", ["n_case", "n_control"]].isna().all()
    warnings = [b.text for b in cohort.blocks if isinstance(b, Note) and b.kind == "warning"]
    assert any("group = HD has only 1 donor" in w for w in warnings)
    assert any("contrast SRC: only 1 case donor" in w for w in warnings)

    qc = qc_section(out)
    assert qc.blocks[0].text.startswith("Quality control kept 1,220 of 1,400 cells (87.1%)")
    low = [b.text for b in qc.blocks if isinstance(b, Note)]
    assert low and "HD1" in low[0] and "SSc1" not in low[0]  # HD1 kept 40%

    types = cell_types_section(out)
    assert any("CD16 Mono" in b.text for b in types.blocks if isinstance(b, Note))

    class Cohort:  # what umap_section needs of a MuData
        rng = np.random.default_rng(0)
        obs = pd.DataFrame(
            {"l1": rng.choice(["B", "Mono"], 500), "rna_weight": rng.uniform(size=500)}
        )
        obsm = {"X_umap": rng.normal(size=(500, 2))}

    umap = umap_section(Cohort(), max_cells=200, seed=1)
    figures = [b for b in umap.blocks if isinstance(b, FigureBlock)]
    assert [f.name for f in figures] == ["umap_l1", "umap_rna_weight"]
    assert "200 of 500 cells" in umap.blocks[0].text
    assert "l2, subset, sample_id" in umap.blocks[-1].text  # what this run lacks is said
    with pytest.raises(InputError, match="obsm\\['X_umap'\\]"):
        umap_section(type("Empty", (), {"obs": pd.DataFrame(), "obsm": {}})())

    html = build_report(out, [cohort, qc, umap, types, methods_section(_run_json())]).read_text()
    assert html.count("<img ") == 4
    assert json.loads(json.dumps(sorted(p.name for p in (out / "figures").glob("*.png")))) == [
        "cell_types_shares.png", "qc_cells_per_sample.png", "umap_l1.png", "umap_rna_weight.png"
    ]  # fmt: skip


def test_missing_table_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="no tables/qc.csv"):
        qc_section(tmp_path)

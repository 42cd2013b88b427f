"""The report in a real browser: headless Chromium loads it offline without errors.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

from sccohort import pl
from sccohort.report import FigureBlock, Note, Paragraph, Section, TableBlock, build_report
from sccohort.report.browser import check_page, find_chromium

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium)",
)

EVIL = "<script>alert(1)</script>"


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("browser_report")
    rng = np.random.default_rng(0)
    qc = pd.DataFrame(
        {
            "sample_id": [EVIL, "SSc2", "HD1"],
            "cells_in": [600, 500, 400],
            "removed_doublet": [30, 20, 10],
            "cells_out": [570, 480, 390],
        }
    )
    association = pd.DataFrame(
        {
            "contrast": ["SRC", "SRC", "ILD", "ILD"],
            "subset": ["CD14_EGR1", "NK", "CD14_EGR1", "NK"],
            "effect": [1.5, 0.1, 0.2, -0.3],
            "padj": [0.001, 0.7, 0.6, 0.5],
        }
    )
    sections = [
        Section(
            "Quality control",
            "qc",
            [
                Paragraph(f"Donor {EVIL} is a name, not code."),
                FigureBlock(pl.qc_cells(qc), "qc", caption="Cells per sample"),
                TableBlock(qc, caption="QC", csv="tables/qc.csv"),
            ],
        ),
        Section(
            "Associations",
            "association",
            [
                FigureBlock(pl.association_heatmap(association), "heatmap", caption="Heatmap"),
                Note("Only 4 SRC donors.", "warning"),
                Section(
                    "UMAP",
                    "umap",
                    [
                        FigureBlock(
                            pl.embedding(
                                rng.normal(size=(400, 2)), rng.choice(["a", "b"], 400), name="x"
                            ),
                            "umap",
                        )
                    ],
                ),
            ],
        ),
    ]
    path = build_report(out, sections, {"title": "Browser check", "donor": EVIL})
    return path, check_page(path)


def test_every_image_decodes_at_its_size(report):
    path, page = report
    assert len(page.images) == 3
    assert page.broken_images == []
    for image, name in zip(page.images, ("qc", "heatmap", "umap"), strict=True):
        png = (path.parent / "figures" / f"{name}.png").read_bytes()
        assert (image["width"], image["height"]) == _png_size(png)


def test_no_console_error_and_no_script_ran(report):
    _, page = report
    assert page.errors == []  # includes alert() dialogs, exceptions and blocked loads


def test_key_sections_exist_and_user_strings_show_as_text(report):
    _, page = report
    assert {"qc", "association", "umap"} <= set(page.ids)
    assert f"Donor {EVIL} is a name, not code." in page.text
    assert "contents" in page.text.lower() and "Warning:" in page.text


def test_the_check_catches_broken_pages(tmp_path):
    # the harness itself must fail on what it is meant to catch
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><div id='only'></div>"
        "<img alt='bad' src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    found = check_page(page)
    assert [i["alt"] for i in found.broken_images] == ["bad"]
    assert any("boom" in e for e in found.errors)
    assert any(e.startswith("exception:") for e in found.errors)
    assert "only" in found.ids

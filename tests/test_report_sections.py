"""Statistics sections of the report and the one-call assembly, on small synthetic tables."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

from sccohort import pl
from sccohort.errors import InputError
from sccohort.io import CORE_COLUMNS
from sccohort.report import FigureBlock, Note, Section, TableBlock, build_report
from sccohort.report.assemble import assemble_report
from sccohort.report.characterisation import characterisation_section
from sccohort.report.stats_sections import (
    association_section,
    composition_section,
    contrast_groups,
)
from sccohort.stats import associated_subsets
from sccohort.stats.composition import composition
from sccohort.stats.gating_result import GATING_COLUMNS

EVIL_SUB = "<b>Sub&1</b>"
EVIL_CONTRAST = "<script>alert(1)</script>"
DONORS = [f"D{i}" for i in range(1, 9)]
CASES = DONORS[:4]
SUBSETS = [EVIL_SUB, "Mono_B", "T_A", "T_B"]
L1 = {EVIL_SUB: "Mono", "Mono_B": "Mono", "T_A": "T", "T_B": "T"}
GENES = ["EGR1", "IER2", "CD3E", "LYZ", "GZMB", "FOS"]
PROTEINS = ["CD14", "CD3", "CD16", "HLA-DR"]


def _blocks(section: Section) -> list:
    out = []
    for block in section.blocks:
        out.extend(_blocks(block) if isinstance(block, Section) else [block])
    return out


def _mdata(seed: int = 0) -> md.MuData:
    """8 donors x 40 cells, plus a second timepoint of D1; the first subset is EGR1-high."""
    rng = np.random.default_rng(seed)
    rows = []
    samples = [(d, d, "baseline") for d in DONORS] + [("D1_post", "D1", "post")]
    for sample, donor, tp in samples:
        boost = 3 if donor in CASES else 1
        weights = np.array([0.1 * boost, 0.3, 0.3, 0.3])
        labels = rng.choice(SUBSETS, 40, p=weights / weights.sum())
        for k, lab in enumerate(labels):
            rows.append((f"{sample}:{k}", sample, donor, tp, lab))
    obs = pd.DataFrame(rows, columns=["cell", "sample_id", "donor_id", "timepoint", "subset"])
    obs = obs.set_index("cell")
    obs["tissue"] = "blood"
    obs["qc_pass"] = True
    obs["l1"] = obs["subset"].map(L1)
    obs["l2"] = obs["l1"] + " cells"
    n = len(obs)
    first = (obs["subset"] == EVIL_SUB).to_numpy()
    x = rng.poisson(1.0, (n, len(GENES))).astype(float)
    x[first, 0] += 4
    rna = ad.AnnData(np.log1p(x), obs=obs.copy(), var=pd.DataFrame(index=GENES))
    p = rng.normal(1.0, 0.5, (n, len(PROTEINS)))
    p[first, 0] += 3
    p[(obs["l1"] == "Mono").to_numpy(), 3] += 2
    prot = ad.AnnData(p, obs=obs.copy(), var=pd.DataFrame(index=PROTEINS))
    mdata = md.MuData({"rna": rna, "prot": prot})
    mdata.obs = obs.copy()
    mdata.obsm["X_umap"] = rng.normal(size=(n, 2))
    return mdata


def _association() -> pd.DataFrame:
    rows = []

    def add(subset, level, effect, p, padj, method="perm_lm_asin_log2share"):
        rows.append(
            [
                EVIL_CONTRAST,
                level,
                subset,
                effect,
                effect - 0.5,
                effect + 0.5,
                p,
                padj,
                method,
                4,
                4,
                0.05,
                0.02,
            ]
        )

    add("T_A", "subset", 0.8, 0.004, 0.03)  # significant, second by padj
    add(EVIL_SUB, "subset", 1.5, 0.0005, 0.02)  # significant, first
    add(EVIL_SUB, "subset_in_l1", 1.4, 0.0004, 0.01)  # the better level of the same pair
    add("Mono_B", "subset", -0.6, 0.01, 0.2)  # nominal candidate
    add("T_B", "subset", 0.1, 0.7, 0.8)  # nothing
    add("T_B", "l1", 3.0, 1e-6, 1e-5)  # a significant l1 row: not a subset level
    add(EVIL_SUB, "subset_in_l1", 1.2, 0.001, 0.004, "ks_bonferroni")
    add("T_A", "subset", 0.7, 0.01, 0.04, "ks_bonferroni")
    frame = pd.DataFrame(rows, columns=[*CORE_COLUMNS, "mean_share_case", "mean_share_control"])
    return frame


def _write_tables(out: Path, mdata: md.MuData) -> None:
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    _contrast_donors().to_csv(tables / "contrast_donors.csv", index=False)
    obs = mdata.obs
    samples = (
        obs.groupby("sample_id", sort=False)
        .agg(
            donor_id=("donor_id", "first"),
            timepoint=("timepoint", "first"),
            n_cells=("donor_id", "size"),
        )
        .reset_index()
    )
    samples["batch"], samples["tissue"] = "L1", "blood"
    samples.to_csv(tables / "samples.csv", index=False)
    qc = samples[["sample_id"]].assign(
        tissue="blood",
        mode="adaptive",
        cells_in=samples["n_cells"],
        removed_doublet=0,
        cells_out=samples["n_cells"],
    )
    qc.to_csv(tables / "qc.csv", index=False)
    types = obs.groupby(["l1", "l2"]).size().rename("n_cells").reset_index()
    types["share"] = types["n_cells"] / types["n_cells"].sum()
    types.to_csv(tables / "cell_types.csv", index=False)
    pd.DataFrame(
        {
            "subset": SUBSETS,
            "l1": [L1[s] for s in SUBSETS],
            "l2": [L1[s] + " cells" for s in SUBSETS],
        }
    ).to_csv(tables / "subsets.csv", index=False)
    composition(obs, ("l1", "subset")).to_csv(tables / "composition.csv", index=False)
    _association().to_csv(tables / "association.csv", index=False)
    pd.DataFrame(
        {
            "subset": [EVIL_SUB] * 3 + ["T_A"] * 2,
            "feature": ["EGR1", "IER2", "FOS", "CD3E", "GZMB"],
            "statistic": [9.0, 5.0, 3.0, 8.0, 2.0],
        }
    ).to_csv(tables / "markers_rna.csv", index=False)
    pd.DataFrame(
        {"subset": [EVIL_SUB, "T_A"], "feature": ["CD14", "CD3"], "statistic": [7.0, 6.0]}
    ).to_csv(tables / "markers_prot.csv", index=False)
    rng = np.random.default_rng(1)
    nh = pd.DataFrame(
        {
            "contrast": EVIL_CONTRAST,
            "level": "subset",
            "subset": rng.choice(SUBSETS, 60),
            "effect": rng.normal(0, 1, 60),
            "pvalue": rng.uniform(size=60),
            "method": "milo_nb_qlf",
        }
    )
    nh["padj"] = nh["pvalue"]
    nh.to_csv(tables / "neighbourhoods.csv", index=False)
    de = pd.DataFrame(
        {
            "contrast": EVIL_CONTRAST,
            "subset": EVIL_SUB,
            "gene": GENES,
            "effect": [2.0, 1.0, 0.1, -0.2, -1.5, 0.0],
            "pvalue": [1e-6, 0.01, 0.5, 0.6, 1e-4, 0.9],
            "method": "deseq2_wald",
        }
    )
    de["padj"] = de["pvalue"] * 6
    de.to_csv(tables / "de_contrast1.csv", index=False)
    pd.DataFrame(
        {
            "contrast": ["ARA", "ARA: pos vs neg"],
            "subset": [EVIL_SUB, EVIL_SUB],
            "effect": [np.nan, 1.0],
            "pvalue": [0.001, 0.002],
            "padj": [0.004, 0.006],
            "method": ["kruskal_wallis_bonferroni", "dunn_bonferroni"],
        }
    ).to_csv(tables / "subgroups.csv", index=False)
    pd.DataFrame(
        {
            "subset": EVIL_SUB,
            "set": ["HALLMARK_TNFA_SIGNALING_VIA_NFKB", "HALLMARK_X"],
            "overlap": [5, 1],
            "set_size": [200, 50],
            "padj": [1e-5, 0.6],
        }
    ).to_csv(tables / "enrichment.csv", index=False)
    sig = pd.DataFrame(
        [
            (d, s, "HALLMARK_TNFA_SIGNALING_VIA_NFKB", rng.normal(), 0.1, 10)
            for d in DONORS
            for s in SUBSETS
        ],
        columns=["donor_id", "subset", "set", "score", "sd", "n_cells"],
    )
    sig.to_csv(tables / "signatures.csv", index=False)
    pd.DataFrame(
        {
            "contrast": [EVIL_CONTRAST],
            "level": ["HALLMARK_TNFA_SIGNALING_VIA_NFKB"],
            "subset": [EVIL_SUB],
            "effect": [1.0],
            "pvalue": [0.01],
            "padj": [0.02],
            "method": ["perm_lm_score"],
        }
    ).to_csv(tables / "signature_tests.csv", index=False)
    gating = []
    for split in ("train", "test"):
        gating.append(
            [EVIL_SUB, 0, "parent", None, None, None, None, split, 100, 20, 0.2, 1.0, 0.33]
        )
        gating.append(
            [EVIL_SUB, 1, "CD14 > 2.5", "CD14", ">", 2.5, 0.8, split, 22, 20, 0.85, 0.9, 0.87]
        )
    pd.DataFrame(
        gating,
        columns=GATING_COLUMNS,
    ).to_csv(tables / "gating.csv", index=False)
    pd.DataFrame(
        {
            "contrast": [EVIL_CONTRAST],
            "level": ["yes"],
            "subset": ["all"],
            "effect": [0.9],
            "ci_low": [0.7],
            "ci_high": [1.0],
            "pvalue": [0.02],
            "padj": [0.02],
            "method": ["l2 logistic"],
            "n_case": [4],
            "n_control": [4],
            "auroc_null_mean": [0.5],
        }
    ).to_csv(tables / "prediction.csv", index=False)
    pd.DataFrame(
        {
            "donor_id": DONORS,
            "y": [1] * 4 + [0] * 4,
            "score": [0.9, 0.8, 0.4, 0.7, 0.3, 0.5, 0.1, 0.2],
            "contrast": EVIL_CONTRAST,
        }
    ).to_csv(tables / "prediction_donors.csv", index=False)
    pd.DataFrame(
        {
            "donor_id": "D1",
            "subset": EVIL_SUB,
            "timepoint": ["baseline", "post"],
            "timepoint_order": [0, 1],
            "level": "subset",
            "share": [0.2, 0.1],
        }
    ).to_csv(tables / "timecourse.csv", index=False)
    pd.DataFrame(
        {
            "donor_id": "D1",
            "timepoint": ["baseline", "post"],
            "timepoint_order": [0, 1],
            "gene": "EGR1",
            "mean": [2.0, 1.0],
            "frac": [0.9, 0.5],
            "n_cells": [30, 30],
            "subset": EVIL_SUB,
            "cells": "Mono",
        }
    ).to_csv(tables / "timecourse_expression.csv", index=False)


def _clinical() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "donor_id": DONORS,
            "group": ["SSc"] * 6 + ["HD"] * 2,
            "flag": ["yes" if d in CASES else "no" for d in DONORS],
        }
    )


CONTRASTS = {
    EVIL_CONTRAST: {
        "variable": "flag",
        "case": "yes",
        "control": "no",
        "within": {},
        "covariates": [],
    }
}
RUN_JSON = {
    "config": {"run": {"primary_timepoint": "baseline"}, "contrasts": CONTRASTS},
    "versions": {"sccohort": "0.test"},
    "status": "complete",
}


@pytest.fixture(scope="module")
def cohort() -> md.MuData:
    return _mdata()


def test_associated_subsets_lists_significant_rows_first_by_padj() -> None:
    table = associated_subsets(_association(), alpha=0.05)
    assert list(table["subset"]) == [EVIL_SUB, "T_A", "Mono_B"]
    assert list(table["significant"]) == [True, True, False]
    first = table.iloc[0]
    # the subset_in_l1 row (padj 0.01) beats the subset row (0.02) of the same pair
    assert first["level"] == "subset_in_l1" and first["padj"] == pytest.approx(0.01)
    assert first["fold_change"] == pytest.approx(2**1.4)
    assert first["fc_ci_low"] == pytest.approx(2**0.9) and first["fc_ci_high"] == pytest.approx(
        2**1.9
    )
    assert first["ks_padj"] == pytest.approx(0.004)  # KS row of the same level
    assert table.iloc[1]["ks_padj"] == pytest.approx(0.04)
    assert "T_B" not in set(table["subset"])  # l1 level and p >= alpha rows are left out
    strict = associated_subsets(_association(), alpha=0.015)
    assert list(strict["significant"]) == [True, False, False]  # 0.02, 0.03 become candidates
    assert associated_subsets(None).empty


def _contrast_donors() -> pd.DataFrame:
    """``tables/contrast_donors.csv`` of the run: the design of CONTRASTS on _clinical()."""
    case = pd.Series(DONORS).isin(CASES).to_numpy()
    return pd.DataFrame(
        {
            "contrast": EVIL_CONTRAST,
            "variable": "flag",
            "kind": "binary",
            "donor_id": DONORS,
            "group": np.where(case, "case", "control"),
            "arm": np.where(case, "yes", "no"),
        }
    )


def test_contrast_groups_are_the_designs_the_run_saved(tmp_path: Path) -> None:
    assert contrast_groups(tmp_path) == {}  # no contrast tested
    (tmp_path / "tables").mkdir()
    table = _contrast_donors()
    continuous = table.assign(contrast="age", variable="age", kind="continuous", arm="")
    pd.concat([table, continuous]).to_csv(tmp_path / "tables" / "contrast_donors.csv")
    groups = contrast_groups(tmp_path)
    assert list(groups) == [EVIL_CONTRAST]  # continuous contrasts have no arms
    arms = groups[EVIL_CONTRAST]
    assert set(arms[arms == "yes"].index) == set(CASES) and arms.attrs["control"] == "no"
    assert set(arms[arms == "no"].index) == set(DONORS) - set(CASES) and arms.name == "flag"


def test_sections_degrade_without_tables(tmp_path: Path, cohort: md.MuData) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "association.csv").write_text("")  # empty file
    sections = [
        composition_section(tmp_path),
        association_section(tmp_path),
        characterisation_section(tmp_path, cohort),
    ]
    for section in sections:
        blocks = _blocks(section)
        assert blocks and all(isinstance(b, Note) for b in blocks), section.title
        assert not any(isinstance(b, FigureBlock) for b in blocks)
    text = " ".join(b.text for s in sections for b in _blocks(s))
    assert "composition.csv" in text and "neighbourhoods.csv" in text
    build_report(tmp_path, sections)


def test_sections_from_tables_make_figures(tmp_path: Path, cohort: md.MuData) -> None:
    _write_tables(tmp_path, cohort)
    comp = composition_section(tmp_path, cohort, _clinical(), primary_timepoint="baseline")
    names = {b.name for b in _blocks(comp) if isinstance(b, FigureBlock)}
    assert {"composition_bars", "composition_pca", "composition_top_subsets"} <= names
    (tmp_path / "tables" / "contrast_donors.csv").unlink()
    plain = composition_section(tmp_path)  # no clinical table, no contrasts: no comparisons
    _contrast_donors().to_csv(tmp_path / "tables" / "contrast_donors.csv", index=False)
    names = {b.name for b in _blocks(plain) if isinstance(b, FigureBlock)}
    assert names == {"composition_bars", "composition_pca"}
    assoc = association_section(tmp_path)
    first_table = next(b for b in _blocks(assoc) if isinstance(b, TableBlock))
    assert first_table.caption.startswith("Associated subsets")
    assert list(first_table.frame["subset"])[:2] == [EVIL_SUB, "T_A"]
    names = {b.name for b in _blocks(assoc) if isinstance(b, FigureBlock)}
    assert {"association_heatmap", "nhood_0_" + EVIL_CONTRAST} <= names
    assert any(n.startswith("volcano_") for n in names)
    char = characterisation_section(tmp_path, cohort)
    subsections = [b for b in char.blocks if isinstance(b, Section)]
    assert [s.title for s in subsections] == [EVIL_SUB, "T_A"]
    names = {b.name.split("_")[0] for b in _blocks(subsections[0]) if isinstance(b, FigureBlock)}
    assert names == {"markers", "enrichment", "signatures", "gating", "roc", "timecourse"}
    # the ROC of a contrast is drawn once, not again for the second subset
    assert not any(
        isinstance(b, FigureBlock) and b.name.startswith("roc") for b in _blocks(subsections[1])
    )


def test_assemble_report_order_escaping_and_limitations(tmp_path: Path, cohort: md.MuData) -> None:
    _write_tables(tmp_path, cohort)
    path = assemble_report(tmp_path, cohort, _clinical(), None, RUN_JSON)
    html = path.read_text()
    assert "could not be built" not in html
    assert "<script>" not in html and "<b>Sub" not in html  # every name is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;Sub&amp;1" in html
    headings = [m.group(1) for m in re.finditer(r"<h2[^>]*>([^<]+)</h2>", html)]
    headings = [h for h in headings if h != "Contents"]
    assert headings[:3] == ["Summary", "Cohort overview", "Quality control"]
    assert headings[-1] == "Methods"
    first_table = html.index("Associated subsets")
    cohort_at = re.search(r"<h2[^>]*>Cohort overview</h2>", html).start()
    assert first_table < cohort_at
    # the summary table lists the significant subsets in padj order
    summary = html[first_table:cohort_at]
    assert summary.index("&lt;b&gt;Sub&amp;1") < summary.index("T_A")
    assert "Mono_B" not in summary  # the headline lists significant rows only
    association = html[
        re.search(r"<h2[^>]*>Association with clinical contrasts</h2>", html).start() :
    ]
    assert association.index("T_A") < association.index("Mono_B")  # then the candidates
    assert "perm_lm_asin_log2share" in html and "ks_bonferroni" in html  # tests used
    assert "4 case donor(s)" in html  # the limitations note: arms below 5 donors
    figures = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert {"composition_bars", "association_heatmap", "umap_subset"} <= figures
    assert any(f.startswith("gating_0_") for f in figures)
    saved = pd.read_csv(tmp_path / "tables" / "report_associated_subsets.csv")
    assert list(saved["subset"])[:2] == [EVIL_SUB, "T_A"]


def test_assemble_report_survives_a_broken_table(tmp_path: Path, cohort: md.MuData) -> None:
    _write_tables(tmp_path, cohort)
    (tmp_path / "tables" / "composition.csv").write_text("sample_id,level\nx,subset\n")
    (tmp_path / "tables" / "gating.csv").unlink()
    html = assemble_report(tmp_path, None, None, CONTRASTS, RUN_JSON).read_text()
    assert "Composition" in html and "could not be built" in html  # composition only
    assert html.count("could not be built") == 1
    assert "Associated subsets" in html


def test_gating_plot_counts_and_checks() -> None:
    values = pd.DataFrame({"A": [0.0, 1.0, 3.0, 4.0, 5.0], "B": [1.0, 1.0, 0.0, 2.0, 2.0]})
    target = np.array([False, False, False, True, True])
    gates = pd.DataFrame({"protein": ["A", "B"], "direction": [">", ">"], "threshold": [2.0, 1.0]})
    fig = pl.gating_plot(values, target, gates, subset="S")
    legends = [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]
    # gate 1 sees all 5 cells (3 other, 2 target); gate 2 only the 3 above A > 2
    assert legends == ["other cells (3)", "S (2)", "other cells (1)", "S (2)"]
    with pytest.raises(InputError, match="protein 'C'"):
        pl.gating_plot(values, target, gates.assign(protein=["A", "C"]), subset="S")


def test_enrichment_bars_and_timecourse_checks() -> None:
    table = pd.DataFrame(
        {
            "set": ["HALLMARK_A", "HALLMARK_B", "HALLMARK_C"],
            "padj": [0.5, 1e-4, 0.01],
            "overlap": [1, 4, 2],
            "set_size": [10, 20, 30],
        }
    )
    fig = pl.enrichment_bars(table, n_sets=2)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["B", "C"]  # the two smallest padj, most significant on top
    with pytest.raises(InputError):
        pl.timecourse_panels(None, None)


def test_sample_contrasts_draw_each_donor_as_a_line(tmp_path: Path, cohort: md.MuData) -> None:
    _write_tables(tmp_path, cohort)
    samples = [*DONORS, "D1_post"]
    pd.DataFrame(
        {
            "contrast": EVIL_CONTRAST,
            "variable": "timepoint",
            "kind": "binary",
            "unit": "sample",
            "sample_id": samples,
            "donor_id": [*DONORS, "D1"],
            "group": ["control"] * len(DONORS) + ["case"],
            "arm": ["baseline"] * len(DONORS) + ["post"],
        }
    ).to_csv(tmp_path / "tables" / "contrast_donors.csv", index=False)
    comp = composition_section(tmp_path, cohort, _clinical(), primary_timepoint="baseline")
    figures = {b.name: b for b in _blocks(comp) if isinstance(b, FigureBlock)}
    assert "composition_top_subsets" not in figures  # no two-arm grouping of donors
    paired = figures["composition_paired_samples"]
    first = paired.figure.axes[0]
    assert [t.get_text() for t in first.get_xticklabels()] == ["baseline\n(n=8)", "post\n(n=1)"]
    assert len(first.get_lines()) == 1  # D1 alone has samples on both sides
    assert "one grey line per donor" in paired.caption

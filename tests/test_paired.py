"""Sample-level contrasts: the sample sheet's variables, paired designs, within-donor tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sccohort.cohort import ClinicalTable, Contrast, SampleSheet
from sccohort.config import load_config
from sccohort.errors import InputError
from sccohort.pipeline import run_pipeline
from sccohort.simulate import simulate_cohort
from sccohort.stats import (
    attainable_significance,
    compare_abundance,
    leave_one_donor_out,
    pseudobulk_de,
)

ISGS = ["ISG15", "IFI6", "MX1", "IFIT1", "IFIT3"]


def sheet_of(rows: list[tuple], **extra: list) -> SampleSheet:
    """A sample sheet in memory: rows of (sample_id, donor_id, timepoint) plus columns."""
    table = pd.DataFrame(rows, columns=["sample_id", "donor_id", "timepoint"])
    table = table.set_index("sample_id").assign(tissue="blood", **extra)
    return SampleSheet(table, None, pd.Series(range(2, len(table) + 2), index=table.index))


def paired_sheet(n_donors: int) -> SampleSheet:
    rows = [(f"D{d}_{tp}", f"D{d}", tp) for d in range(n_donors) for tp in ("pre", "post")]
    return sheet_of(rows)


def test_sample_sheet_keeps_variables_and_refuses_typos(tmp_path: Path) -> None:
    for name in "ab":
        (tmp_path / f"{name}.h5").write_bytes(b"")
    csv = tmp_path / "s.csv"
    csv.write_text("sample_id,donor_id,path,condition\nA,D1,a.h5,ctrl\nB,D1,b.h5,stim\n")
    sheet = SampleSheet.from_csv(csv)
    assert sheet.variables == ["condition"] and list(sheet.table["condition"]) == ["ctrl", "stim"]
    # the same visit with another condition is a sample of its own, not a repeat
    with pytest.raises(InputError, match="donor 'D1' has 2 samples at the primary visit"):
        sheet.primary_samples()
    csv.write_text("sample_id,donor_id,path,timpoint\nA,D1,a.h5,t\n")
    with pytest.raises(InputError, match="unknown column 'timpoint'; did you mean 'timepoint'"):
        SampleSheet.from_csv(csv)


def test_paired_design_matrix_and_refusals() -> None:
    sheet = paired_sheet(3)
    design = Contrast("post", "timepoint", case="post", control="pre").design(None, samples=sheet)
    assert design.unit == "sample" and design.paired and design.n_case == 3
    assert list(design.matrix.columns) == ["intercept", "timepoint[post]", "donor[D1]", "donor[D2]"]
    assert list(design.blocks) == [0, 0, 1, 1, 2, 2]
    table = design.donor_table()
    assert list(table["sample_id"]) == list(sheet.table.index) and set(table["unit"]) == {"sample"}
    with pytest.raises(InputError, match="several samples in this unpaired comparison"):
        Contrast("x", "timepoint", case="post", paired=False).design(None, samples=sheet)
    ages = pd.DataFrame({"age": [50.0, 60.0, 70.0]}, index=pd.Index(["D0", "D1", "D2"]))
    clinical = ClinicalTable(ages, {"age": "continuous"})
    with pytest.raises(InputError, match="constant within each donor"):
        Contrast("x", "timepoint", case="post", covariates=["age"]).design(clinical, samples=sheet)
    with pytest.raises(InputError, match="a paired comparison needs 2 or more"):
        Contrast("x", "timepoint", case="post").design(None, samples=paired_sheet(1))
    with pytest.raises(InputError, match="Variables of the clinical table: age; of the sample"):
        Contrast("x", "visit", case="post").design(clinical, samples=sheet)
    with pytest.raises(InputError, match="nothing to pair"):
        Contrast("x", "age", paired=True).design(clinical)


def _counts(n_donors: int, shift: float, rng: np.random.Generator) -> tuple:
    """Samples x 6 subsets, 2,000 cells each; donors vary a lot, ``post`` shifts subset A."""
    base = np.array([0.03, 0.2, 0.2, 0.2, 0.17, 0.2])
    rows = []
    for _ in range(n_donors):
        donor = base * np.exp(rng.normal(0, 0.6, len(base)))
        for fold in (1.0, 2.0**shift):
            p = donor * np.r_[fold, np.ones(len(base) - 1)]
            rows.append(rng.multinomial(2000, p / p.sum()))
    sheet = paired_sheet(n_donors)
    counts = pd.DataFrame(rows, index=sheet.table.index, columns=list("ABCDEF"))
    totals = pd.DataFrame(2000, index=counts.index, columns=counts.columns)
    return counts, totals, sheet


@pytest.mark.parametrize(
    ("n_donors", "scheme"), [(10, "within-donor-exact"), (6, "within-donor-t")]
)
def test_paired_null_is_calibrated(n_donors: int, scheme: str) -> None:
    rng = np.random.default_rng(n_donors)
    contrast = Contrast("post", "timepoint", case="post", control="pre")
    pvalues, first = [], []
    for _ in range(60):
        counts, totals, sheet = _counts(n_donors, 0.0, rng)
        design = contrast.design(None, samples=sheet)
        res = compare_abundance(counts, totals, design, level="subset")
        assert (res["scheme"] == scheme).all()
        pvalues += list(res["pvalue"])
        first.append(res["pvalue"].iloc[0])  # one subset: independent across cohorts
    # null: exact within-donor relabellings (10 donors: 1,024), or the moderated t (6)
    assert stats.kstest(first, "uniform").pvalue > 0.01
    assert 0.02 <= np.mean(np.array(pvalues) < 0.05) <= 0.08
    reach = attainable_significance(design)
    assert reach["n_relabellings"] == 2**n_donors and reach["scheme"] == scheme
    expected = 2 / 2**n_donors if scheme == "within-donor-exact" else 0.0
    assert reach["min_pvalue"] == pytest.approx(expected)


def test_paired_test_finds_a_within_donor_shift_the_unpaired_misses() -> None:
    rng = np.random.default_rng(3)
    contrast = Contrast("post", "timepoint", case="post", control="pre")
    found_paired = found_unpaired = 0
    for _ in range(10):
        counts, totals, sheet = _counts(6, 1.0, rng)
        paired = compare_abundance(counts, totals, contrast.design(None, samples=sheet), level="s")
        found_paired += paired.set_index("subset").loc["A", "pvalue"] < 0.05
        # the same samples as independent groups: one sample per donor and side
        post = sheet.table.index.str.endswith("post")
        alone = counts.copy()
        alone.index = [f"{s}_alone" if p else s for s, p in zip(alone.index, post, strict=True)]
        unpaired_sheet = sheet_of(
            [
                (s, f"{s}_donor", "post" if p else "pre")
                for s, p in zip(alone.index, post, strict=True)
            ]
        )
        design = contrast.design(None, samples=unpaired_sheet)
        assert not design.paired
        unpaired = compare_abundance(alone, totals.set_axis(alone.index), design, level="s")
        found_unpaired += unpaired.set_index("subset").loc["A", "pvalue"] < 0.05
    assert found_paired >= 9 and found_unpaired <= found_paired - 3


def test_paired_pseudobulk_needs_two_donors_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    sheet = paired_sheet(2)
    design = Contrast("post", "timepoint", case="post", control="pre").design(None, samples=sheet)
    genes = [f"G{i}" for i in range(300)]
    mean = rng.gamma(2.0, 50.0, len(genes))
    rows = []
    for _ in range(2):
        donor = mean * np.exp(rng.normal(0, 0.5, len(genes)))
        for fold in (1.0, 4.0):
            rows.append(rng.poisson(donor * np.r_[np.full(10, fold), np.ones(290)]))
    counts = pd.DataFrame(rows, index=sheet.table.index, columns=genes)
    de = pseudobulk_de(counts, design, group="Mono")
    assert set(de.head(10)["gene"]) == set(genes[:10]) and (de.head(10)["padj"] < 0.05).all()
    assert (de["n_case"] == 2).all() and (de["n_control"] == 2).all()
    with pytest.raises(InputError, match="1 donor\\(s\\) with counts on both sides; needs 2"):
        pseudobulk_de(counts.drop(index="D1_post"), design, group="Mono")


@pytest.fixture(scope="module")
def stimulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 'stim' design (2 donors, control and IFN-stimulated), run whole."""
    folder = tmp_path_factory.mktemp("stim")
    simulate_cohort(folder / "input", design="stim", cells_per_donor=800, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(load_config(folder / "input" / "sccohort.toml"), folder / "out")
    return folder / "out"


def test_stimulation_is_compared_within_donor_without_any_api_call(stimulated: Path) -> None:
    tables = stimulated / "tables"
    assert (stimulated / "report.html").is_file()
    de = pd.read_csv(tables / "de_stim.csv")
    mono = de[de["subset"] == "CD14 Mono"].reset_index(drop=True)
    top = mono.head(50)
    assert set(ISGS) <= set(top["gene"]), top["gene"].tolist()
    assert (top.set_index("gene").loc[ISGS, "padj"] < 0.05).all()
    assert (top.set_index("gene").loc[ISGS, "effect"] > 1).all()
    gsea = pd.read_csv(tables / "enrichment_de.csv")
    hits = gsea[(gsea["subset"] == "CD14 Mono") & (gsea["padj"] < 0.05)]
    assert {"HALLMARK_INTERFERON_ALPHA_RESPONSE", "HALLMARK_INTERFERON_GAMMA_RESPONSE"} <= set(
        hits["set"]
    )
    contrasts = pd.read_csv(tables / "contrasts.csv")
    assert "paired within donor (2 donors)" in contrasts.loc[0, "design"]
    association = pd.read_csv(tables / "association.csv")
    tested = association[association["note"].isna()]
    assert len(tested) and (tested["scheme"] == "within-donor-t").all()  # 4 relabellings only


def test_without_a_donor_and_its_influence() -> None:
    sheet = paired_sheet(3)
    design = Contrast("post", "timepoint", case="post", control="pre").design(None, samples=sheet)
    reduced = design.without(["D1"])
    assert list(reduced.units) == ["D0_pre", "D0_post", "D2_pre", "D2_post"]
    assert list(reduced.matrix.columns) == ["intercept", "timepoint[post]", "donor[D2]"]
    assert reduced.n_case == 2 and list(reduced.donors) == ["D0", "D2"]
    with pytest.raises(InputError, match="1 case / 1 control"):
        design.without(["D1", "D2"])
    # two cases carry subset A: without either one, the contrast cannot be tested
    rng = np.random.default_rng(5)
    donors = pd.Index([f"P{i}" for i in range(12)], name="donor_id")
    table = pd.DataFrame({"SRC": ["yes"] * 2 + ["no"] * 10}, index=donors)
    design = Contrast("SRC", "SRC", case="yes").design(ClinicalTable(table, {"SRC": "binary"}))
    shares = np.tile([0.03, 0.2, 0.2, 0.2, 0.17, 0.2], (12, 1)) * np.exp(
        rng.normal(0, 0.1, (12, 6))
    )
    shares[:2, 0] *= 3
    counts = pd.DataFrame(
        [rng.multinomial(2000, s / s.sum()) for s in shares], index=donors, columns=list("ABCDEF")
    )
    totals = pd.DataFrame(2000, index=donors, columns=counts.columns)
    tests = compare_abundance(counts, totals, design, level="subset")
    loo = leave_one_donor_out(counts, totals, design, tests, level="subset", alpha=0.1)
    row = loo.set_index("subset").loc["A"]
    assert row["padj"] < 0.1 and row["loo_padj"] == 1.0 and row["loo_donor"] == "P0"
    assert loo.loc[loo["padj"] >= 0.1, "loo_padj"].isna().all()  # only significant rows


def test_a_sample_contrast_stays_in_the_primary_tissue() -> None:
    rows = [
        (f"D{d}_{tp}_{t}", f"D{d}", tp) for d in range(2) for tp in ("pre", "post") for t in "bk"
    ]
    sheet = sheet_of(rows)
    sheet.table["tissue"] = ["blood", "kidney"] * 4
    contrast = Contrast("post", "timepoint", case="post", control="pre")
    design = contrast.design(None, samples=sheet, tissue="blood")
    assert list(design.units) == ["D0_pre_b", "D0_post_b", "D1_pre_b", "D1_post_b"]
    both = Contrast("post", "timepoint", case="post", within={"tissue": ["blood", "kidney"]})
    assert len(both.design(None, samples=sheet, tissue="blood").units) == 8

"""Sample sheet, clinical table and contrast designs: values, and every validation error."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sccohort.cohort import (
    ClinicalTable,
    Contrast,
    SampleSheet,
    check_donors,
)
from sccohort.errors import InputError

# The study's cohort: 21 SSc + 6 HD.
SSC_AGES = [67, 56, 82, 72, 64, 60, 80, 58, 47, 76, 81, 57, 46, 61, 50, 62, 77, 67, 53, 74, 73]
HD_AGES = [64, 62, 70, 67, 59, 84]
SRC = {1, 4, 19, 20}
ILD = {1, 3, 4, 6, 7, 8, 10, 11, 13, 14, 16, 17}


def write(path: Path, text: str) -> Path:
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def study_clinical_csv(folder: Path, extra_rows: str = "") -> Path:
    rows = ["donor_id,group,age,SRC,ILD,sex"]
    for i, age in enumerate(SSC_AGES, start=1):
        sex = "F" if i % 3 else "M"
        rows.append(
            f"SSc{i},SSc,{age},{'yes' if i in SRC else 'no'},{'yes' if i in ILD else 'no'},{sex}"
        )
    for i, age in enumerate(HD_AGES, start=1):
        rows.append(f"HD{i},HD,{age},,,{'F' if i % 2 else 'M'}")
    return write(folder / "clinical.csv", "\n".join(rows) + "\n" + extra_rows)


def study_sheet_csv(folder: Path) -> Path:
    (folder / "counts").mkdir(exist_ok=True)
    rows = ["sample_id,donor_id,path"]
    donors = [f"SSc{i}" for i in range(1, 22)] + [f"HD{i}" for i in range(1, 7)]
    for d in donors:
        (folder / "counts" / f"{d}.h5").write_bytes(b"")
        rows.append(f"{d}_base,{d},counts/{d}.h5")
    return write(folder / "samples.csv", "\n".join(rows) + "\n")


@pytest.fixture
def clinical(tmp_path: Path) -> ClinicalTable:
    return ClinicalTable.from_csv(study_clinical_csv(tmp_path))


def raises(match: str, *parts: str):
    """pytest.raises(InputError) whose message contains ``match`` and every part (literally)."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(InputError, match=re.escape(match))
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            for part in parts:
                assert part in message, f"{part!r} not in {message!r}"
            return out

    return _Check()


# ---------------------------------------------------------------------------------------
# Sample sheet


def test_sample_sheet_reads_defaults_and_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.h5").write_bytes(b"")
    (tmp_path / "data" / "a_raw.h5").write_bytes(b"")
    (tmp_path / "data" / "b_mtx").mkdir()
    (tmp_path / "sheet").mkdir()
    csv = write(
        tmp_path / "sheet" / "s.csv",
        """
sample_id,donor_id,path,raw_path,timepoint,tissue,format,batch
A,D1,../data/a.h5,../data/a_raw.h5,,,10X_H5,
B,D1,../data/b_mtx,,onset,,10x_mtx,lane2
C,D2,%s,,, kidney ,,
"""
        % (tmp_path / "data" / "a.h5"),
    )
    sheet = SampleSheet.from_csv(csv)
    t = sheet.table
    assert list(t.index) == ["A", "B", "C"]
    assert list(t.columns) == [
        "donor_id",
        "path",
        "raw_path",
        "batch",
        "timepoint",
        "tissue",
        "format",
        "modality",
    ]
    assert list(t["modality"]) == ["", "", ""]  # empty: the count files decide
    assert t.at["A", "path"] == tmp_path / "data" / "a.h5"
    assert t.at["A", "path"].is_absolute()
    assert t.at["A", "raw_path"] == tmp_path / "data" / "a_raw.h5"
    assert pd.isna(t.at["B", "raw_path"])
    # one batch per sample by default
    assert list(t["batch"]) == ["A", "lane2", "C"]
    assert list(t["timepoint"]) == ["baseline", "onset", "baseline"]
    assert list(t["tissue"]) == ["blood", "blood", "kidney"]
    assert list(t["format"]) == ["10x_h5", "10x_mtx", ""]
    assert sheet.line_of("C") == 4
    assert list(sheet.donors) == ["D1", "D2"]
    assert sheet.timepoints == ["baseline", "onset"]
    assert list(sheet.primary_samples().index) == ["A"]
    assert list(sheet.primary_samples("baseline", "kidney").index) == ["C"]
    assert list(sheet.samples_at("onset").index) == ["B"]


def test_sample_sheet_missing_file(tmp_path: Path) -> None:
    with raises("sample sheet not found", str(tmp_path / "nope.csv")):
        SampleSheet.from_csv(tmp_path / "nope.csv")


def test_sample_sheet_missing_sample_path_names_line_sample_and_path(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path\nA,D1,a.h5\nB,D2,missing/b.h5\n")
    with raises(
        "does not exist",
        str(csv),
        "line 3",
        "column 'path'",
        "sample 'B'",
        "missing/b.h5",
        str(tmp_path / "missing" / "b.h5"),
    ):
        SampleSheet.from_csv(csv)


def test_sample_sheet_missing_raw_path(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path,raw_path\nA,D1,a.h5,raw.h5\n")
    with raises("raw_path 'raw.h5' does not exist", "line 2", "column 'raw_path'"):
        SampleSheet.from_csv(csv)


def test_sample_sheet_missing_required_column_lists_found(tmp_path: Path) -> None:
    csv = write(tmp_path / "s.csv", "sample,donor_id,path\nA,D1,a.h5\n")
    with raises("lacks required column", str(csv), "line 1", "'sample_id'", "'sample', "):
        SampleSheet.from_csv(csv)


def test_sample_sheet_unknown_column(tmp_path: Path) -> None:
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path,timpoint\nA,D1,a.h5,t\n")
    with raises("unknown column", "column 'timpoint'", "Allowed columns"):
        SampleSheet.from_csv(csv)


def test_sample_sheet_duplicate_sample_names_both_lines(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path\nA,D1,a.h5\nB,D2,b.h5\nA,D3,c.h5\n")
    with raises("duplicate sample_id 'A'", "line 4", "also on line 2", "sample 'A'"):
        SampleSheet.from_csv(csv)


@pytest.mark.parametrize(
    ("row", "message", "column"),
    [(",D1,a.h5", "empty sample_id", "sample_id"), ("A,,a.h5", "empty donor_id", "donor_id")],
)
def test_sample_sheet_empty_ids(tmp_path: Path, row: str, message: str, column: str) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", f"sample_id,donor_id,path\n{row}\n")
    with raises(message, "line 2", f"column '{column}'"):
        SampleSheet.from_csv(csv)


def test_sample_sheet_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path,format\nA,D1,a.h5,loom\n")
    with raises("unknown format 'loom'", "line 2", "column 'format'", "10x_h5", "rhapsody_csv"):
        SampleSheet.from_csv(csv)


def test_sample_sheet_modality_column(tmp_path: Path) -> None:
    for name in ("a.h5ad", "b.h5ad", "c.h5"):
        (tmp_path / name).write_bytes(b"")
    csv = write(
        tmp_path / "s.csv",
        "sample_id,donor_id,path,modality\nA,D1,a.h5ad,RNA\nB,D2,b.h5ad, prot \nC,D3,c.h5,\n",
    )
    assert list(SampleSheet.from_csv(csv).table["modality"]) == ["rna", "prot", ""]
    bad = write(
        tmp_path / "bad.csv",
        "sample_id,donor_id,path,modality\nA,D1,a.h5ad,rna\nB,D2,b.h5ad,adt\n",
    )
    with raises(
        "unknown modality 'adt'", str(bad), "line 3", "column 'modality'", "sample 'B'", "rna, prot"
    ):
        SampleSheet.from_csv(bad)


def test_sample_sheet_format_must_fit_path(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path,format\nA,D1,a.h5,10x_mtx\n")
    with raises("is a file, which does not fit format '10x_mtx'", "line 2"):
        SampleSheet.from_csv(csv)


def test_sample_sheet_donor_twice_at_same_timepoint(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.h5").write_bytes(b"")
    text = "sample_id,donor_id,path,timepoint,tissue\n"
    # blood + kidney at the same visit is fine; two blood samples at baseline are not
    text += "A,D1,a.h5,,\nK,D1,b.h5,,kidney\nB,D1,c.h5,baseline,blood\n"
    csv = write(tmp_path / "s.csv", text)
    with raises(
        "donor 'D1' has two samples at timepoint 'baseline'", "line 4", "'A' (line 2)", "'B'"
    ):
        SampleSheet.from_csv(csv)


def test_sample_sheet_empty_table_and_empty_file(tmp_path: Path) -> None:
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path\n")
    with raises("no samples", str(csv)):
        SampleSheet.from_csv(csv)
    empty = write(tmp_path / "e.csv", "\n")
    with raises("sample sheet is empty", str(empty)):
        SampleSheet.from_csv(empty)


def test_sample_sheet_ragged_row_and_bad_encoding(tmp_path: Path) -> None:
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path\nA,D1,a.h5\n\nB,D2\n")
    with raises("this row has 2 fields but the header", "line 4"):
        SampleSheet.from_csv(csv)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sample_id,donor_id,path\nA,Müller,a.h5\n".encode("latin-1"))
    with raises("not UTF-8", str(latin), "line 2"):
        SampleSheet.from_csv(latin)


def test_sample_sheet_collects_every_row_problem(tmp_path: Path) -> None:
    csv = write(tmp_path / "s.csv", "sample_id,donor_id,path\nA,D1,x.h5\nB,D2,y.h5\n")
    with pytest.raises(InputError, match="2 problems") as info:
        SampleSheet.from_csv(csv)
    assert [p.row for p in info.value.problems] == [2, 3]
    assert [p.sample for p in info.value.problems] == ["A", "B"]


def test_primary_samples_no_match_lists_visits(tmp_path: Path) -> None:
    sheet = SampleSheet.from_csv(study_sheet_csv(tmp_path))
    assert len(sheet.primary_samples()) == 27
    with raises("no sample has timepoint 'week0'", "baseline/blood", "run.primary_timepoint"):
        sheet.primary_samples("week0")


# ---------------------------------------------------------------------------------------
# Clinical table


def test_clinical_types_inferred(clinical: ClinicalTable) -> None:
    assert clinical.types == {
        "group": "binary",
        "age": "continuous",
        "SRC": "binary",
        "ILD": "binary",
        "sex": "binary",
    }
    t = clinical.table
    assert t.index.name == "donor_id"
    assert list(t.index[:2]) == ["SSc1", "SSc2"] and len(t) == 27
    assert t["age"].dtype == np.float64
    assert t.at["HD6", "age"] == 84.0
    # HD have SRC/ILD empty -> missing
    assert t["SRC"].isna().sum() == 6 and t.loc["HD1":"HD6", "SRC"].isna().all()
    assert (t["SRC"] == "yes").sum() == 4 and (t["ILD"] == "yes").sum() == 12
    assert clinical.levels("group") == ["HD", "SSc"]
    assert clinical.line_of("HD1") == 23


def test_clinical_inference_rules_and_missing_tokens(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "c.csv",
        """
donor_id,score,flag,ara,single,mixed
D1,1.5,0,neg,x,1
D2,NA,1,pos_src,x,a
D3,2.5,,pos,,2
D4,3,1,neg,x,b
""",
    )
    c = ClinicalTable.from_csv(csv)
    assert c.types == {
        "score": "continuous",
        "flag": "binary",  # numeric with two values
        "ara": "categorical",  # three text levels
        "single": "categorical",  # one level
        "mixed": "categorical",  # numbers and text
    }
    assert np.isnan(c.table.at["D2", "score"]) and c.table.at["D4", "score"] == 3.0
    assert pd.isna(c.table.at["D3", "flag"]) and c.table.at["D2", "flag"] == "1"
    assert c.levels("mixed") == ["1", "2", "a", "b"]  # numbers first, numerically


def test_clinical_type_overrides(tmp_path: Path) -> None:
    csv = write(tmp_path / "c.csv", "donor_id,mrss,stage\nA,10,1\nB,20,2\nC,10,1\n")
    c = ClinicalTable.from_csv(csv)
    assert c.types == {"mrss": "binary", "stage": "binary"}
    c = ClinicalTable.from_csv(csv, types={"mrss": "continuous", "stage": "categorical"})
    assert c.types == {"mrss": "continuous", "stage": "categorical"}
    assert c.table["mrss"].tolist() == [10.0, 20.0, 10.0]


def test_clinical_override_that_cannot_hold(tmp_path: Path) -> None:
    csv = write(tmp_path / "c.csv", "donor_id,age,ara\nA,50,neg\nB,fifty,pos\nC,61,src\n")
    with raises(
        "declared continuous but holds the non-numeric value 'fifty'",
        str(csv),
        "line 3",
        "column 'age'",
        "clinical.types.age",
    ):
        ClinicalTable.from_csv(csv, types={"age": "continuous"})
    with raises("declared binary but has 3 levels", "line 4", "column 'ara'"):
        ClinicalTable.from_csv(csv, types={"ara": "binary"})
    with raises("unknown variable type 'number'", "clinical.types.age"):
        ClinicalTable.from_csv(csv, types={"age": "number"})
    with raises("type override for 'weight'", "Variables: age, ara"):
        ClinicalTable.from_csv(csv, types={"weight": "continuous"})


def test_clinical_numeric_column_with_a_stray_word(tmp_path: Path) -> None:
    rows = "".join(f"D{i},{40 + i}\n" for i in range(8))
    csv = write(tmp_path / "c.csv", "donor_id,age\n" + rows + "D9,eighty\n")
    with raises("is numeric except the value 'eighty'", str(csv), "line 10", "column 'age'"):
        ClinicalTable.from_csv(csv)
    assert ClinicalTable.from_csv(csv, types={"age": "categorical"}).types == {"age": "categorical"}


def test_clinical_duplicate_and_empty_donor(tmp_path: Path) -> None:
    csv = write(tmp_path / "c.csv", "donor_id,age\nA,50\nB,60\nA,61\n")
    with raises("duplicate donor_id 'A'", str(csv), "line 4", "also on line 2"):
        ClinicalTable.from_csv(csv)
    csv = write(tmp_path / "c.csv", "donor_id,age\nA,50\n,60\n")
    with raises("empty donor_id", "line 3", "column 'donor_id'"):
        ClinicalTable.from_csv(csv)


def test_clinical_missing_donor_column(tmp_path: Path) -> None:
    csv = write(tmp_path / "c.csv", "patient,age\nA,50\n")
    with raises("lacks required column(s) 'donor_id'", "columns found: 'patient', 'age'"):
        ClinicalTable.from_csv(csv)


def test_check_donors(tmp_path: Path, clinical: ClinicalTable) -> None:
    sheet = SampleSheet.from_csv(study_sheet_csv(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_donors(sheet, clinical) == []
    # a donor with no sample only warns
    sub = SampleSheet(sheet.table.iloc[:-1], sheet.path, sheet.lines.iloc[:-1])
    with pytest.warns(UserWarning, match="HD6"):
        assert check_donors(sub, clinical) == ["HD6"]
    # a sample whose donor is not in the clinical table is an error naming the sheet's line
    (tmp_path / "x.h5").write_bytes(b"")
    text = sheet.path.read_text() + "X_base,SSc99,x.h5\n"
    sheet2 = SampleSheet.from_csv(write(tmp_path / "samples2.csv", text))
    with raises(
        "donor 'SSc99' is not in the clinical table",
        str(tmp_path / "samples2.csv"),
        "line 29",
        "sample 'X_base'",
        str(clinical.path),
    ):
        check_donors(sheet2, clinical)


# ---------------------------------------------------------------------------------------
# Contrast designs


def test_design_src_within_ssc(clinical: ClinicalTable) -> None:
    c = Contrast(
        "SRC", "SRC", case="yes", control="no", within={"group": "SSc"}, covariates=["age"]
    )
    d = c.design(clinical)
    assert (d.n_case, d.n_control) == (4, 17)
    assert list(d.donors) == [f"SSc{i}" for i in range(1, 22)]
    assert d.term == "SRC[yes]"
    assert list(d.matrix.columns) == ["intercept", "SRC[yes]", "age"]
    assert (d.matrix["intercept"] == 1).all()
    cases = set(d.matrix.index[d.matrix["SRC[yes]"] == 1])
    assert cases == {f"SSc{i}" for i in SRC}
    assert d.matrix["age"].tolist() == [float(a) for a in SSC_AGES]
    assert d.group["SSc4"] == "case" and d.group["SSc2"] == "control"
    assert d.dropped == {}
    assert "yes (n=4) vs no (n=17)" in d.describe()


def test_design_ssc_vs_hd_with_categorical_covariate(clinical: ClinicalTable) -> None:
    c = Contrast("SSc_vs_HD", "group", case="SSc", control="HD", covariates=["age", "sex"])
    d = c.design(clinical)
    assert (d.n_case, d.n_control) == (21, 6)
    # sex is binary text F/M: reference level F (first alphabetically), one column sex[M]
    assert list(d.matrix.columns) == ["intercept", "group[SSc]", "age", "sex[M]"]
    assert d.matrix.at["SSc3", "sex[M]"] == 1.0 and d.matrix.at["SSc1", "sex[M]"] == 0.0
    assert d.matrix.at["HD2", "sex[M]"] == 1.0 and d.matrix.at["HD2", "group[SSc]"] == 0.0
    assert d.matrix.at["HD6", "age"] == 84.0


def test_design_drops_missing_phenotype_and_restricts_to_donors(
    clinical: ClinicalTable,
) -> None:
    c = Contrast("ILD_all", "ILD", case="yes")  # control None = every other level ("no")
    with pytest.warns(UserWarning, match="HD1 \\(missing ILD\\)"):
        d = c.design(clinical)
    assert set(d.dropped) == {f"HD{i}" for i in range(1, 7)}
    assert (d.n_case, d.n_control) == (12, 9)
    assert d.control_levels == ["no"]
    donors = [f"SSc{i}" for i in (1, 2, 3, 5, 9)]
    d = c.design(clinical, donors=donors)
    assert list(d.donors) == donors
    assert d.group.tolist() == ["case", "control", "case", "control", "control"]


def test_design_categorical_variable_control_list_and_other_levels(tmp_path: Path) -> None:
    rows = ["donor_id,ara,age"] + [
        f"D{i},{['neg', 'pos', 'pos_src'][i % 3]},{40 + 3 * i}" for i in range(12)
    ]
    c = ClinicalTable.from_csv(write(tmp_path / "c.csv", "\n".join(rows) + "\n"))
    assert c.types["ara"] == "categorical"
    d = Contrast("src", "ara", case="pos_src", control=["neg", "pos"]).design(c)
    assert (d.n_case, d.n_control) == (4, 8)
    with pytest.warns(UserWarning, match="in neither group"):
        d = Contrast("pos", "ara", case="pos", control="neg").design(c)
    assert (d.n_case, d.n_control) == (4, 4) and len(d.dropped) == 4


def test_design_continuous_variable(tmp_path: Path) -> None:
    rows = ["donor_id,mrss,age,sex"] + [
        f"D{i},{(i * 7) % 30 if i != 3 else ''},{30 + (i * 13) % 41},{'FM'[i % 2]}"
        for i in range(10)
    ]
    c = ClinicalTable.from_csv(write(tmp_path / "c.csv", "\n".join(rows) + "\n"))
    with pytest.warns(UserWarning, match="D3"):
        d = Contrast("skin", "mrss", covariates=["age", "sex"]).design(c)
    assert d.is_continuous and d.term == "mrss"
    assert (d.n_case, d.n_control) == (9, 0)
    assert list(d.matrix.columns) == ["intercept", "mrss", "age", "sex[M]"]
    assert d.matrix.at["D4", "mrss"] == 28.0 and d.group["D4"] == 28.0
    with raises("'mrss' is continuous, so case must not be set", "contrasts.skin.case"):
        Contrast("skin", "mrss", case="10").design(c)


def test_design_numeric_levels_match_config_numbers(tmp_path: Path) -> None:
    rows = ["donor_id,src"] + [f"D{i},{int(i < 3)}" for i in range(8)]
    c = ClinicalTable.from_csv(write(tmp_path / "c.csv", "\n".join(rows) + "\n"))
    d = Contrast("src", "src", case=1, control=0).design(c)
    assert (d.n_case, d.n_control) == (3, 5) and d.term == "src[1]"


def test_design_unknown_variable(clinical: ClinicalTable) -> None:
    with raises("unknown variable 'SCR'", "contrasts.x.variable", str(clinical.path), "SRC"):
        Contrast("x", "SCR", case="yes").design(clinical)


def test_design_unknown_levels_list_the_levels(clinical: ClinicalTable) -> None:
    with raises("case level 'Yes!'", "contrasts.x.case", "column 'SRC'", "Levels: no, yes"):
        Contrast("x", "SRC", case="Yes!").design(clinical)
    with raises("control level 'none'", "contrasts.x.control", "Levels: no, yes"):
        Contrast("x", "SRC", case="yes", control="none").design(clinical)
    with raises("needs a case level", "contrasts.x.case"):
        Contrast("x", "SRC").design(clinical)


def test_design_case_equals_control(clinical: ClinicalTable) -> None:
    with raises("'yes' is both case and control", "contrasts.x.control"):
        Contrast("x", "SRC", case="yes", control="yes").design(clinical)


def test_design_small_group_says_sizes_and_restriction(clinical: ClinicalTable) -> None:
    # SSc2..SSc18 have samples: SSc4 is the only SRC case left
    donors = [f"SSc{i}" for i in range(2, 19)]
    c = Contrast("SRC", "SRC", case="yes", control="no", within={"group": "SSc"})
    with raises(
        "case group (yes) has 1 donor(s) and the control group (no) has 16",
        "contrasts.SRC.case",
        "within group = SSc: 17 left",
        "17 donors with samples",
    ):
        c.design(clinical, donors=donors)
    with raises("control group (HD) has 0", "contrasts.y.control", "within group = SSc"):
        Contrast("y", "group", case="SSc", control="HD", within={"group": "SSc"}).design(clinical)


def test_design_within_errors(clinical: ClinicalTable) -> None:
    with raises("unknown within column 'grp'", "contrasts.x.within", "column 'grp'"):
        Contrast("x", "SRC", case="yes", within={"grp": "SSc"}).design(clinical)
    with raises("within level 'SSC2'", "contrasts.x.within", "Levels: HD, SSc"):
        Contrast("x", "SRC", case="yes", within={"group": "SSC2"}).design(clinical)
    with raises("within column 'age' is continuous", "contrasts.x.within"):
        Contrast("x", "SRC", case="yes", within={"age": 60}).design(clinical)


def test_design_covariate_errors(tmp_path: Path, clinical: ClinicalTable) -> None:
    base = {"name": "x", "variable": "SRC", "case": "yes", "within": {"group": "SSc"}}
    with raises("unknown covariate 'agee'", "contrasts.x.covariates", "column 'agee'"):
        Contrast(**base, covariates=["agee"]).design(clinical)
    # group is constant within SSc: collinear with the intercept
    with raises("covariate 'group' has the single level 'SSc'", "collinear with the intercept"):
        Contrast(**base, covariates=["group"]).design(clinical)
    # a covariate identical to the group indicator: rank deficient, named
    lines = study_clinical_csv(tmp_path).read_text().splitlines()
    rows = [lines[0] + ",renal"] + [
        f"{line},{1 if line.split(',')[3] == 'yes' else 0}" for line in lines[1:]
    ]
    c2 = ClinicalTable.from_csv(write(tmp_path / "c2.csv", "\n".join(rows) + "\n"))
    with raises(
        "design column 'renal[1]' is collinear with the tested group column 'SRC[yes]'",
        "contrasts.x.covariates",
        "column 'renal'",
    ):
        Contrast(**base, covariates=["renal"]).design(c2)
    with raises("covariate 'SRC' is the tested variable"):
        Contrast(**base, covariates=["SRC"]).design(clinical)


def test_design_missing_covariate_names_donors(tmp_path: Path) -> None:
    csv = study_clinical_csv(tmp_path)
    text = re.sub(r"^SSc5,SSc,64,", "SSc5,SSc,,", csv.read_text(), flags=re.M)
    c = ClinicalTable.from_csv(write(csv, text))
    with raises("covariate 'age' is missing for donor(s) SSc5", "contrasts.SRC.covariates"):
        Contrast("SRC", "SRC", case="yes", within={"group": "SSc"}, covariates=["age"]).design(c)


def test_design_more_columns_than_donors(tmp_path: Path) -> None:
    rows = ["donor_id,g,a,b"] + [f"D{i},{'xy'[i % 2]},{i * i},{i**3 % 7}" for i in range(4)]
    c = ClinicalTable.from_csv(write(tmp_path / "c.csv", "\n".join(rows) + "\n"))
    with raises("the design has 4 columns", "only 4 donors", "contrasts.t.covariates"):
        Contrast("t", "g", case="x", covariates=["a", "b"]).design(c)


def test_design_collinear_continuous_covariates(tmp_path: Path) -> None:
    rows = ["donor_id,g,a,b"] + [f"D{i},{'xy'[i % 2]},{i},{2 * i + 1}" for i in range(8)]
    c = ClinicalTable.from_csv(write(tmp_path / "c.csv", "\n".join(rows) + "\n"))
    with raises("design column 'b' is collinear with the columns before it", "column 'b'"):
        Contrast("t", "g", case="x", covariates=["a", "b"]).design(c)


def test_design_donor_table_is_what_the_report_reads(clinical: ClinicalTable) -> None:
    design = Contrast("SRC", "SRC", case="yes", within={"group": "SSc"}).design(clinical)
    table = design.donor_table()
    assert list(table.columns) == [
        "contrast", "variable", "kind", "unit", "donor_id", "sample_id", "group", "arm"
    ]  # fmt: skip
    assert (table["unit"] == "donor").all() and (table["sample_id"] == "").all()
    assert list(table["donor_id"]) == list(design.donors.astype(str))
    assert (table["group"] == "case").sum() == design.n_case
    assert set(table.loc[table["group"] == "case", "arm"]) == {"yes"}
    assert set(table.loc[table["group"] == "control", "arm"]) == {"no"}
    age = Contrast("age", "age").design(clinical).donor_table()
    assert (age["kind"] == "continuous").all() and (age["arm"] == "").all()


def test_ordered_levels_make_a_trend_per_step() -> None:
    donors = pd.Index([f"D{i}" for i in range(9)], name="donor_id")
    table = pd.DataFrame(
        {"stage": ["mild", "moderate", "severe"] * 3, "age": np.arange(9) * 3.0 + 40},
        index=donors,
    )
    table.iloc[0, 0] = "unknown"
    clinical = ClinicalTable(table, {"stage": "categorical", "age": "continuous"})
    contrast = Contrast("stage", "stage", order=["mild", "moderate", "severe"], covariates=["age"])
    with pytest.warns(UserWarning, match=r"D0 \(stage = unknown, not in order\)"):
        design = contrast.design(clinical)
    assert design.is_continuous and design.term == "stage"
    assert list(design.group) == [1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert design.describe().startswith("stage: stage per step of mild < moderate < severe (n=8)")
    assert contrast.to_dict()["order"] == ["mild", "moderate", "severe"]
    for bad, message in (
        ({"order": ["mild", "severe"]}, "3 or more distinct levels"),
        ({"order": ["mild", "moderate", "bad"]}, "unknown: bad"),
        ({"order": ["mild", "moderate", "severe"], "case": "mild"}, "case and control must not"),
    ):
        with pytest.raises(InputError, match=message):
            Contrast("s", "stage", **bad).design(clinical)

"""The TOML config: sections, defaults, key/type errors, round trip, and load_inputs."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from sccohort import config_checks
from sccohort.cohort import ClinicalTable, Contrast, SampleSheet
from sccohort.config import Config, build_designs, load_config, load_inputs
from sccohort.config_checks import config_section
from sccohort.errors import InputError

SSC_AGES = [67, 56, 82, 72, 64, 60, 80, 58, 47, 76, 81, 57, 46, 61, 50, 62, 77, 67, 53, 74, 73]
HD_AGES = [64, 62, 70, 67, 59, 84]
SRC = {1, 4, 19, 20}
ILD = {1, 3, 4, 6, 7, 8, 10, 11, 13, 14, 16, 17}

STUDY_TOML = """
[inputs]
samples = "samples.csv"
clinical = "clinical.csv"

[run]
seed = 0
primary_timepoint = "baseline"

[clinical.types]        # optional overrides
age = "continuous"

[contrasts.SSc_vs_HD]
variable = "group"
case = "SSc"
control = "HD"
covariates = ["age"]

[contrasts.SRC]
variable = "SRC"
case = "yes"
control = "no"
within = { group = "SSc" }
covariates = ["age"]

[contrasts.ILD]
variable = "ILD"
case = "yes"
within = { group = ["SSc"] }
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def study_cohort(folder: Path, toml: str = STUDY_TOML) -> Path:
    """The study's 27 donors; SSc1 also sampled at SRC onset. Returns the TOML path."""
    clinical = ["donor_id,group,age,SRC,ILD"]
    sheet = ["sample_id,donor_id,path,timepoint"]
    (folder / "counts").mkdir(parents=True, exist_ok=True)
    donors = [(f"SSc{i}", "SSc", age) for i, age in enumerate(SSC_AGES, start=1)]
    donors += [(f"HD{i}", "HD", age) for i, age in enumerate(HD_AGES, start=1)]
    for donor, group, age in donors:
        i = int(donor[3:]) if group == "SSc" else 0
        src = ("yes" if i in SRC else "no") if i else ""
        ild = ("yes" if i in ILD else "no") if i else ""
        clinical.append(f"{donor},{group},{age},{src},{ild}")
        (folder / "counts" / f"{donor}.h5").write_bytes(b"")
        sheet.append(f"{donor}_0,{donor},counts/{donor}.h5,baseline")
    (folder / "counts" / "SSc1_onset.h5").write_bytes(b"")
    sheet.append("SSc1_1,SSc1,counts/SSc1_onset.h5,SRC_onset")
    write(folder / "clinical.csv", "\n".join(clinical) + "\n")
    write(folder / "samples.csv", "\n".join(sheet) + "\n")
    return write(folder / "sccohort.toml", toml)


def messages(exc: InputError) -> list[str]:
    return [str(p) for p in getattr(exc, "problems", [exc])]


# ---------------------------------------------------------------------------------------
# load_config


def test_load_study_config(tmp_path: Path) -> None:
    cfg = load_config(study_cohort(tmp_path))
    assert cfg.path == tmp_path / "sccohort.toml"
    assert cfg.samples == tmp_path / "samples.csv" and cfg.samples.is_absolute()
    assert cfg.clinical == tmp_path / "clinical.csv"
    assert cfg.seed == 0 and cfg.primary_timepoint == "baseline"
    assert cfg.primary_tissue == "blood"
    assert cfg.variable_types == {"age": "continuous"}
    assert list(cfg.contrasts) == ["SSc_vs_HD", "SRC", "ILD"]
    assert cfg.contrasts["SRC"] == Contrast(
        "SRC", "SRC", case="yes", control="no", within={"group": "SSc"}, covariates=["age"]
    )
    assert cfg.contrasts["ILD"].control is None and cfg.contrasts["ILD"].covariates == []
    assert cfg.run.seed == 0  # sections are attributes too


def test_defaults_filled_in_and_paths_relative_to_toml(tmp_path: Path) -> None:
    toml = write(tmp_path / "conf" / "c.toml", '[inputs]\nsamples = "../data/s.csv"\n')
    cfg = load_config(toml)
    assert cfg.samples == tmp_path / "data" / "s.csv"
    assert cfg.clinical is None
    d = cfg.to_dict()
    assert d == {
        "config": str(toml),
        "inputs": {"samples": str(tmp_path / "data" / "s.csv"), "clinical": None},
        "run": {
            "seed": 0,
            "primary_timepoint": "baseline",
            "primary_tissue": "blood",
            "scheduler": "auto",
            "rna_on_disk": "auto",
        },
        "clinical": {"types": {}},
        "subsets": {"neighbours": "auto"},
        "qc": d["qc"],
        "normalize": {"target_sum": 1e4, "protein": "auto"},
        "embedding": d["embedding"],
        "annotation": d["annotation"],
        "association": d["association"],
        "characterise": d["characterise"],
        "spatial": d["spatial"],
        "tissue": d["tissue"],
        "contrasts": {},
    }
    assert d["spatial"]["n_neighbors"] == 20 and d["tissue"]["ambient"] is True
    assert d["qc"]["mode"] == "adaptive" and d["embedding"]["n_neighbors"] == 20
    assert d["annotation"]["reference"] is None and d["annotation"]["labels"] == "markers"
    assert d["association"]["levels"] == ["l1", "l2", "subset", "subset_in_l1"]
    assert d["characterise"]["alpha"] == 0.05 and d["characterise"]["gene_sets"] is None


def test_qc_section_defaults_are_the_qc_functions_defaults() -> None:
    from sccohort.config import QcSection
    from sccohort.pp.qc import DEFAULTS

    section = QcSection()
    assert {k: getattr(section, k) for k in vars(section)} == {
        k: DEFAULTS[k] for k in vars(section)
    }


def test_to_dict_round_trip(tmp_path: Path) -> None:
    cfg = load_config(study_cohort(tmp_path))
    d = cfg.to_dict()
    json.dumps(d)  # run.json ready
    for section in ("inputs", "run", "clinical"):
        assert set(d[section]) == {f for f in cfg.sections[section].__dataclass_fields__}
    assert d["contrasts"]["ILD"] == {
        "variable": "ILD",
        "case": "yes",
        "control": None,
        "within": {"group": ["SSc"]},
        "covariates": [],
        "paired": None,
        "order": None,
    }

    def drop_none(x):
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        return x

    again = write(
        tmp_path / "elsewhere" / "again.toml",
        tomli_w.dumps(drop_none({k: v for k, v in d.items() if k != "config"})),
    )
    d2 = load_config(again).to_dict()
    assert d2.pop("config") == str(again)
    d.pop("config")
    assert d2 == d  # absolute paths survive a move of the TOML file


def test_unknown_keys_name_the_key_and_valid_keys(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "c.toml",
        '[inputs]\nsamples = "s.csv"\nclinicl = "c.csv"\n\n[run]\nsed = 1\n\n'
        '[contrasts.A]\nvariable = "x"\ncovariate = ["age"]\n\n[qcc]\nmax = 1\n',
    )
    with pytest.raises(InputError, match="4 problems") as info:
        load_config(toml)
    msgs = messages(info.value)
    assert all(str(toml) in m for m in msgs)
    assert "key 'qcc'" in msgs[0] and "Valid sections: [inputs], [run]" in msgs[0]
    assert "key 'inputs.clinicl'" in msgs[1] and "did you mean 'clinical'?" in msgs[1]
    assert "Valid keys of [inputs]: samples, clinical" in msgs[1]
    assert "key 'run.sed'" in msgs[2] and "did you mean 'seed'?" in msgs[2]
    assert "key 'contrasts.A.covariate'" in msgs[3]
    assert "variable, case, control, within, covariates" in msgs[3]


INPUTS = '[inputs]\nsamples = "s.csv"\n'


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (INPUTS + '[run]\nseed = "0"', "run.seed", "expected an integer, got str '0'"),
        (INPUTS + "[run]\nseed = 1.5", "run.seed", "expected an integer, got float 1.5"),
        (INPUTS + "[run]\nseed = true", "run.seed", "expected an integer, got bool True"),
        (INPUTS + "[run]\nprimary_timepoint = 0", "run.primary_timepoint", "expected a string"),
        (INPUTS + '[clinical.types]\nage = "number"', "clinical.types.age",
         "expected one of 'binary'"),
        (INPUTS + '[contrasts.A]\nvariable = "x"\ncovariates = "age"', "contrasts.A.covariates",
         "expected a list of (a string)"),
        (INPUTS + '[contrasts.A]\nvariable = "x"\ncase = [1]', "contrasts.A.case",
         "expected a string"),
        (INPUTS + '[contrasts.A]\nvariable = "x"\nwithin = "SSc"', "contrasts.A.within",
         "expected a table of"),
        (INPUTS + '[contrasts.A]\ncase = "yes"', "contrasts.A.variable", "missing required key"),
        ("[inputs]\nclinical = 'c.csv'", "inputs.samples", "missing required key"),
        ('inputs = "s.csv"', "inputs", "expected a table [inputs]"),
        (INPUTS + '[contrasts."SSc vs HD"]\nvariable = "g"', "contrasts.SSc vs HD",
         "must start with a letter or digit and hold only"),
        (INPUTS + '[contrasts."-x"]\nvariable = "g"', "contrasts.-x", "must start with a letter"),
    ],
)  # fmt: skip
def test_wrong_types_name_key_and_expected_type(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    toml = write(tmp_path / "c.toml", text + "\n")
    with pytest.raises(InputError) as info:
        load_config(toml)
    msg = str(info.value)
    assert f"key '{key}'" in msg and expected in msg and str(toml) in msg


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", '[inputs]\nsamples = "s.csv"\n[run]\nseed = \n')
    with pytest.raises(InputError, match="TOML syntax error") as info:
        load_config(toml)
    assert info.value.row == 4 and f"{toml}, line 4:" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "none.toml")


@dataclass
class Gates:
    low: float = 0.1


@dataclass
class QcDemo:
    max_mito_pct: float = 20.0
    min_genes: int = 200
    gates: Gates | None = None


def test_new_section_is_one_dataclass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config_checks, "SECTIONS", dict(config_checks.SECTIONS))
    config_section("qc_demo")(QcDemo)
    toml = write(
        tmp_path / "c.toml",
        '[inputs]\nsamples = "s.csv"\n[qc_demo]\nmax_mito_pct = 40\n[qc_demo.gates]\nlow = 1\n',
    )
    cfg = load_config(toml)
    assert cfg.qc_demo == QcDemo(max_mito_pct=40.0, min_genes=200, gates=Gates(low=1.0))
    assert isinstance(cfg.qc_demo.max_mito_pct, float)
    assert cfg.to_dict()["qc_demo"] == {
        "max_mito_pct": 40.0,
        "min_genes": 200,
        "gates": {"low": 1.0},
    }
    write(toml, '[inputs]\nsamples = "s.csv"\n[qc_demo]\nmin_genes = "200"\n')
    with pytest.raises(InputError, match=re.escape("key 'qc_demo.min_genes'")):
        load_config(toml)
    write(toml, '[inputs]\nsamples = "s.csv"\n[qc_demo.gates]\nhigh = 1\n')
    with pytest.raises(InputError, match=re.escape("key 'qc_demo.gates.high'")):
        load_config(toml)


def _number_keys() -> list[tuple[str, dataclasses.Field]]:
    """``(section, field)`` of every key of a registered section that takes a number."""
    found = []
    for name, cls in config_checks.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            text = str(hints[f.name])
            if re.search(r"\b(int|float)\b", text) and "bool" not in text:
                found.append((name, f))
    return found


def test_every_number_key_declares_its_range() -> None:
    keys = _number_keys()
    assert len(keys) >= 28
    missing = [f"{name}.{f.name}" for name, f in keys if not f.metadata.get("checks")]
    assert not missing, f"keys without a range: {missing}"


def test_every_default_is_in_its_range() -> None:
    for cls in config_checks.SECTIONS.values():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            for check in f.metadata.get("checks", ()):
                assert check.test(default), (cls.__name__, f.name, default, check.accepts)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[run]\nseed = -1", "run.seed", "-1 is out of range: it must be from 0 to 2,147,483,647"),
        ("[run]\nseed = 2147483647", None, None),
        ("[characterise]\nalpha = 1.0", "characterise.alpha", "above 0 and below 1"),
        ("[qc]\nmin_genes = -3", "qc.min_genes", "at least 0"),
        ('[qc]\nmin_genes = "auto"', None, None),
        ("[qc]\nplatelet_max_pct = -0.5", "qc.platelet_max_pct", "from 0 to 100"),
        ("[qc]\nmito_floor_pct = 30.0", "qc.mito_ceiling_pct", "below mito_floor_pct = 30.0"),
        ("[embedding]\nn_top_genes = 1", "embedding.n_top_genes", "at least 2"),
        ("[embedding]\numap_max_cells = 10", "embedding.umap_max_cells", "at least 100"),
        ('[embedding]\nharmony_key = ""', None, None),
        ("[annotation]\nreference_keys = []", "annotation.reference_keys", "is empty"),
        ("[characterise]\ntimecourse_genes = ['CD3E', '']", "characterise.timecourse_genes",
         "got an empty one"),
        ("[association]\ngroupings = ['ARA', 'ARA']", "association.groupings", "twice"),
        ("[association]\nlevels = ['l3']", "association.levels", "expected a list of"),
        ("[normalize]\ntarget_sum = inf", "normalize.target_sum", "not a finite number"),
        ('[run]\nscheduler = "tcp://10.0.0.1:8786"', None, None),
        ('[run]\nscheduler = "threads"', None, None),
        ('[run]\nscheduler = "thread"', "run.scheduler", "is not accepted"),
        ('[clinical.types]\n"" = "binary"', "clinical.types", "got an empty one"),
    ],
)  # fmt: skip
def test_values_out_of_range_name_the_full_key(
    tmp_path: Path, text: str, key: str | None, expected: str | None
) -> None:
    toml = write(tmp_path / "c.toml", INPUTS + text + "\n")
    if key is None:
        load_config(toml)
        return
    with pytest.raises(InputError) as info:
        load_config(toml)
    msg = str(info.value)
    assert f"{toml}, key '{key}': " in msg and expected in msg


def test_every_range_problem_is_reported_at_once(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "c.toml",
        INPUTS + "[run]\nseed = -1\n[qc]\nnmads = 0\n[embedding]\nn_pcs = 0\n"
        "[association]\nn_perm = 0\n",
    )
    with pytest.raises(InputError, match="4 problems") as info:
        load_config(toml)
    keys = [p.key for p in info.value.problems]
    assert keys == ["run.seed", "qc.nmads", "embedding.n_pcs", "association.n_perm"]


def test_a_new_section_declares_ranges_beside_its_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config_checks, "SECTIONS", dict(config_checks.SECTIONS))

    @config_section("demo")
    @dataclass
    class Demo:
        share: float = config_checks.setting(config_checks.PROBABILITY, default=0.5)
        names: list[str] = config_checks.setting(config_checks.at_least_one, factory=lambda: ["a"])

    assert load_config(write(tmp_path / "c.toml", INPUTS)).demo == Demo()
    toml = write(tmp_path / "c.toml", INPUTS + "[demo]\nshare = 1.5\nnames = []\n")
    with pytest.raises(InputError, match="2 problems") as info:
        load_config(toml)
    assert [p.key for p in info.value.problems] == ["demo.share", "demo.names"]


# ---------------------------------------------------------------------------------------
# load_inputs


def test_load_inputs_study(tmp_path: Path) -> None:
    cfg = load_config(study_cohort(tmp_path))
    sheet, clinical = load_inputs(cfg)
    assert isinstance(sheet, SampleSheet) and isinstance(clinical, ClinicalTable)
    assert len(sheet) == 28 and clinical.types["age"] == "continuous"
    designs = build_designs(cfg, sheet, clinical)
    assert (designs["SSc_vs_HD"].n_case, designs["SSc_vs_HD"].n_control) == (21, 6)
    assert (designs["SRC"].n_case, designs["SRC"].n_control) == (4, 17)
    assert (designs["ILD"].n_case, designs["ILD"].n_control) == (12, 9)
    # the onset sample is not a primary sample: one row per donor
    assert designs["SRC"].matrix.index.is_unique and len(designs["SSc_vs_HD"].donors) == 27


def test_load_inputs_collects_every_problem(tmp_path: Path) -> None:
    toml = STUDY_TOML.replace('covariates = ["age"]\n\n[contrasts.SRC]', 'covariates = ["sex"]'
                              '\n\n[contrasts.SRC]').replace('case = "yes"\ncontrol', 'case = '
                              '"Y"\ncontrol')  # fmt: skip
    path = study_cohort(tmp_path, toml)
    with open(tmp_path / "samples.csv", "a") as fh:
        fh.write("X_0,SSc99,counts/SSc1.h5,baseline\n")
    cfg = load_config(path)
    with pytest.raises(InputError, match="3 problems") as info:
        load_inputs(cfg)
    msgs = messages(info.value)
    assert "line 30" in msgs[0] and "donor 'SSc99' is not in the clinical table" in msgs[0]
    assert "contrasts.SSc_vs_HD.covariates" in msgs[1] and "unknown covariate 'sex'" in msgs[1]
    assert "contrasts.SRC.case" in msgs[2] and "Levels: no, yes" in msgs[2]


def test_load_inputs_missing_files_name_config_key(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", '[inputs]\nsamples = "s.csv"\nclinical = "c.csv"\n')
    with pytest.raises(InputError, match="2 problems") as info:
        load_inputs(load_config(toml))
    msgs = messages(info.value)
    assert f"{toml}, key 'inputs.samples'" in msgs[0] and "s.csv not found" in msgs[0]
    assert "key 'inputs.clinical'" in msgs[1]


def test_load_inputs_contrasts_need_clinical_and_primary_visit(tmp_path: Path) -> None:
    path = study_cohort(tmp_path)
    text = path.read_text().replace('clinical = "clinical.csv"\n', "")
    text = text.replace('primary_timepoint = "baseline"', 'primary_timepoint = "week0"')
    cfg = load_config(write(path, text))
    with pytest.raises(InputError) as info:
        load_inputs(cfg)
    msgs = messages(info.value)
    assert sum("need a clinical table" in m for m in msgs) == 3
    assert any("no sample has timepoint 'week0'" in m and "baseline/blood" in m for m in msgs)


def test_load_inputs_without_clinical(tmp_path: Path) -> None:
    study_cohort(tmp_path)
    toml = write(tmp_path / "c.toml", '[inputs]\nsamples = "samples.csv"\n')
    sheet, clinical = load_inputs(load_config(toml))
    assert clinical is None and len(sheet) == 28


def test_config_is_a_dataclass_with_sections(tmp_path: Path) -> None:
    cfg = load_config(study_cohort(tmp_path))
    assert isinstance(cfg, Config)
    with pytest.raises(AttributeError, match="no attribute or section 'qcx'"):
        _ = cfg.qcx

"""Probes of count files: the same modalities, features, cells and decision as the readers."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from corpus import no_hang
from typer.testing import CliRunner

from sccohort.cli import app
from sccohort.cohort import SampleSheet, special_file_kind
from sccohort.errors import InputError
from sccohort.io import SampleProbe, probe_sample, probe_samples, verify
from sccohort.io.features import gene_table
from sccohort.io.probe import probe_table
from sccohort.io.read import read_sample
from sccohort.io.stack import gene_list_mismatches
from sccohort.io.tenx import write_10x_h5
from sccohort.io.verify import describe_start, file_signature, first_bad_value, hdf5_layout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ECCITE = DATA / "eccite_pbmc"
DSB = DATA / "dsb_pbmc_adt"
KOTLIAROV = DATA / "kotliarov_adt9" / "cells_adt9.h5ad"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (shared/data is absent here)")
    return path


def assert_probe_is_reader(path: Path, **kwargs) -> SampleProbe:
    """The probe of ``path`` names what `read_sample` reads: modalities, features, cells."""
    probe = probe_sample(path, sample_id="S", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped cells, ignored modalities, library notices
        mdata = read_sample(path, "S", **kwargs)
    assert list(probe.modalities) == list(mdata.mod)
    for modality, one in probe.modalities.items():
        adata = mdata[modality]
        assert list(one.features) == list(adata.var_names), modality
        assert one.n_features == adata.n_vars
        assert one.gene_ids == adata.uns.get("gene_ids", "")
        assert probe.rule == adata.uns["modality_rule"]
    assert probe.n_cells == mdata.n_obs
    return probe


def _counts(seed: int, shape: tuple[int, int]) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.0, size=shape).astype(np.int64))


def _ensembl(symbols: list[str]) -> list[str]:
    table = gene_table().set_index("symbol")["gene_id"]
    return [table[s] for s in symbols]


FEATURES = pd.DataFrame(
    {
        "id": [*_ensembl(["CD3E", "LYZ", "MT-CO1"]), "ENSG99999999999", "CD3", "CD19", "H1"],
        "name": [
            "GRCh38_CD3E", "LYZ", "MT-CO1", "ENSG99999999999", "CD3_TotalSeqB", "CD19_TotalSeqB",
            "HTO_1",
        ],
        "feature_type": ["Gene Expression"] * 4 + ["Antibody Capture"] * 2
        + ["Multiplexing Capture"],
    }
)  # fmt: skip
BARCODES = [f"BC{i:03d}-1" for i in range(12)]


# ------------------------------------------------------------------ simulated files


def test_probe_of_cell_ranger_h5_and_mtx(tmp_path: Path) -> None:
    counts = _counts(0, (len(BARCODES), len(FEATURES)))
    h5 = tmp_path / "run" / "outs" / "filtered_feature_bc_matrix.h5"
    h5.parent.mkdir(parents=True)
    write_10x_h5(h5, counts, BARCODES, FEATURES)
    probe = assert_probe_is_reader(tmp_path / "run")
    assert probe.format == "10x_h5" and probe.path == h5
    assert probe.rule == "rna + prot + hto: Cell Ranger feature types"
    assert probe.modalities["rna"].features == ("CD3E", "LYZ", "MT-CO1", "ENSG99999999999")
    assert probe.modalities["rna"].id_kind == "mixed"
    assert assert_probe_is_reader(h5, modality="prot").rule.startswith("prot: samples.csv")

    mtx = tmp_path / "mtx"
    mtx.mkdir()
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, counts.T.tocoo())
    FEATURES.to_csv(mtx / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(BARCODES).to_csv(mtx / "barcodes.tsv.gz", header=False, index=False)
    assert assert_probe_is_reader(mtx).n_cells == len(BARCODES)

    v2 = tmp_path / "v2"  # Cell Ranger 2: genes.tsv (id, name), no feature types
    v2.mkdir()
    genes = FEATURES.iloc[:4]
    scipy.io.mmwrite(v2 / "matrix.mtx", counts[:, :4].T.tocoo())
    genes[["id", "name"]].to_csv(v2 / "genes.tsv", sep="\t", header=False, index=False)
    pd.Series(BARCODES).to_csv(v2 / "barcodes.tsv", header=False, index=False)
    probe = assert_probe_is_reader(v2)
    assert probe.rule == "rna: no feature types (Cell Ranger 2: Gene Expression only)"
    assert assert_probe_is_reader(v2, modality="prot").rule == "prot: samples.csv modality column"


def test_probe_of_cell_ranger_2_h5(tmp_path: Path) -> None:
    counts = _counts(1, (len(BARCODES), 3)).T.tocsc()  # features x cells
    path = tmp_path / "filtered_gene_bc_matrices_h5.h5"
    with h5py.File(path, "w") as fh:
        grp = fh.create_group("hg19")
        grp["genes"] = np.array(_ensembl(["CD3E", "CD4", "LYZ"]), dtype="S")
        grp["gene_names"] = np.array(["CD3E", "CD4", "LYZ"], dtype="S")
        grp["barcodes"] = np.array(BARCODES, dtype="S")
        grp["data"], grp["indices"], grp["indptr"] = counts.data, counts.indices, counts.indptr
        grp["shape"] = np.array(counts.shape, dtype=np.int32)
    probe = assert_probe_is_reader(path)
    assert probe.modalities["rna"].features == ("CD3E", "CD4", "LYZ")


def test_probe_of_per_modality_mtx_keeps_common_cells(tmp_path: Path) -> None:
    for stem, names, cells, seed in (
        ("RNA", ["CD3E", "LYZ", "MS4A1"], BARCODES, 1),
        ("ADT", ["CD3", "CD19"], BARCODES[2:], 2),
    ):
        with gzip.open(tmp_path / f"{stem}.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(fh, _counts(seed, (len(cells), len(names))).T.tocoo())
        pd.Series(names).to_csv(tmp_path / f"{stem}_features.tsv.gz", header=False, index=False)
        pd.Series(cells).to_csv(tmp_path / f"{stem}_barcodes.tsv.gz", header=False, index=False)
    probe = assert_probe_is_reader(tmp_path)
    assert probe.n_cells == len(BARCODES) - 2 and probe.rule == "rna + prot: MTX file names"
    assert assert_probe_is_reader(tmp_path, modality="prot").n_cells == len(BARCODES) - 2


def _h5ad(path: Path, names: list[str], seed: int = 0, **var) -> ad.AnnData:
    adata = ad.AnnData(
        X=_counts(seed, (len(BARCODES), len(names))).astype(np.float32),
        obs=pd.DataFrame(index=BARCODES),
        var=pd.DataFrame(var, index=pd.Index(names)),
    )
    adata.write_h5ad(path)
    return adata


def test_probe_of_h5ad_forms(tmp_path: Path) -> None:
    ids = _ensembl(["CD3E", "CD14", "MT-CO1", "NKG7"])
    _h5ad(tmp_path / "ids.h5ad", [ids[0], f"{ids[1]}.7", *ids[2:], "ENSG90000000001"])
    probe = assert_probe_is_reader(tmp_path / "ids.h5ad")
    assert probe.rule == "rna: 5 Ensembl ids, 4 mapped to symbols (rule: >= 50 % genes)"
    assert probe.modalities["rna"].gene_ids == "ensembl: 4/5 mapped"
    assert probe.modalities["rna"].features[:3] == ("CD3E", "CD14", "MT-CO1")

    panel = ["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "CD127"]
    _h5ad(tmp_path / "adt.h5ad", panel)
    assert list(assert_probe_is_reader(tmp_path / "adt.h5ad").modalities) == ["prot"]
    forced = assert_probe_is_reader(tmp_path / "adt.h5ad", modality="rna")
    assert list(forced.modalities) == ["rna"]

    types = ["Gene Expression", "Gene Expression", "Antibody Capture"]
    _h5ad(tmp_path / "typed.h5ad", ["CD3E", "LYZ", "CD3_A"], feature_types=types)
    assert assert_probe_is_reader(tmp_path / "typed.h5ad").rule == (
        "rna + prot: var['feature_types']"
    )
    assert list(assert_probe_is_reader(tmp_path / "typed.h5ad", modality="prot").modalities) == [
        "prot"
    ]

    scvi = _h5ad(tmp_path / "scvi.h5ad", ["CD3E", "LYZ", "MS4A1"], gene_ids=["E1", "E2", "E3"])
    scvi.obsm["protein_expression"] = pd.DataFrame(
        np.arange(24).reshape(12, 2), index=BARCODES, columns=["CD3", "CD19"]
    )
    scvi.write_h5ad(tmp_path / "scvi.h5ad")
    probe = assert_probe_is_reader(tmp_path / "scvi.h5ad")
    assert probe.modalities["prot"].features == ("CD3", "CD19")
    assert probe.rule.endswith("; prot: obsm['protein_expression']")
    scvi.obsm["protein_expression"] = np.arange(24).reshape(12, 2)
    scvi.uns["protein_names"] = np.array(["CD4", "CD8"])
    scvi.write_h5ad(tmp_path / "scvi_array.h5ad")
    assert assert_probe_is_reader(tmp_path / "scvi_array.h5ad").modalities["prot"].features == (
        "CD4",
        "CD8",
    )

    # normalised .X, counts in .raw with more genes: the raw genes are read
    raw = ad.AnnData(
        X=_counts(3, (len(BARCODES), 4)),
        obs=pd.DataFrame(index=BARCODES),
        var=pd.DataFrame(index=["CD3E", "LYZ", "MS4A1", "NKG7"]),
    )
    norm = raw[:, :2].copy()
    norm.X = norm.X.astype(np.float32) / 3.3
    norm.raw = raw
    norm.write_h5ad(tmp_path / "raw.h5ad")
    assert assert_probe_is_reader(tmp_path / "raw.h5ad").modalities["rna"].n_features == 4
    dense = raw.copy()
    dense.X = dense.X.toarray()
    dense.layers["counts"] = dense.X.copy()
    dense.X = dense.X / 2.5
    dense.write_h5ad(tmp_path / "dense.h5ad")
    assert assert_probe_is_reader(tmp_path / "dense.h5ad").n_cells == len(BARCODES)


def test_probe_of_h5mu(tmp_path: Path) -> None:
    rna = ad.AnnData(
        X=_counts(1, (12, 3)).astype(np.float32),
        obs=pd.DataFrame(index=BARCODES),
        var=pd.DataFrame(index=_ensembl(["CD3E", "LYZ", "MS4A1"])),
    )
    adt = ad.AnnData(
        X=_counts(2, (10, 2)).astype(np.float32),
        obs=pd.DataFrame(index=BARCODES[2:]),
        var=pd.DataFrame(index=["CD3", "CD19"]),
    )
    other = ad.AnnData(X=np.ones((12, 1), dtype=np.float32), obs=pd.DataFrame(index=BARCODES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md.MuData({"RNA": rna, "ADT": adt, "atac": other}).write_h5mu(tmp_path / "s.h5mu")
    probe = assert_probe_is_reader(tmp_path / "s.h5mu")
    assert probe.n_cells == 10 and probe.rule == "rna + prot: h5mu modality names"
    assert probe.modalities["rna"].features == ("CD3E", "LYZ", "MS4A1")
    assert assert_probe_is_reader(tmp_path / "s.h5mu", modality="rna").n_cells == 12


def test_probe_of_rhapsody_csv(tmp_path: Path) -> None:
    path = tmp_path / "x_DBEC_MolsPerCell.csv.gz"
    lines = [
        "##BD Rhapsody", "## pipeline v1", "Cell_Index,CD3E,LYZ,CD4:RPA-T4|CD4|AHS0032|pAbO",
        "1,0,3,5", "2,1,0,7", "", "3,2,2,0",
    ]  # fmt: skip
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    probe = assert_probe_is_reader(path)
    assert probe.n_cells == 3 and probe.rule == "rna + prot: AbSeq (pAbO) column names"
    assert list(assert_probe_is_reader(path, modality="prot").modalities) == ["prot"]


def test_probe_of_a_simulated_cohort(tmp_path: Path) -> None:
    from sccohort.simulate import simulate_cohort

    cohort = simulate_cohort(tmp_path, cells_per_donor=60, seed=1, donors=["HD1", "SSc1"])
    sheet = SampleSheet.from_csv(cohort / "samples.csv")
    probes = probe_samples(sheet)
    assert list(probes) == list(sheet.sample_ids)
    for sample, probe in probes.items():
        assert_probe_is_reader(sheet.table.at[sample, "path"])
        assert probe.sample_id == sample and probe.modalities["rna"].gene_ids == "symbols"


def test_probe_checks_the_counts_the_reader_would_fail_on(tmp_path: Path) -> None:
    counts = _counts(0, (len(BARCODES), len(FEATURES)))
    h5 = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(h5, counts, BARCODES, FEATURES)
    with h5py.File(h5, "a") as fh:
        del fh["matrix/data"], fh["matrix/indices"]  # the counts are gone
    with pytest.raises(InputError, match="matrix/data is missing"):
        probe_sample(h5, sample_id="S")
    with pytest.raises(InputError):
        read_sample(h5, "S")
    mtx = tmp_path / "mtx"
    mtx.mkdir()
    header = f"%%MatrixMarket matrix coordinate integer general\n% c\n{len(FEATURES)} 12 999\n"
    (mtx / "matrix.mtx").write_text(header + "not counts at all\n")
    FEATURES.to_csv(mtx / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(BARCODES).to_csv(mtx / "barcodes.tsv", header=False, index=False)
    with pytest.raises(InputError, match="matrix.mtx") as err:
        probe_sample(mtx, sample_id="S")
    assert err.value.sample == "S"


def test_file_signatures_and_hdf5_layouts(tmp_path: Path) -> None:
    files = {
        "empty": b"",
        "text": "Cell_Index,CD3E\n1,2\nnaïve\n".encode(),
        "gzip": gzip.compress(b"x"),
        "binary": b"\x7fELF\x02\x01\x00\x00",
    }
    for kind, content in files.items():
        (tmp_path / kind).write_bytes(content)
        assert file_signature(tmp_path / kind) == kind
    assert describe_start(tmp_path / "binary") == "it begins with bytes 7f 45 4c 46 02 01 00 00"
    with h5py.File(tmp_path / "block.h5", "w", userblock_size=1024) as fh:
        fh["x"] = np.arange(3)
    assert file_signature(tmp_path / "block.h5") == "hdf5"
    with h5py.File(tmp_path / "block.h5", "r") as fh:
        assert hdf5_layout(fh) == "hdf5"
    write_10x_h5(tmp_path / "m.h5", _counts(0, (12, 7)), BARCODES, FEATURES)
    _h5ad(tmp_path / "a.h5ad", ["CD3E", "LYZ"])
    for name, layout in (("m.h5", "10x_h5"), ("a.h5ad", "h5ad")):
        with h5py.File(tmp_path / name, "r") as fh:
            assert hdf5_layout(fh) == layout


def test_first_bad_value_of_each_kind() -> None:
    assert first_bad_value(np.array([0, 3, 2**31 - 1], dtype=np.int64)) is None
    assert first_bad_value(np.array([1.0, 4.0], dtype=np.float32)) is None
    assert first_bad_value(np.array([True, False])) is None
    cases = {
        "a negative value (-1)": np.array([2, -1], dtype=np.int8),
        "a count of 4,294,967,295": np.array([1, 2**32 - 1], dtype=np.uint32),
        "a NaN": np.array([0.0, np.nan]),
        "an infinite value": np.array([0.0, np.inf]),
        "a non-integer value (0.5)": np.array([1.0, 0.5]),
    }
    for problem, values in cases.items():
        bad = first_bad_value(values)
        assert bad.index == 1 and bad.problem.startswith(problem), problem
        assert bad.normalised == (values.dtype.kind == "f" or problem.startswith("a negative"))
    with pytest.raises(TypeError):
        first_bad_value(np.array(["1"]))


def test_arrays_are_read_in_slices_and_the_value_is_placed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(verify, "CHUNK_VALUES", 8)
    counts = _counts(4, (len(BARCODES), len(FEATURES)))
    h5 = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(h5, counts, BARCODES, FEATURES)
    at = counts.nnz - 3
    with h5py.File(h5, "a") as fh:
        data = fh["matrix/data"][:]
        data[at] = -5
        del fh["matrix/data"]
        fh.create_dataset("matrix/data", data=data, chunks=(4,))
    cell = int(np.searchsorted(counts.indptr, at, side="right")) - 1
    feature = FEATURES["name"].iloc[counts.indices[at]]
    with pytest.raises(InputError, match="negative value") as err:
        probe_sample(h5, sample_id="S")
    assert f"cell '{BARCODES[cell]}', feature '{feature}'" in str(err.value)

    dense = counts.toarray().astype(np.float64)
    dense[10, 1] = 0.5
    _write_adata(tmp_path / "d.h5ad", dense, list(FEATURES["name"]))
    with pytest.raises(InputError, match="non-integer") as err:
        probe_sample(tmp_path / "d.h5ad", sample_id="S")
    assert f"cell '{BARCODES[10]}', feature '{FEATURES['name'].iloc[1]}'" in str(err.value)

    mtx = tmp_path / "mtx"
    mtx.mkdir()
    scipy.io.mmwrite(mtx / "matrix.mtx", counts.T.tocoo())
    lines = (mtx / "matrix.mtx").read_text().splitlines()
    i, j, _ = lines[-2].split()
    lines[-2] = f"{i} {int(j) + 40} 1"  # a cell beyond the 12 barcodes
    (mtx / "matrix.mtx").write_text("\n".join(lines) + "\n")
    FEATURES.to_csv(mtx / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(BARCODES).to_csv(mtx / "barcodes.tsv", header=False, index=False)
    with pytest.raises(InputError, match=f"entry {counts.nnz - 1:,} has cell coordinate"):
        probe_sample(mtx, sample_id="S")


def _write_adata(path: Path, counts, names: list[str], cells=BARCODES, **var) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # names repeated on purpose
        ad.AnnData(
            X=counts, obs=pd.DataFrame(index=list(cells)), var=pd.DataFrame(var, index=names)
        ).write_h5ad(path)


def test_features_are_a_name_and_an_id(tmp_path: Path) -> None:
    """Two symbols of one id, or one symbol of two ids, are two genes; a pair twice is not."""
    genes = pd.DataFrame(
        {
            "id": ["ENSG00000111215", "ENSG00000111215", "ENSG01", "ENSG02"],
            "name": ["PRH1", "PRR4", "TBCE", "TBCE"],
            "feature_type": "Gene Expression",
        }
    )
    write_10x_h5(tmp_path / "ok.h5", _counts(0, (12, 4)), BARCODES, genes)
    probe = assert_probe_is_reader(tmp_path / "ok.h5")
    assert probe.modalities["rna"].features == ("PRH1", "PRR4", "TBCE", "TBCE-1")
    twice = genes.assign(id=["ENSG00000111215", "ENSG00000111215", "ENSG01", "ENSG01"])
    write_10x_h5(tmp_path / "twice.h5", _counts(0, (12, 4)), BARCODES, twice)
    with pytest.raises(InputError, match=r"feature 'TBCE \(ENSG01\)' is listed more than once"):
        probe_sample(tmp_path / "twice.h5")
    names = ["CD3E", "LYZ", "CD3E"]
    _write_adata(tmp_path / "ids.h5ad", _counts(0, (12, 3)), names, gene_ids=["E1", "E2", "E3"])
    assert assert_probe_is_reader(tmp_path / "ids.h5ad").modalities["rna"].n_features == 3
    _write_adata(tmp_path / "names.h5ad", _counts(0, (12, 3)), names)
    with pytest.raises(InputError, match="feature 'CD3E' is listed more than once"):
        probe_sample(tmp_path / "names.h5ad")


def test_samples_read_twice_and_row_number_barcodes(tmp_path: Path) -> None:
    rows = []
    for i in range(3):  # h5ad files whose cells are row numbers: no cell is named twice
        path = tmp_path / f"s{i}.h5ad"
        _write_adata(path, _counts(i, (12, 3)), ["CD3E", "LYZ", "MS4A1"], cells=map(str, range(12)))
        rows.append((f"S{i}", f"D{i}", str(path)))
    sheet = pd.DataFrame(rows, columns=["sample_id", "donor_id", "path"]).set_index("sample_id")
    assert list(probe_samples(sheet)) == ["S0", "S1", "S2"]
    for i in range(2):  # two 10x samples with the same barcodes: one sample read twice
        write_10x_h5(tmp_path / f"t{i}.h5", _counts(i, (12, 7)), BARCODES, FEATURES)
    sheet = pd.DataFrame(
        {"donor_id": ["D1", "D2"], "path": [str(tmp_path / "t0.h5"), str(tmp_path / "t1.h5")]},
        index=pd.Index(["T0", "T1"], name="sample_id"),
    )
    with pytest.raises(InputError, match="shares 12 barcodes") as err:
        probe_samples(sheet)
    assert err.value.sample == "T1" and "sample 'T0'" in str(err.value)
    with pytest.raises(InputError, match="read the same count file") as err:
        probe_samples(sheet.assign(path=str(tmp_path / "t0.h5")))
    assert err.value.sample == "T1"


def test_gene_lists_are_compared_with_the_majority() -> None:
    genes = {"A": ["G1", "G2"], "B": ["G1", "G3"], "C": ["G1", "G3"], "D": ["G3", "G1"]}
    [problem] = gene_list_mismatches(genes)
    assert problem.sample == "A" and "3 other sample(s) ('B', 'C', 'D')" in str(problem)
    assert "only here G2; missing here G3" in str(problem)
    tie = gene_list_mismatches({"A": ["G1"], "B": ["G2"]})
    assert [p.sample for p in tie] == ["B"]  # no majority: the first sample is the reference
    assert gene_list_mismatches({"A": ["G1", "G2"], "B": ["G2", "G1"]}) == []


def test_raw_droplets_are_checked_too(tmp_path: Path) -> None:
    write_10x_h5(tmp_path / "cells.h5", _counts(0, (12, 7)), BARCODES, FEATURES)
    (tmp_path / "raw.h5").write_bytes(b"")
    sheet = pd.DataFrame(
        {"donor_id": ["D1"], "path": [str(tmp_path / "cells.h5")], "raw_path": ["raw.h5"]},
        index=pd.Index(["S1"], name="sample_id"),
    )
    with pytest.raises(InputError, match="empty"):
        probe_samples(sheet.assign(raw_path=str(tmp_path / "raw.h5")))
    assert list(probe_samples(sheet.assign(raw_path=None))) == ["S1"]


def test_rhapsody_values_are_checked_with_their_line_and_column(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(verify, "CHUNK_VALUES", 4)  # blocks of two rows
    path = tmp_path / "x_DBEC_MolsPerCell.csv"
    rows = ["1,0,3", "2,1,0", "3,2,2", "4,1,-1", "5,0,0"]
    path.write_text("##BD Rhapsody\nCell_Index,CD3E,LYZ\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match="negative value") as err:
        probe_sample(path, sample_id="S")
    assert (err.value.row, err.value.column) == (6, "LYZ")


def test_special_files_are_refused_by_their_type(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    assert special_file_kind(fifo) == "a named pipe (FIFO)"
    assert special_file_kind(tmp_path) is None and special_file_kind(tmp_path / "no") is None
    with no_hang(), pytest.raises(InputError, match="named pipe"):
        probe_sample(fifo, sample_id="S")  # refused by stat, never opened
    (tmp_path / "mtx").mkdir()
    os.mkfifo(tmp_path / "mtx" / "matrix.mtx")
    (tmp_path / "mtx" / "features.tsv").write_text("G1\tG1\tGene Expression\n")
    (tmp_path / "mtx" / "barcodes.tsv").write_text("AAAC-1\n")
    with no_hang(), pytest.raises(InputError, match="named pipe") as err:
        probe_sample(tmp_path / "mtx", sample_id="S")
    assert err.value.file.endswith("matrix.mtx")
    if Path("/dev/null").exists():
        with pytest.raises(InputError, match="character device"):
            probe_sample("/dev/null", format="10x_h5", sample_id="S")


def test_probe_errors_name_the_file_and_sample(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5ad"
    with pytest.raises(InputError, match="not found") as err:
        probe_sample(missing, sample_id="S1")
    assert err.value.sample == "S1" and str(missing) in str(err.value)
    corrupt = tmp_path / "bad.h5ad"
    corrupt.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="bad.h5ad"):
        probe_sample(corrupt, sample_id="S2")
    _h5ad(tmp_path / "typed.h5ad", ["CD3", "CD4"], feature_types=["Antibody Capture"] * 2)
    with pytest.raises(InputError, match="modality is 'rna' but the file holds prot") as err:
        probe_sample(tmp_path / "typed.h5ad", modality="rna", sample_id="S3")
    assert err.value.column == "modality" and err.value.sample == "S3"
    adt_only = tmp_path / "adt.h5"
    write_10x_h5(adt_only, _counts(0, (12, 2)), BARCODES, FEATURES.iloc[4:6])
    with pytest.raises(InputError, match="no Gene Expression"):
        probe_sample(adt_only, sample_id="S4")
    assert list(probe_sample(adt_only, modality="prot").modalities) == ["prot"]

    sheet = pd.DataFrame(
        {"donor_id": ["D1", "D2", "D3"], "path": [str(missing), str(corrupt), str(adt_only)]},
        index=pd.Index(["A", "B", "C"], name="sample_id"),
    )
    with pytest.raises(InputError, match="3 problems") as err:
        probe_samples(sheet)
    assert [p.sample for p in err.value.problems] == ["A", "B", "C"]
    assert list(probe_samples(sheet.iloc[[2]].assign(modality="prot"))) == ["C"]


# ------------------------------------------------------------------ real files


def test_probe_of_real_files() -> None:
    assert_probe_is_reader(_need(ECCITE / "eccite_control_500.h5mu"))
    probe = assert_probe_is_reader(ECCITE / "mtx")
    assert set(probe.modalities) == {"rna", "prot", "hto"}
    assert probe.modalities["rna"].features[0] == "AL627309.1"  # hg19_ prefix removed
    probe = assert_probe_is_reader(_need(DSB / "cells_citeseq_mtx.h5ad"))
    assert list(probe.modalities) == ["prot"] and "(rule: < 50 % genes" in probe.rule


@pytest.fixture(scope="module")
def real_cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from real_cohorts import VARIANTS, eccite_cohort, kotliarov_cohort

    _need(ECCITE / "eccite_control_500.h5mu")
    _need(KOTLIAROV)
    root = tmp_path_factory.mktemp("real_cohorts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = {v: eccite_cohort(root / v, v).parent for v in VARIANTS}
        built["kot"] = kotliarov_cohort(root / "kot", cells_per_donor=40).parent
    return built


def test_probe_is_the_reader_on_real_cohorts(real_cohorts: dict[str, Path]) -> None:
    for name, folder in real_cohorts.items():
        sheet = SampleSheet.from_csv(folder / "samples.csv")
        probes = probe_samples(sheet)
        for sample in sheet.sample_ids[:2]:
            assert_probe_is_reader(sheet.table.at[sample, "path"])
        table = probe_table(probes)
        assert list(table["sample_id"]) == list(sheet.sample_ids), name
    ensembl = probe_samples(SampleSheet.from_csv(real_cohorts["ensembl"] / "samples.csv"))
    rna = ensembl["S1"].modalities["rna"]
    assert rna.id_kind == "ensembl" and rna.n_features == 19521
    assert rna.n_mapped > 0.7 * rna.n_features  # hg19-era clone names (AL627309.1) do not map
    kot = probe_samples(SampleSheet.from_csv(real_cohorts["kot"] / "samples.csv"))
    assert {p.rule for p in kot.values()} == {"prot: var['feature_types']"}
    assert {p.modalities["prot"].n_features for p in kot.values()} == {9}


def test_cli_validate_prints_each_sample(real_cohorts: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["validate", str(real_cohorts["panel"] / "sccohort.toml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "count files" in text and "rna 1,000" in text and "Ensembl" in text
    kot = real_cohorts["kot"]
    result = CliRunner().invoke(app, ["validate", str(kot / "sccohort.toml")])
    assert result.exit_code == 0, result.output
    assert "prot 9" in result.output and "var['feature_types']" in result.output
    sheet = pd.read_csv(kot / "samples.csv").assign(modality="rna")  # feature types say prot
    sheet.to_csv(kot / "forced.csv", index=False)
    config = (kot / "sccohort.toml").read_text().replace('"samples.csv"', '"forced.csv"')
    (kot / "forced.toml").write_text(config)
    result = CliRunner().invoke(app, ["validate", str(kot / "forced.toml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "20 problems" in text and "modality is 'rna' but the file holds prot" in text

"""Readers: Cell Ranger h5/MTX, per-modality MTX, h5ad/h5mu, BD Rhapsody csv, sample sheets."""

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

from sccohort.errors import InputError
from sccohort.io.features import (
    ensembl_gene_id,
    gene_ids_of,
    gene_table,
    gene_var,
    make_unique,
    plan_from_names,
    strip_genome_prefix,
)
from sccohort.io.formats import detect_format
from sccohort.io.h5 import looks_like_proteins
from sccohort.io.protein_names import is_isotype, protein_alias
from sccohort.io.read import read_raw_droplets, read_sample, read_samples
from sccohort.io.stack import stack_rows
from sccohort.io.tenx import write_10x_h5

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ECCITE = DATA / "eccite_pbmc"
DSB = DATA / "dsb_pbmc_adt"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (shared/data is absent here)")
    return path


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


# ------------------------------------------------------------------ names


def test_genome_prefixes_and_unique_names() -> None:
    assert strip_genome_prefix("hg19_CD3E") == "CD3E"
    assert strip_genome_prefix("GRCh38_MT-CO1") == "MT-CO1"
    assert strip_genome_prefix("GRCh38-CD4") == "CD4"
    assert strip_genome_prefix("mm10___Cd8a") == "Cd8a"
    assert strip_genome_prefix("hg19-IL7R") == "IL7R"
    assert strip_genome_prefix("HGF") == "HGF"  # a gene, not a prefix
    assert strip_genome_prefix("hg19_") == "hg19_"  # nothing left: keep it
    assert make_unique(["A", "A", "B", "A"]) == ["A", "A-1", "B", "A-2"]
    assert make_unique(["A", "A", "A-1"]) == ["A", "A-2", "A-1"]


def test_protein_aliases_of_spec_examples() -> None:
    assert protein_alias("MHCII (HLA-DR)") == "HLA-DR"
    assert protein_alias("IL7Ralpha (CD127)") == "CD127"
    assert protein_alias("CD3_TotalSeqB") == "CD3"
    assert protein_alias("CD3-TotalSeqC") == "CD3"
    assert protein_alias("CD14_PROT") == "CD14"
    assert protein_alias("CD4:RPA-T4|CD4|AHS0032|pAbO") == "CD4"
    assert protein_alias("Mouse IgG1 isotype") == "Mouse IgG1 isotype"
    assert is_isotype("Mouse IgG1 isotype")
    assert not is_isotype("IgM_PROT")  # anti-human IgM, a B-cell marker
    assert not is_isotype("CD4")


ECCITE_ALIASES = {
    "B220 (CD45R)": "CD45R", "B7-H1 (PD-L1)": "CD274", "C-kit (CD117)": "CD117",
    "CCR7": "CD197", "CD11b": "CD11b", "CD11c": "CD11c", "CD138": "CD138", "CD14": "CD14",
    "CD16": "CD16", "CD19": "CD19", "CD1a": "CD1a", "CD2": "CD2", "CD223 (lag3)": "CD223",
    "CD24": "CD24", "CD26 (Adenosine)": "CD26", "CD27": "CD27", "CD28": "CD28", "CD3": "CD3",
    "CD34": "CD34", "CD366 (tim3)": "CD366", "CD4": "CD4", "CD44": "CD44", "CD45": "CD45",
    "CD45RA": "CD45RA", "CD45RO": "CD45RO", "CD5": "CD5", "CD56": "CD56", "CD62L": "CD62L",
    "CD66b": "CD66b", "CD69": "CD69", "CD7": "CD7", "CD77": "CD77", "CD8": "CD8",
    "CTLA4": "CD152", "EpCAM (CD326)": "CD326", "HLA-A,B,C": "HLA-ABC",
    "IL7Ralpha (CD127)": "CD127", "IgG1": "IgG1", "IgG2a": "IgG2a", "LAMP1": "CD107a",
    "MHCII (HLA-DR)": "HLA-DR", "Ox40 (CD134)": "CD134", "PD-1 (CD279)": "CD279",
    "PD-L1 (CD274)": "CD274", "PD1 (CD279)": "CD279", "PECAM (CD31)": "CD31",
    "Siglec-8": "Siglec-8", "TCRb": "TCRb", "TCRg": "TCRg",
}  # fmt: skip


# ------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def eccite_mtx() -> md.MuData:
    return read_sample(_need(ECCITE / "mtx"), "ctrl")


@pytest.fixture(scope="module")
def eccite_h5mu() -> md.MuData:
    return read_sample(_need(ECCITE / "eccite_control_500.h5mu"), "ctrl")


def _mtx_source(stem: str) -> tuple[np.ndarray, list[str], list[str]]:
    folder = ECCITE / "mtx"
    with gzip.open(folder / f"{stem}.mtx.gz") as fh:
        matrix = sp.csr_matrix(scipy.io.mmread(fh).T)  # R writes features x cells
    barcodes = pd.read_csv(folder / f"{stem}_barcodes.tsv.gz", header=None)[0].tolist()
    names = pd.read_csv(folder / f"{stem}_features.tsv.gz", header=None, sep="\t")[0].tolist()
    return matrix, barcodes, names


def test_eccite_mtx_folder(eccite_mtx: md.MuData) -> None:
    assert set(eccite_mtx.mod) == {"rna", "prot", "hto"}
    rna, prot = eccite_mtx["rna"], eccite_mtx["prot"]
    assert not any(v.startswith("hg19") for v in rna.var_names)
    assert rna.var["feature_name_raw"].str.startswith("hg19_").all()
    assert rna.var_names.is_unique
    assert prot.n_vars == 49
    assert dict(zip(prot.var_names, prot.var["alias"], strict=True)) == ECCITE_ALIASES
    assert sorted(prot.var_names[prot.var["isotype"]]) == ["IgG1", "IgG2a"]
    for stem, modality in (("RNA", "rna"), ("ADT", "prot"), ("HTO", "hto")):
        source, barcodes, names = _mtx_source(stem)
        adata = eccite_mtx[modality]
        assert list(adata.obs_names) == [f"ctrl:{b}" for b in barcodes]
        assert list(adata.var["feature_name_raw"]) == names
        counts = adata.layers["counts"]
        assert counts.dtype == np.int32 and sp.isspmatrix_csr(counts)
        assert (counts != source).nnz == 0
        assert adata.X.dtype == np.float32 and (adata.X != counts).nnz == 0
    assert list(eccite_mtx.obs["barcode"][:2]) == barcodes[:2]
    assert (eccite_mtx.obs["sample_id"] == "ctrl").all()


def test_eccite_h5mu(eccite_h5mu: md.MuData) -> None:
    with md.set_options(pull_on_update=False):
        source = md.read_h5mu(ECCITE / "eccite_control_500.h5mu")
    assert eccite_h5mu["prot"].n_vars == 49
    assert not any(v.startswith("hg19_") for v in eccite_h5mu["rna"].var_names)
    for modality in ("rna", "prot", "hto"):
        got, src = eccite_h5mu[modality], source[modality]
        assert list(got.obs_names) == [f"ctrl:{b}" for b in src.obs_names]
        assert (got.layers["counts"] != sp.csr_matrix(src.X)).nnz == 0
        data = got.layers["counts"].data
        assert np.array_equal(data, np.round(data)) and data.min() > 0


def test_mtx_and_h5mu_forms_are_the_same_cells_and_counts(
    eccite_mtx: md.MuData, eccite_h5mu: md.MuData
) -> None:
    # first: the same cells (same barcodes, same order) and the same features
    assert list(eccite_mtx.obs_names) == list(eccite_h5mu.obs_names)
    for modality in ("rna", "prot", "hto"):
        a, b = eccite_mtx[modality], eccite_h5mu[modality]
        assert list(a.var_names) == list(b.var_names)
        assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
        assert a.layers["counts"].sum() > 0


def test_dsb_h5ad_is_a_protein_only_sample() -> None:
    path = _need(DSB / "cells_citeseq_mtx.h5ad")
    mdata = read_sample(path, "dsb", format="h5ad")
    assert set(mdata.mod) == {"prot"}
    prot = mdata["prot"]
    assert prot.n_vars == 87
    assert sorted(prot.var_names[prot.var["isotype"]]) == sorted(
        [
            "MouseIgG1kappaisotype_PROT",
            "MouseIgG2akappaisotype_PROT",
            "Mouse IgG2bkIsotype_PROT",
            "RatIgG2bkIsotype_PROT",
        ]
    )
    aliases = dict(zip(prot.var_names, prot.var["alias"], strict=True))
    assert aliases["CD3_PROT"] == "CD3" and aliases["HLA-DR_PROT"] == "HLA-DR"
    assert aliases["CD278 _PROT"] == "CD278" and aliases["IgM_PROT"] == "IgM"
    assert not any(a.endswith(("_PROT", " ")) for a in aliases.values())
    source = ad.read_h5ad(path)
    assert (prot.layers["counts"] != sp.csr_matrix(source.X)).nnz == 0
    assert list(prot.obs["lane"]) == list(source.obs["lane"])
    droplets = read_raw_droplets(
        _need(DSB / "empty_drop_citeseq_mtx.h5ad"), mdata.obs_names, "dsb", min_counts=0
    )
    assert isinstance(droplets, ad.AnnData) and droplets.n_obs == 8005
    assert not set(droplets.obs["barcode"]) & set(mdata.obs["barcode"])


# ------------------------------------------------------------------ synthetic Cell Ranger


GENES = pd.DataFrame(
    {
        "id": ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "ENSG05", "ENSG06"],
        "name": ["GRCh38_CD3E", "MS4A1", "TBCE", "TBCE", "MT-CO1", "GRCh38_TBCE"],
        "feature_type": "Gene Expression",
    }
)
ANTIBODIES = pd.DataFrame(
    {
        "id": ["CD3", "CD19", "ISO"],
        "name": ["CD3_TotalSeqB", "CD19_TotalSeqB", "Mouse IgG1 isotype"],
        "feature_type": "Antibody Capture",
    }
)
HASHTAGS = pd.DataFrame(
    {"id": ["H1", "H2"], "name": ["HTO_1", "HTO_2"], "feature_type": "Multiplexing Capture"}
)


def _write_sample(
    folder: Path, seed: int, n_cells: int, features: pd.DataFrame | None = None
) -> tuple[Path, sp.csr_matrix, list[str], pd.DataFrame]:
    features = features if features is not None else pd.concat([GENES, ANTIBODIES, HASHTAGS])
    features = features.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(1.5, size=(n_cells, len(features))).astype(np.int64))
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_cells)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, counts, barcodes, features)
    return path, counts, barcodes, features


def _cols(features: pd.DataFrame, feature_type: str) -> np.ndarray:
    return np.flatnonzero(features["feature_type"].to_numpy() == feature_type)


def test_10x_h5_round_trip(tmp_path: Path) -> None:
    path, counts, barcodes, features = _write_sample(tmp_path / "s1" / "outs", 1, 40)
    assert detect_format(tmp_path / "s1") == ("10x_h5", path)
    mdata = read_sample(tmp_path / "s1", "S1")  # the run folder: its outs/ filtered h5
    assert list(mdata.obs_names) == [f"S1:{b}" for b in barcodes]
    assert list(mdata.obs["barcode"]) == barcodes
    rna = mdata["rna"]
    assert list(rna.var_names) == ["CD3E", "MS4A1", "TBCE", "TBCE-1", "MT-CO1", "TBCE-2"]
    assert list(rna.var["feature_name_raw"]) == list(GENES["name"])
    assert list(rna.var["gene_ids"]) == list(GENES["id"])
    for modality, ftype in (
        ("rna", "Gene Expression"),
        ("prot", "Antibody Capture"),
        ("hto", "Multiplexing Capture"),
    ):
        expected = counts[:, _cols(features, ftype)]
        assert (mdata[modality].layers["counts"] != expected).nnz == 0
        assert list(mdata[modality].obs_names) == list(mdata.obs_names)
    prot = mdata["prot"]
    assert list(prot.var_names) == list(ANTIBODIES["name"])
    assert list(prot.var["alias"]) == ["CD3", "CD19", "Mouse IgG1 isotype"]
    assert list(prot.var["isotype"]) == [False, False, True]


def _write_cellranger_mtx(
    folder: Path, counts: sp.csr_matrix, barcodes: list[str], features: pd.DataFrame, v2=False
) -> None:
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(counts.T), field="integer")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in barcodes))
    if v2:
        with open(folder / "genes.tsv", "w") as fh:
            pairs = zip(features["id"], features["name"], strict=True)
            fh.write("".join(f"{i}\t{n}\n" for i, n in pairs))
    else:
        table = features[["id", "name", "feature_type"]]
        with gzip.open(folder / "features.tsv.gz", "wt") as fh:
            table.to_csv(fh, sep="\t", header=False, index=False)


def test_cellranger_mtx_folder_reads_like_the_h5(tmp_path: Path) -> None:
    path, counts, barcodes, features = _write_sample(tmp_path / "h5", 2, 30)
    mtx_dir = tmp_path / "run" / "outs" / "filtered_feature_bc_matrix"
    _write_cellranger_mtx(mtx_dir, counts, barcodes, features)
    assert detect_format(tmp_path / "run") == ("10x_mtx", mtx_dir)
    from_h5 = read_sample(path, "A")
    from_mtx = read_sample(tmp_path / "run", "A")
    assert set(from_mtx.mod) == set(from_h5.mod) == {"rna", "prot", "hto"}
    for modality in from_h5.mod:
        a, b = from_h5[modality], from_mtx[modality]
        assert list(a.obs_names) == list(b.obs_names)
        pd.testing.assert_frame_equal(a.var, b.var)
        assert (a.layers["counts"] != b.layers["counts"]).nnz == 0

    # Cell Ranger 2: genes.tsv (id, name), all Gene Expression
    genes = features.iloc[_cols(features, "Gene Expression")]
    _write_cellranger_mtx(
        tmp_path / "v2" / "GRCh38", counts[:, genes.index], barcodes, genes, v2=True
    )
    v2 = read_sample(tmp_path / "v2", "A")
    assert set(v2.mod) == {"rna"}
    assert list(v2["rna"].var_names) == list(from_h5["rna"].var_names)
    assert (v2["rna"].layers["counts"] != from_h5["rna"].layers["counts"]).nnz == 0


def test_per_modality_mtx_keeps_cells_present_in_every_modality(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rna = sp.random(5, 6, density=0.6, format="csr", random_state=rng, dtype=np.float64)
    rna.data = np.ceil(rna.data * 9)
    adt = sp.csr_matrix(rng.poisson(3, size=(2, 4)).astype(float))
    for stem, matrix, cells, names in (
        ("RNA", rna, ["c1", "c2", "c3", "c4", "c5", "c6"], [f"hg19_G{i}" for i in range(5)]),
        ("ADT", adt, ["c2", "c9", "c1", "c6"], ["CD3", "CD4"]),
    ):
        with gzip.open(tmp_path / f"{stem}.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(fh, matrix, field="integer")
        for suffix, lines in (("barcodes", cells), ("features", names)):
            with gzip.open(tmp_path / f"{stem}_{suffix}.tsv.gz", "wt") as fh:
                fh.write("".join(f"{x}\n" for x in lines))
    with pytest.warns(UserWarning, match="present in every modality"):
        mdata = read_sample(tmp_path, "P")
    assert list(mdata.obs_names) == ["P:c1", "P:c2", "P:c6"]  # RNA order, intersected
    assert list(mdata["rna"].var_names) == [f"G{i}" for i in range(5)]
    expected_rna = rna.T.tocsr()[[0, 1, 5]]
    assert (mdata["rna"].layers["counts"] != expected_rna).nnz == 0
    expected_adt = adt.T.tocsr()[[2, 0, 3]]  # c1, c2, c6 in the ADT file's columns
    assert (mdata["prot"].layers["counts"] != expected_adt).nnz == 0


def test_rhapsody_csv(tmp_path: Path) -> None:
    path = tmp_path / "Kidney_DBEC_MolsPerCell.csv"
    path.write_text(
        "##########################################################\n"
        "## BD Targeted Multiplex Rhapsody Analysis Pipeline Version 1.11\n"
        "## Analysis Date - 2023-03-01\n"
        "##########################################################\n"
        "Cell_Index,CD3:UCHT1|CD3E|AHS0231|pAbO,HLA-DR:G46-6|HLA-DRA|AHS0035|pAbO,"
        "CD3E,CD14,EGR1,THBS1\n"
        "8412,12,0,3,0,1,0\n"
        "77001,0,40,0,5,7,2\n"
        "912550,3,2,1,0,0,0\n"
    )
    assert detect_format(tmp_path) == ("rhapsody_csv", path)
    mdata = read_sample(path, "kidney")
    assert list(mdata.obs_names) == ["kidney:8412", "kidney:77001", "kidney:912550"]
    assert list(mdata["rna"].var_names) == ["CD3E", "CD14", "EGR1", "THBS1"]
    assert list(mdata["prot"].var["alias"]) == ["CD3", "HLA-DR"]
    assert _dense(mdata["prot"].layers["counts"]).tolist() == [[12, 0], [0, 40], [3, 2]]
    assert _dense(mdata["rna"].layers["counts"]).tolist() == [
        [3, 0, 1, 0],
        [0, 5, 7, 2],
        [1, 0, 0, 0],
    ]
    bad = tmp_path / "bad_RSEC_MolsPerCell.csv"
    bad.write_text("## comment\nCell_Index,CD3E,EGR1\n1,2,3\n2,1.5,0\n")
    with pytest.raises(InputError) as err:
        read_sample(bad, "kidney")
    assert err.value.row == 4 and err.value.column == "CD3E" and err.value.sample == "kidney"


def test_raw_droplets_exclude_the_filtered_barcodes(tmp_path: Path) -> None:
    features = pd.concat([GENES, ANTIBODIES]).reset_index(drop=True)
    filtered_path, counts, barcodes, _ = _write_sample(tmp_path / "f", 4, 20, features)
    rng = np.random.default_rng(5)
    dense = rng.poisson(0.3, size=(60, len(features))).astype(np.int64)
    dense[:5] = 0  # droplets with nothing at all
    empty = sp.csr_matrix(dense)
    empty_barcodes = [f"EMPTY{i:03d}-1" for i in range(60)]
    raw_dir = tmp_path / "run" / "outs"
    raw_dir.mkdir(parents=True)
    write_10x_h5(
        raw_dir / "raw_feature_bc_matrix.h5",
        sp.vstack([empty[:30], counts, empty[30:]]),
        empty_barcodes[:30] + barcodes + empty_barcodes[30:],
        features,
    )
    cells = read_sample(filtered_path, "R")
    droplets = read_raw_droplets(tmp_path / "run", cells.obs_names, "R")
    assert isinstance(droplets, ad.AnnData)
    assert not set(droplets.obs["barcode"]) & set(barcodes)
    prot_cols = _cols(features, "Antibody Capture")
    has_protein = np.asarray(empty[:, prot_cols].sum(axis=1)).ravel() >= 1
    expected = [f"R:{b}" for b, keep in zip(empty_barcodes, has_protein, strict=True) if keep]
    assert list(droplets.obs_names) == expected
    assert (droplets.layers["counts"] != empty[has_protein][:, prot_cols]).nnz == 0
    everything = read_raw_droplets(
        raw_dir / "raw_feature_bc_matrix.h5", barcodes, "R", modalities=("rna", "prot"),
        min_counts=0,
    )  # fmt: skip
    assert isinstance(everything, md.MuData) and everything.n_obs == 60


# ------------------------------------------------------------------ cohorts


def _cohort(tmp_path: Path, n: int = 3):
    rows, truth = [], {}
    for i in range(n):
        sid = f"S{i + 1}"
        path, counts, barcodes, features = _write_sample(tmp_path / sid, 10 + i, 15 + 5 * i)
        rows.append({"sample_id": sid, "donor_id": f"D{i // 2 + 1}", "path": str(path)})
        truth[sid] = (counts, barcodes, features)
    return pd.DataFrame(rows).set_index("sample_id"), truth


def test_read_samples_concatenates_in_sheet_order(tmp_path: Path) -> None:
    sheet, truth = _cohort(tmp_path)
    sheet = sheet.iloc[[2, 0, 1]].assign(batch=["b2", "b1", "b1"], tissue="blood")
    calls = []
    mdata = read_samples(sheet, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3) and [c[0] for c in calls] == [1, 2, 3]
    expected_ids = [f"{s}:{b}" for s in sheet.index for b in truth[s][1]]
    assert list(mdata.obs_names) == expected_ids
    for modality, ftype in (
        ("rna", "Gene Expression"),
        ("prot", "Antibody Capture"),
        ("hto", "Multiplexing Capture"),
    ):
        stacked = sp.vstack([truth[s][0][:, _cols(truth[s][2], ftype)] for s in sheet.index])
        assert list(mdata[modality].obs_names) == expected_ids
        assert (mdata[modality].layers["counts"] != stacked).nnz == 0
        assert mdata[modality].layers["counts"].dtype == np.int32
    obs = mdata.obs
    for column in ("sample_id", "donor_id", "batch", "timepoint", "tissue"):
        assert isinstance(obs[column].dtype, pd.CategoricalDtype), column
    assert list(obs["sample_id"].cat.categories) == ["S3", "S1", "S2"]
    assert obs.loc[obs["sample_id"] == "S3", "donor_id"].eq("D2").all()
    assert obs.loc[obs["sample_id"] == "S2", "donor_id"].eq("D1").all()
    assert obs.loc[obs["sample_id"] == "S3", "batch"].eq("b2").all()
    assert obs["timepoint"].isna().all() and obs["tissue"].eq("blood").all()
    assert list(mdata["rna"].var_names) == ["CD3E", "MS4A1", "TBCE", "TBCE-1", "MT-CO1", "TBCE-2"]

    single = read_sample(sheet.at["S1", "path"], "S1")
    sub = mdata["rna"][mdata.obs["sample_id"] == "S1"]
    assert list(sub.obs_names) == list(single.obs_names)
    assert (sub.layers["counts"] != single["rna"].layers["counts"]).nnz == 0


def test_stack_rows_equals_anndata_concat_and_releases_the_parts() -> None:
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(40)]
    parts = []
    for i, n in enumerate([30, 0, 55, 12]):
        order = rng.permutation(len(genes)) if i == 2 else np.arange(len(genes))
        counts = sp.random(n, len(genes), density=0.2, format="csr", random_state=i) * 9
        counts = sp.csr_matrix(counts.astype(np.int32))
        part = ad.AnnData(
            X=counts.astype(np.float32),
            obs=pd.DataFrame(
                {
                    "barcode": [f"b{j}" for j in range(n)],
                    "lane": pd.Categorical([f"L{i}"] * n),
                },
                index=[f"s{i}:{j}" for j in range(n)],
            ),
            var=pd.DataFrame({"gene_ids": [f"id_{g}" for g in genes]}, index=genes).iloc[order],
        )
        part.layers["counts"] = counts[:, order] if i == 2 else counts
        part.X = part.layers["counts"].astype(np.float32)
        part.layers["dense"] = part.layers["counts"].toarray().astype(np.float64)
        parts.append(part)
    reference = pd.Index(genes[5:] + genes[:5])
    expected = ad.concat([p[:, reference] for p in parts], join="inner", merge="first")
    stacked = stack_rows(parts, reference)
    assert all(p is None for p in parts)
    assert stacked.obs_names.equals(expected.obs_names)
    assert stacked.var_names.equals(reference)
    pd.testing.assert_frame_equal(stacked.obs, expected.obs)
    pd.testing.assert_series_equal(stacked.var["gene_ids"], expected.var["gene_ids"])
    for key in (None, "counts"):
        got = stacked.X if key is None else stacked.layers[key]
        want = expected.X if key is None else expected.layers[key]
        assert got.format == "csr" and got.has_canonical_format and got.dtype == want.dtype
        assert (got != want).nnz == 0
    np.testing.assert_array_equal(stacked.layers["dense"], expected.layers["dense"])


def test_read_samples_on_a_distributed_client(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    sheet, truth = _cohort(tmp_path, n=2)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2) as client:
        mdata = read_samples(sheet, scheduler=client)
    assert mdata.n_obs == sum(len(t[1]) for t in truth.values())
    assert list(mdata.obs["sample_id"].cat.categories) == ["S1", "S2"]


def test_differing_protein_panels_keep_the_intersection(tmp_path: Path) -> None:
    sheet, _ = _cohort(tmp_path, n=1)
    fewer = pd.concat([GENES, ANTIBODIES.iloc[:2]])
    path, *_ = _write_sample(tmp_path / "S9", 9, 10, fewer)
    sheet.loc["S9"] = {"donor_id": "D9", "path": str(path)}
    with pytest.warns(UserWarning) as record:
        mdata = read_samples(sheet)
    messages = [str(w.message) for w in record]
    assert any("dropped 'S1': Mouse IgG1 isotype" in m for m in messages)
    assert any("S9 have no hashtags" in m for m in messages)
    assert list(mdata["prot"].var_names) == ["CD3_TotalSeqB", "CD19_TotalSeqB"]
    assert "hto" not in mdata.mod  # S9 has no hashtags


# ------------------------------------------------------------------ errors


def test_missing_and_corrupt_files_raise_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "filtered_feature_bc_matrix.h5"
    with pytest.raises(InputError, match="not found") as err:
        read_sample(missing, "S1")
    assert str(missing) in str(err.value) and "sample 'S1'" in str(err.value)

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 10)
    with pytest.raises(InputError) as err:
        read_sample(corrupt, "S2")
    assert str(corrupt) in str(err.value) and "sample 'S2'" in str(err.value)

    path, *_ = _write_sample(tmp_path / "ok", 1, 10)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.h5"):
        read_sample(truncated, "S3")

    not_10x = tmp_path / "other.h5"
    with h5py.File(not_10x, "w") as fh:
        fh["x"] = np.arange(3)
    with pytest.raises(InputError, match="other.h5.*Cell Ranger"):
        read_sample(not_10x, "S4")

    mtx = tmp_path / "mtx"
    mtx.mkdir()
    (mtx / "matrix.mtx.gz").write_bytes(b"not gzip at all")
    (mtx / "features.tsv.gz").write_bytes(gzip.compress(b"G1\tG1\tGene Expression\n"))
    (mtx / "barcodes.tsv.gz").write_bytes(gzip.compress(b"AAAC-1\n"))
    with pytest.raises(InputError, match="matrix.mtx.gz") as err:
        read_sample(mtx, "S5")
    assert err.value.sample == "S5"

    normalised = tmp_path / "norm.h5ad"
    ad.AnnData(np.full((3, 2), 0.5, dtype=np.float32)).write_h5ad(normalised)
    with pytest.raises(InputError, match="no raw integer counts"):
        read_sample(normalised, "S6")

    with pytest.raises(InputError, match="unrecognised file type"):
        read_sample(_touch(tmp_path / "counts.xlsx"), "S7")


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def test_h5_without_gene_expression(tmp_path: Path) -> None:
    path, *_ = _write_sample(tmp_path, 1, 10, ANTIBODIES)
    with pytest.raises(InputError, match="no Gene Expression") as err:
        read_sample(path, "ADTonly")
    assert err.value.sample == "ADTonly" and err.value.file == str(path)


def test_gene_sets_differing_between_samples(tmp_path: Path) -> None:
    sheet, _ = _cohort(tmp_path, n=2)
    other = GENES.assign(name=GENES["name"].where(GENES["name"] != "MS4A1", "CD19"))
    path, *_ = _write_sample(tmp_path / "S3", 3, 10, pd.concat([other, ANTIBODIES, HASHTAGS]))
    sheet.loc["S3"] = {"donor_id": "D3", "path": str(path)}
    with pytest.raises(InputError) as err:
        read_samples(sheet)
    message = str(err.value)
    assert err.value.sample == "S3" and str(path) in message
    assert "CD19" in message and "MS4A1" in message and "reference" in message


def test_the_odd_gene_list_is_blamed_even_when_it_comes_first(tmp_path: Path) -> None:
    sheet, _ = _cohort(tmp_path / "good", n=2)
    other = GENES.assign(name=GENES["name"].where(GENES["name"] != "MS4A1", "CD19"))
    path, *_ = _write_sample(tmp_path / "S0", 3, 10, pd.concat([other, ANTIBODIES, HASHTAGS]))
    first = pd.DataFrame({"donor_id": ["D0"], "path": [str(path)]}, index=["S0"])
    sheet = pd.concat([first, sheet])
    with pytest.raises(InputError, match="2 other sample") as err:
        read_samples(sheet)
    assert err.value.sample == "S0" and str(path) in str(err.value)
    assert "only here CD19; missing here MS4A1" in str(err.value)


def test_a_sample_without_cells_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    features = pd.concat([GENES, ANTIBODIES]).reset_index(drop=True)
    write_10x_h5(path, sp.csr_matrix((0, len(features))), [], features)
    with pytest.raises(InputError, match="no cells") as err:
        read_sample(path, "S0")
    assert err.value.sample == "S0" and "share no barcode" not in str(err.value)


def test_readers_refuse_a_named_pipe_unopened(tmp_path: Path) -> None:
    fifo = tmp_path / "counts.h5"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(InputError, match="named pipe") as err:
        read_sample(fifo, "S1")
    assert err.value.sample == "S1"
    with no_hang(), pytest.raises(InputError, match="named pipe"):
        read_sample(fifo, "S1", format="h5ad")


def test_sample_without_protein(tmp_path: Path) -> None:
    sheet, _ = _cohort(tmp_path, n=2)
    path, *_ = _write_sample(tmp_path / "S3", 3, 10, GENES)
    sheet.loc["S3"] = {"donor_id": "D3", "path": str(path)}
    with pytest.raises(InputError, match="no protein") as err:
        read_samples(sheet)
    assert err.value.sample == "S3"


def test_sheet_errors(tmp_path: Path) -> None:
    sheet, _ = _cohort(tmp_path, n=1)
    with pytest.raises(InputError, match="donor_id"):
        read_samples(sheet.drop(columns="donor_id"))
    with pytest.raises(InputError, match="must not contain ':'"):
        read_samples(sheet.rename(index={"S1": "a:b"}))
    with pytest.raises(InputError, match="unknown format 'cellranger'"):
        read_samples(sheet.assign(format="cellranger"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid one-sample sheet reads without warnings
        assert read_samples(sheet.assign(format="10x_h5")).n_obs == 15


# ------------------------------------------------------------------ h5ad / h5mu layouts


def _small_counts(seed: int, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(seed).poisson(2.0, size=shape).astype(np.float32))


def test_h5mu_with_other_modality_names(tmp_path: Path) -> None:
    cells = [f"C{i}" for i in range(6)]
    rna_counts, adt_counts = _small_counts(1, (6, 4)), _small_counts(2, (5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the duplicate CD14 is on purpose
        rna = ad.AnnData(
            X=sp.csr_matrix(np.log1p(rna_counts.toarray()) + 0.1),  # normalised .X
            obs=pd.DataFrame(index=cells),
            var=pd.DataFrame(index=["GRCh38-CD3E", "CD14", "CD14", "EGR1"]),
            layers={"counts": rna_counts},
        )
    adt = ad.AnnData(
        X=adt_counts,
        obs=pd.DataFrame(index=cells[::-1][:5]),
        var=pd.DataFrame(index=["CD3", "IgG1"]),
    )
    other = ad.AnnData(X=np.ones((6, 1)), obs=pd.DataFrame(index=cells))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md.MuData({"RNA": rna, "ADT": adt, "atac": other}).write(tmp_path / "s.h5mu")
    with pytest.warns(UserWarning) as record:
        mdata = read_sample(tmp_path / "s.h5mu", "M")
    messages = " ".join(str(w.message) for w in record)
    assert "'atac'" in messages and "present in every modality" in messages
    assert set(mdata.mod) == {"rna", "prot"}
    assert list(mdata.obs_names) == [f"M:C{i}" for i in range(1, 6)]  # C0 has no ADT
    assert list(mdata["rna"].var_names) == ["CD3E", "CD14", "CD14-1", "EGR1"]
    assert (mdata["rna"].layers["counts"] != rna_counts[1:]).nnz == 0  # the counts layer
    expected_adt = adt_counts[[4, 3, 2, 1, 0]]  # ADT cells were stored C5..C1
    assert (mdata["prot"].layers["counts"] != expected_adt).nnz == 0
    assert list(mdata["prot"].var["isotype"]) == [False, True]


def test_h5ad_feature_types_and_obsm_proteins(tmp_path: Path) -> None:
    counts = _small_counts(3, (4, 5))
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * 3 + ["Antibody Capture"] * 2,
         "gene_ids": ["E1", "E2", "E3", "CD3", "CD4"]},
        index=["hg19_CD3E", "LYZ", "MS4A1", "CD3_TotalSeqA", "CD4_TotalSeqA"],
    )  # fmt: skip
    ad.AnnData(X=counts, obs=pd.DataFrame(index=list("abcd")), var=var).write_h5ad(
        tmp_path / "typed.h5ad"
    )
    typed = read_sample(tmp_path / "typed.h5ad", "T")
    assert list(typed["rna"].var_names) == ["CD3E", "LYZ", "MS4A1"]
    assert list(typed["rna"].var["gene_ids"]) == ["E1", "E2", "E3"]
    assert list(typed["prot"].var["alias"]) == ["CD3", "CD4"]
    assert (typed["prot"].layers["counts"] != counts[:, 3:]).nnz == 0

    genes = pd.read_csv(
        Path(__file__).resolve().parents[1] / "src/sccohort/resources/genes_human.tsv.gz",
        sep="\t",
        nrows=40,
    )["symbol"]
    rna_counts = _small_counts(4, (4, 40))
    proteins = pd.DataFrame(np.arange(8).reshape(4, 2), index=list("abcd"), columns=["CD3", "CD19"])
    adata = ad.AnnData(
        X=rna_counts, obs=pd.DataFrame(index=list("abcd")), var=pd.DataFrame(index=genes)
    )
    adata.obsm["protein_expression"] = proteins
    adata.write_h5ad(tmp_path / "scvi.h5ad")
    scvi = read_sample(tmp_path / "scvi.h5ad", "V")
    assert scvi["rna"].n_vars == 40  # 40 known gene symbols: RNA, not an antibody panel
    assert _dense(scvi["prot"].layers["counts"]).tolist() == proteins.to_numpy().tolist()


# ------------------------------------------------------------------ gene ids, modality rule


def _gene_ids(symbols: list[str]) -> list[str]:
    table = gene_table().set_index("symbol")["gene_id"]
    return [table[s] for s in symbols]


def test_ensembl_ids_map_to_symbols_with_or_without_versions() -> None:
    ids = _gene_ids(["CD3E", "CD14", "MT-CO1", "MALAT1"])
    names = [ids[0], f"{ids[1]}.12", f"GRCh38_{ids[2]}.3", ids[3], "ENSG99999999999.1"]
    names += ["ENSMUSG00000000001.4", "CD3E", "LYZ"]
    var = gene_var(names)
    assert list(var.index) == [
        "CD3E", "CD14", "MT-CO1", "MALAT1", "ENSG99999999999", "ENSMUSG00000000001",
        "CD3E-1", "LYZ",
    ]  # fmt: skip
    assert list(var["feature_name_raw"]) == names
    assert list(var["gene_ids"][:2]) == [ids[0], f"{ids[1]}.12"]  # as the file gave them
    assert list(var["gene_ids"][-2:]) == ["", ""]  # symbols: no id
    assert ensembl_gene_id("ENSG00000121410.12") == "ENSG00000121410"
    assert ensembl_gene_id("ENSDARG00000000001") == "ENSDARG00000000001"
    assert ensembl_gene_id("ENSG0001") is None and ensembl_gene_id("CD3E") is None
    ids_of = gene_ids_of(names)
    assert (ids_of.kind, ids_of.n_ensembl, ids_of.n_mapped) == ("mixed", 6, 4)
    assert ids_of.describe() == "mixed: 2 symbols, 6 Ensembl ids (4 mapped)"
    assert gene_ids_of(ids).describe() == "ensembl: 4/4 mapped"
    assert gene_ids_of(["CD3E"]).describe() == "symbols"
    # ids given by the file (Cell Ranger's id column) are kept as they are
    given = gene_var(["CD3E", ids[1]], ["E1", "E2"])
    assert list(given.index) == ["CD3E", "CD14"] and list(given["gene_ids"]) == ["E1", "E2"]


def test_ensembl_ids_are_never_taken_for_antibodies() -> None:
    small = _gene_ids(["CD3E", "CD4", "CD8A", "CD14", "CD19", "MS4A1", "NCAM1", "IL7R", "LYZ"])
    assert not looks_like_proteins(small)
    assert not looks_like_proteins([f"ENSG9{i:010d}" for i in range(9)])  # unknown ids too
    assert not looks_like_proteins([f"ENSMUSG{i:011d}" for i in range(9)])
    assert looks_like_proteins(["CD3_PROT", "CD4_PROT", "CD19_PROT"])
    plan = plan_from_names(["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "X"])
    assert list(plan.columns) == ["prot"]
    assert (
        plan.rule
        == "prot: 9 features, 3 known gene symbols (rule: < 50 % genes, <= 1,000 features)"
    )
    plan = plan_from_names(small)
    assert plan.rule == "rna: 9 Ensembl ids, 9 mapped to symbols (rule: >= 50 % genes)"
    plan = plan_from_names([f"X{i}" for i in range(1001)])
    assert list(plan.columns) == ["rna"] and "(rule: > 1,000 features)" in plan.rule
    assert plan_from_names(["CD3"], "rna").rule == "rna: samples.csv modality column"


def _write_h5ad(path: Path, names: list[str], n_cells: int = 6, seed: int = 0, **var) -> Path:
    counts = _small_counts(seed, (n_cells, len(names)))
    frame = pd.DataFrame(var, index=pd.Index(names))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(X=counts.astype(np.float32), obs=obs, var=frame).write_h5ad(path)
    return path


def test_h5ad_of_ensembl_ids_reads_as_rna_with_symbols(tmp_path: Path) -> None:
    symbols = list(gene_table().query("kind == 'protein_coding'")["symbol"][:40])
    ids = [f"{g}.{i % 3 + 1}" if i % 2 else g for i, g in enumerate(_gene_ids(symbols))]
    path = _write_h5ad(tmp_path / "ids.h5ad", ids[:-2] + ["MT-CO1", "CD3E"])
    mdata = read_sample(path, "E")
    assert list(mdata.mod) == ["rna"]
    rna = mdata["rna"]
    assert list(rna.var_names) == symbols[:-2] + ["MT-CO1", "CD3E"]
    assert list(rna.var["gene_ids"]) == ids[:-2] + ["", ""]
    assert rna.uns["gene_ids"] == "mixed: 2 symbols, 38 Ensembl ids (38 mapped)"
    assert rna.uns["modality_rule"].startswith("rna: 40 features, 38 Ensembl ids")


def test_modality_column_overrides_the_rule_both_ways(tmp_path: Path) -> None:
    panel = ["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "CD127"]
    path = _write_h5ad(tmp_path / "adt.h5ad", panel)
    assert list(read_sample(path, "A").mod) == ["prot"]  # the rule: an antibody panel
    forced = read_sample(path, "A", modality="rna")  # the user's call
    assert list(forced.mod) == ["rna"] and list(forced["rna"].var_names) == panel
    assert forced["rna"].uns["modality_rule"] == "rna: samples.csv modality column"
    genes = _write_h5ad(tmp_path / "genes.h5ad", _gene_ids(["CD3E", "CD4", "LYZ"]))
    assert list(read_sample(genes, "G").mod) == ["rna"]
    as_prot = read_sample(genes, "G", modality="prot")
    assert list(as_prot.mod) == ["prot"] and list(as_prot["prot"].var_names)[0].startswith("ENSG")
    assert list(read_sample(path, "A", modality="").mod) == ["prot"]  # empty: the rule
    with pytest.raises(InputError, match="unknown modality 'adt'") as err:
        read_sample(path, "A", modality="adt")
    assert err.value.column == "modality" and err.value.sample == "A"


def test_modality_column_selects_a_declared_modality(tmp_path: Path) -> None:
    path, counts, _, features = _write_sample(tmp_path / "s", 1, 10)
    prot = read_sample(path, "P", modality="prot")
    assert list(prot.mod) == ["prot"]  # a protein-only sample, by the user's choice
    assert (
        prot["prot"].layers["counts"] != counts[:, _cols(features, "Antibody Capture")]
    ).nnz == 0
    assert prot["prot"].uns["modality_rule"] == (
        "prot: samples.csv modality column (the file has rna + prot + hto by Cell Ranger "
        "feature types)"
    )
    assert list(read_sample(path, "R", modality="rna").mod) == ["rna"]
    assert read_sample(path, "B")["rna"].uns["modality_rule"] == (
        "rna + prot + hto: Cell Ranger feature types"
    )
    genes_only, *_ = _write_sample(tmp_path / "g", 2, 10, GENES)
    with pytest.raises(InputError, match="modality is 'prot' but the file holds rna") as err:
        read_sample(genes_only, "G", modality="prot")
    assert err.value.sample == "G" and err.value.column == "modality"
    typed = _write_h5ad(tmp_path / "typed.h5ad", ["CD3", "CD4"], feature_types="Antibody Capture")
    with pytest.raises(InputError, match="holds prot"):
        read_sample(typed, "T", modality="rna")
    sheet, _ = _cohort(tmp_path / "sheet", n=2)
    mdata = read_samples(sheet.assign(modality=["prot", "prot"]))
    assert list(mdata.mod) == ["prot"]


@pytest.fixture(scope="module")
def panel_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from real_cohorts import eccite_cohort

    _need(ECCITE / "eccite_control_500.h5mu")
    return eccite_cohort(tmp_path_factory.mktemp("panel"), "panel").parent


def test_real_ensembl_panel_reads_as_rna_with_symbols(panel_cohort: Path) -> None:
    mdata = read_sample(panel_cohort / "S1.h5ad", "S1")
    assert list(mdata.mod) == ["rna"]
    rna = mdata["rna"]
    assert rna.n_vars == 1000 and {"CD3E", "CD14", "MT-CO1", "LYZ", "MS4A1"} <= set(rna.var_names)
    assert rna.var["feature_name_raw"].str.startswith("ENSG").all()
    assert (rna.var["gene_ids"] == rna.var["feature_name_raw"]).all()
    mapped = int(rna.uns["gene_ids"].split()[1].split("/")[0].replace(",", ""))
    assert rna.uns["gene_ids"].startswith("ensembl: ") and mapped >= 950
    assert rna.uns["modality_rule"] == (
        f"rna: 1,000 Ensembl ids, {mapped} mapped to symbols (rule: >= 50 % genes)"
    )
    assert rna.var_names.str.startswith("MT-").sum() >= 2  # QC finds the mitochondrial genes


def test_summary_says_how_each_sample_was_read(panel_cohort: Path, tmp_path: Path) -> None:
    from sccohort.pp.summary import summarise_sample, summary_table

    rows = {"S1": summarise_sample(dict(read_sample(panel_cohort / "S1.h5ad", "S1").mod))}
    path, *_ = _write_sample(tmp_path, 1, 10)
    rows["S2"] = summarise_sample(dict(read_sample(path, "S2").mod))
    sheet = pd.DataFrame({"donor_id": ["D1", "D2"]}, index=pd.Index(["S1", "S2"], name="sample_id"))
    table = summary_table(rows, sheet, None).set_index("sample_id")
    assert list(table["modalities"]) == ["rna", "rna + prot + hto"]
    assert list(table["n_genes"]) == [1000, len(GENES)]
    assert (
        table.at["S1", "gene_ids"].startswith("ensembl: ")
        and table.at["S2", "gene_ids"] == "symbols"
    )
    assert table.at["S1", "modality_rule"].startswith("rna: 1,000 Ensembl ids")
    assert table.at["S2", "modality_rule"] == "rna + prot + hto: Cell Ranger feature types"

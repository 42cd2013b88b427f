"""Small cohorts of real cells from ``../shared/data``, written as a lab would hand them over.

Used by the real-data regression tests (``tests/test_real_cohorts.py``) and the protein-only
annotation benchmark (``benchmarks/bench_protein_annotation.py``). Nothing here is copied into
the repository: every cohort is built into a temporary folder from the shared files.

- ``eccite_cohort(out, variant)``: the 500 ECCITE-seq PBMC of one healthy control (real RNA +
  ADT), split into four pseudo-samples by their hashtag (one pseudo-donor each; two "case"
  and two "control"). Variants: ``"cite"`` (RNA + protein, one .h5mu per sample),
  ``"rna"`` (RNA only, Cell Ranger v3 MTX folders), ``"ensembl"`` (RNA only, .h5ad with
  Ensembl ids, half of them with a version suffix, no ``feature_types``), ``"panel"``
  (RNA only, .h5ad, a 1,000-gene targeted panel under Ensembl ids).
- ``kotliarov_cohort(out, cells_per_donor)``: the 20-donor, two-batch protein-only cohort
  (9 antibodies, manual-gating labels in ``truth.csv``), one .h5ad per donor.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ECCITE = SHARED / "eccite_pbmc" / "eccite_control_500.h5mu"
KOTLIAROV = SHARED / "kotliarov_adt9" / "cells_adt9.h5ad"
VARIANTS = ("cite", "rna", "ensembl", "panel")
#: pseudo-donor of each ECCITE hashtag, and its (made-up) group
ECCITE_DONORS = {
    "HTO28_5P": ("D1", "case", 61),
    "HTO29_5P": ("D2", "control", 54),
    "HTO30_5P": ("D3", "case", 70),
    "HTO44_5P": ("D4", "control", 47),
}
#: genes a targeted immune panel carries whatever else it holds (lineage markers)
PANEL_MARKERS = (
    "CD3E", "CD3D", "CD4", "CD8A", "CD8B", "CD14", "FCGR3A", "LYZ", "MS4A1", "CD79A", "NKG7",
    "GNLY", "IL7R", "CCR7", "SELL", "S100A8", "S100A9", "FCER1A", "CST3", "PPBP", "HBB", "GZMB",
    "KLRD1", "NCAM1", "CD19", "FOXP3", "LILRA4", "CLEC10A", "CD1C", "ITGAX", "MT-CO1", "MT-ND1",
)  # fmt: skip


def _gene_table() -> pd.DataFrame:
    from importlib import resources

    ref = resources.files("sccohort.resources").joinpath("genes_human.tsv.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as fh:
        return pd.read_csv(fh, sep="\t")


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _eccite_parts():
    import mudata as md

    mdata = md.read_h5mu(ECCITE)
    hto = mdata["hto"]
    tag = np.asarray(hto.var_names)[_dense(hto.X).argmax(1)]
    rna, prot = mdata["rna"], mdata["prot"]
    genes = [g.removeprefix("hg19_") for g in rna.var_names]
    return rna, prot, tag, genes


def _write_tables(out: Path, rows: list[tuple], clinical: pd.DataFrame, extra: str = "") -> Path:
    pd.DataFrame(rows, columns=["sample_id", "donor_id", "path", "batch"]).to_csv(
        out / "samples.csv", index=False
    )
    clinical.to_csv(out / "clinical.csv", index=False)
    config = out / "sccohort.toml"
    config.write_text(
        '[inputs]\nsamples = "samples.csv"\nclinical = "clinical.csv"\n\n[run]\nseed = 0\n\n'
        '[contrasts.case_vs_control]\nvariable = "group"\ncase = "case"\ncontrol = "control"\n'
        + extra
    )
    return config


def _ensembl_ids(genes: list[str], rng: np.random.Generator) -> list[str]:
    """Ensembl ids of ``genes`` (half with a version suffix); unknown genes get unknown ids.

    So does the second symbol of one id (PRH1, PRR4): a file lists each gene id once.
    """
    table = _gene_table().set_index("symbol")["gene_id"]
    ids, used = [], set()
    for i, gene in enumerate(genes):
        if gene in table.index and table[gene] not in used:
            base = table[gene]
            used.add(base)
            ids.append(f"{base}.{rng.integers(1, 20)}" if i % 2 else base)
        else:  # e.g. a lncRNA the shipped table does not hold
            ids.append(f"ENSG9{i:010d}")
    return ids


def eccite_cohort(out: str | Path, variant: str = "cite") -> Path:
    """Write a four-sample ECCITE cohort of one variant into ``out``; returns its config."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rna, prot, tag, genes = _eccite_parts()
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rna.X).astype(np.int32)
    keep = np.arange(len(genes))
    if variant == "panel":
        detected = np.asarray((counts > 0).sum(0)).ravel()
        markers = [genes.index(g) for g in PANEL_MARKERS if g in genes]
        ranked = [i for i in np.argsort(-detected, kind="stable") if i not in set(markers)]
        keep = np.sort(np.r_[markers, ranked[: 1000 - len(markers)]])
    names = [genes[i] for i in keep]
    rows, clinical = [], []
    for hashtag, (donor, group, age) in ECCITE_DONORS.items():
        cells = np.flatnonzero(tag == hashtag)
        barcodes = [b.split(":")[-1] for b in rna.obs_names[cells]]
        sample_counts = counts[cells][:, keep]
        sample = f"S{donor[1:]}"
        if variant == "cite":
            import mudata as md

            path = out / f"{sample}.h5mu"
            mods = {
                "rna": ad.AnnData(
                    sample_counts.astype(np.float32),
                    pd.DataFrame(index=barcodes),
                    pd.DataFrame(index=names),
                ),  # fmt: skip
                "prot": ad.AnnData(
                    sp.csr_matrix(_dense(prot.X)[cells]).astype(np.float32),
                    pd.DataFrame(index=barcodes),
                    pd.DataFrame(index=list(prot.var_names)),
                ),
            }
            md.MuData(mods).write_h5mu(path)
        elif variant == "rna":
            path = out / sample / "filtered_feature_bc_matrix"
            path.mkdir(parents=True, exist_ok=True)
            scipy.io.mmwrite(path / "matrix.mtx", sample_counts.T.tocoo(), field="integer")
            with (
                open(path / "matrix.mtx", "rb") as src,
                gzip.open(path / "matrix.mtx.gz", "wb") as dst,
            ):
                dst.write(src.read())
            (path / "matrix.mtx").unlink()
            ids = _ensembl_ids(names, rng)
            pd.DataFrame({"id": ids, "name": names, "type": "Gene Expression"}).to_csv(
                path / "features.tsv.gz", sep="\t", header=False, index=False
            )
            pd.Series(barcodes).to_csv(path / "barcodes.tsv.gz", header=False, index=False)
        else:
            path = out / f"{sample}.h5ad"
            ids = _ensembl_ids(names, np.random.default_rng(1))
            if variant == "panel":
                ids = [i.split(".")[0] for i in ids]
            ad.AnnData(
                sample_counts.astype(np.float32), pd.DataFrame(index=barcodes),
                pd.DataFrame(index=ids),
            ).write_h5ad(path)  # fmt: skip
        rows.append((sample, donor, str(path.relative_to(out)), "lane1"))
        clinical.append((donor, group, age))
    frame = pd.DataFrame(clinical, columns=["donor_id", "group", "age"])
    return _write_tables(out, rows, frame)


def kotliarov_cohort(out: str | Path, cells_per_donor: int | None = None, seed: int = 0) -> Path:
    """Write the 20-donor protein-only cohort (one .h5ad per donor) into ``out``.

    ``cells_per_donor`` subsamples each donor (None: all 1,563-5,284 cells). Donors get a
    made-up ``group`` (10 ``case``, 10 ``control``, balanced over the two batches: a null
    contrast). ``out/truth.csv`` holds the manual-gating labels per cell id
    (``<sample_id>:<barcode>``: ``cell_type_l1``, ``cell_type_l2``). Returns the config.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adata = ad.read_h5ad(KOTLIAROV)
    rng = np.random.default_rng(seed)
    donors = sorted(adata.obs["donor_id"].unique())
    batch_of = adata.obs.groupby("donor_id", observed=True)["batch"].first()
    rows, clinical, truth = [], [], []
    for i, donor in enumerate(donors):
        cells = np.flatnonzero(adata.obs["donor_id"].to_numpy() == donor)
        if cells_per_donor is not None and len(cells) > cells_per_donor:
            cells = np.sort(rng.choice(cells, cells_per_donor, replace=False))
        part = adata[cells]
        sample = f"{donor}_d0"
        path = out / f"{sample}.h5ad"
        ad.AnnData(
            sp.csr_matrix(part.X).astype(np.float32),
            pd.DataFrame(index=part.obs_names.astype(str)),
            part.var[["feature_types"]].copy(),
        ).write_h5ad(path)
        labels = part.obs[["cell_type_l1", "cell_type_l2"]].copy()
        labels.index = [f"{sample}:{b}" for b in part.obs_names]
        truth.append(labels)
        rows.append((sample, donor, path.name, str(batch_of[donor])))
        clinical.append((donor, "case" if i % 2 else "control", 30 + i))
    pd.concat(truth).rename_axis("cell_id").to_csv(out / "truth.csv")
    frame = pd.DataFrame(clinical, columns=["donor_id", "group", "age"])
    return _write_tables(out, rows, frame)

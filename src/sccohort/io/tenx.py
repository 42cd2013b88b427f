"""Cell Ranger (10x Genomics) feature-barcode matrices: HDF5 v3 and MTX folders."""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import FEATURE_TYPE_TO_MODALITY, gene_var, hto_var, protein_var

FEATURE_TYPES = ("Gene Expression", "Antibody Capture", "Multiplexing Capture")


def write_10x_h5(
    path: str | Path,
    counts: sp.spmatrix,
    barcodes: Sequence[str],
    features: pd.DataFrame,
    *,
    genome: str = "GRCh38",
    library_id: str = "sample",
    compression_level: int = 4,
) -> None:
    """Write a Cell Ranger v3 ``feature_bc_matrix.h5`` (the layout ``cellranger count`` writes).

    Parameters
    ----------
    path
        Destination file; written to ``<path>.tmp`` first, then renamed.
    counts
        Integer counts, cells x features (any scipy sparse format).
    barcodes
        One barcode per cell, e.g. ``AAACCTGAGAAACCAT-1``.
    features
        One row per feature with columns ``id``, ``name``, ``feature_type`` (one of
        ``FEATURE_TYPES``); an optional ``genome`` column overrides ``genome``.
    genome
        Genome name stored for every feature without its own.
    library_id
        Stored in the file's ``library_ids`` attribute.
    compression_level
        gzip level of the arrays (Cell Ranger's files are gzip; 1 writes ~3x faster than 4
        for a few percent more bytes).
    """
    path = Path(path)
    csr = sp.csr_matrix(counts)  # cells x features == features x cells in CSC
    if csr.shape != (len(barcodes), len(features)):
        raise ValueError(
            f"counts are {csr.shape} but there are {len(barcodes)} barcodes and "
            f"{len(features)} features"
        )
    genomes = features["genome"] if "genome" in features else [genome] * len(features)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as fh:
        fh.attrs["filetype"] = "matrix"
        fh.attrs["version"] = 2
        fh.attrs["chemistry_description"] = "Single Cell 3' v3"
        fh.attrs["library_ids"] = np.array([library_id], dtype="S")
        fh.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        grp = fh.create_group("matrix")
        opts = {"compression": "gzip", "compression_opts": compression_level, "shuffle": True}
        grp.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S"), **opts)
        grp.create_dataset("data", data=csr.data.astype(np.int32), **opts)
        grp.create_dataset("indices", data=csr.indices.astype(np.int64), **opts)
        grp.create_dataset("indptr", data=csr.indptr.astype(np.int64), **opts)
        grp.create_dataset("shape", data=np.array([len(features), len(barcodes)], np.int32))
        feat = grp.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        feat.create_dataset("id", data=np.asarray(features["id"], dtype="S"), **opts)
        feat.create_dataset("name", data=np.asarray(features["name"], dtype="S"), **opts)
        feat.create_dataset(
            "feature_type", data=np.asarray(features["feature_type"], dtype="S"), **opts
        )
        feat.create_dataset("genome", data=np.asarray(genomes, dtype="S"), **opts)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Readers. Each returns ``{modality: AnnData}`` with barcodes as ``obs_names``, counts (cells x
# features, CSR, as stored) in ``.X`` and the ``var`` tables of `sccohort.io.features`.
# `sccohort.io.read` validates the counts, prefixes cell ids and builds the MuData.
# --------------------------------------------------------------------------------------------

# Per-modality MTX file stems (``RNA.mtx.gz``, ``ADT.mtx.gz``...) -> modality.
MTX_STEM_TO_MODALITY = {
    "rna": "rna",
    "gex": "rna",
    "gene expression": "rna",
    "gene_expression": "rna",
    "adt": "prot",
    "prot": "prot",
    "protein": "prot",
    "antibody capture": "prot",
    "antibody_capture": "prot",
    "cite": "prot",
    "hto": "hto",
    "hashtag": "hto",
    "multiplexing capture": "hto",
    "multiplexing_capture": "hto",
}

_H5_HINT = (
    "Give the filtered_feature_bc_matrix.h5 (or raw_feature_bc_matrix.h5) that Cell Ranger "
    "wrote, unmodified; re-copy it if the transfer may have been cut short"
)


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _modalities_from_features(
    counts: sp.csr_matrix,
    barcodes: list[str],
    ids: list[str],
    names: list[str],
    feature_types: list[str],
    file: Path,
) -> dict[str, ad.AnnData]:
    """Split a cells x features matrix by Cell Ranger feature type."""
    types = np.asarray(feature_types, dtype=object)
    unknown = sorted(set(types) - set(FEATURE_TYPE_TO_MODALITY))
    if unknown:
        warnings.warn(
            f"{file}: ignoring features of type {', '.join(map(repr, unknown))} "
            f"(sccohort reads {', '.join(FEATURE_TYPE_TO_MODALITY)})",
            stacklevel=3,
        )
    obs = pd.DataFrame(index=pd.Index(barcodes))
    mods: dict[str, ad.AnnData] = {}
    for feature_type, modality in FEATURE_TYPE_TO_MODALITY.items():
        idx = np.flatnonzero(types == feature_type)
        if idx.size == 0:
            continue
        sel_names = [names[i] for i in idx]
        sel_ids = [ids[i] for i in idx]
        if modality == "rna":
            var = gene_var(sel_names, sel_ids)
        elif modality == "prot":
            var = protein_var(sel_names, sel_ids)
        else:
            var = hto_var(sel_names)
        mods[modality] = ad.AnnData(X=_take_columns(counts, idx), obs=obs.copy(), var=var)
    return mods


def _take_columns(csr: sp.csr_matrix, idx: np.ndarray) -> sp.csr_matrix:
    """Columns ``idx`` of a CSR matrix; one vectorised pass when they are a contiguous run.

    Cell Ranger stores each feature type as one block, so this is the common case and it is
    several times faster than scipy's fancy column indexing on large matrices.
    """
    if idx.size == csr.shape[1] and idx[0] == 0 and idx[-1] == csr.shape[1] - 1:
        return csr
    if idx[-1] - idx[0] + 1 != idx.size or not (np.diff(idx) == 1).all():
        return csr[:, idx].tocsr()
    start, stop = int(idx[0]), int(idx[-1]) + 1
    keep = (csr.indices >= start) & (csr.indices < stop)
    kept_before = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    indptr = kept_before[csr.indptr]
    return sp.csr_matrix(
        (csr.data[keep], csr.indices[keep] - start, indptr), shape=(csr.shape[0], stop - start)
    )


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"not a readable HDF5 file ({err})", file=path, hint=_H5_HINT) from err


def _read_h5_matrix(
    path: Path,
) -> tuple[sp.csc_matrix, list[str], list[str], list[str], list[str]]:
    """Features x cells CSC matrix, barcodes, feature ids, names and types of a 10x h5."""
    with _open_h5(path) as fh:
        try:
            if "matrix" in fh:  # Cell Ranger >= 3
                grp = fh["matrix"]
                feat = grp["features"]
                ids = _decode(feat["id"][:])
                names = _decode(feat["name"][:])
                if "feature_type" in feat:
                    types = _decode(feat["feature_type"][:])
                else:
                    types = ["Gene Expression"] * len(ids)
            else:  # Cell Ranger 2: one group per genome with genes / gene_names
                genomes = [k for k in fh if isinstance(fh[k], h5py.Group) and "genes" in fh[k]]
                if not genomes:
                    raise InputError(
                        "no /matrix group (Cell Ranger 3+) and no genome group (Cell Ranger 2)",
                        file=path,
                        hint=_H5_HINT,
                    )
                grp = fh[genomes[0]]
                ids = _decode(grp["genes"][:])
                names = _decode(grp["gene_names"][:])
                types = ["Gene Expression"] * len(ids)
            shape = tuple(int(s) for s in grp["shape"][:])
            barcodes = _decode(grp["barcodes"][:])
            matrix = sp.csc_matrix(
                (grp["data"][:], grp["indices"][:], grp["indptr"][:]), shape=shape
            )
        except InputError:
            raise
        except (KeyError, OSError, ValueError, TypeError) as err:
            raise InputError(
                f"not a Cell Ranger feature-barcode matrix ({type(err).__name__}: {err})",
                file=path,
                hint=_H5_HINT,
            ) from err
    if shape != (len(ids), len(barcodes)):
        raise InputError(
            f"matrix shape {shape} does not match {len(ids)} features x {len(barcodes)} barcodes",
            file=path,
            hint=_H5_HINT,
        )
    return matrix, barcodes, ids, names, types


def read_10x_h5(path: str | Path) -> dict[str, ad.AnnData]:
    """Read a Cell Ranger ``*_feature_bc_matrix.h5`` (v3+, or v2 gene expression only).

    Parameters
    ----------
    path
        The h5 file. Features x cells CSC in the file; ``feature_type`` "Gene Expression" ->
        ``rna``, "Antibody Capture" -> ``prot``, "Multiplexing Capture" -> ``hto``; other
        types are ignored with a warning.

    Returns
    -------
    ``{modality: AnnData}``, each cells x features with raw counts (CSR) in ``.X``, barcodes
    as ``obs_names`` and the ``var`` tables of `sccohort.io.features`.
    """
    path = Path(path)
    matrix, barcodes, ids, names, types = _read_h5_matrix(path)
    return _modalities_from_features(matrix.T.tocsr(), barcodes, ids, names, types, path)


def read_10x_h5_droplets(
    path: str | Path,
    exclude_barcodes: Sequence[str],
    *,
    modalities: Sequence[str] = ("prot",),
    min_counts: int = 1,
) -> dict[str, ad.AnnData]:
    """Read the droplets of a ``raw_feature_bc_matrix.h5`` that are not in ``exclude_barcodes``.

    The file's arrays are read once; only the droplets kept are returned (Cell Ranger's raw
    matrix lists hundreds of thousands of barcodes, most of them with no counts).

    Parameters
    ----------
    path
        Cell Ranger raw h5 (features x all barcodes).
    exclude_barcodes
        Barcodes to leave out (the cells of the filtered matrix).
    modalities
        Which modalities to return (``rna``, ``prot``, ``hto``).
    min_counts
        Keep droplets with at least this many counts summed over ``modalities``.

    Returns
    -------
    ``{modality: AnnData}`` as in `read_10x_h5`, droplets x features.
    """
    path = Path(path)
    matrix, barcodes, ids, names, types = _read_h5_matrix(path)
    wanted_types = [t for t, m in FEATURE_TYPE_TO_MODALITY.items() if m in modalities]
    rows = np.flatnonzero(np.isin(np.asarray(types, dtype=object), wanted_types))
    sub = matrix[rows, :]  # features of interest x all barcodes (CSC)
    totals = np.asarray(sub.sum(axis=0)).ravel()
    keep = (totals >= min_counts) & ~np.isin(np.asarray(barcodes), np.asarray(exclude_barcodes))
    cols = np.flatnonzero(keep)
    return _modalities_from_features(
        sub[:, cols].T.tocsr(),
        [barcodes[i] for i in cols],
        [ids[i] for i in rows],
        [names[i] for i in rows],
        [types[i] for i in rows],
        path,
    )


def find_file(folder: Path, *stems: str) -> Path | None:
    """The first of ``folder/<stem>.gz`` or ``folder/<stem>`` that exists, stems in order."""
    for stem in stems:
        for suffix in (".gz", ""):
            candidate = folder / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
    return None


def _read_lines_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(
            f"cannot read this table ({type(err).__name__}: {err})",
            file=path,
            hint="It should be a tab-separated text file (optionally gzipped), one row per line",
        ) from err
    except pd.errors.EmptyDataError as err:
        raise InputError("the file is empty", file=path) from err


def _read_mtx(path: Path) -> sp.coo_matrix:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            matrix = scipy.io.mmread(fh)
    except (OSError, EOFError, ValueError, IndexError, UnicodeDecodeError) as err:
        raise InputError(
            f"not a readable MatrixMarket file ({type(err).__name__}: {err})",
            file=path,
            hint="Give the matrix.mtx(.gz) that Cell Ranger (or Matrix::writeMM) wrote",
        ) from err
    return sp.coo_matrix(matrix)


def _orient(matrix: sp.coo_matrix, n_features: int, n_cells: int, path: Path) -> sp.csr_matrix:
    """Cells x features CSR from a matrix stored either way round (features x cells first)."""
    if matrix.shape == (n_features, n_cells):
        return matrix.T.tocsr()
    if matrix.shape == (n_cells, n_features):
        return matrix.tocsr()
    raise InputError(
        f"matrix is {matrix.shape[0]} x {matrix.shape[1]} but there are {n_features} features "
        f"and {n_cells} barcodes",
        file=path,
        hint="The features and barcodes files must belong to this matrix",
    )


def _feature_columns(table: pd.DataFrame) -> tuple[list[str], list[str] | None, list[str] | None]:
    """Names, ids and types from a features/genes table of 1, 2 or 3+ columns."""
    if table.shape[1] == 1:
        return table[0].tolist(), None, None
    ids, names = table[0].tolist(), table[1].tolist()
    types = table[2].tolist() if table.shape[1] >= 3 else None
    return names, ids, types


def read_10x_mtx(path: str | Path) -> dict[str, ad.AnnData]:
    """Read an MTX folder: Cell Ranger's form, or one MatrixMarket file per modality.

    Two layouts are recognised:

    - Cell Ranger: ``matrix.mtx(.gz)``, ``barcodes.tsv(.gz)`` and ``features.tsv(.gz)``
      (id, name, feature type) or Cell Ranger 2's ``genes.tsv`` (id, name; all genes);
    - per modality: ``<MOD>.mtx(.gz)``, ``<MOD>_barcodes.tsv(.gz)``, ``<MOD>_features.tsv(.gz)``
      with ``MOD`` one of RNA/GEX, ADT/prot/protein, HTO (features x cells as R writes them;
      cells x features is recognised from the shape too). Feature files may hold a name
      column only, or id and name. Modalities are not aligned here: `sccohort.io.read`
      keeps the cells present in every modality.

    Parameters
    ----------
    path
        The folder.

    Returns
    -------
    ``{modality: AnnData}`` as in `read_10x_h5`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("folder not found", file=folder, hint="Check the path in the sample sheet")
    mtx = find_file(folder, "matrix.mtx")
    if mtx is not None:
        features_file = find_file(folder, "features.tsv", "genes.tsv")
        barcodes_file = find_file(folder, "barcodes.tsv")
        if features_file is None or barcodes_file is None:
            missing = "features.tsv(.gz)" if features_file is None else "barcodes.tsv(.gz)"
            raise InputError(
                f"{missing} is missing next to {mtx.name}",
                file=folder,
                hint="Copy the whole filtered_feature_bc_matrix folder that Cell Ranger wrote",
            )
        table = _read_lines_table(features_file)
        names, ids, types = _feature_columns(table)
        if ids is None:
            ids = names
        if types is None:
            types = ["Gene Expression"] * len(names)
        barcodes = _read_lines_table(barcodes_file)[0].tolist()
        counts = _orient(_read_mtx(mtx), len(names), len(barcodes), mtx)
        return _modalities_from_features(counts, barcodes, ids, names, types, features_file)

    mods: dict[str, ad.AnnData] = {}
    for matrix_file in sorted(folder.glob("*.mtx*")):
        stem = matrix_file.name.split(".mtx")[0]
        modality = MTX_STEM_TO_MODALITY.get(stem.lower())
        if modality is None or matrix_file.name not in (f"{stem}.mtx", f"{stem}.mtx.gz"):
            continue
        if modality in mods:
            raise InputError(
                f"two matrices for modality '{modality}'",
                file=matrix_file,
                hint="Keep one MTX file per modality in the folder",
            )
        features_file = find_file(folder, f"{stem}_features.tsv", f"{stem}_genes.tsv")
        barcodes_file = find_file(folder, f"{stem}_barcodes.tsv")
        if features_file is None or barcodes_file is None:
            raise InputError(
                f"{stem}_features.tsv(.gz) and {stem}_barcodes.tsv(.gz) must sit next to "
                f"{matrix_file.name}",
                file=folder,
            )
        names, ids, _ = _feature_columns(_read_lines_table(features_file))
        barcodes = _read_lines_table(barcodes_file)[0].tolist()
        counts = _orient(_read_mtx(matrix_file), len(names), len(barcodes), matrix_file)
        if modality == "rna":
            var = gene_var(names, ids)
        elif modality == "prot":
            var = protein_var(names, ids)
        else:
            var = hto_var(names)
        mods[modality] = ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    if not mods:
        raise InputError(
            "no count matrix found in this folder",
            file=folder,
            hint=(
                "Expected Cell Ranger's matrix.mtx.gz + features.tsv.gz + barcodes.tsv.gz, or "
                "RNA.mtx.gz / ADT.mtx.gz / HTO.mtx.gz with <MOD>_features.tsv.gz and "
                "<MOD>_barcodes.tsv.gz"
            ),
        )
    return mods

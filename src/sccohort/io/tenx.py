"""Cell Ranger (10x Genomics) feature-barcode matrices: HDF5 v3 and MTX folders.

Features are split into modalities by Cell Ranger's feature types. A file without them (a
Cell Ranger 2 h5, an MTX folder whose features file has no type column) holds Gene
Expression only, unless the sample sheet's ``modality`` says otherwise; with feature types,
``modality`` must name one of the file's modalities and only that one is read (see
`sccohort.io.features`).
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io import verify
from sccohort.io.features import (
    FEATURE_TYPE_TO_MODALITY,
    ModalityPlan,
    modality_var,
    plan_from_types,
    plan_single,
    select_declared,
    set_rule,
)
from sccohort.io.verify import (
    Axis,
    check_compressed,
    check_regular_file,
    check_text_file,
    check_unique,
    first_bad_value,
)

FEATURE_TYPES = ("Gene Expression", "Antibody Capture", "Multiplexing Capture")
#: Sources of the decision texts (`sccohort.io.features`).
TYPES_SOURCE = "Cell Ranger feature types"
UNTYPED_SOURCE = "no feature types (Cell Ranger 2: Gene Expression only)"
FILE_NAMES_SOURCE = "MTX file names"


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


def plan_10x(
    types: list[str] | None, n_features: int, modality: str | None = None, *, file: Any = None
) -> ModalityPlan:
    """Which features of a Cell Ranger matrix go to which modality.

    Parameters
    ----------
    types
        Cell Ranger feature type of each feature, or None when the file has none (Gene
        Expression only, or what ``modality`` says).
    n_features
        Number of features.
    modality
        The sample sheet's ``modality``, or None.
    file
        The file, for errors.
    """
    if types is None:
        return plan_single(n_features, "rna", UNTYPED_SOURCE, modality)
    return plan_from_types(types, TYPES_SOURCE, modality, file=file)


def _warn_unknown_types(types: list[str] | None, file: Path) -> None:
    unknown = sorted(set(types or ()) - set(FEATURE_TYPE_TO_MODALITY))
    if unknown:
        warnings.warn(
            f"{file}: ignoring features of type {', '.join(map(repr, unknown))} "
            f"(sccohort reads {', '.join(FEATURE_TYPE_TO_MODALITY)})",
            stacklevel=3,
        )


def _modalities_from_features(
    counts: sp.csr_matrix,
    barcodes: list[str],
    ids: list[str],
    names: list[str],
    plan: ModalityPlan,
) -> dict[str, ad.AnnData]:
    """Split a cells x features matrix as ``plan`` says."""
    obs = pd.DataFrame(index=pd.Index(barcodes))
    mods: dict[str, ad.AnnData] = {}
    for modality, idx in plan.columns.items():
        var = modality_var(modality, [names[i] for i in idx], [ids[i] for i in idx])
        mods[modality] = ad.AnnData(X=_take_columns(counts, idx), obs=obs.copy(), var=var)
    set_rule(mods, plan.rule)
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
    check_regular_file(path)  # a named pipe would block h5py: refused unopened
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"not a readable HDF5 file ({err})", file=path, hint=_H5_HINT) from err


@dataclass(frozen=True)
class H5Features:
    """The features of a Cell Ranger h5 (read without its counts).

    Attributes
    ----------
    ids, names
        Feature ids and names.
    types
        Feature types, or None (Cell Ranger 2, or no ``feature_type`` dataset).
    shape
        ``(n_features, n_barcodes)`` as stored.
    group
        The h5 group that holds the matrix (``matrix``, or the genome of Cell Ranger 2).
    """

    ids: list[str]
    names: list[str]
    types: list[str] | None
    shape: tuple[int, int]
    group: str


def _h5_error(path: Path, err: Exception) -> InputError:
    return InputError(
        f"not a Cell Ranger feature-barcode matrix ({type(err).__name__}: {err})",
        file=path,
        hint=_H5_HINT,
    )


def _features_of(fh: h5py.File, path: Path) -> H5Features:
    try:
        if "matrix" in fh:  # Cell Ranger >= 3
            name = "matrix"
            feat = fh["matrix"]["features"]
            ids = _decode(feat["id"][:])
            names = _decode(feat["name"][:])
            types = _decode(feat["feature_type"][:]) if "feature_type" in feat else None
        else:  # Cell Ranger 2: one group per genome with genes / gene_names
            genomes = [k for k in fh if isinstance(fh[k], h5py.Group) and "genes" in fh[k]]
            if not genomes:
                raise InputError(
                    "no /matrix group (Cell Ranger 3+) and no genome group (Cell Ranger 2)",
                    file=path,
                    hint=_H5_HINT,
                )
            name = genomes[0]
            ids = _decode(fh[name]["genes"][:])
            names = _decode(fh[name]["gene_names"][:])
            types = None
        shape = tuple(int(s) for s in fh[name]["shape"][:])
    except InputError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as err:
        raise _h5_error(path, err) from err
    if len(shape) != 2 or shape[0] != len(ids):
        raise InputError(
            f"matrix shape {shape} does not match {len(ids)} features",
            file=path,
            hint=_H5_HINT,
        )
    lengths = {"names": len(names), "feature types": len(types or ids)}
    for what, n in lengths.items():
        if n != len(ids):
            raise InputError(
                f"the file lists {len(ids):,} feature ids but {n:,} {what}",
                file=path,
                hint=_H5_HINT,
            )
    return H5Features(ids, names, types, (shape[0], shape[1]), name)


def read_h5_features(path: str | Path) -> H5Features:
    """The features and shape of a Cell Ranger h5, without reading its counts.

    Raises
    ------
    InputError
        The file is missing, not HDF5, or not a Cell Ranger matrix.
    """
    path = Path(path)
    with _open_h5(path) as fh:
        return _features_of(fh, path)


def check_10x_h5(fh: h5py.File, path: Path) -> tuple[H5Features, list[str]]:
    """Check an open Cell Ranger h5 without holding its counts; its features and barcodes.

    Reads the features, the barcodes and ``indptr`` whole, and ``indices`` and ``data`` in
    slices (`sccohort.io.verify.check_compressed`).

    Raises
    ------
    InputError
        Not a Cell Ranger matrix; a shape that does not fit the features or the barcodes; a
        barcode listed twice; broken ``indptr`` / ``indices``; a stored value
        that is not a raw count (negative, NaN, non-integer, above 2**31 - 1).
    """
    features = _features_of(fh, path)
    group = fh[features.group]
    try:
        barcodes = _decode(group["barcodes"][:])
    except (KeyError, OSError, ValueError, TypeError) as err:
        raise _h5_error(path, err) from err
    where = features.group
    if len(barcodes) != features.shape[1]:
        raise InputError(
            f"{where}/shape says {features.shape[1]:,} barcodes but {where}/barcodes lists "
            f"{len(barcodes):,}",
            file=path,
            hint=_H5_HINT,
        )
    check_unique(barcodes, "barcode", file=path)
    cells, feats = Axis("cell", barcodes), Axis("feature", features.names)
    n_features, n_cells = features.shape
    bad = check_compressed(group, cells, feats, (n_cells, n_features), file=path, where=where)
    if bad is not None:
        raise InputError(
            f"{where}/data holds {bad.problem}; sccohort needs raw counts",
            file=path,
            hint=_H5_HINT,
        )
    return features, barcodes


def _read_h5_matrix(path: Path) -> tuple[sp.csc_matrix, list[str], H5Features]:
    """Features x cells CSC matrix, barcodes and features of a 10x h5."""
    with _open_h5(path) as fh:
        features = _features_of(fh, path)
        try:
            grp = fh[features.group]
            barcodes = _decode(grp["barcodes"][:])
            matrix = sp.csc_matrix(
                (grp["data"][:], grp["indices"][:], grp["indptr"][:]), shape=features.shape
            )
        except (KeyError, OSError, ValueError, TypeError) as err:
            raise _h5_error(path, err) from err
    if features.shape[1] != len(barcodes):
        raise InputError(
            f"matrix shape {features.shape} does not match {len(features.ids)} features x "
            f"{len(barcodes)} barcodes",
            file=path,
            hint=_H5_HINT,
        )
    return matrix, barcodes, features


def read_10x_h5(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read a Cell Ranger ``*_feature_bc_matrix.h5`` (v3+, or v2 gene expression only).

    Parameters
    ----------
    path
        The h5 file. Features x cells CSC in the file; ``feature_type`` "Gene Expression" ->
        ``rna``, "Antibody Capture" -> ``prot``, "Multiplexing Capture" -> ``hto``; other
        types are ignored with a warning.
    modality
        The sample sheet's ``modality``: the one modality to read (for a file without
        feature types: what it holds); None reads all.

    Returns
    -------
    ``{modality: AnnData}``, each cells x features with raw counts (CSR) in ``.X``, barcodes
    as ``obs_names``, the ``var`` tables of `sccohort.io.features` and the decision in
    ``uns["modality_rule"]``.

    Examples
    --------
    >>> from sccohort.io import read_10x_h5
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> {name: adata.shape for name, adata in read_10x_h5(h5).items()}
    {'rna': (300, 19409), 'prot': (300, 139)}
    """
    path = Path(path)
    matrix, barcodes, feat = _read_h5_matrix(path)
    _warn_unknown_types(feat.types, path)
    plan = plan_10x(feat.types, len(feat.ids), modality, file=path)
    return _modalities_from_features(matrix.T.tocsr(), barcodes, feat.ids, feat.names, plan)


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
    matrix, barcodes, feat = _read_h5_matrix(path)
    types = feat.types or ["Gene Expression"] * len(feat.ids)
    _warn_unknown_types(types, path)
    wanted_types = [t for t, m in FEATURE_TYPE_TO_MODALITY.items() if m in modalities]
    rows = np.flatnonzero(np.isin(np.asarray(types, dtype=object), wanted_types))
    sub = matrix[rows, :]  # features of interest x all barcodes (CSC)
    totals = np.asarray(sub.sum(axis=0)).ravel()
    keep = (totals >= min_counts) & ~np.isin(np.asarray(barcodes), np.asarray(exclude_barcodes))
    cols = np.flatnonzero(keep)
    return _modalities_from_features(
        sub[:, cols].T.tocsr(),
        [barcodes[i] for i in cols],
        [feat.ids[i] for i in rows],
        [feat.names[i] for i in rows],
        plan_from_types([types[i] for i in rows], TYPES_SOURCE, file=path),
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


_MTX_HINT = "Give the matrix.mtx(.gz) that Cell Ranger (or Matrix::writeMM) wrote"
_COPY_HINT = "Copy the file again from where it was written; the copy may have been cut short"


@dataclass(frozen=True)
class MtxHeader:
    """The banner and size line of a MatrixMarket file.

    Attributes
    ----------
    rows, columns
        The matrix's size.
    entries
        Stored entries (``coordinate``), or ``rows * columns`` (``array``).
    layout
        ``"coordinate"`` or ``"array"``.
    field
        ``"integer"``, ``"real"``, ``"pattern"`` ...
    """

    rows: int
    columns: int
    entries: int
    layout: str
    field: str


def _mtx_error(path: Path, err: Exception | str) -> InputError:
    detail = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return InputError(f"not a readable MatrixMarket file ({detail})", file=path, hint=_MTX_HINT)


def read_mtx_header(path: Path) -> MtxHeader:
    """The banner and size line of a MatrixMarket file (the entries are not read)."""
    check_text_file(path, "10x_mtx")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            banner = fh.readline().split()
            if len(banner) < 5 or banner[0] != "%%MatrixMarket":
                raise ValueError("no %%MatrixMarket header line")
            layout, field = banner[2].lower(), banner[3].lower()
            for line in fh:
                if line.strip() and not line.startswith("%"):
                    size = [int(v) for v in line.split()]
                    break
            else:
                raise ValueError("no size line")
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise _mtx_error(path, err) from err
    if layout not in ("coordinate", "array") or len(size) != (3 if layout == "coordinate" else 2):
        raise _mtx_error(path, f"a '{layout}' matrix with size line {size}")
    if field == "complex":
        raise _mtx_error(path, "complex values are not counts")
    entries = size[2] if layout == "coordinate" else size[0] * size[1]
    return MtxHeader(size[0], size[1], entries, layout, field)


def read_mtx_shape(path: Path) -> tuple[int, int]:
    """``(rows, columns)`` from a MatrixMarket file's size line (the file is not read on)."""
    header = read_mtx_header(path)
    return header.rows, header.columns


def _mtx_chunks(path: Path, columns: int) -> Iterator[pd.DataFrame]:
    """The entry lines of a MatrixMarket file (size line included), in chunks of rows."""
    return pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        comment="%",
        names=list(range(columns)),
        dtype=np.float64,
        chunksize=max(1, verify.CHUNK_VALUES // columns),
    )


def check_mtx_entries(path: Path, header: MtxHeader, rows: Axis, columns: Axis) -> None:
    """Read a MatrixMarket file's entries in chunks and check them against its header.

    Coordinates must lie within the size line's rows and columns, values be raw counts
    (`sccohort.io.verify.first_bad_value`) and the number of entries be the size line's.
    Memory holds one chunk (`sccohort.io.verify.CHUNK_VALUES` numbers) at a time.

    Raises
    ------
    InputError
        A damaged or truncated file (gzip), a coordinate outside the matrix, a value that is
        not a count, fewer or more entries than the size line says.
    """
    coordinate = header.layout == "coordinate"
    width = (2 if coordinate else 0) + (header.field != "pattern")
    seen = 0
    first = True
    try:
        for chunk in _mtx_chunks(path, max(width, 3 if coordinate else 2)):
            if first:  # the size line
                chunk, first = chunk.iloc[1:], False
            values = chunk.to_numpy()
            _check_complete(values[:, :width], path, seen)
            if coordinate:
                _check_coordinates(values, header, rows, columns, path, seen)
            if header.field != "pattern":
                bad = first_bad_value(values[:, width - 1])
                if bad is not None:
                    raise InputError(
                        f"entry {seen + bad.index + 1:,} holds {bad.problem}; sccohort needs "
                        "raw counts",
                        file=path,
                        hint="Give the raw UMI counts",
                    )
            seen += len(values)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise _mtx_error(path, err) from err
    if seen != header.entries:
        raise InputError(
            f"the file holds {seen:,} entries but its size line says {header.entries:,}",
            file=path,
            hint=_COPY_HINT,
        )


def _check_complete(values: np.ndarray, path: Path, seen: int) -> None:
    cut = np.flatnonzero(np.isnan(values).any(axis=1))
    if cut.size:
        raise InputError(
            f"entry {seen + int(cut[0]) + 1:,} has fewer than {values.shape[1]} numbers",
            file=path,
            hint=_COPY_HINT,
        )


def _check_coordinates(
    values: np.ndarray, header: MtxHeader, rows: Axis, columns: Axis, path: Path, seen: int
) -> None:
    for j, (axis, n) in enumerate(((rows, header.rows), (columns, header.columns))):
        where = values[:, j]
        outside = np.flatnonzero(~((where >= 1) & (where <= n) & (where == np.floor(where))))
        if outside.size:
            i = int(outside[0])
            raise InputError(
                f"entry {seen + i + 1:,} has {axis.kind} coordinate {where[i]:g} outside 1..{n:,}",
                file=path,
                hint="The features and barcodes files must belong to this matrix",
            )


def check_mtx_shape(shape: tuple[int, int], n_features: int, n_cells: int, path: Path) -> bool:
    """Whether a matrix of ``shape`` is stored features x cells (True) or cells x features.

    Raises
    ------
    InputError
        ``shape`` fits neither way round.
    """
    if tuple(shape) == (n_features, n_cells):
        return True
    if tuple(shape) == (n_cells, n_features):
        return False
    raise InputError(
        f"matrix is {shape[0]} x {shape[1]} but there are {n_features} features "
        f"and {n_cells} barcodes",
        file=path,
        hint="The features and barcodes files must belong to this matrix",
    )


def _orient(matrix: sp.coo_matrix, n_features: int, n_cells: int, path: Path) -> sp.csr_matrix:
    """Cells x features CSR from a matrix stored either way round (features x cells first)."""
    if check_mtx_shape(matrix.shape, n_features, n_cells, path):
        return matrix.T.tocsr()
    return matrix.tocsr()


def _feature_columns(table: pd.DataFrame) -> tuple[list[str], list[str] | None, list[str] | None]:
    """Names, ids and types from a features/genes table of 1, 2 or 3+ columns."""
    if table.shape[1] == 1:
        return table[0].tolist(), None, None
    ids, names = table[0].tolist(), table[1].tolist()
    types = table[2].tolist() if table.shape[1] >= 3 else None
    return names, ids, types


@dataclass(frozen=True)
class MtxFiles:
    """One MatrixMarket matrix and its features and barcodes files."""

    matrix: Path
    features: Path
    barcodes: Path

    def __post_init__(self) -> None:
        # a named pipe or a device among them would block or never end: refused unopened
        for path in (self.matrix, self.features, self.barcodes):
            check_regular_file(path)

    def feature_columns(self) -> tuple[list[str], list[str] | None, list[str] | None]:
        """Names, ids (or None) and feature types (or None) of the features file."""
        return _feature_columns(_read_lines_table(self.features))

    def barcode_list(self) -> list[str]:
        """The barcodes, in file order."""
        return _read_lines_table(self.barcodes)[0].tolist()


def cellranger_mtx_files(folder: Path) -> MtxFiles | None:
    """Cell Ranger's MTX files in ``folder``, or None without ``matrix.mtx(.gz)``.

    ``matrix.mtx``, ``features.tsv`` (or ``genes.tsv``) and ``barcodes.tsv``, each
    optionally gzipped.
    """
    mtx = find_file(folder, "matrix.mtx")
    if mtx is None:
        return None
    features_file = find_file(folder, "features.tsv", "genes.tsv")
    barcodes_file = find_file(folder, "barcodes.tsv")
    if features_file is None or barcodes_file is None:
        missing = "features.tsv(.gz)" if features_file is None else "barcodes.tsv(.gz)"
        raise InputError(
            f"{missing} is missing next to {mtx.name}",
            file=folder,
            hint="Copy the whole filtered_feature_bc_matrix folder that Cell Ranger wrote",
        )
    return MtxFiles(mtx, features_file, barcodes_file)


def modality_mtx_files(
    folder: Path, modality: str | None = None
) -> tuple[dict[str, MtxFiles], str]:
    """The per-modality MTX files of ``folder`` (``RNA.mtx.gz``, ``ADT.mtx.gz``...).

    Parameters
    ----------
    folder
        The folder.
    modality
        The sample sheet's ``modality``: keep that one only (None: all).

    Returns
    -------
    ``{modality: MtxFiles}`` and the decision text.

    Raises
    ------
    InputError
        No such matrix, two for one modality, a features or barcodes file missing,
        ``modality`` not among them.
    """
    found: dict[str, MtxFiles] = {}
    for matrix_file in sorted(folder.glob("*.mtx*")):
        stem = matrix_file.name.split(".mtx")[0]
        known = MTX_STEM_TO_MODALITY.get(stem.lower())
        if known is None or matrix_file.name not in (f"{stem}.mtx", f"{stem}.mtx.gz"):
            continue
        if known in found:
            raise InputError(
                f"two matrices for modality '{known}'",
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
        found[known] = MtxFiles(matrix_file, features_file, barcodes_file)
    if not found:
        raise InputError(
            "no count matrix found in this folder",
            file=folder,
            hint=(
                "Expected Cell Ranger's matrix.mtx.gz + features.tsv.gz + barcodes.tsv.gz, or "
                "RNA.mtx.gz / ADT.mtx.gz / HTO.mtx.gz with <MOD>_features.tsv.gz and "
                "<MOD>_barcodes.tsv.gz"
            ),
        )
    ordered = {m: found[m] for m in ("rna", "prot", "hto") if m in found}
    return select_declared(ordered, FILE_NAMES_SOURCE, modality, file=folder)


def read_10x_mtx(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    r"""Read an MTX folder: Cell Ranger's form, or one MatrixMarket file per modality.

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
    modality
        The sample sheet's ``modality``: the one modality to read (for a features file
        without a type column: what the matrix holds); None reads all.

    Returns
    -------
    ``{modality: AnnData}`` as in `read_10x_h5`.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import scipy.io, scipy.sparse as sp
    >>> from sccohort.io import read_10x_mtx
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> counts = sp.coo_matrix(np.array([[1, 0], [0, 3], [2, 1]]))  # genes x cells
    >>> scipy.io.mmwrite(str(folder / "matrix.mtx"), counts)
    >>> features = pd.DataFrame({"id": ["E1", "E2", "E3"], "name": ["CD3E", "LYZ", "MS4A1"],
    ...                          "type": "Gene Expression"})
    >>> features.to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
    >>> pd.Series(["AAAC-1", "AAAG-1"]).to_csv(folder / "barcodes.tsv", header=False, index=False)
    >>> rna = read_10x_mtx(folder)["rna"]
    >>> rna.shape, list(rna.var_names)
    ((2, 3), ['CD3E', 'LYZ', 'MS4A1'])
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("folder not found", file=folder, hint="Check the path in the sample sheet")
    files = cellranger_mtx_files(folder)
    if files is not None:
        names, ids, types = files.feature_columns()
        barcodes = files.barcode_list()
        _warn_unknown_types(types, files.features)
        plan = plan_10x(types, len(names), modality, file=files.features)
        counts = _orient(_read_mtx(files.matrix), len(names), len(barcodes), files.matrix)
        return _modalities_from_features(counts, barcodes, ids or names, names, plan)

    kept, rule = modality_mtx_files(folder, modality)
    mods: dict[str, ad.AnnData] = {}
    for known, one in kept.items():
        names, ids, _ = one.feature_columns()
        barcodes = one.barcode_list()
        counts = _orient(_read_mtx(one.matrix), len(names), len(barcodes), one.matrix)
        var = modality_var(known, names, ids)
        mods[known] = ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    set_rule(mods, rule)
    return mods

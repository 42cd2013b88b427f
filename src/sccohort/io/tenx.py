"""Cell Ranger (10x Genomics) feature-barcode matrices in HDF5 (MTX folders: :mod:`.mtx`).

Features are split into modalities by Cell Ranger's feature types. A file without them (a
Cell Ranger 2 h5, an MTX folder whose features file has no type column) holds Gene
Expression only, unless the sample sheet's ``modality`` says otherwise; with feature types,
``modality`` must name one of the file's modalities and only that one is read (see
`sccohort.io.features`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import (
    FEATURE_TYPE_TO_MODALITY,
    ModalityPlan,
    modality_var,
    plan_from_types,
    plan_single,
    set_rule,
)
from sccohort.io.verify import (
    Axis,
    check_compressed,
    check_regular_file,
    check_unique,
)

FEATURE_TYPES = ("Gene Expression", "Antibody Capture", "Multiplexing Capture")
#: Sources of the decision texts (`sccohort.io.features`).
TYPES_SOURCE = "Cell Ranger feature types"
UNTYPED_SOURCE = "no feature types (Cell Ranger 2: Gene Expression only)"


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
        gzip level of the arrays (Cell Ranger's files are gzip; a low level writes much
        faster for a few percent more bytes).
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

"""What an h5ad / h5mu sample holds, read from its HDF5 groups without building an AnnData.

Which matrix holds counts (the first of ``layers["counts"]``, ``X``, ``raw.X`` whose every
stored value is a raw count, as the reader takes it: `_anndata_counts`), its shape and sparse
encoding, the cells' names, and proteins kept in ``obsm`` (`_obsm_proteins`), for
:mod:`sccohort.io.probe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import pandas as pd

from sccohort.errors import InputError
from sccohort.io.h5 import OBSM_PROTEINS
from sccohort.io.verify import (
    Axis,
    BadValue,
    check_compressed,
    check_dense,
    check_has_cells,
    check_unique,
)

_NO_COUNTS_HINT = "Store raw integer counts in layers['counts'] (or .X) of every modality"


def _read_elem(elem: Any) -> Any:
    from anndata.io import read_elem

    return read_elem(elem)


def _shape(elem: Any) -> tuple[int, int] | None:
    """``(n_obs, n_vars)`` of a stored matrix (dense dataset or sparse group), or None."""
    if isinstance(elem, h5py.Dataset):
        return (int(elem.shape[0]), int(elem.shape[1])) if elem.ndim == 2 else None
    encoding = _sparse_encoding(elem)
    if encoding is None:
        return None
    shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _sparse_encoding(elem: Any) -> str | None:
    """``"csr"`` or ``"csc"`` for a stored sparse matrix, else None."""
    if not isinstance(elem, h5py.Group):
        return None
    encoding = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    encoding = str(encoding).removesuffix("_matrix")
    return encoding if encoding in ("csr", "csc") else None


def _first_non_count(
    elem: Any, shape: tuple[int, int], cells: pd.Index, var: pd.DataFrame, file: Path, name: str
) -> BadValue | None:
    """The first value of a stored matrix that is not a raw count (arrays checked too)."""
    rows, columns = Axis("cell", cells), Axis("feature", [str(v) for v in var.index])
    if isinstance(elem, h5py.Dataset):
        return check_dense(elem, rows, columns, file=file, where=name)
    if _sparse_encoding(elem) == "csr":
        return check_compressed(elem, rows, columns, shape, file=file, where=name)
    return check_compressed(elem, columns, rows, (shape[1], shape[0]), file=file, where=name)


def _count_candidates(group: h5py.Group) -> list[tuple[str, Any, str]]:
    """``(name, stored matrix, key of its var table)`` in the order the reader tries them."""
    candidates = []
    if "layers" in group and "counts" in group["layers"]:
        candidates.append(("layers['counts']", group["layers"]["counts"], "var"))
    if "X" in group:
        candidates.append(("X", group["X"], "var"))
    if "raw" in group and "X" in group["raw"]:
        candidates.append(("raw.X", group["raw"]["X"], "raw/var"))
    return candidates


def _anndata_counts(
    group: h5py.Group, cells: pd.Index, file: Path, where: str
) -> tuple[tuple[int, int], pd.DataFrame]:
    """Shape and ``var`` table of the counts an AnnData group holds, every value checked.

    The first of ``layers['counts']``, ``X``, ``raw.X`` whose every value is a raw count
    is taken, as the reader does; one that breaks its own shape, or holds a count above
    2**31 - 1, is an error.
    """
    seen = []
    for name, elem, var_key in _count_candidates(group):
        shape = _shape(elem)
        if shape is None:
            seen.append(f"{name} is not a matrix")
            continue
        var = _read_elem(group[var_key])
        if shape != (len(cells), len(var)):
            raise InputError(
                f"{where}: {name} is {shape[0]:,} x {shape[1]:,} but obs lists {len(cells):,} "
                f"cells and {var_key} {len(var):,} features",
                file=file,
                hint="Write the object again with anndata",
            )
        bad = _first_non_count(elem, shape, cells, var, file, name)
        if bad is None:
            return shape, var
        if not bad.normalised:
            raise InputError(
                f"{where}: {name} holds {bad.problem}", file=file, hint="Give the raw UMI counts"
            )
        seen.append(f"{name} holds {bad.problem}")
    raise InputError(
        f"{where} holds no raw integer counts ({'; '.join(seen) or 'no X, layers or raw'})",
        file=file,
        hint=_NO_COUNTS_HINT,
    )


def _obs_names(group: h5py.Group) -> pd.Index:
    obs = group["obs"]
    if isinstance(obs, h5py.Dataset):  # anndata < 0.7: a structured array
        return pd.Index([str(v) for v in _read_elem(obs).index])
    key = obs.attrs.get("_index", "_index")
    return pd.Index([str(v) for v in _read_elem(obs[key])])


def _cells_of(group: h5py.Group, file: Path, where: str) -> pd.Index:
    """The ``obs`` names of an AnnData group: listed once, at least one."""
    cells = _obs_names(group)
    check_unique(list(cells), "barcode", file=file, where=where)
    check_has_cells(len(cells), file=file, where=where)
    return cells


def _obsm_proteins(group: h5py.Group, cells: pd.Index, file: Path) -> list[str]:
    """The names of ``obsm['protein_expression']``, its values checked."""
    elem = group["obsm"][OBSM_PROTEINS]
    where = f"obsm['{OBSM_PROTEINS}']"
    if isinstance(elem, h5py.Group) and elem.attrs.get("encoding-type") == "dataframe":
        names = [str(c) for c in elem.attrs.get("column-order", [])]
        columns = [(elem.get(n), [n]) for n in names]
    else:
        if "uns" not in group or "protein_names" not in group["uns"]:
            raise InputError(
                f"{where} is an array but uns['protein_names'] is missing",
                file=file,
                key=OBSM_PROTEINS,
                hint="Store the proteins as a DataFrame, or their names in uns['protein_names']",
            )
        names = [str(n) for n in _read_elem(group["uns"]["protein_names"])]
        columns = [(elem, names)]
    for column, antibodies in columns:
        if not isinstance(column, h5py.Dataset) or column.shape[0] != len(cells):
            raise InputError(
                f"{where} does not hold one value per cell", file=file, key=OBSM_PROTEINS
            )
        bad = check_dense(
            column, Axis("cell", cells), Axis("antibody", antibodies), file=file, where=where
        )
        if bad is not None:
            raise InputError(
                f"{where} holds {bad.problem}; it needs raw counts",
                file=file,
                key=OBSM_PROTEINS,
                hint=_NO_COUNTS_HINT,
            )
    return names

"""Which reader a sample path needs: the formats sccohort reads and how each is recognised.

`detect_format` finds the count matrix in a Cell Ranger folder (filtered or raw HDF5, else
MTX) or a BD Rhapsody folder and names the format of a file by its name; `_resolve` checks a
declared format against the path and refuses special files (FIFOs, devices) before anything
is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sccohort.cohort import FORMATS, special_file_kind
from sccohort.errors import InputError
from sccohort.io.mtx import find_file

_FILTERED_H5 = (
    "filtered_feature_bc_matrix.h5",
    "sample_filtered_feature_bc_matrix.h5",
    "filtered_gene_bc_matrices_h5.h5",
)


_RAW_H5 = ("raw_feature_bc_matrix.h5", "raw_gene_bc_matrices_h5.h5")


_FORMAT_HINT = (
    "Give a Cell Ranger outs/ folder, a *_feature_bc_matrix.h5, an MTX folder, an .h5ad, an "
    ".h5mu or a BD Rhapsody *_MolsPerCell.csv, or set the sample sheet's format column to "
    "one of " + ", ".join(FORMATS)
)


def _mtx_folder(folder: Path) -> Path | None:
    """The folder itself or its single genome subfolder (Cell Ranger 2), if it holds MTX."""
    if (
        find_file(folder, "matrix.mtx") is not None
        or any(folder.glob("*.mtx"))
        or any(folder.glob("*.mtx.gz"))
    ):
        return folder
    subs = [d for d in folder.iterdir() if d.is_dir() and find_file(d, "matrix.mtx") is not None]
    return subs[0] if len(subs) == 1 else None


def _from_folder(folder: Path, h5_names: Sequence[str], mtx_names: Sequence[str]):
    for base in (folder, folder / "outs"):
        for name in h5_names:
            if (base / name).is_file():
                return "10x_h5", base / name
        for name in mtx_names:
            if (base / name).is_dir() and _mtx_folder(base / name) is not None:
                return "10x_mtx", _mtx_folder(base / name)
    return None


def detect_format(path: str | Path, *, raw: bool = False) -> tuple[str, Path]:  # noqa: PLR0911 - one return per layout it recognises
    """Which reader a path needs, and the file or folder to give it.

    Parameters
    ----------
    path
        A Cell Ranger run or ``outs/`` folder (its filtered h5, else its filtered MTX folder;
        the raw ones if ``raw``), an MTX folder (Cell Ranger's or one ``<MOD>.mtx.gz`` per
        modality), a ``.h5``, ``.h5ad``, ``.h5mu``, a BD Rhapsody ``*_MolsPerCell.csv(.gz)``
        or a folder holding one (DBEC preferred over RSEC).
    raw
        Look for the raw (all droplets) matrix in Cell Ranger folders.

    Returns
    -------
    ``(format, resolved_path)`` with format one of `FORMATS`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            "file or folder not found", file=path, hint="Check the path in the sample sheet"
        )
    if path.is_dir():
        if raw:
            found = _from_folder(path, _RAW_H5, ("raw_feature_bc_matrix", "raw_gene_bc_matrices"))
        else:
            found = _from_folder(
                path, _FILTERED_H5, ("filtered_feature_bc_matrix", "filtered_gene_bc_matrices")
            )
        if found is not None:
            return found
        mtx = _mtx_folder(path)
        if mtx is not None:
            return "10x_mtx", mtx
        csvs = sorted(path.glob("*_DBEC_MolsPerCell.csv*")) or sorted(
            path.glob("*_MolsPerCell.csv*")
        )
        if len(csvs) == 1:
            return "rhapsody_csv", csvs[0]
        _refuse_slide(path)
        raise InputError("no count matrix recognised in this folder", file=path, hint=_FORMAT_HINT)
    name = path.name.lower()
    if name.endswith(".h5"):
        return "10x_h5", path
    if name.endswith(".h5ad"):
        return "h5ad", path
    if name.endswith(".h5mu"):
        return "h5mu", path
    if name.endswith((".csv", ".csv.gz")):
        return "rhapsody_csv", path
    if name.endswith((".mtx", ".mtx.gz")):
        return "10x_mtx", path.parent
    raise InputError("unrecognised file type", file=path, hint=_FORMAT_HINT)


def _refuse_slide(folder: Path) -> None:
    """A slide's folder needs its format declared: slides go to other stages than cells."""
    if any(folder.glob("*_exprMat_file.csv*")):
        kind = "cosmx"
    elif (folder / "cell_feature_matrix.h5").is_file():
        kind = "xenium"
    else:
        return
    raise InputError(
        f"this folder holds a {kind} slide",
        file=folder,
        column="format",
        hint=f"set the sample sheet's format to {kind}: slides are analysed apart from cells",
    )


def _refuse_special(path: str | Path) -> None:
    """Refuse a named pipe, a device or a socket by its type, without opening it."""
    kind = special_file_kind(path)
    if kind is not None:
        raise InputError(
            f"this path is {kind}, not a count file or folder",
            file=path,
            hint="Give the count file (or folder) itself; pipes, devices and sockets are "
            "refused without being opened",
        )


def _resolve(path: str | Path, fmt: str | None, *, raw: bool = False) -> tuple[str, Path]:
    _refuse_special(path)
    if fmt is None or (isinstance(fmt, float) and np.isnan(fmt)) or fmt == "":
        return detect_format(path, raw=raw)
    if fmt not in FORMATS:
        raise InputError(
            f"unknown format '{fmt}'",
            file=path,
            column="format",
            hint="Use one of " + ", ".join(FORMATS) + ", or leave it empty to detect it",
        )
    path = Path(path)
    if not path.exists():
        raise InputError(
            "file or folder not found", file=path, hint="Check the path in the sample sheet"
        )
    if path.is_dir() and fmt in ("10x_h5", "10x_mtx"):
        detected, resolved = detect_format(path, raw=raw)
        if detected == fmt:
            return fmt, resolved
    if path.is_file() and fmt == "10x_mtx":
        return fmt, path.parent
    return fmt, path

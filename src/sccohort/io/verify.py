r"""Cheap checks of a count file's contents: the path, the file's kind, the stored arrays.

What the path is, what the file holds, and whether its stored arrays make a matrix of raw
counts.

`sccohort.io.probe` runs them on every sample before anything is written:

- the path (`check_regular_file`): a regular file, judged by ``stat``; a named pipe, a
  device or a socket is refused without being opened (a pipe would block the reader, and
  ``/dev/zero`` never ends);
- the signature (`file_signature`): HDF5 files begin with ``\x89HDF\r\n\x1a\n`` (at byte 0
  or after a user block of 512, 1024, ... bytes), gzip files with ``\x1f\x8b``; an empty
  file, text or other bytes are named as such. An HDF5 file's layout (`hdf5_layout`) tells a
  Cell Ranger matrix from an AnnData and a MuData object, and must be the sample's format
  (`open_hdf5`);
- the arrays of a compressed sparse matrix (`check_compressed`): ``indptr`` has one entry
  per row (or column) plus one, starts at 0, never decreases and ends at the number of
  stored values; ``indices`` lie within the other axis; and the stored values of any matrix
  (`check_compressed`, `check_dense`, `first_bad_value`): finite non-negative integers up to
  2**31 - 1 (the readers keep counts as int32). Arrays are read in slices of about
  `CHUNK_VALUES` values, so memory stays bounded whatever the size of the file;
- names (`check_unique`): a barcode, or a feature id, listed once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import pandas as pd

from sccohort.cohort import special_file_kind
from sccohort.errors import InputError

__all__ = [
    "CHUNK_VALUES",
    "INT32_MAX",
    "Axis",
    "BadValue",
    "check_compressed",
    "check_dense",
    "check_has_cells",
    "check_regular_file",
    "check_text_file",
    "check_unique",
    "describe_start",
    "file_signature",
    "first_bad_value",
    "hdf5_layout",
    "open_hdf5",
]

#: The largest count the readers store (int32).
INT32_MAX = int(np.iinfo(np.int32).max)
#: Values read at a time from a stored array (32 MB of float64).
CHUNK_VALUES = 4_000_000
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
GZIP_SIGNATURE = b"\x1f\x8b"
#: Offsets where HDF5 looks for its signature (after a user block of 512, 1024, ... bytes).
_HDF5_OFFSETS = (0, *(512 * 2**k for k in range(12)))
#: What each HDF5 layout (`hdf5_layout`) holds, for messages.
LAYOUT_NAMES = {
    "10x_h5": "a Cell Ranger feature-barcode matrix",
    "h5ad": "an AnnData object (.h5ad)",
    "h5mu": "a MuData object (.h5mu)",
    "hdf5": "no count matrix sccohort knows",
}
_EXTENSIONS = {"10x_h5": ".h5", "h5ad": ".h5ad", "h5mu": ".h5mu"}
_COPY_HINT = "Copy the file again from where it was written; the copy may have been cut short"


# ----------------------------------------------------------------------------- paths, bytes


def check_regular_file(path: str | Path) -> Path:
    """``path`` (as a ``Path``) if it is an existing regular file, judged by ``stat``.

    Raises
    ------
    InputError
        The path is missing, a folder, or a named pipe, device or socket (never opened).
    """
    path = Path(path)
    kind = special_file_kind(path)
    if kind is not None:
        raise InputError(
            f"this path is {kind}, not a count file",
            file=path,
            hint="Give the count file itself; pipes, devices and sockets are refused unopened",
        )
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    if path.is_dir():
        raise InputError("a folder where a file is expected", file=path)
    return path


def file_signature(path: Path) -> str:
    """What a file's first bytes say it is.

    Returns
    -------
    ``"hdf5"``, ``"gzip"``, ``"empty"`` (0 bytes), ``"text"`` (UTF-8 without NUL bytes) or
    ``"binary"``.
    """
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as fh:
        head = fh.read(512)
        if head.startswith(GZIP_SIGNATURE):
            return "gzip"
        for offset in _HDF5_OFFSETS:
            if offset + len(HDF5_SIGNATURE) > size:
                break
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return "hdf5"
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the block
            return "binary"
    return "text"


def describe_start(path: Path) -> str:
    """How a file begins, for messages.

    ``"it is empty (0 bytes)"``, ``"it begins with text 'root:x:0:0'"``, ``"it is
    gzip-compressed"``, ``"it begins with bytes 7f 45 4c 46"``.
    """
    kind = file_signature(path)
    if kind == "empty":
        return "it is empty (0 bytes)"
    if kind == "gzip":
        return "it is gzip-compressed"
    if kind == "hdf5":
        return "it is an HDF5 file"
    with open(path, "rb") as fh:
        head = fh.read(60)
    if kind == "text":
        line = head.decode("utf-8", errors="replace").splitlines()[0] if head.strip() else ""
        shown = line[:40].encode("unicode_escape").decode("ascii")
        return f"it begins with text '{shown}'" if shown else "it holds only blank text"
    return "it begins with bytes " + " ".join(f"{b:02x}" for b in head[:8])


# ----------------------------------------------------------------------------- HDF5


def hdf5_layout(fh: h5py.File) -> str:
    """What an open HDF5 file holds: ``"10x_h5"``, ``"h5ad"``, ``"h5mu"`` or ``"hdf5"``.

    The root's ``encoding-type`` attribute (``anndata``, ``MuData``) decides when present;
    else a ``mod`` group means MuData, a ``matrix`` group (or a Cell Ranger 2 genome group
    with ``genes``) a Cell Ranger matrix, and ``X`` or ``obs`` + ``var`` an AnnData object.
    """
    encoding = str(fh.attrs.get("encoding-type", "")).lower()
    if encoding in ("anndata", "mudata"):
        return "h5ad" if encoding == "anndata" else "h5mu"
    keys = set(fh.keys())
    if "mod" in keys:
        return "h5mu"
    if "matrix" in keys or any(
        isinstance(fh.get(k), h5py.Group) and "genes" in fh[k] for k in sorted(keys)
    ):
        return "10x_h5"
    if "X" in keys or {"obs", "var"} <= keys:
        return "h5ad"
    return "hdf5"


def _layout_error(path: Path, fmt: str, layout: str, declared: bool) -> InputError:
    holds = LAYOUT_NAMES[layout]
    if declared:
        problem = f"the sample sheet's format column says '{fmt}' but the file holds {holds}"
    else:
        problem = (
            f"the file holds {holds}, not {LAYOUT_NAMES[fmt]} as its name "
            f"('{_EXTENSIONS[fmt]}') says"
        )
    if layout == "hdf5":
        hint = "Give the count file itself (Cell Ranger's .h5, an .h5ad or an .h5mu)"
    elif declared:
        hint = f"Set the format column to {layout}, or leave it empty to detect the format"
    else:
        hint = (
            f"Rename it to end in {_EXTENSIONS[layout]}, or set the sample sheet's format "
            f"column to {layout}"
        )
    return InputError(problem, file=path, hint=hint)


def check_text_file(path: Path, fmt: str) -> Path:
    """``path`` if it is a regular file of text, plain or gzip-compressed.

    Raises
    ------
    InputError
        Not a regular file; empty; an HDF5 file or other binary bytes.
    """
    check_regular_file(path)
    kind = file_signature(path)
    if kind in ("text", "gzip"):
        return path
    raise InputError(
        f"not a text file: {describe_start(path)}",
        file=path,
        hint=f"Format '{fmt}' is text (optionally gzipped); check the path and the format column",
    )


@contextlib.contextmanager
def open_hdf5(path: Path, fmt: str, *, declared: bool = False) -> Iterator[h5py.File]:
    """Open an HDF5 count file for reading once its type, signature and layout fit ``fmt``.

    Parameters
    ----------
    path
        The file.
    fmt
        ``"10x_h5"``, ``"h5ad"`` or ``"h5mu"``.
    declared
        Whether ``fmt`` comes from the sample sheet's format column (else from the name),
        for the message.

    Raises
    ------
    InputError
        Not a regular file; empty, text or other bytes; a truncated or damaged HDF5 file;
        an HDF5 file of another layout.
    """
    check_regular_file(path)
    if file_signature(path) != "hdf5":
        raise InputError(
            f"not an HDF5 file: {describe_start(path)}",
            file=path,
            hint=f"Format '{fmt}' is HDF5; give {LAYOUT_NAMES[fmt]}. " + _COPY_HINT,
        )
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise InputError(
            f"the HDF5 file is truncated or damaged ({err})", file=path, hint=_COPY_HINT
        ) from err
    with fh:
        layout = hdf5_layout(fh)
        if layout != fmt:
            raise _layout_error(path, fmt, layout, declared)
        yield fh


# ----------------------------------------------------------------------------- values


class BadValue(NamedTuple):
    """The first stored value that is not a raw count.

    Attributes
    ----------
    index
        Its position in the array read.
    problem
        What it is: ``"a negative value (-3)"``, ``"a NaN"``, ``"a non-integer value (1.5)"``,
        ``"a count of 3,000,000,000, above 2,147,483,647"``.
    normalised
        True for values that normalised data holds (negative, NaN, infinite, non-integer);
        False for a count too large to store.
    """

    index: int
    problem: str
    normalised: bool


def _describe_value(value: Any) -> tuple[str, bool]:
    value = float(value)
    if np.isnan(value):
        return "a NaN", True
    if np.isinf(value):
        return "an infinite value", True
    if value < 0:
        return f"a negative value ({value:g})", True
    if value != np.floor(value):
        return f"a non-integer value ({value:g})", True
    return f"a count of {value:,.0f}, above the largest sccohort stores ({INT32_MAX:,})", False


def first_bad_value(values: np.ndarray) -> BadValue | None:
    """The first value of ``values`` that is not a raw count (0 ... `INT32_MAX` integers).

    Raises
    ------
    TypeError
        ``values`` are not numbers.
    """
    kind, size = values.dtype.kind, values.dtype.itemsize
    if values.size == 0 or kind == "b":
        return None
    if kind in "iu":
        bad = np.zeros(values.shape, dtype=bool)
        if kind == "i":
            bad |= values < 0
        if size > 4 or (kind == "u" and size == 4):
            bad |= values > INT32_MAX
    elif kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < 0) | (values > INT32_MAX)
            bad |= values != np.floor(values)
    else:
        raise TypeError(f"values of type {values.dtype}, not numbers")
    found = np.flatnonzero(bad.ravel())
    if found.size == 0:
        return None
    index = int(found[0])
    problem, normalised = _describe_value(values.ravel()[index])
    return BadValue(index, problem, normalised)


def _steps(dataset: h5py.Dataset, per_step: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` slices of a dataset's first axis, about ``per_step`` long.

    They are aligned to the dataset's HDF5 chunks, so that each chunk is decompressed once.
    """
    n = int(dataset.shape[0])
    chunk = dataset.chunks[0] if dataset.chunks else 1
    step = max(chunk, (max(1, per_step) // chunk) * chunk)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _dataset(group: h5py.Group, key: str, file: Path, where: str) -> h5py.Dataset:
    elem = group.get(key)
    if not isinstance(elem, h5py.Dataset) or elem.ndim != 1:
        raise InputError(
            f"{where}/{key} is missing or not a one-dimensional array",
            file=file,
            hint=_COPY_HINT,
        )
    return elem


@dataclass(frozen=True)
class Axis:
    """One axis of a stored matrix, for messages: ``cell 'AAAC-1'``, ``feature 'CD3E'``.

    Attributes
    ----------
    kind
        ``"cell"`` or ``"feature"``.
    names
        Its names in order (None: positions are shown, 1-based).
    """

    kind: str
    names: Sequence[str] | None = None

    def __len__(self) -> int:
        return 0 if self.names is None else len(self.names)

    def label(self, i: int) -> str:
        """``"<kind> '<name>'"`` of position ``i`` (``"<kind> #<i + 1>"`` without names)."""
        if self.names is not None and 0 <= i < len(self.names):
            return f"{self.kind} '{self.names[i]}'"
        return f"{self.kind} #{i + 1}"


def _check_indptr(
    indptr: np.ndarray, major: Axis, n_major: int, n_values: int, file: Path, where: str
) -> None:
    """Raise unless ``indptr`` delimits ``n_values`` stored values into ``n_major`` runs."""
    if not np.issubdtype(indptr.dtype, np.integer):
        raise InputError(f"{where}/indptr holds {indptr.dtype} values, not integers", file=file)
    if indptr.size != n_major + 1:
        raise InputError(
            f"{where}/indptr has {indptr.size:,} entries but the matrix's shape says "
            f"{n_major:,} {major.kind}s (it needs {n_major + 1:,}): the shape or the "
            "indptr array is wrong",
            file=file,
            hint=_COPY_HINT,
        )
    steps = np.diff(indptr)
    decreasing = np.flatnonzero(steps < 0)
    if indptr[0] != 0 or decreasing.size:
        at = 0 if indptr[0] != 0 else int(decreasing[0]) + 1
        raise InputError(
            f"{where}/indptr is not a non-decreasing run from 0 (entry {at + 1}: "
            f"{int(indptr[at]):,}, at {major.label(max(at - 1, 0))})",
            file=file,
            hint=_COPY_HINT,
        )
    if int(indptr[-1]) != n_values:
        raise InputError(
            f"{where}/indptr ends at {int(indptr[-1]):,} but {where}/data holds "
            f"{n_values:,} values",
            file=file,
            hint=_COPY_HINT,
        )


def check_compressed(
    group: h5py.Group,
    major: Axis,
    minor: Axis,
    shape: tuple[int, int],
    *,
    file: Path,
    where: str,
) -> BadValue | None:
    """Check a compressed sparse matrix stored as ``data``, ``indices``, ``indptr``.

    Parameters
    ----------
    group
        The HDF5 group holding the three arrays.
    major, minor
        The axis ``indptr`` runs over (cells of a Cell Ranger matrix or of a CSR matrix)
        and the axis ``indices`` point into.
    shape
        ``(n_major, n_minor)`` as the file's shape attribute or dataset says.
    file, where
        The file and the group's name, for messages.

    Returns
    -------
    The first stored value that is not a raw count (``index``: its position in ``data``;
    ``problem`` names its cell and feature), or None.

    Raises
    ------
    InputError
        A missing array; ``indptr`` of the wrong length, not starting at 0, decreasing, or
        not ending at the number of values; ``data`` and ``indices`` of different lengths;
        an index outside the minor axis; values that are not numbers.
    """
    data = _dataset(group, "data", file, where)
    indices = _dataset(group, "indices", file, where)
    indptr = np.asarray(_dataset(group, "indptr", file, where)[:])
    n_major, n_minor = shape
    if indices.shape[0] != data.shape[0]:
        raise InputError(
            f"{where}/indices holds {indices.shape[0]:,} values but {where}/data {data.shape[0]:,}",
            file=file,
            hint=_COPY_HINT,
        )
    _check_indptr(indptr, major, n_major, int(data.shape[0]), file, where)
    if not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f"{where}/indices holds {indices.dtype} values, not integers", file=file)
    for start, stop in _steps(data, CHUNK_VALUES):
        idx = indices[start:stop]
        outside = np.flatnonzero((idx < 0) | (idx >= n_minor))
        if outside.size:
            at = start + int(outside[0])
            row = int(np.searchsorted(indptr, at, side="right")) - 1
            raise InputError(
                f"{where}/indices holds {minor.kind} index {int(idx[outside[0]]):,} outside "
                f"0..{n_minor - 1:,} (at {major.label(row)})",
                file=file,
                hint=_COPY_HINT,
            )
        bad = _first_bad(data[start:stop], file, where)
        if bad is not None:
            at = start + bad.index
            row = int(np.searchsorted(indptr, at, side="right")) - 1
            place = f"{major.label(row)}, {minor.label(int(idx[bad.index]))}"
            return BadValue(at, f"{bad.problem} at {place}", bad.normalised)
    return None


def check_dense(
    dataset: h5py.Dataset, rows: Axis, columns: Axis, *, file: Path, where: str
) -> BadValue | None:
    """The first value of a stored dense matrix that is not a raw count, or None.

    A one-dimensional dataset is one column. Rows are read in blocks of about `CHUNK_VALUES`
    values. The message of the value returned names its row and column (``rows`` and
    ``columns`` say what they are).
    """
    if dataset.ndim not in (1, 2):
        raise InputError(f"{where} is not a matrix", file=file)
    n_columns = max(1, int(dataset.shape[1])) if dataset.ndim == 2 else 1
    for start, stop in _steps(dataset, CHUNK_VALUES // n_columns):
        bad = _first_bad(dataset[start:stop], file, where)
        if bad is not None:
            row, column = divmod(bad.index, n_columns)
            place = f"{rows.label(start + row)}, {columns.label(column)}"
            at = start * n_columns + bad.index
            return BadValue(at, f"{bad.problem} at {place}", bad.normalised)
    return None


def _first_bad(values: np.ndarray, file: Path, where: str) -> BadValue | None:
    try:
        return first_bad_value(np.asarray(values))
    except TypeError as err:
        raise InputError(f"{where} holds {err}", file=file) from err


# ----------------------------------------------------------------------------- names


def check_unique(
    names: Sequence[str], what: str, *, file: Path, where: str = "", hint: str | None = None
) -> None:
    """Raise when a name is listed more than once (``what``: ``"barcode"``, ``"feature id"``).

    ``where`` (e.g. ``"modality 'rna'"``) prefixes the message; ``hint`` replaces the
    default one.
    """
    index = pd.Index(names)
    if index.is_unique:
        return
    dup = index[index.duplicated()][0]
    positions = np.flatnonzero(index == dup)[:2] + 1
    prefix = f"{where}: " if where else ""
    raise InputError(
        f"{prefix}{what} '{dup}' is listed more than once (entries {positions[0]:,} and "
        f"{positions[1]:,})",
        file=file,
        hint=hint or f"Each {what} must appear once (was the file concatenated or edited)",
    )


def check_has_cells(n_cells: int, *, file: Path, where: str = "the matrix") -> None:
    """Raise when a matrix lists no cell (a sample with 0 cells)."""
    if n_cells == 0:
        raise InputError(
            f"{where} has no cells (0 barcodes)",
            file=file,
            hint="Give the sample's filtered matrix with its cells, or leave the sample out "
            "of the sample sheet",
        )

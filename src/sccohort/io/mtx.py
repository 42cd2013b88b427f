"""Cell Ranger MTX folders: the files of one, checked whole, and read into modalities.

`cellranger_mtx_files` / `modality_mtx_files` find the matrix, barcodes and features files
(Cell Ranger 2 and 3 names, or one ``<MOD>.mtx.gz`` per modality); `check_mtx_entries` reads
the whole matrix once in chunks and reports the first bad line (coordinates out of range,
non-integer counts, a truncated file) before `read_10x_mtx` builds the modalities.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io import verify
from sccohort.io.features import (
    modality_var,
    select_declared,
    set_rule,
)
from sccohort.io.tenx import _modalities_from_features, _warn_unknown_types, plan_10x
from sccohort.io.verify import (
    Axis,
    check_regular_file,
    check_text_file,
    first_bad_value,
)

FILE_NAMES_SOURCE = "MTX file names"


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

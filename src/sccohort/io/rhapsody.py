"""BD Rhapsody ``*_DBEC_MolsPerCell.csv`` / ``*_RSEC_MolsPerCell.csv`` (RNA + AbSeq)."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io import verify
from sccohort.io.features import gene_var, protein_var, select_declared, set_rule
from sccohort.io.verify import (
    INT32_MAX,
    check_regular_file,
    check_text_file,
    first_bad_value,
)

_HINT = (
    "Give the *_DBEC_MolsPerCell.csv or *_RSEC_MolsPerCell.csv that the BD Rhapsody pipeline "
    "wrote: optional '##' comment lines, then a header with Cell_Index and one column per "
    "gene or AbSeq antibody, one row per cell"
)


def is_abseq(column: str) -> bool:
    """Whether a Rhapsody column is an AbSeq antibody (``CD3:UCHT1|CD3E|AHS0231|pAbO``)."""
    column = column.strip()
    return column.endswith("pAbO") or "|pAbO" in column


#: Source of the decision text (`sccohort.io.features`).
ABSEQ_SOURCE = "AbSeq (pAbO) column names"


def rhapsody_modalities(
    features: list[str], modality: str | None = None, *, file: Path | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Which columns of a Rhapsody table go to ``rna`` and ``prot`` (AbSeq), and why.

    Parameters
    ----------
    features
        The header's feature columns (after ``Cell_Index``).
    modality
        The sample sheet's ``modality``: keep that modality only (None: both).
    file
        The file, for errors.

    Returns
    -------
    ``{modality: column indices into features}`` and the decision text.
    """
    protein = np.array([is_abseq(c) for c in features], dtype=bool)
    found = {"rna": np.flatnonzero(~protein), "prot": np.flatnonzero(protein)}
    found = {m: idx for m, idx in found.items() if idx.size}
    return select_declared(found, ABSEQ_SOURCE, modality, file=file)


def _count_comment_lines(path: Path) -> int:
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("##"):
                break
            n += 1
    return n


def _check_header(columns: list[str], path: Path, line: int) -> list[str]:
    if "Cell_Index" not in columns:
        raise InputError("no 'Cell_Index' column in the header", file=path, row=line, hint=_HINT)
    features = [str(c) for c in columns if c != "Cell_Index"]
    if not features:
        raise InputError("no feature columns after Cell_Index", file=path, row=line)
    return features


def _check_values(values: pd.DataFrame, path: Path, first_line: int) -> None:
    """Raise unless a block of a Rhapsody table holds non-negative integer counts."""
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        column = non_numeric[0]
        bad = pd.to_numeric(values[column], errors="coerce").isna().to_numpy()
        raise InputError(
            "counts must be numbers",
            file=path,
            row=first_line + int(np.flatnonzero(bad)[0]),
            column=column,
            hint=_HINT,
        )
    dense = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = first_bad_value(dense)
    if bad is not None:
        row, column = divmod(bad.index, dense.shape[1])
        raise InputError(
            f"counts must be non-negative integers up to {INT32_MAX:,}, found {bad.problem}",
            file=path,
            row=first_line + row,
            column=str(values.columns[column]),
            hint=_HINT,
        )


def check_rhapsody_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """The feature columns and the cells of a Rhapsody table, its counts checked in blocks.

    The rows are read `sccohort.io.verify.CHUNK_VALUES` values at a time: each must hold
    non-negative integer counts (as `read_rhapsody_csv` requires), so memory stays bounded.

    Returns
    -------
    The feature columns (as `read_rhapsody_csv` names them) and the ``Cell_Index`` values.

    Raises
    ------
    InputError
        Missing or unreadable file, no ``Cell_Index`` or no feature column, a count that is
        not a number or not a non-negative integer (naming its line and column).
    """
    path = check_text_file(Path(path), "rhapsody_csv")
    with _csv_errors(path):
        skip = _count_comment_lines(path)
        header = pd.read_csv(path, skiprows=skip, nrows=0).columns
        features = _check_header(list(header), path, skip + 1)
        rows = max(1, verify.CHUNK_VALUES // len(features))
        cells: list[str] = []
        chunks = pd.read_csv(path, skiprows=skip, dtype={"Cell_Index": str}, chunksize=rows)
        for chunk in chunks:
            _check_values(chunk[features], path, skip + 2 + len(cells))
            cells.extend(chunk["Cell_Index"].astype(str).str.strip())
    return features, cells


@contextlib.contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """A csv that cannot be parsed becomes an InputError naming the file."""
    try:
        yield
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(
            f"cannot read this csv ({type(err).__name__}: {err})", file=path, hint=_HINT
        ) from err
    except pd.errors.EmptyDataError as err:
        raise InputError("the file has no header and no cells", file=path, hint=_HINT) from err


def read_rhapsody_csv(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    r"""Read a BD Rhapsody molecules-per-cell table.

    Parameters
    ----------
    path
        The csv (optionally gzipped): optional ``##`` comment lines, then a header
        ``Cell_Index,<feature>,...``, then one row per cell with integer counts. Columns ending
        in ``pAbO`` (or containing ``|pAbO``) are AbSeq antibodies, all others genes.
    modality
        The sample sheet's ``modality``: the one modality to read (None: both).

    Returns
    -------
    ``{"rna": AnnData, "prot": AnnData}`` (``prot`` only if there are AbSeq columns), cells x
    features, raw counts (CSR) in ``.X``, ``Cell_Index`` values as ``obs_names``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sccohort.io import read_rhapsody_csv
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "S1_MolsPerCell.csv"
    >>> header = "Cell_Index,CD3E,LYZ,CD14:MPHIP9|CD14|AHS0037|pAbO"
    >>> _ = path.write_text(f"##Sample S1\n{header}\n101,3,0,2\n102,0,7,40\n")
    >>> {name: adata.shape for name, adata in read_rhapsody_csv(path).items()}
    {'rna': (2, 2), 'prot': (2, 1)}
    """
    path = check_regular_file(Path(path))
    with _csv_errors(path):
        skip = _count_comment_lines(path)
        table = pd.read_csv(path, skiprows=skip, dtype={"Cell_Index": str})
    header_line = skip + 1
    features = _check_header(list(table.columns), path, header_line)
    values = table[features]
    _check_values(values, path, header_line + 1)
    dense = values.to_numpy(dtype=np.float64, na_value=np.nan)
    barcodes = table["Cell_Index"].astype(str).str.strip()
    obs = pd.DataFrame(index=pd.Index(barcodes.to_list()))
    kept, rule = rhapsody_modalities(features, modality, file=path)
    counts = sp.csr_matrix(dense.astype(np.int32))
    mods = {}
    for known, idx in kept.items():
        names = [features[i] for i in idx]
        var = gene_var(names) if known == "rna" else protein_var(names)
        mods[known] = ad.AnnData(X=counts[:, idx].tocsr(), obs=obs.copy(), var=var)
    set_rule(mods, rule)
    return mods

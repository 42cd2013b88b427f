"""BD Rhapsody ``*_DBEC_MolsPerCell.csv`` / ``*_RSEC_MolsPerCell.csv`` (RNA + AbSeq)."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import gene_var, protein_var, select_declared, set_rule

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


def rhapsody_header(path: str | Path) -> tuple[list[str], int]:
    """The feature columns and the number of cells of a Rhapsody table, without its counts.

    Reads the header line (as `read_rhapsody_csv` names the columns) and counts the
    non-blank lines after it.

    Raises
    ------
    InputError
        Missing or unreadable file, no ``Cell_Index`` or no feature column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        skip = _count_comment_lines(path)
        columns = list(pd.read_csv(path, skiprows=skip, nrows=0).columns)
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = sum(1 for line in fh if line.strip())
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(
            f"cannot read this csv ({type(err).__name__}: {err})", file=path, hint=_HINT
        ) from err
    except pd.errors.EmptyDataError as err:
        raise InputError("the file has no header and no cells", file=path, hint=_HINT) from err
    if "Cell_Index" not in columns:
        raise InputError(
            "no 'Cell_Index' column in the header", file=path, row=skip + 1, hint=_HINT
        )
    features = [str(c) for c in columns if c != "Cell_Index"]
    if not features:
        raise InputError("no feature columns after Cell_Index", file=path, row=skip + 1)
    return features, lines - skip - 1


def read_rhapsody_csv(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read a BD Rhapsody molecules-per-cell table.

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
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    try:
        skip = _count_comment_lines(path)
        table = pd.read_csv(path, skiprows=skip, dtype={"Cell_Index": str})
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(
            f"cannot read this csv ({type(err).__name__}: {err})", file=path, hint=_HINT
        ) from err
    except pd.errors.EmptyDataError as err:
        raise InputError("the file has no header and no cells", file=path, hint=_HINT) from err
    header_line = skip + 1
    if "Cell_Index" not in table.columns:
        raise InputError(
            "no 'Cell_Index' column in the header", file=path, row=header_line, hint=_HINT
        )
    features = [c for c in table.columns if c != "Cell_Index"]
    if not features:
        raise InputError("no feature columns after Cell_Index", file=path, row=header_line)
    values = table[features]
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        column = non_numeric[0]
        bad = pd.to_numeric(values[column], errors="coerce").isna().to_numpy()
        raise InputError(
            "counts must be numbers",
            file=path,
            row=header_line + 1 + int(np.flatnonzero(bad)[0]),
            column=column,
            hint=_HINT,
        )
    dense = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad_rows, bad_cols = np.nonzero(~np.isfinite(dense) | (dense < 0) | (dense != np.round(dense)))
    if bad_rows.size:
        raise InputError(
            f"counts must be non-negative integers, found {dense[bad_rows[0], bad_cols[0]]!r}",
            file=path,
            row=header_line + 1 + int(bad_rows[0]),
            column=features[bad_cols[0]],
            hint=_HINT,
        )
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

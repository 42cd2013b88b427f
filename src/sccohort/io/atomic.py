"""Atomic file writes: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or an exception inside the block removes the temporary file, so a
    half-written file never takes the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffix: some writers (mudata, anndata) check it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically (gzip when ``path`` ends in .gz); returns ``path``.

    Gzip output carries no timestamp, so equal tables give byte-identical files; it uses
    level 1 (a per-cell table of 250,000 rows: 4.5 s and 14 MB, against 9.7 s and 12 MB at
    pandas' default level 9).
    """
    compression = (
        {"method": "gzip", "mtime": 0, "compresslevel": 1} if str(path).endswith(".gz") else None
    )
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index, lineterminator="\n", compression=compression)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON (indented, keys in insertion order) atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


#: h5py filters of `write_h5mu`: ``"gzip"`` (level `GZIP_LEVEL`: every HDF5 reader has it,
#: R and Julia included) and ``"lzf"`` (h5py only, about twice as fast). The demo's cohort
#: without its log-normalised RNA (52,877 cells x 19,409 genes): 841 MB uncompressed
#: (0.7 s to write), lzf 494 MB (5.3 s), gzip level 1 306 MB (10.3 s), level 4 306 MB (14.0 s).
COMPRESSIONS = ("gzip", "lzf")
GZIP_LEVEL = 1


def write_h5mu(mdata: Any, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write a MuData to ``.h5mu`` atomically; returns ``path``.

    Parameters
    ----------
    mdata
        The object; written as it is (mudata's writer; any reader of ``.h5mu`` reads it).
    path
        The target file.
    compression
        A filter of `COMPRESSIONS` for every array (anndata leaves scalars uncompressed),
        or ``None``.
    """
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS} or None, not {compression!r}")
    options: dict[str, Any] = {}
    if compression is not None:
        options["compression"] = compression
    if compression == "gzip":
        options["compression_opts"] = GZIP_LEVEL
    with atomic_path(path) as tmp:
        mdata.write(tmp, **options)
    return Path(path)

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


def write_h5mu(mdata: Any, path: str | Path) -> Path:
    """Write a MuData to ``.h5mu`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        mdata.write(tmp)
    return Path(path)

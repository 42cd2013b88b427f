"""The cohort object of a run on disk: ``cohort.h5mu`` written small, read back whole.

`write_cohort` leaves out what the file can rebuild (``X`` when it is log1p or float32 of the
counts, obs columns and obsm arrays repeated across modalities) and records what it left out;
`read_h5mu` rebuilds it, so a reader gets the object the run held.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccohort.io.atomic import write_h5mu
from sccohort.io.h5 import mudata_options

#: The final cohort object inside OUT.
COHORT_FILE = "cohort.h5mu"


#: ``uns`` key of a written cohort listing what it leaves out and how to rebuild it.
LEFT_OUT_KEY = "left_out"


#: Rows of the RNA checked before its ``.X`` is left out as rebuildable.
CHECK_ROWS = 500


#: mudata's ``pull_on_update`` while a cohort is written or read: its default (None), set
#: explicitly because the option is global to the process. With ``False`` (mudata 0.4's
#: default) reading retypes ``obs`` columns (an all-NaN float column becomes ``Int64``).
MUDATA_PULL = None


def write_cohort(mdata: Any, path: Path, *, final: bool) -> None:
    """Write the cohort object (``.h5mu``) atomically, compressed, each value once.

    Left out, and listed in ``uns["left_out"]`` with how to rebuild them (`read_h5mu`
    does): the RNA ``.X`` when it is ``log1p`` of ``layers["counts"]``
    (`sccohort.pp.normalize.normalize_rna`; about half the file), another
    modality's ``.X`` that is its counts as float32 (hashtags), and a modality's ``obsm``
    arrays and ``obs`` columns that repeat the MuData's own. The object in memory is
    left as it was.

    Parameters
    ----------
    mdata
        The cohort.
    path
        The ``.h5mu`` file.
    final
        The run's last cohort object (``cohort.h5mu``): gzip, which every HDF5 reader has;
        otherwise a checkpoint that only a resumed run reads: lzf (about half the time).
    """
    with _left_out(mdata), mudata_options(pull_on_update=MUDATA_PULL):
        write_h5mu(mdata, path, compression="gzip" if final else "lzf")


def read_h5mu(path: str | Path) -> Any:
    """Read a cohort object that a run wrote (``cohort.h5mu`` or a checkpoint).

    ``mudata.read_h5mu`` reads the same file; this also rebuilds what the file leaves out
    as derived from other values (listed in its ``uns["left_out"]``, see `write_cohort`),
    bit for bit: the log-normalised RNA ``.X`` and the copies of the MuData's ``obsm`` and
    ``obs`` in the modalities. It prints nothing.

    Parameters
    ----------
    path
        The ``.h5mu`` file, or a run's output folder (its ``cohort.h5mu``).

    Returns
    -------
    mudata.MuData
        The cohort as the run held it in memory.
    """
    import mudata

    path = Path(path)
    if path.is_dir():
        path = path / COHORT_FILE
    with warnings.catch_warnings(), mudata_options(pull_on_update=MUDATA_PULL):
        warnings.simplefilter("ignore")  # mudata's notices of its coming defaults
        mdata = mudata.read_h5mu(path)
    _restore_left_out(mdata)
    return mdata


@contextlib.contextmanager
def _left_out(mdata: Any) -> Iterator[None]:  # noqa: PLR0912 - takes values out and puts them back; both halves stay side by side
    """Take the derived values out of ``mdata`` (noted in ``uns``) and put them back after."""
    taken: list[tuple[Any, str, str, Any]] = []  # (container, kind, key, value)
    note: dict[str, Any] = {}
    orders: dict[str, list[str]] = {}
    for name, adata in mdata.mod.items():
        entry: dict[str, Any] = {}
        how = _x_recipe(name, adata)
        if how is not None:
            taken.append((adata, "X", "X", adata.X))
            entry["X"] = how
        same_obsm = _repeated_obsm(mdata, adata)
        for key in same_obsm:
            taken.append((adata.obsm, "map", key, adata.obsm[key]))
        if same_obsm:
            entry["obsm"] = same_obsm
        same_obs = _repeated_obs(mdata, adata)
        if same_obs:
            orders[name] = list(adata.obs.columns)
            entry["obs"] = same_obs
            entry["obs_order"] = orders[name]
        if entry:
            note[name] = entry
    if not note:
        yield
        return
    for container, kind, key, _ in taken:
        if kind == "X":
            container.X = None
        else:
            del container[key]
    frames = {name: mdata.mod[name].obs for name in orders}
    for name in orders:
        adata = mdata.mod[name]
        adata.obs = adata.obs.drop(columns=note[name]["obs"])
    mdata.uns[LEFT_OUT_KEY] = {"about": LEFT_OUT_ABOUT, **note}
    try:
        yield
    finally:
        del mdata.uns[LEFT_OUT_KEY]
        for name, frame in frames.items():
            mdata.mod[name].obs = frame
        for container, kind, key, value in taken:
            if kind == "X":
                container.X = value
            else:
                container[key] = value


LEFT_OUT_ABOUT = (
    "This file leaves out values that repeat others or are computed from them; "
    "sccohort.read_h5mu(path) puts them back. With mudata.read_h5mu, per modality: 'X' says "
    "how to rebuild its .X from its layers['counts']; 'obsm' lists arrays equal to the "
    "MuData's obsm of the same name; 'obs' lists columns equal to the MuData's obs columns "
    "of the same name (for the modality's cells), 'obs_order' the modality's column order."
)


def _x_recipe(name: str, adata: Any) -> str | None:
    """How ``adata.X`` is rebuilt from ``layers["counts"]``, or None if it is not derived."""
    counts = adata.layers.get("counts") if adata.X is not None else None
    if counts is None:
        return None
    params = adata.uns.get("normalize_rna", {})
    if name == "rna" and params.get("method") == "log1p" and _is_log1p_of(adata, counts):
        target = float(params["target_sum"])
        return (
            f"log1p(counts / the cell's total count * {target!r}) as float32 CSR: "
            f"sccohort.pp.normalize.normalize_rna(mdata['{name}'], target_sum={target!r})"
        )
    if _is_float32_of(adata.X, counts):
        return "layers['counts'] as float32 CSR"
    return None


def _is_log1p_of(adata: Any, counts: Any) -> bool:
    """Whether ``.X`` is `normalize_rna`'s log1p of ``counts`` (checked on spread rows)."""
    import anndata as ad
    import scipy.sparse as sp

    from sccohort.pp.normalize import normalize_rna

    x = adata.X
    if not (sp.issparse(x) and sp.issparse(counts)) or x.shape != counts.shape:
        return False
    rows = np.unique(np.linspace(0, x.shape[0] - 1, min(CHECK_ROWS, x.shape[0])).astype(int))
    part = ad.AnnData(X=sp.csr_matrix(counts[rows]))
    normalize_rna(part, target_sum=float(adata.uns["normalize_rna"]["target_sum"]), layer=None)
    return _same_csr(sp.csr_matrix(x[rows]), part.X) and x.dtype == np.float32


def _is_float32_of(x: Any, counts: Any) -> bool:
    import scipy.sparse as sp

    if not (sp.issparse(x) and sp.issparse(counts)) or x.shape != counts.shape:
        return False
    return x.dtype == np.float32 and _same_csr(sp.csr_matrix(x), sp.csr_matrix(counts))


def _same_csr(a: Any, b: Any) -> bool:
    """Same stored entries (positions and values, compared as float32), bit for bit."""
    return (
        a.nnz == b.nnz
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(
            a.data.astype(np.float32).view(np.uint32), b.data.astype(np.float32).view(np.uint32)
        )
    )


def _repeated_obsm(mdata: Any, adata: Any) -> list[str]:
    """Keys of ``adata.obsm`` equal to the MuData's ``obsm`` of the same name."""
    if not adata.obs_names.equals(mdata.obs_names):
        return []
    return [
        key
        for key, value in adata.obsm.items()
        if key in mdata.obsm and _same_array(value, mdata.obsm[key])
    ]


def _same_array(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _repeated_obs(mdata: Any, adata: Any) -> list[str]:
    """Columns of ``adata.obs`` equal to the MuData's ``obs`` column of the same name."""
    same = []
    for column in adata.obs.columns:
        if column not in mdata.obs.columns:
            continue
        mine = adata.obs[column].astype(object).to_numpy()
        theirs = mdata.obs[column].reindex(adata.obs_names).astype(object).to_numpy()
        if pd.Series(mine).equals(pd.Series(theirs)):
            same.append(column)
    return same


def _restore_left_out(mdata: Any) -> None:
    """Put back what `write_cohort` left out (``uns["left_out"]``), then drop the note."""
    import scipy.sparse as sp

    from sccohort.pp.normalize import normalize_rna

    note = mdata.uns.pop(LEFT_OUT_KEY, None) or {}
    for name, entry in note.items():
        if name not in mdata.mod or not isinstance(entry, dict):
            continue
        adata = mdata.mod[name]
        if "X" in entry:
            if str(entry["X"]).startswith("log1p"):
                target = float(adata.uns["normalize_rna"]["target_sum"])
                normalize_rna(adata, target_sum=target)
            else:
                adata.X = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
        for key in entry.get("obsm", []):
            adata.obsm[key] = mdata.obsm[key]
        columns = list(entry.get("obs", []))
        if columns:
            obs = adata.obs.copy()
            for column in columns:
                obs[column] = mdata.obs[column].reindex(adata.obs_names)
            order = [c for c in entry.get("obs_order", []) if c in obs.columns]
            adata.obs = obs[order + [c for c in obs.columns if c not in order]]

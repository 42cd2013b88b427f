"""Pseudobulks: the raw RNA counts of every sample x group combination, summed.

`pseudobulk` sums the raw counts (never normalised or batch-corrected values) in one pass
over the CSR counts (or block by block from the on-disk store), indexed by donor (one
sample per donor) or by sample; :mod:`sccohort.stats.pseudobulk_de` tests them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.cohort.keys import cell_columns
from sccohort.errors import InputError
from sccohort.pp.store import rna_blocks, store_of

__all__ = ["pseudobulk"]


def _counts_matrix(adata: AnnData) -> sp.csr_matrix | np.ndarray:
    if "counts" not in adata.layers:
        raise InputError(
            "the RNA data has no layers['counts'] (raw counts)",
            key="layers",
            hint="Pseudobulk DE needs the raw integer UMI counts; never normalised or "
            "batch-corrected values",
        )
    x = adata.layers["counts"]
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        values = x.data
    else:
        x = np.asarray(x)
        values = x.ravel()
    if not _are_counts(values):
        raise InputError(
            "layers['counts'] holds negative or non-integer values",
            key="layers",
            hint="Store the raw UMI counts in layers['counts']",
        )
    return x


def _are_counts(values: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Whether every value is a non-negative integer (finite); integer arrays need no rounding."""
    if values.size == 0:
        return True
    if values.dtype.kind in "biu":
        return bool(values.min() >= 0)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: not a count
        for start in range(0, values.size, chunk):  # bounded temporary memory
            part = values[start : start + chunk]
            if np.any(part < 0) or np.any(part - np.floor(part) != 0):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _sum_rows(indptr, indices, data, rows, groups, out):  # pragma: no cover - compiled
    """``out[groups[k]] += row rows[k]`` of a CSR matrix; rows sorted by group (cache-local)."""
    for k in range(rows.size):
        g = groups[k]
        for j in range(indptr[rows[k]], indptr[rows[k] + 1]):
            out[g, indices[j]] += data[j]
    return out


def _group_sums(x: sp.csr_matrix | np.ndarray, cells: np.ndarray, codes: np.ndarray, n: int):
    """Sums (n x genes, int64) of the rows ``cells`` of x by group ``codes`` (0..n-1)."""
    if not sp.issparse(x):
        indicator = sp.csr_matrix((np.ones(cells.size), (codes, cells)), shape=(n, x.shape[0]))
        return np.rint(indicator @ x).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    integer = x.dtype.kind in "biu"
    out = np.zeros((n, x.shape[1]), dtype=np.int64 if integer else np.float64)
    _sum_rows(x.indptr, x.indices, x.data, cells[order], codes[order], out)
    return out if integer else np.rint(out).astype(np.int64)


def _rna_and_obs(adata: AnnData) -> tuple[AnnData, pd.DataFrame]:
    """The RNA AnnData and its cells' obs (a MuData's ``"rna"`` with the MuData's labels)."""
    if not hasattr(adata, "mod"):
        return adata, adata.obs
    if "rna" not in adata.mod:
        raise InputError("the MuData has no 'rna' modality", key="mod", hint="Pass the RNA")
    obs = adata.obs
    rna = adata.mod["rna"]
    if not obs.index.equals(rna.obs_names):
        obs = obs.reindex(rna.obs_names)
    return rna, obs


def _chosen_samples(samples: Sequence[str], donor_of: pd.Series) -> list[str]:
    """The given samples, deduplicated; each must have cells and a donor of its own."""
    chosen = list(dict.fromkeys(samples))
    unknown = [s for s in chosen if s not in donor_of.index]
    if unknown:
        raise InputError(
            f"sample(s) {', '.join(unknown)} have no cells",
            sample=unknown[0],
            hint=f"Samples with cells: {', '.join(donor_of.index)}",
        )
    donors = donor_of.loc[chosen]
    twice = donors[donors.duplicated(keep=False)]
    if len(twice):
        raise InputError(
            f"donor '{twice.iloc[0]}' has several of the given samples "
            f"({', '.join(twice.index[twice == twice.iloc[0]])})",
            sample=twice.index[0],
            hint="Give one sample per donor (e.g. SampleSheet.primary_samples())",
        )
    return chosen


def pseudobulk(
    adata: AnnData,
    groupby: str = "subset",
    *,
    samples: Sequence[str] | None = None,
    min_cells: int = 10,
    sample_key: str = "sample_id",
    donor_key: str = "donor_id",
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Sum the raw counts of every sample x group combination.

    Parameters
    ----------
    adata
        Cells x genes with ``layers["counts"]`` (raw integer counts, sparse or dense) and
        ``obs`` columns ``sample_key``, ``donor_key`` and ``groupby`` (cells with a missing
        label are left out). A MuData is read as its ``"rna"`` modality with labels from
        the MuData's ``obs``.
    groupby
        The ``obs`` column whose levels are pseudobulked separately (``"subset"``, ``"l2"``).
    samples
        Samples to use, at most one per donor (e.g. the primary samples); the matrices are
        then indexed by ``donor_id``. ``None``: every sample, indexed by ``sample_id``.
    min_cells
        Combinations with fewer cells are dropped (listed in ``meta`` with ``kept=False``).
    sample_key, donor_key
        The ``obs`` columns naming each cell's sample and donor.

    Returns
    -------
    counts
        Group -> DataFrame (samples or donors x genes, ``int64``) of the kept combinations.
    meta
        One row per sample x group combination with at least one cell: ``group, sample_id,
        donor_id, n_cells, kept``.

    Examples
    --------
    >>> from sccohort.stats import pseudobulk
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> counts, meta = pseudobulk(mdata, "l1", min_cells=10)
    >>> counts["Mono"].shape  # 4 samples x genes, summed raw counts
    (4, 19409)
    >>> meta.columns.tolist()
    ['group', 'sample_id', 'donor_id', 'n_cells', 'kept']
    """
    adata, obs = _rna_and_obs(adata)
    obs = cell_columns(
        obs,
        {"sample_id": sample_key, "donor_id": donor_key, "group": groupby},
        hint="Pseudobulk needs each cell's sample, donor and group",
    )
    if min_cells < 1:
        raise InputError(f"min_cells must be >= 1, got {min_cells}", key="min_cells")
    store = store_of(adata)
    x = None if store is not None else _counts_matrix(adata)
    sample = obs["sample_id"].astype(str)
    donor_of = obs.groupby(sample.values, observed=True)["donor_id"].first().astype(str)
    use = obs["group"].notna().to_numpy()
    by_donor = samples is not None
    if by_donor:
        chosen = _chosen_samples(samples, donor_of)
        use &= sample.isin(chosen).to_numpy()

    cells = np.flatnonzero(use)
    label_codes, label_names = pd.factorize(obs["group"].to_numpy()[cells].astype(str), sort=True)
    sample_codes, sample_names = pd.factorize(sample.to_numpy()[cells], sort=True)
    n_samples = max(len(sample_names), 1)
    combos, codes = np.unique(
        label_codes.astype(np.int64) * n_samples + sample_codes, return_inverse=True
    )
    codes = codes.ravel()
    if store is None:
        summed = _group_sums(x, cells, codes, len(combos))
    else:  # raw counts on disk: summed block of genes by block (integers: exact either way)
        summed = np.hstack(
            [_group_sums(b, cells, codes, len(combos)) for _, _, b in rna_blocks(adata, True)]
        )
    n_cells = np.bincount(codes, minlength=len(combos))

    meta = pd.DataFrame(
        {
            "group": np.asarray(label_names)[combos // n_samples],
            "sample_id": np.asarray(sample_names)[combos % n_samples],
            "n_cells": n_cells,
        }
    )
    meta.insert(2, "donor_id", donor_of.reindex(meta["sample_id"]).to_numpy())
    meta["kept"] = meta["n_cells"] >= min_cells
    genes = pd.Index(adata.var_names.astype(str), name="gene")
    counts: dict[str, pd.DataFrame] = {}
    for group, rows in meta[meta["kept"]].groupby("group", sort=True).groups.items():
        idx = meta.loc[rows, "donor_id" if by_donor else "sample_id"]
        frame = pd.DataFrame(summed[rows.to_numpy()], index=idx.to_numpy(), columns=genes)
        frame.index.name = "donor_id" if by_donor else "sample_id"
        counts[str(group)] = frame
    return counts, meta.reset_index(drop=True)

"""RNA kept on disk: the cohort's raw counts by blocks of genes, log-normalised as read.

A cohort too large to hold all genes of all cells in memory (a million cells: about 21 GB of
counts and log-normalised values) keeps its RNA counts in one HDF5 file instead, written one
sample at a time as the per-sample tasks finish. The cohort's ``mod["rna"]`` then has
``obs``, ``var`` and no matrices; ``uns["rna_store"]`` names the file. Every stage reads the
RNA through the functions here, which serve the same matrices from memory (``.X``,
``layers["counts"]``) or from the store, so results do not depend on where the RNA lives:

- `rna_columns`: all cells x some genes (HVGs, marker panels, gene sets);
- `rna_rows`: some cells x all genes (a lineage when it is subclustered);
- `rna_blocks`: all cells x each block of `BLOCK_GENES` genes in turn (markers, HVG
  moments, pseudobulk sums, gene means).

`RnaCollector` writes the store during preprocessing.

File layout: attributes ``n_obs``, ``n_vars``, ``block_genes``, ``target_sum``,
``samples`` (the groups ``k`` in cohort order) and ``sample_ids`` (their ids);
``var_names``; per sample (group ``k``, numbered as written) ``s/<k>/obs_names``,
``s/<k>/totals`` (float64 counts per cell, as `normalize_rna` sums them) and
``s/<k>/b<j>/{data,indices,indptr}``: the int32 counts of its cells x block ``j`` (CSR).
Log-normalised values are computed as blocks are read, by the kernel `normalize_rna`
uses, so they are bit for bit ``.X``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.pp.normalize import _log1p_rows, _row_sums, cell_scale

#: Genes per block of the store (and of `rna_blocks` over an in-memory matrix).
BLOCK_GENES = 2048
#: The store's name in a run's output folder.
RNA_STORE_FILE = "rna_counts.h5"
#: ``uns`` key of the store's path in an RNA AnnData whose counts stay on disk.
STORE_KEY = "rna_store"
#: ``[run] rna_on_disk = "auto"`` keeps the RNA on disk once the cells that pass QC exceed this
#: (in memory, 230,000 cells take 7 GB for the whole run).
AUTO_DISK_CELLS = 300_000


def block_bounds(n_vars: int, block_genes: int | None = None) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` column ranges of the gene blocks (default `BLOCK_GENES` wide)."""
    block_genes = BLOCK_GENES if block_genes is None else block_genes
    return [(lo, min(lo + block_genes, n_vars)) for lo in range(0, n_vars, block_genes)] or [(0, 0)]


#: `normalize_rna`'s kernel compiled without threads (the same expression, the same bits):
#: a lineage's rows are read in a forked worker, where OpenMP threads would abort it. Not
#: cached on disk: numba's cache for this source file would not tell it from the threaded one.
_log1p_rows_serial = numba.njit(nogil=True)(_log1p_rows.py_func)


def _normalised(counts: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    data = np.empty(counts.nnz, dtype=np.float32)
    _log1p_rows_serial(counts.data, counts.indptr, scale, data)
    return sp.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape)


@numba.njit(cache=True, nogil=True)
def _split_blocks(indptr, indices, data, edges):  # pragma: no cover - numba
    """A CSR matrix cut into column blocks ``[edges[j], edges[j + 1])``, in one pass.

    Returns each block's row pointers (blocks x rows + 1, int64, from 0), where each block's
    values start in the outputs (blocks + 1), and the column indices (int32, relative to
    the block) and values of all blocks one after another: block ``j`` is
    ``csr[:, edges[j]:edges[j + 1]]`` as scipy slices it.
    """
    n_rows, n_blocks = indptr.shape[0] - 1, edges.shape[0] - 1
    ptr = np.zeros((n_blocks, n_rows + 1), dtype=np.int64)
    for r in range(n_rows):
        for p in range(indptr[r], indptr[r + 1]):
            ptr[np.searchsorted(edges, indices[p], side="right") - 1, r + 1] += 1
    start = np.zeros(n_blocks + 1, dtype=np.int64)
    for j in range(n_blocks):
        for r in range(n_rows):
            ptr[j, r + 1] += ptr[j, r]
        start[j + 1] = start[j] + ptr[j, n_rows]
    out_indices = np.empty(start[n_blocks], dtype=np.int32)
    out_data = np.empty(start[n_blocks], dtype=data.dtype)
    fill = np.empty(n_blocks, dtype=np.int64)
    for r in range(n_rows):
        for j in range(n_blocks):
            fill[j] = start[j] + ptr[j, r]
        for p in range(indptr[r], indptr[r + 1]):
            j = np.searchsorted(edges, indices[p], side="right") - 1
            out_indices[fill[j]] = indices[p] - edges[j]
            out_data[fill[j]] = data[p]
            fill[j] += 1
    return ptr, start, out_indices, out_data


class RnaStoreWriter:
    """Write samples' RNA counts (cells x genes, CSR) into a new store at ``path``.

    The file is written under a temporary name and renamed by `close`, so a store that
    exists is complete.
    """

    def __init__(self, path: str | Path, var_names: pd.Index, block_genes: int | None = None):
        block_genes = BLOCK_GENES if block_genes is None else block_genes
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.var_names = pd.Index(var_names.astype(str))
        self.bounds = block_bounds(len(var_names), block_genes)
        self.block_genes = block_genes
        self.samples: list[str] = []
        self.fh = h5py.File(self.tmp, "w")
        self.fh.create_dataset("var_names", data=self.var_names.to_numpy().astype("S"))

    def add(self, sample_id: str, counts: sp.spmatrix, obs_names: pd.Index) -> None:
        """Append one sample: ``counts`` (its cells x the store's genes, integer)."""
        csr = sp.csr_matrix(counts, dtype=np.int32)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        group = self.fh.create_group(f"s/{len(self.samples)}")
        group.create_dataset("obs_names", data=np.asarray(obs_names).astype("S"))
        totals = np.empty(csr.shape[0], dtype=np.float64)
        _row_sums(csr.data, csr.indptr, totals)
        group.create_dataset("totals", data=totals)
        edges = np.array([lo for lo, _ in self.bounds] + [csr.shape[1]], dtype=np.int64)
        ptr, start, indices, data = _split_blocks(csr.indptr, csr.indices, csr.data, edges)
        for j in range(len(self.bounds)):
            sub = group.create_group(f"b{j}")
            sub.create_dataset("data", data=data[start[j] : start[j + 1]])
            sub.create_dataset("indices", data=indices[start[j] : start[j + 1]])
            sub.create_dataset("indptr", data=ptr[j])
        self.samples.append(str(sample_id))

    def close(self, order: list[str], target_sum: float) -> RnaStore:
        """Finish the file; ``order``: the samples' order in the cohort (each added once)."""
        if sorted(order) != sorted(self.samples):
            raise ValueError(f"store holds samples {self.samples}, asked for order {order}")
        position = {s: i for i, s in enumerate(self.samples)}
        attrs = self.fh.attrs
        attrs["samples"] = np.array([str(position[s]) for s in order], dtype="S")
        attrs["sample_ids"] = np.array(order, dtype="S")
        attrs["n_obs"] = sum(self.fh[f"s/{position[s]}/totals"].shape[0] for s in order)
        attrs["n_vars"] = len(self.var_names)
        attrs["block_genes"] = self.block_genes
        attrs["target_sum"] = float(target_sum)
        self.fh.close()
        os.replace(self.tmp, self.path)
        return open_store(self.path)

    def abort(self) -> None:
        """Close and remove the unfinished file."""
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class RnaStore:
    """A finished store, read by blocks of genes (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                f"the RNA store {self.path} is missing",
                file=self.path,
                hint="the cohort's RNA counts were kept on disk there; rerun without --resume",
            )
        with h5py.File(self.path, "r") as fh:
            attrs = fh.attrs
            self.groups = [f"s/{k.decode()}" for k in attrs["samples"]]
            self.n_obs = int(attrs["n_obs"])
            self.block_genes = int(attrs["block_genes"])
            self.target_sum = float(attrs["target_sum"])
            self.var_names = pd.Index(fh["var_names"][:].astype(str))
            self.obs_names = pd.Index(
                np.concatenate([fh[g]["obs_names"][:] for g in self.groups]).astype(str)
            )
            self.totals = np.concatenate([fh[g]["totals"][:] for g in self.groups])
            sizes = [fh[g]["totals"].shape[0] for g in self.groups]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # per sample
        self.bounds = block_bounds(len(self.var_names), self.block_genes)
        self.scale = cell_scale(self.totals, self.target_sum)

    def counts_block(self, j: int) -> sp.csr_matrix:
        """Raw counts of all cells x block ``j``'s genes (int32 CSR)."""
        lo, hi = self.bounds[j]
        data, indices, indptr = [], [], [np.zeros(1, dtype=np.int64)]
        offset = 0
        with h5py.File(self.path, "r") as fh:
            for g in self.groups:
                part = fh[f"{g}/b{j}"]
                data.append(part["data"][:])
                indices.append(part["indices"][:])
                ptr = part["indptr"][:]
                indptr.append(ptr[1:] + offset)
                offset += int(ptr[-1])
        index_dtype = np.int32 if offset < 2**31 else np.int64
        return sp.csr_matrix(
            (
                np.concatenate(data),
                np.concatenate(indices).astype(index_dtype, copy=False),
                np.concatenate(indptr).astype(index_dtype, copy=False),
            ),
            shape=(self.n_obs, hi - lo),
        )

    def block(self, j: int, counts: bool = False) -> sp.csr_matrix:
        """All cells x block ``j``: log-normalised float32 (or raw ``counts``), CSR."""
        raw = self.counts_block(j)
        return raw if counts else _normalised(raw, self.scale)

    def columns(self, genes: np.ndarray, counts: bool = False) -> sp.csr_matrix:
        """All cells x ``genes`` (positions, any order), as ``X[:, genes]`` would be."""
        genes = np.asarray(genes, dtype=np.int64)
        unique = np.unique(genes)
        parts = []
        for j, (lo, hi) in enumerate(self.bounds):
            inside = unique[(unique >= lo) & (unique < hi)]
            if inside.size:  # select, then normalise: the same values, less work
                part = self._block_columns(j, inside - lo)
                parts.append(part if counts else _normalised(part, self.scale))
        if not parts:
            dtype = np.int32 if counts else np.float32
            return sp.csr_matrix((self.n_obs, genes.size), dtype=dtype)
        out = parts[0] if len(parts) == 1 else sp.hstack(parts, format="csr")
        if not np.array_equal(unique, genes):
            out = out[:, np.searchsorted(unique, genes)]
        return out

    def _block_columns(self, j: int, columns: np.ndarray) -> sp.csr_matrix:
        """Raw counts of all cells x ``columns`` (sorted positions) of block ``j``.

        ``counts_block(j)[:, columns]``, selected sample by sample: memory holds the result
        and one sample's piece, not the whole block.
        """
        with h5py.File(self.path, "r") as fh:
            pieces = [self._piece(fh, k, j)[:, columns] for k in range(len(self.groups))]
        return sp.vstack(pieces, format="csr")

    def _piece(self, fh: h5py.File, k: int, j: int) -> sp.csr_matrix:
        """Raw counts of sample ``k``'s cells x block ``j`` (int32 CSR), from the open file."""
        lo, hi = self.bounds[j]
        part = fh[f"{self.groups[k]}/b{j}"]
        return sp.csr_matrix(
            (part["data"][:], part["indices"][:], part["indptr"][:]),
            shape=(int(self.starts[k + 1] - self.starts[k]), hi - lo),
        )

    def row_nnz(self, j: int) -> np.ndarray:
        """Stored values per cell in block ``j`` (from the row pointers alone)."""
        with h5py.File(self.path, "r") as fh:
            return np.concatenate([np.diff(fh[f"{g}/b{j}/indptr"][:]) for g in self.groups])

    def rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Cells ``rows`` x all genes, log-normalised, as ``X[rows]`` would be."""
        r = self.compact_rows(rows, np.int32)
        index_dtype = np.int32 if r.indptr[-1] < 2**31 else np.int64
        return sp.csr_matrix(
            (r.data, r.indices.astype(index_dtype, copy=False), r.indptr.astype(index_dtype)),
            shape=r.shape,
        )

    def compact_rows(self, rows: np.ndarray, index_dtype: Any = None) -> CompactRows:
        """`rows` as plain CSR arrays, gene indices int16 where the genes allow it.

        Same values, indices and order as `rows`; a gene index takes 2 bytes instead of 4
        when there are fewer than 32,768 genes (``index_dtype`` forces one). The result is
        allocated once (sized from the row pointers) and filled one sample's block at a
        time, so memory is the result plus one sample x block piece.
        """
        if index_dtype is None:
            index_dtype = np.int16 if len(self.var_names) <= 2**15 else np.int32
        rows = np.asarray(rows, dtype=np.int64)
        per_block = [self.row_nnz(j)[rows] for j in range(len(self.bounds))]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(np.sum(per_block, axis=0), out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        indices = np.empty(int(indptr[-1]), dtype=index_dtype)
        filled = indptr[:-1].copy()  # next free position of each row
        sample = np.searchsorted(self.starts, rows, side="right") - 1
        wanted = [(k, np.flatnonzero(sample == k)) for k in np.unique(sample)]
        with h5py.File(self.path, "r") as fh:
            for j, (lo, _) in enumerate(self.bounds):
                for k, pos in wanted:  # pos: the result rows that are sample k's cells
                    piece = self._piece(fh, k, j)[rows[pos] - self.starts[k]]
                    part = _normalised(piece, self.scale[rows[pos]])
                    sizes = np.diff(part.indptr)
                    dest = np.repeat(filled[pos] - part.indptr[:-1], sizes) + np.arange(part.nnz)
                    data[dest] = part.data
                    indices[dest] = part.indices + lo
                    filled[pos] += sizes
        return CompactRows(data, indices, indptr, (rows.size, len(self.var_names)))


class CompactRows(NamedTuple):
    """Rows of the store as CSR arrays (indices sorted within each row; int16 or int32)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    @property
    def has_sorted_indices(self) -> bool:
        """Always: each row's pieces are sorted and come in block order."""
        return True


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime: float) -> RnaStore:
    return RnaStore(path)


def open_store(path: str | Path) -> RnaStore:
    """The store at ``path`` (opened once per file version)."""
    path = Path(path)
    return _open(str(path), path.stat().st_mtime if path.exists() else 0.0)


def store_of(rna: AnnData) -> RnaStore | None:
    """The store holding ``rna``'s counts, or None when they are in memory."""
    path = rna.uns.get(STORE_KEY) if rna.X is None else None
    if path is None:
        return None
    store = open_store(path)
    if not (store.obs_names.equals(rna.obs_names) and store.var_names.equals(rna.var_names)):
        raise InputError(
            f"the RNA store {path} does not match the cohort's RNA ({store.n_obs} x "
            f"{len(store.var_names)} vs {rna.n_obs} x {rna.n_vars})",
            file=path,
            hint="subset the cohort's cells or genes only in memory; rerun without --resume",
        )
    return store


def _matrix(rna: AnnData, counts: bool) -> Any:
    x = rna.layers["counts"] if counts else rna.X
    if x is None:
        raise InputError("the RNA data has no expression matrix (.X is None) and no store")
    return sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)


def rna_columns(rna: AnnData, genes: np.ndarray, counts: bool = False) -> Any:
    """All cells x ``genes`` (positions) of ``.X`` (or raw ``counts``), from memory or store."""
    store = store_of(rna)
    if store is not None:
        return store.columns(genes, counts)
    return _matrix(rna, counts)[:, np.asarray(genes, dtype=np.int64)]


def rna_rows(rna: AnnData, rows: np.ndarray) -> Any:
    """Cells ``rows`` x all genes of the log-normalised ``.X``, from memory or store."""
    store = store_of(rna)
    if store is not None:
        return store.rows(np.asarray(rows, dtype=np.int64))
    return _matrix(rna, False)[np.asarray(rows, dtype=np.int64)]


def rna_blocks(rna: AnnData, counts: bool = False) -> Iterator[tuple[int, int, Any]]:
    """``(lo, hi, all cells x genes lo..hi-1)`` for each gene block, in order."""
    store = store_of(rna)
    if store is not None:
        for j, (lo, hi) in enumerate(store.bounds):
            yield lo, hi, store.block(j, counts)
        return
    x = _matrix(rna, counts)
    for lo, hi in block_bounds(rna.n_vars):
        yield lo, hi, x[:, lo:hi]


class RnaCollector:
    """Takes each prepared sample as its task ends; moves its RNA counts into a store.

    ``mode``: ``"never"`` (keep everything in memory), ``"always"``, or ``"auto"`` (start
    writing once the cells received exceed `AUTO_DISK_CELLS`; the samples held until then
    are written first). The store's genes are in the order of the first sample to arrive
    (samples quantified against one reference list them in one order); each written
    sample's ``mod["rna"]`` keeps its cells and those genes, without matrices. A sample
    whose gene set differs is an error naming it, as when joining in memory.
    """

    def __init__(self, path: Path, files: pd.Series, mode: str, target_sum: float) -> None:
        self.path, self.files, self.mode, self.target_sum = path, files, mode, target_sum
        self.order = [str(s) for s in files.index]
        self.waiting: dict[str, Any] = {}  # samples with counts still in memory
        self.cells = 0
        self.writer: RnaStoreWriter | None = None
        self.first: str | None = None  # the sample whose gene order the store keeps

    @property
    def on_disk(self) -> bool:
        """Whether the counts go (or went) to the store."""
        return self.mode == "always" or (self.mode == "auto" and self.cells > AUTO_DISK_CELLS)

    def take(self, index: int, sample: Any) -> Any:
        """``compute``'s ``on_result``: note the sample, write what can be written."""
        rna = sample.mods.get("rna")
        if rna is None or self.mode == "never":
            return sample
        self.cells += rna.n_obs
        self.waiting[sample.sample_id] = sample
        if self.on_disk:
            try:
                self._flush()
            except BaseException:
                self.abort()
                raise
        return sample

    def _flush(self) -> None:
        from sccohort.io.stack import check_same_genes

        if self.writer is None:
            self.first = next(iter(self.waiting))
            genes = self.waiting[self.first].mods["rna"].var_names
            self.writer = RnaStoreWriter(self.path, pd.Index(genes.astype(str)))
        reference = self.writer.var_names
        for sample_id, sample in list(self.waiting.items()):
            rna = sample.mods["rna"]
            names = pd.Index(rna.var_names.astype(str))
            file = self.files.get(sample_id)
            check_same_genes(self.first, reference, sample_id, names, file)
            counts = sp.csr_matrix(rna.layers["counts"])
            if not names.equals(reference):
                columns = names.get_indexer(reference)
                counts = counts[:, columns]
                sample.mods["rna"] = AnnData(obs=rna.obs, var=rna.var.iloc[columns])
            self.writer.add(sample_id, counts, rna.obs_names)
            del rna.layers["counts"]
            rna.X = None
            del self.waiting[sample_id]

    def finish(self) -> RnaStore | None:
        """Write what is left; the finished store, or None when the RNA stays in memory."""
        if not self.on_disk or self.writer is None and not self.waiting:
            return None
        try:
            self._flush()
            order = [s for s in self.order if s in set(self.writer.samples)]
            return self.writer.close(order, self.target_sum)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove an unfinished store."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

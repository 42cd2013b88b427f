"""Benchmark ``sccohort.tl.markers.rank_markers`` against scanpy's Wilcoxon rank_genes_groups.

Data: a synthetic sparse log1p-normalised matrix with the shape and sparsity of a full cohort
(default 230,000 cells x 19,500 genes, ~1,800 nonzeros per cell, 30 groups of unequal size,
20 planted markers per group); built with numba in seconds instead of simulating Cell Ranger
files. Ours runs on all genes. scanpy (``method="wilcoxon"``, ``use_raw=False``, ``pts=True``)
runs on a fixed random subset of genes (default 2,000) and its time is scaled linearly to all
genes (scanpy ranks each gene's dense column, so its cost is linear in genes); the statistics
of that subset are asserted equal to ours. Writes ``benchmarks/results/markers.csv``.

Run: ``python benchmarks/bench_markers.py [--cells 230000] [--genes 19500] [--scanpy-genes 2000]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import numba
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp

from sccohort.tl.markers import rank_markers

RESULTS = Path(__file__).resolve().parent / "results" / "markers.csv"


@numba.njit(cache=True)
def _rand(state: np.ndarray) -> float:
    """splitmix64 step on ``state[0]``; uniform in [0, 1)."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, parallel=True)
def _simulate(n_cells, n_genes, per_cell, labels, n_markers, seed):
    cum = np.cumsum(1.0 / np.arange(1, n_genes + 1) ** 0.7)
    cum /= cum[-1]
    counts = np.zeros(n_cells, dtype=np.int64)
    rows_idx = np.empty((n_cells, per_cell), dtype=np.int32)
    rows_val = np.empty((n_cells, per_cell), dtype=np.float32)
    for r in numba.prange(n_cells):
        state = np.array([np.uint64(seed) * np.uint64(1_000_003) + np.uint64(r)], dtype=np.uint64)
        g = labels[r]
        seen = np.zeros(n_genes, dtype=np.bool_)
        n_seen = 0
        for k in range(n_markers):
            if _rand(state) < 0.9:
                seen[g * n_markers + k] = True
                n_seen += 1
        while n_seen < per_cell:
            j = np.searchsorted(cum, _rand(state))
            if not seen[j]:
                seen[j] = True
                n_seen += 1
        cols = np.flatnonzero(seen)
        c = np.empty(cols.size, dtype=np.float64)
        for k in range(cols.size):
            c[k] = 1.0 + np.floor(-np.log(1.0 - _rand(state)) * 0.8)
            if cols[k] // n_markers == g:
                c[k] += 3.0
        lib = c.sum()
        counts[r] = cols.size
        for k in range(cols.size):
            rows_idx[r, k] = cols[k]
            rows_val[r, k] = np.float32(np.log1p(c[k] * 1e4 / lib))
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    for r in range(n_cells):
        indptr[r + 1] = indptr[r] + counts[r]
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.float32)
    for r in numba.prange(n_cells):
        for k in range(counts[r]):
            indices[indptr[r] + k] = rows_idx[r, k]
            data[indptr[r] + k] = rows_val[r, k]
    return indptr, indices, data


def synthetic(n_cells: int, n_genes: int, per_cell: int, n_groups: int, seed: int = 0):
    """AnnData ``(n_cells, n_genes)`` float32 CSR log1p values, ``obs["group"]`` labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_groups, 2.0))
    labels = rng.choice(n_groups, size=n_cells, p=sizes).astype(np.int64)
    indptr, indices, data = _simulate(n_cells, n_genes, per_cell, labels, 20, seed)
    x = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    adata = ad.AnnData(x)
    adata.var_names = [f"G{j}" for j in range(n_genes)]
    adata.obs["group"] = pd.Categorical([f"t{g:02d}" for g in labels])
    return adata


class PeakRSS:
    """Sample this process's resident memory every 50 ms; ``peak`` in GB."""

    def __enter__(self) -> PeakRSS:
        self.peak = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss / 1e9)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss / 1e9)


def check_equal(ours: pd.DataFrame, adata: ad.AnnData, key: str = "rank_genes_groups") -> float:
    """Assert ours equals scanpy's uns[key] for every group and gene; worst relative error."""
    res = adata.uns[key]
    worst = 0.0
    pairs = [
        ("statistic", "scores"),
        ("logfoldchange", "logfoldchanges"),
        ("pvalue", "pvals"),
        ("padj", "pvals_adj"),
    ]
    for group, sub in ours.groupby("group", observed=True):
        sub = sub.set_index("feature")
        names = res["names"][group]
        for mine, theirs in pairs:
            want = res[theirs][group].astype(np.float64)
            got = sub.loc[names, mine].to_numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 if mine != "padj" else 0)
            worst = max(worst, float(np.max(np.abs(got - want) / (np.abs(want) + 1e-12))))
        genes = res["pts"].index
        np.testing.assert_allclose(sub.loc[genes, "pct_in"], res["pts"][group], rtol=1e-12)
        np.testing.assert_allclose(sub.loc[genes, "pct_out"], res["pts_rest"][group], rtol=1e-12)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=230_000)
    parser.add_argument("--genes", type=int, default=19_500)
    parser.add_argument("--per-cell", type=int, default=1_800)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--scanpy-genes", type=int, default=2_000)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import scanpy as sc

    t0 = time.perf_counter()
    adata = synthetic(args.cells, args.genes, args.per_cell, args.groups)
    print(
        f"data: {adata.n_obs} cells x {adata.n_vars} genes, "
        f"{adata.X.nnz / adata.n_obs:.0f} nonzeros/cell, {args.groups} groups, "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    rank_markers(adata[:2000].copy(), "group", n_jobs=args.n_jobs)  # numba compile/cache

    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        ours = rank_markers(adata, "group", n_jobs=args.n_jobs)
        t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"ours, all {adata.n_vars} genes: {t_ours:.1f} s wall, {c_ours:.1f} s cpu, "
        f"peak RSS {mem.peak:.2f} GB, load average {os.getloadavg()[0]:.1f}"
    )

    rng = np.random.default_rng(0)
    subset = np.sort(
        rng.choice(adata.n_vars, size=min(args.scanpy_genes, adata.n_vars), replace=False)
    )
    sub = adata[:, subset].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        sc.tl.rank_genes_groups(
            sub, "group", method="wilcoxon", use_raw=False, n_genes=sub.n_vars, pts=True
        )
        t_scanpy_sub, c_scanpy_sub = time.perf_counter() - t0, time.process_time() - c0
    t_scanpy = t_scanpy_sub * adata.n_vars / sub.n_vars
    c_scanpy = c_scanpy_sub * adata.n_vars / sub.n_vars
    print(
        f"scanpy, {sub.n_vars} genes: {t_scanpy_sub:.1f} s wall, {c_scanpy_sub:.1f} s cpu -> "
        f"{t_scanpy:.0f} s wall, {c_scanpy:.0f} s cpu extrapolated to {adata.n_vars} genes, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ours_sub = rank_markers(sub, "group", n_jobs=args.n_jobs)
    worst = check_equal(ours_sub, sub)
    keep = set(sub.var_names)
    full_on_subset = ours[ours["feature"].isin(keep)].reset_index(drop=True)
    np.testing.assert_allclose(
        full_on_subset.set_index(["group", "feature"]).sort_index()["statistic"],
        ours_sub.set_index(["group", "feature"]).sort_index()["statistic"],
        rtol=1e-12,
    )
    print(f"statistics equal to scanpy on the subset (worst relative difference {worst:.1e})")
    ratio = t_scanpy / t_ours
    print(f"speed-up: {ratio:.1f}x wall, {c_scanpy / c_ours:.1f}x cpu time")

    if not args.no_write:
        row = pd.DataFrame(
            [
                {
                    "date": dt.date.today().isoformat(),
                    "machine": f"{platform.machine()} {psutil.cpu_count()} cpus",
                    "n_jobs": args.n_jobs,
                    "cells": adata.n_obs,
                    "genes": adata.n_vars,
                    "groups": args.groups,
                    "nnz_per_cell": round(adata.X.nnz / adata.n_obs),
                    "seconds_ours": round(t_ours, 2),
                    "peak_rss_gb_ours": round(mem.peak, 2),
                    "scanpy_genes_measured": sub.n_vars,
                    "seconds_scanpy_measured": round(t_scanpy_sub, 2),
                    "seconds_scanpy_extrapolated": round(t_scanpy, 1),
                    "ratio": round(ratio, 1),
                    "cpu_seconds_ours": round(c_ours, 2),
                    "cpu_seconds_scanpy_extrapolated": round(c_scanpy, 1),
                    "cpu_ratio": round(c_scanpy / c_ours, 1),
                    "load_average": round(os.getloadavg()[0], 1),
                }
            ]
        )
        header = not RESULTS.exists()
        row.to_csv(RESULTS, mode="a", header=header, index=False)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

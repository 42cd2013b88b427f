"""Speed, memory and kNN recall of ``wnn_graph`` on 50,000 and 230,000 synthetic cells.

Run: ``python benchmarks/bench_wnn_scale.py`` (options: ``--sizes 50000 230000``,
``--recall-queries 20000``). Each size runs in a fresh process, so "first" includes loading the
cached numba code, and "warm" is a second call in that process.

Cells: 30 clusters, two modalities of 30 dimensions each (cluster centres N(0, 4), noise
N(0, 1); modality "rna" merges clusters 0 and 1, "prot" merges 2 and 3), as float32. Recall:
the approximate 200-neighbour search of each modality (the one ``wnn_graph`` runs for more
than 20,000 cells, same seed) against the exact search, on a random subset of query cells,
at 20 and 200 neighbours. The machine's load average is recorded: other jobs slow the timings.

Writes ``benchmarks/results/wnn_scale.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

RESULTS = Path(__file__).resolve().parent / "results" / "wnn_scale.csv"


def make_cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 30)`` rna and prot embeddings and ``(n,)`` cluster labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 30, n)
    centre_a = rng.normal(size=(30, 30)) * 2.0
    centre_b = rng.normal(size=(30, 30)) * 2.0
    centre_a[1] = centre_a[0]
    centre_b[3] = centre_b[2]
    a = (centre_a[truth] + rng.normal(size=(n, 30))).astype(np.float32)
    b = (centre_b[truth] + rng.normal(size=(n, 30))).astype(np.float32)
    return a, b, truth


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact ``k`` most similar other rows of unit-norm ``x`` for each query, ``(q, k)``."""
    from sccohort.tl.knn import top_k_rows

    out = np.empty((queries.size, k), dtype=np.int64)
    ids = np.arange(x.shape[0], dtype=np.int64)

    def block(start: int) -> None:
        q = queries[start : start + 256]
        sims = x[q] @ x.T
        top_k_rows(sims, q, k, ids, np.arange(start, start + q.size, dtype=np.int64), out)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(block, range(0, queries.size, 256)))
    return out


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact ``k`` neighbours found among the approximate ``k``."""
    a = np.sort(approx[:, :k], axis=1)
    hits = [np.isin(exact[i, :k], a[i], assume_unique=True).sum() for i in range(len(a))]
    return float(np.mean(hits) / k)


def run_one(n: int, n_queries: int) -> dict:
    """Time ``wnn_graph`` twice on ``n`` cells, then measure the kNN recall."""
    import numba

    from sccohort.tl.knn import knn_ivf
    from sccohort.tl.wnn import wnn_graph

    a, b, truth = make_cells(n)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = wnn_graph({"rna": a, "prot": b})
    first = time.perf_counter() - t0
    c0 = time.process_time()
    t0 = time.perf_counter()
    res = wnn_graph({"rna": a, "prot": b})
    warm = time.perf_counter() - t0
    warm_cpu = time.process_time() - c0
    load_after = os.getloadavg()[0]
    row = {
        "n_cells": n,
        "seconds_first_call": round(first, 2),
        "seconds_warm": round(warm, 2),
        "cpu_seconds_warm": round(warm_cpu, 2),
        "wnn_neighbours_same_cluster": round(
            float((truth[res.knn_indices] == truth[:, None]).mean()), 5
        ),
        "rna_weight_mean": round(float(res.weights[:, 0].mean()), 4),
    }
    rng = np.random.default_rng(0)  # wnn_graph's first draws: the rna search
    queries = np.sort(np.random.default_rng(1).choice(n, min(n_queries, n), replace=False))
    for name, emb in (("rna", a), ("prot", b)):
        x = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        approx = knn_ivf(x, 200, rng)
        exact = exact_top(x, queries, 200)
        row[f"recall20_{name}"] = round(recall(approx[queries], exact, 20), 4)
        row[f"recall200_{name}"] = round(recall(approx[queries], exact, 200), 4)
    row.update(
        recall_queries=queries.size,
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        load_avg_1min_before=round(load_before, 2),
        load_avg_1min_after=round(load_after, 2),
        numba_threads=numba.get_num_threads(),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 230_000])
    parser.add_argument("--recall-queries", type=int, default=20_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.recall_queries)))
        return
    rows = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--recall-queries",
            str(args.recall_queries),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(
            machine=f"{platform.machine()} {os.cpu_count()} cores",
            date=dt.date.today().isoformat(),
        )
        print(row, flush=True)
        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

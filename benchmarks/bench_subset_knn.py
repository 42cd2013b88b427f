"""The subset stage's approximate kNN search against the exact one, on a real run's embedding.

One command (a finished run of the 230,000-cell cohort, e.g. from ``bench_rna_on_disk.py``)::

    python benchmarks/bench_subset_knn.py --cohort /tmp/b230/rod/always/cohort.h5mu

Reads ``obsm["X_harmony"]`` and ``obs["l2"]`` of the run's ``cohort.h5mu`` and, for each
lineage of :data:`sccohort.tl.subsets.LINEAGES` and for all lineages pooled (a size the
largest lineages of a million-cell cohort reach), finds each cell's 15 nearest neighbours
with the inverted-file search (`sccohort.tl.knn.knn_ivf` with the stage's ``IVF_PROBES``,
what ``neighbours = "auto"`` uses above 70,000 cells) and with scikit-learn's brute force,
the stage's exact search. Reports per set: cells, seconds of each (brute force in full only up to
``--brute-max`` cells), the recall of the exact 15 neighbours (all cells, or ``--queries``
random cells above ``--brute-max``) and, where both graphs exist, the ARI between Leiden
clusterings (resolution 1.0, seed 0) of the two graphs, beside the ARI of the exact graph's
clusterings with seeds 0 and 1 (how much Leiden itself moves).

Writes ``benchmarks/results/subset_knn.csv`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from sccohort.tl.knn import knn_ivf
from sccohort.tl.lineage_graph import IVF_PROBES, _graph_from_knn, _leiden
from sccohort.tl.subsets import LINEAGES

RESULTS = Path(__file__).resolve().parent / "results" / "subset_knn.csv"
K = 15


def load(cohort: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X_harmony`` (cells x dims, float64 as the stage uses it) and the l2 labels."""
    with h5py.File(cohort, "r") as f:
        emb = np.asarray(f["obsm/X_harmony"][:], dtype=np.float64)
        l2 = f["obs/l2"]
        codes, cats = l2["codes"][:], l2["categories"][:].astype(str)
    return emb, cats[codes]


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours found among its approximate ones."""
    return float(np.mean([np.isin(e, a).mean() for e, a in zip(exact, approx, strict=True)]))


def one(name: str, x: np.ndarray, brute_max: int, n_queries: int) -> dict:
    n = x.shape[0]
    t0 = time.perf_counter()
    approx = knn_ivf(x, K, np.random.default_rng(0), n_probe=IVF_PROBES, metric="euclidean")
    t_ivf = time.perf_counter() - t0
    nn = NearestNeighbors(n_neighbors=K + 1, algorithm="brute").fit(x)
    row = {"set": name, "cells": n, "ivf_seconds": round(t_ivf, 2)}
    if n <= brute_max:
        t0 = time.perf_counter()
        exact = nn.kneighbors(x, return_distance=False)[:, 1:]
        row["exact_seconds"] = round(time.perf_counter() - t0, 2)
        row["recall"] = round(recall(approx, exact), 4)
        row["recall_cells"] = n
        g = _graph_from_knn(exact)
        a = _leiden(g, 1.0, 0)
        b = _leiden(_graph_from_knn(approx.astype(np.int64)), 1.0, 0)
        row["leiden_ari"] = round(adjusted_rand_score(a, b), 4)
        # how far Leiden moves on the same exact graph with another seed: the scale of the above
        row["leiden_ari_exact_other_seed"] = round(adjusted_rand_score(a, _leiden(g, 1.0, 1)), 4)
        row["clusters_exact"], row["clusters_ivf"] = int(a.max() + 1), int(b.max() + 1)
    else:
        q = np.sort(np.random.default_rng(1).choice(n, n_queries, replace=False))
        exact = nn.kneighbors(x[q], return_distance=False)[:, 1:]
        row["recall"] = round(recall(approx[q], exact), 4)
        row["recall_cells"] = n_queries
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="a run's cohort.h5mu")
    parser.add_argument("--brute-max", type=int, default=150_000)
    parser.add_argument("--queries", type=int, default=5_000)
    args = parser.parse_args()
    emb, l2 = load(args.cohort)
    sets = {name: np.flatnonzero(np.isin(l2, labels)) for name, labels in LINEAGES.items()}
    sets["all lineages"] = np.flatnonzero(np.isin(l2, [v for t in LINEAGES.values() for v in t]))
    rows = [one(name, emb[idx], args.brute_max, args.queries) for name, idx in sets.items()]
    table = pd.DataFrame(rows)
    table["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    table["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    table["cohort"] = str(args.cohort)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

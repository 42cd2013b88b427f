"""QC against the simulator's truth on the paper cohort: precision/recall per category and
per-sample timing.

Usage: python benchmarks/bench_qc_truth.py [--cohort DIR] [--cells-per-donor 2000]
       [--mode adaptive] [--doublet-method cite] [--doublet-neighbours auto]

Simulates the 27-donor paper cohort (29 samples) into DIR unless DIR/samples.csv exists,
reads it with `sccohort.read_cohort`, runs `qc_sample` per sample and writes
benchmarks/results/qc_truth.csv: one row per sample (``kind=sample``: cells, seconds) and
one row per category (``kind=category``: n_true, n_called, precision, recall).
Precision = share of cells given that reason that truly are that category; recall = share
of the category's cells removed for any reason (``recall_reason``: for that reason).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort import read_cohort
from sccohort.pp.qc import QCParams, QCWarning, qc_sample
from sccohort.simulate import simulate_cohort

OUT = Path(__file__).resolve().parent / "results" / "qc_truth.csv"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cohort", default="/tmp/qcbench/paper")
    parser.add_argument("--cells-per-donor", type=int, default=2000)
    parser.add_argument("--mode", default="adaptive")
    parser.add_argument("--doublet-method", default="cite")
    parser.add_argument("--doublet-neighbours", default="auto")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    cohort = Path(args.cohort)
    if not (cohort / "samples.csv").exists():
        simulate_cohort(cohort, design="paper", cells_per_donor=args.cells_per_donor, seed=0)
    mdata = read_cohort(cohort / "samples.csv")
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", keep_default_na=False)
    truth = truth.set_index("cell_id")

    frames, rows = [], []
    sample_ids = mdata.obs["sample_id"].astype(str)
    for sample in pd.unique(sample_ids):
        one = mdata[(sample_ids == sample).to_numpy()].copy()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QCWarning)
            frame, row = qc_sample(
                one,
                QCParams(
                    mode=args.mode,
                    doublet_method=args.doublet_method,
                    doublet_neighbours=args.doublet_neighbours,
                ),
            )
        seconds = time.perf_counter() - start
        frames.append(frame)
        rows.append(
            {
                "kind": "sample",
                "name": sample,
                "n_cells": row["cells_in"],
                "cells_out": row["cells_out"],
                "seconds": round(seconds, 2),
            }
        )
        print(f"{sample}: {row['cells_in']} cells, {seconds:.1f} s", flush=True)
    obs = pd.concat(frames)
    tr = truth.loc[obs.index]
    removed = ~obs["qc_pass"].to_numpy(bool)
    categories = {
        "doublet": tr["doublet"].to_numpy(bool),
        "low_quality": tr["low_quality"].to_numpy(bool),
        "platelet": (tr["contaminant"] == "platelet").to_numpy(),
        "red_cell": (tr["contaminant"] == "red_cell").to_numpy(),
    }
    for name, is_true in categories.items():
        called = (obs["qc_reason"] == name).to_numpy()
        rows.append(
            {
                "kind": "category",
                "name": name,
                "n_cells": int(is_true.sum()),
                "n_called": int(called.sum()),
                "precision": round(float(is_true[called].mean()), 4) if called.any() else np.nan,
                "recall": round(float(removed[is_true].mean()), 4),
                "recall_reason": round(float(called[is_true].mean()), 4),
            }
        )
    good = ~np.logical_or.reduce(list(categories.values()))
    rows.append(
        {
            "kind": "category",
            "name": "good_lost",
            "n_cells": int(good.sum()),
            "n_called": int(removed[good].sum()),
            "recall": round(float(removed[good].mean()), 4),
        }
    )
    total = sum(r["seconds"] for r in rows if r["kind"] == "sample")
    rows.append(
        {
            "kind": "total",
            "name": f"{args.mode}/{args.doublet_method}/{args.doublet_neighbours}",
            "n_cells": int(len(obs)),
            "seconds": round(total, 1),
        }
    )
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table[table["kind"] != "sample"].to_string(index=False))


if __name__ == "__main__":
    main()

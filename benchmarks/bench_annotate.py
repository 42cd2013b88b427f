"""Annotation and subset accuracy against the simulator's truth (paper design, 27 x 2,000 cells).

    python benchmarks/bench_annotate.py [--cohort DIR] [--run DIR]

Simulates the cohort into ``--cohort`` and runs the pipeline into ``--run`` unless they exist,
then annotates with RNA + protein, RNA only and protein only, and writes macro-F1 at l1 and
l2 (clean cells: no truth doublets, low-quality cells or contaminants; 'unassigned' counts as
wrong) to ``benchmarks/results/annotate.csv``; then finds subsets and writes, for each planted
subset, the best-matching found subset, its name and F1 to ``benchmarks/results/subsets.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
import warnings
from pathlib import Path

import pandas as pd
from sklearn.metrics import f1_score

from sccohort import read_h5mu
from sccohort.config import load_config
from sccohort.pipeline import run_pipeline
from sccohort.simulate import simulate_cohort
from sccohort.tl.annotate import annotate
from sccohort.tl.subsets import subsets

PLANTED = ("CD14_EGR1", "CD8_TEM_T2ISG")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", default="/tmp/bench_annotate/cohort")
    ap.add_argument("--run", default="/tmp/bench_annotate/run")
    ap.add_argument("--cells-per-donor", type=int, default=2000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    cohort, run = Path(args.cohort), Path(args.run)
    if not (cohort / "samples.csv").is_file():
        simulate_cohort(cohort, "paper", cells_per_donor=args.cells_per_donor, seed=0, n_jobs=2)
    if not (run / "cohort.h5mu").is_file():
        run_pipeline(load_config(cohort / "sccohort.toml"), run)
    mdata = read_h5mu(run / "cohort.h5mu")
    truth = pd.read_csv(cohort / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.loc[mdata.obs_names]
    clean = ~(truth["doublet"] | truth["low_quality"] | truth["contaminant"].notna()).to_numpy()
    rows = []
    for use in (("rna", "prot"), ("rna",), ("prot",)):
        start = time.perf_counter()
        annotate(mdata, use=use)
        seconds = time.perf_counter() - start
        row = {"use": "+".join(use), "cells": int(clean.sum()), "seconds": round(seconds, 1)}
        for level in ("l1", "l2"):
            y = truth[level].to_numpy()[clean]
            pred = mdata.obs[level].astype(str).to_numpy()[clean]
            labels = sorted(set(y))
            row[f"{level}_macro_f1"] = round(f1_score(y, pred, labels=labels, average="macro"), 3)
            row[f"{level}_unassigned"] = round(float((pred == "unassigned").mean()), 4)
        print(row, flush=True)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(0, "machine", f"{platform.machine()} {os.cpu_count()} cpus")
    table.insert(0, "date", dt.date.today().isoformat())
    out = Path(__file__).resolve().parent / "results" / "annotate.csv"
    table.to_csv(out, index=False)
    print(f"wrote {out}")

    annotate(mdata)  # RNA + protein, as the pipeline does
    start = time.perf_counter()
    subsets(mdata, seed=0)
    seconds = round(time.perf_counter() - start, 1)
    found = mdata.obs["subset"].astype(str).to_numpy()
    rows = []
    for planted in PLANTED:
        is_planted = (truth["subset"] == planted).to_numpy()
        best = max(
            (
                2
                * (is_planted & (found == name)).sum()
                / (is_planted.sum() + (found == name).sum()),
                name,
            )
            for name in set(found)
        )
        rows.append(
            {"planted": planted, "found": best[1], "f1": round(best[0], 3), "seconds": seconds}
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.insert(0, "date", dt.date.today().isoformat())
    out = Path(__file__).resolve().parent / "results" / "subsets.csv"
    table.to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

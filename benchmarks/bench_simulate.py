"""Time the cohort simulator: 27 donors x 2,000 cells and ~230,000 cells.

Usage: python benchmarks/bench_simulate.py [--n-jobs 2] [--out /tmp/bench_sim]
Writes benchmarks/results/simulate.csv (date, machine, cells, seconds, peak RSS GB).
Peak RSS is the largest sum of resident memory of this process and all its descendants
(worker processes included), polled every 0.1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from sccohort.simulate import simulate_cohort


class PeakRSS:
    """Poll the RSS of this process tree in a background thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # the process ended while we looked
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out", default="/tmp/bench_simulate")
    ap.add_argument("--sizes", default="2000,8000", help="cells per sample, comma separated")
    args = ap.parse_args()
    machine = f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"
    rows = []
    for cells in (int(c) for c in args.sizes.split(",")):
        out = Path(args.out) / f"c{cells}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            simulate_cohort(out, "paper", cells_per_donor=cells, seed=0, n_jobs=args.n_jobs)
        secs = time.perf_counter() - t0
        n = len(pd.read_csv(out / "truth" / "cells.csv.gz", usecols=["cell_id"]))
        rows.append(
            {
                "date": dt.date.today().isoformat(),
                "machine": machine,
                "n_jobs": args.n_jobs,
                "samples": 29,
                "cells": n,
                "seconds": round(secs, 1),
                "peak_rss_gb": round(rss.peak / 1e9, 2),
            }
        )
        print(rows[-1], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    res = Path(__file__).resolve().parent / "results" / "simulate.csv"
    res.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(res, index=False)
    print(f"wrote {res}")


if __name__ == "__main__":
    main()

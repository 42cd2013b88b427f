"""How often 27 simulated donors find both planted subsets, by planted fold (the demo's choice).

Donor compositions come from the simulator's model (`sccohort.simulate.design`, drawn by
benchmarks/paper_cohort.py), 2,000 cells per donor drawn multinomially (perfect labels); the
default test (`compare_abundance`, age as covariate, 4,000 permutations) runs SRC (4 vs 17) and
ILD (12 vs 9) within SSc. Prints and writes ``benchmarks/results/demo_power.csv``: per fold,
the share of cohorts where CD14_EGR1 (SRC), CD8_TEM_T2ISG (ILD) and both reach padj < 0.05.

Usage::

    python benchmarks/bench_demo_power.py --cohorts 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from paper_cohort import default_test, donor_counts, within_ssc

CELLS = 2000


def _found(counts: pd.DataFrame, variable: str, subset: str) -> bool:
    design = within_ssc(variable, list(counts.index))
    result = default_test(counts, design, n_perm=4000)
    return bool(result.set_index("subset").loc[subset, "padj"] < 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohorts", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for fold in (3.0, 4.0):
        hits = []
        for seed in range(args.cohorts):
            counts = donor_counts(fold, 100 + seed, CELLS)
            hits.append(
                (_found(counts, "SRC", "CD14_EGR1"), _found(counts, "ILD", "CD8_TEM_T2ISG"))
            )
        hits = np.array(hits)
        row = {
            "fold": fold,
            "cohorts": args.cohorts,
            "src_found": hits[:, 0].mean(),
            "ild_found": hits[:, 1].mean(),
            "both_found": hits.all(axis=1).mean(),
        }
        print(row, flush=True)
        rows.append(row)
    target = Path(__file__).resolve().parent / "results" / "demo_power.csv"
    pd.DataFrame(rows).to_csv(target, index=False)
    print(f"written {target}")


if __name__ == "__main__":
    main()

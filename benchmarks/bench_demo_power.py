"""How often 27 simulated donors find both planted subsets, by planted fold (the demo's choice).

Donor compositions come from the simulator's model (`sccohort.simulate.design`), 2,000 cells
per donor drawn multinomially (perfect labels); the default test (`test_abundance`, age as
covariate, 4,000 permutations) runs SRC (4 vs 17) and ILD (12 vs 9) within SSc. Prints and
writes ``benchmarks/results/demo_power.csv``: per fold, the share of cohorts where CD14_EGR1
(SRC), CD8_TEM_T2ISG (ILD) and both reach padj < 0.05.

Usage::

    python benchmarks/bench_demo_power.py --cohorts 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.simulate.biology import SUBSETS
from sccohort.simulate.design import (
    SimParams,
    clinical_table,
    donor_shares,
    sample_specs,
    share_folds,
)
from sccohort.stats.abundance import test_abundance

CELLS = 2000
TYPES = {"group": "binary", "age": "continuous", "sex": "binary", "SRC": "binary"}
TYPES |= {"ILD": "binary", "ARA": "binary"}


def _cohort(fold: float, seed: int) -> tuple[pd.DataFrame, ClinicalTable]:
    params = SimParams(egr1_fold=fold, t2isg_fold=fold)
    clinical = clinical_table().set_index("donor_id")
    rng = np.random.default_rng(seed)
    counts = {}
    for spec in sample_specs(params.n_batches):
        if spec.timepoint != "baseline":
            continue
        donor = clinical.loc[spec.donor_id]
        folds = share_folds("paper", params, spec, donor)
        counts[spec.donor_id] = rng.multinomial(
            CELLS, donor_shares(params, float(donor["age"]), folds, rng)
        )
    table = pd.DataFrame(counts, index=[s.name for s in SUBSETS]).T
    return table, ClinicalTable(clinical.replace("", np.nan), types=TYPES)


def _found(counts: pd.DataFrame, clinical: ClinicalTable, variable: str, subset: str) -> bool:
    design = Contrast(variable, variable, "yes", "no", {"group": "SSc"}, ["age"]).design(
        clinical, list(counts.index)
    )
    totals = pd.DataFrame(
        np.repeat(counts.sum(axis=1).to_numpy()[:, None], counts.shape[1], axis=1),
        index=counts.index,
        columns=counts.columns,
    )
    result = test_abundance(counts, totals, design, level="subset", n_perm=4000, seed=1)
    return bool(result.set_index("subset").loc[subset, "padj"] < 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohorts", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for fold in (3.0, 4.0):
        hits = []
        for seed in range(args.cohorts):
            counts, clinical = _cohort(fold, 100 + seed)
            hits.append(
                (
                    _found(counts, clinical, "SRC", "CD14_EGR1"),
                    _found(counts, clinical, "ILD", "CD8_TEM_T2ISG"),
                )
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

"""Continuous clinical scores: calibration, power and the effect per unit with its CI.

Each cohort has ``n`` donors with a score drawn uniformly in [0, 40] (a skin-score-like
range), 2,000 cells each. Compositions start from the simulator's expected shares
(`sccohort.simulate.design.base_shares`), each donor multiplies every subset's share by a
log-normal factor of SD 0.46 (the median across-donor CV of the real Kotliarov cohort, as in
``bench_paired.py``), and the subset nearest 3 % gets a planted slope: its share doubles
over the score's range (log2 share +1/40 per unit). Cells are drawn multinomially.

- **continuous**: the default test (`compare_abundance`) with the score as a continuous
  variable: effect = log2 fold change of the share per unit, with its 95 % CI;
- **median split**: the same counts, donors split at the median score (binary contrast), the
  usual workaround when a tool takes only groups.

Null (no slope): the fraction of the 38 subsets with p < 0.05; power: the planted subset at
p < 0.05; for the continuous test also the mean estimated slope and the CI coverage of the
planted one. Ordered levels: the score cut into three ordered levels (``order``, a trend per
step) on the same counts.

Run: ``python benchmarks/bench_continuous.py`` (about 3 minutes on 2 cores); writes
``benchmarks/results/continuous.csv``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.simulate.biology import SUBSETS
from sccohort.simulate.design import SimParams, base_shares
from sccohort.stats import compare_abundance

RESULTS = Path(__file__).parent / "results" / "continuous.csv"
CELLS = 2000
RANGE = 40.0
DONOR_SD = 0.46
SLOPE_LOG2 = 1 / RANGE  # the share doubles over the score's range


def cohort(n: int, slope: float, rng: np.random.Generator) -> tuple[pd.DataFrame, ClinicalTable]:
    """Donors x subsets counts and a clinical table with the score (and its tertiles)."""
    expected = base_shares(SimParams())
    planted = int(np.argmin(np.abs(expected - 0.03)))
    score = rng.uniform(0, RANGE, n)
    rows = []
    for s in score:
        shares = expected * np.exp(rng.normal(0.0, DONOR_SD, len(expected)))
        shares[planted] *= 2 ** (slope * s)
        rows.append(rng.multinomial(CELLS, shares / shares.sum()))
    donors = pd.Index([f"D{i}" for i in range(n)], name="donor_id")
    counts = pd.DataFrame(rows, index=donors, columns=[s.name for s in SUBSETS])
    cuts = np.quantile(score, [1 / 3, 2 / 3])
    table = pd.DataFrame(
        {
            "score": score,
            "high": np.where(score > np.median(score), "yes", "no"),
            "stage": np.array(["low", "mid", "high"])[np.searchsorted(cuts, score)],
        },
        index=donors,
    )
    types = {"score": "continuous", "high": "binary", "stage": "categorical"}
    return counts, ClinicalTable(table, types)


CONTRASTS = {
    "continuous": Contrast("score", "score"),
    "median split": Contrast("high", "high", case="yes", control="no"),
    "ordered tertiles": Contrast("stage", "stage", order=["low", "mid", "high"]),
}


def rows_for(n: int, kind: str, cohorts: int, rng: np.random.Generator) -> list[dict]:
    planted = SUBSETS[int(np.argmin(np.abs(base_shares(SimParams()) - 0.03)))].name
    slope = 0.0 if kind == "null" else SLOPE_LOG2
    found: dict[str, list] = {name: [] for name in CONTRASTS}
    slopes, covered = [], []
    start = time.perf_counter()
    for _ in range(cohorts):
        counts, clinical = cohort(n, slope, rng)
        totals = pd.DataFrame(CELLS, index=counts.index, columns=counts.columns)
        for name, contrast in CONTRASTS.items():
            res = compare_abundance(counts, totals, contrast.design(clinical), level="subset")
            res = res.set_index("subset")
            if kind == "null":
                found[name] += list(res["pvalue"].dropna() < 0.05)
            else:
                found[name].append(res.loc[planted, "pvalue"] < 0.05)
            if name == "continuous" and kind == "power":
                row = res.loc[planted]
                slopes.append(row["effect"])
                covered.append(row["ci_low"] <= SLOPE_LOG2 <= row["ci_high"])
    seconds = round(time.perf_counter() - start, 1)
    out = []
    for name, hits in found.items():
        out.append(
            {
                "kind": kind, "donors": n, "test": name, "cohorts": cohorts,
                "rate": round(float(np.mean(hits)), 4), "n": len(hits),
                "mean_slope": round(float(np.mean(slopes)), 4) if slopes and name == "continuous"
                else np.nan,
                "ci_coverage": round(float(np.mean(covered)), 3) if covered and name == "continuous"
                else np.nan,
                "seconds": seconds,
            }
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--donors", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--cohorts", type=int, default=200)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(11)
    rows = []
    for n in args.donors:
        for kind in ("null", "power"):
            rows += rows_for(n, kind, args.cohorts, rng)
            print(pd.DataFrame(rows[-3:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(f"planted slope (log2 per unit): {SLOPE_LOG2:.4f}")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

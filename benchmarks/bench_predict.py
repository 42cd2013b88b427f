"""Prediction of a manifestation from subset shares: calibration on null cohorts, and the
compiled nested leave-one-out against the plain scikit-learn way.

1. **Null calibration**: ``--null`` cohorts without signal (``--cases`` cases, ``--controls``
   controls, ``--features`` standard-normal features); `predict_phenotype` with ``--perm``
   permutations on each. Reports the mean out-of-fold AUROC (pooled leave-one-out AUROC is
   pessimistic without signal), how often the DeLong interval covers 0.5, the mean AUROC of
   the permuted runs (the procedure's own chance level) and the rate of permutation
   p-values below 0.05 (calibrated: about 0.05).
2. **Against scikit-learn**: on ``--compare`` cohorts with a planted shift, the same nested
   leave-one-out written the plain way: for each held-out donor, ``StandardScaler`` and
   ``LogisticRegressionCV(Cs, cv=LeaveOneOut(), scoring="neg_log_loss")`` on the other
   donors (exact inner refits where sccohort uses the approximate leave-one-out formula),
   the held-out donor scored by ``x' beta`` (intercept left out, as sccohort does). Reports
   both AUROCs, their largest difference, and the wall time of one nested run each (no
   permutations), as a ratio.

Run: ``python benchmarks/bench_predict.py`` (about 5 minutes on 2 cores); writes
``benchmarks/results/predict.csv``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneOut
from sklearn.preprocessing import StandardScaler

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.stats.predict import DEFAULT_CS, predict_phenotype

RESULTS = Path(__file__).parent / "results" / "predict.csv"


def cohort(seed: int, n_case: int, n_control: int, p: int, shift: float):
    """Features (donors x p, cases shifted by ``shift`` on s0) and the contrast's design."""
    rng = np.random.default_rng(seed)
    n = n_case + n_control
    donors = pd.Index([f"D{i:02d}" for i in range(n)], name="donor_id")
    case = np.zeros(n, dtype=bool)
    case[rng.choice(n, n_case, replace=False)] = True
    x = rng.normal(size=(n, p))
    x[case, 0] += shift
    features = pd.DataFrame(x, index=donors, columns=[f"s{j}" for j in range(p)])
    table = pd.DataFrame({"SRC": np.where(case, "yes", "no").astype(object)}, index=donors)
    clinical = ClinicalTable(table, {"SRC": "binary"})
    return features, Contrast("SRC", "SRC", "yes", "no").design(clinical), case


def plain_nested_loo(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold ``x' beta`` of scikit-learn's nested leave-one-out, one donor at a time."""
    scores = np.zeros(len(y))
    for i in range(len(y)):
        train = np.arange(len(y)) != i
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegressionCV(
            Cs=list(DEFAULT_CS), cv=LeaveOneOut(), scoring="neg_log_loss", max_iter=10_000
        ).fit(scaler.transform(x[train]), y[train])
        scores[i] = float(model.coef_[0] @ scaler.transform(x[i : i + 1])[0])
    return scores


def null_rows(args: argparse.Namespace) -> dict:
    aurocs, covers, chance, pvalues = [], [], [], []
    for seed in range(args.null):
        features, design, _ = cohort(seed, args.cases, args.controls, args.features, 0.0)
        res = predict_phenotype(features, design, n_perm=args.perm, seed=seed)
        aurocs.append(res.auroc)
        covers.append(res.ci_low <= 0.5 <= res.ci_high)
        chance.append(float(np.mean(res.null_auroc)))
        pvalues.append(res.pvalue)
    return {
        "part": "null",
        "cohorts": args.null,
        "design": f"{args.cases} vs {args.controls}, {args.features} features",
        "auroc_mean": round(float(np.mean(aurocs)), 3),
        "ci_covers_half": round(float(np.mean(covers)), 3),
        "auroc_null_mean": round(float(np.mean(chance)), 3),
        "p_below_0.05": round(float(np.mean(np.array(pvalues) < 0.05)), 3),
    }


def compare_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for seed in range(args.compare):
        features, design, case = cohort(1000 + seed, 6, 21, args.features, 1.0)
        start = time.perf_counter()
        ours = predict_phenotype(features, design, n_perm=0)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = roc_auc_score(case, plain_nested_loo(features.to_numpy(), case.astype(int)))
        plain_s = time.perf_counter() - start
        rows.append(
            {
                "part": "vs_sklearn",
                "cohorts": 1,
                "design": "6 vs 21, shift 1 SD on s0",
                "seed": 1000 + seed,
                "auroc_sccohort": round(ours.auroc, 4),
                "auroc_sklearn": round(plain, 4),
                "sccohort_s": round(ours_s, 3),
                "sklearn_s": round(plain_s, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null", type=int, default=200)
    parser.add_argument("--perm", type=int, default=99)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--controls", type=int, default=15)
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--compare", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    predict_phenotype(*cohort(0, 4, 8, 2, 0.0)[:2], n_perm=0)  # compile the kernel first
    rows = [null_rows(args), *compare_rows(args)]
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.to_string(index=False))
    vs = table[table["part"] == "vs_sklearn"]
    diff = (vs["auroc_sccohort"] - vs["auroc_sklearn"]).abs().max()
    ratio = vs["sklearn_s"].sum() / vs["sccohort_s"].sum()
    print(f"largest AUROC difference {diff:.4f}; sklearn / sccohort time {ratio:.0f}x")


if __name__ == "__main__":
    main()

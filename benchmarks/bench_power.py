"""Power planning (``sccohort power``, issue 24): accuracy against known power, speed, pilots.

    python benchmarks/bench_power.py --part reference   # ~1 min
    python benchmarks/bench_power.py --part speed       # ~5 min
    python benchmarks/bench_power.py --part pilot       # ~60 min (31 whole-pipeline runs)

``reference``: `abundance_power` on the reference design (`reference_variation`, 2,000 cells
per sample) for CD4_TEM (3.23 %) in 4 vs 17 donors at folds 1.5-3, against the power the
association benchmark measured with `compare_abundance` on the simulator's cohorts
(``results/association_power.csv``, ``default`` and ``default_nocov``). Writes
``results/power_reference.csv``.

``speed``: a grid of 200 designs (10 numbers of cases, as many controls; 5 folds; 4 shares)
x 200 simulated cohorts on the threads of this machine, timed; and the plain way, one
`compare_abundance` call per simulated cohort, timed on 20 cohorts of each of 3 designs and
extrapolated to the grid. Writes ``results/power_speed.csv``.

``pilot``: one simulated pilot (design ``paper``, 27 donors, ``--cells`` cells per sample,
Dirichlet concentration ``--concentration``, CD14_EGR1 3-fold in SRC, CD8_TEM_T2ISG 2-fold in
ILD) run through the whole pipeline; the variation fitted from the run's composition (and,
for reference, from the simulator's true labels) against the planted concentration; the
power `sccohort power --from` the run predicts for SRC (4 vs 17) and ILD (12 vs 9) at the
planted folds and base shares; and the power measured by running the whole pipeline on
``--cohorts`` fresh cohorts of the same design (seeds 100, 101, ...): the share of runs where
the subset has padj < 0.05 at level ``subset`` in the default test. Writes
``results/power_pilot.csv`` (fit) and ``results/power_pipeline.csv`` (predicted vs measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import ClinicalTable
from sccohort.io import read_pilot
from sccohort.stats import (
    Contrast,
    abundance_power,
    compare_abundance,
    fit_donor_variation,
    reference_variation,
)

RESULTS = Path(__file__).parent / "results"
FOLDS = [1.5, 2.0, 2.5, 3.0]
PLANTED = {"SRC": ("CD14_EGR1", 3.0, 0.02, 4, 17), "ILD": ("CD8_TEM_T2ISG", 2.0, 0.015, 12, 9)}


def reference() -> pd.DataFrame:
    power = abundance_power(
        reference_variation(cells=2000), n_case=[4], n_control=[17], fold=FOLDS,
        base_share=[0.0323], n_sim=400, seed=0,
    )  # fmt: skip
    bench = pd.read_csv(RESULTS / "association_power.csv")
    bench = bench[
        (bench["design"] == "4_vs_17") & bench["method"].isin(["default", "default_nocov"])
    ]
    wide = bench.pivot_table(index="fold", columns="method", values="power")
    out = power[["subset", "base_share", "fold", "n_case", "n_control", "power", "ci_low",
                 "ci_high", "n_sim"]].merge(wide, left_on="fold", right_index=True)  # fmt: skip
    out = out.rename(columns={"default": "benchmark_age_covariate", "default_nocov": "benchmark"})
    out["difference"] = out["power"] - out["benchmark"]
    return out


def speed() -> pd.DataFrame:
    ref = reference_variation(cells=2000)
    grid = {"n_case": [3, 4, 5, 6, 8, 10, 12, 15, 20, 30], "fold": [1.5, 2.0, 2.5, 3.0, 4.0],
            "base_share": [0.01, 0.03, 0.1, 0.2]}  # fmt: skip
    clock = time.perf_counter()
    power = abundance_power(ref, n_sim=200, seed=0, **grid)
    grid_s = time.perf_counter() - clock
    rows = [{"method": "sccohort power (batched)", "designs": len(power), "n_sim": 200,
             "seconds": grid_s}]  # fmt: skip
    per_cohort = []
    for n_case in (4, 10, 30):
        n = 2 * n_case
        counts = ref.sample(n, 20, np.random.default_rng(n_case), subset="CD4_TEM", fold=2.0,
                            n_case=n_case)  # fmt: skip
        donors = [f"D{i}" for i in range(n)]
        clinical = ClinicalTable(
            pd.DataFrame({"g": ["yes"] * n_case + ["no"] * n_case},
                         index=pd.Index(donors, name="donor_id")), {"g": "binary"}
        )  # fmt: skip
        design = Contrast("g", "g", case="yes", control="no").design(clinical, donors)
        clock = time.perf_counter()
        for c in counts:
            frame = pd.DataFrame(c, index=donors, columns=ref.shares.index)
            totals = pd.DataFrame(
                np.repeat(c.sum(axis=1)[:, None], c.shape[1], axis=1),
                index=donors,
                columns=ref.shares.index,
            )
            compare_abundance(frame, totals, design, level="subset")
        per_cohort.append((time.perf_counter() - clock) / len(counts))
    plain = float(np.mean(per_cohort)) * len(power) * 200
    rows.append({"method": "compare_abundance per cohort (extrapolated)", "designs": len(power),
                 "n_sim": 200, "seconds": plain})  # fmt: skip
    out = pd.DataFrame(rows)
    out["ratio_to_batched"] = out["seconds"] / grid_s
    return out


def _cohort(root: Path, seed: int, cells: int, concentration: float) -> Path:
    from sccohort.simulate import simulate_cohort

    cohort = simulate_cohort(
        root / "input", design="paper", cells_per_donor=cells, seed=seed, n_jobs=2,
        dirichlet_concentration=concentration, egr1_fold=PLANTED["SRC"][1],
        t2isg_fold=PLANTED["ILD"][1],
    )  # fmt: skip
    toml = (cohort / "sccohort.toml").read_text()
    toml = toml.replace('groupings = ["ARA*SRC"]', "neighbourhoods = false\nclassic = false")
    (cohort / "sccohort.toml").write_text(toml)
    return cohort


def _run(cohort: Path, out: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sccohort", "run", str(cohort / "sccohort.toml"), "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])


def _finished(root: Path) -> bool:
    """Whether ``root/out`` holds a finished run; an unfinished one is removed."""
    record = root / "out" / "run.json"
    if record.is_file() and json.loads(record.read_text()).get("status") == "finished":
        return True
    shutil.rmtree(root, ignore_errors=True)
    return False


def _found(out: Path) -> dict[str, bool]:
    table = pd.read_csv(out / "tables" / "association.csv")
    table = table[(table["level"] == "subset") & (table["method"] == "perm_lm_asin_log2share")]
    found = {}
    for contrast, (subset, *_rest) in PLANTED.items():
        row = table[(table["contrast"] == contrast) & (table["subset"] == subset)]
        found[contrast] = bool(len(row) and row["padj"].iloc[0] < 0.05)
    return found


def pilot(work: Path, cells: int, concentration: float, cohorts: int) -> tuple[pd.DataFrame, ...]:
    work.mkdir(parents=True, exist_ok=True)
    root = work / "pilot"
    if not _finished(root):
        _run(_cohort(root, 7, cells, concentration), root / "out")
    pilot_run = read_pilot(root / "out")
    fitted = fit_donor_variation(pilot_run.counts, qc_loss=pilot_run.qc_loss)
    truth = pd.read_csv(root / "input" / "truth" / "cells.csv.gz")
    clean = ~truth["doublet"] & ~truth["low_quality"] & truth["contaminant"].isna()
    # a donor's baseline sample is named by the donor (SSc4's other samples are not)
    truth = truth[clean & truth["sample_id"].isin(pilot_run.counts.index)]
    true_counts = truth.groupby(["sample_id", "subset"]).size().unstack(fill_value=0)
    oracle = fit_donor_variation(true_counts)
    fit_rows = []
    for name, fit in (("pipeline labels", fitted), ("true labels", oracle)):
        fit_rows.append({
            "labels": name, "planted_concentration": concentration,
            "pooled_concentration": fit.pooled_concentration,
            "median_subset_concentration": float(fit.concentration.median()),
            "share_within_20pct": float((abs(fit.concentration / concentration - 1) < 0.2).mean()),
            "prior_df": fit.prior_df, "cells_per_sample": fit.cells_per_sample,
            "qc_loss": fit.qc_loss, "n_donors": fit.n_donors,
        })  # fmt: skip
    predicted = {}
    for contrast, (_, fold, share, n_case, n_control) in PLANTED.items():
        power = abundance_power(
            fitted, n_case=[n_case], n_control=[n_control], fold=[fold], base_share=[share],
            n_sim=400, seed=1,
        )  # fmt: skip
        predicted[contrast] = power.iloc[0]
    hits = {c: [] for c in PLANTED}
    for k in range(cohorts):
        root = work / f"cohort_{k}"
        if not _finished(root):
            _run(_cohort(root, 100 + k, cells, concentration), root / "out")
        for contrast, found in _found(root / "out").items():
            hits[contrast].append(found)
        print(f"cohort {k}: {_found(root / 'out')}", flush=True)
    rows = []
    for contrast, (subset, fold, share, n_case, n_control) in PLANTED.items():
        measured = float(np.mean(hits[contrast]))
        p = predicted[contrast]
        rows.append({
            "contrast": contrast, "subset": subset, "fold": fold, "base_share": share,
            "n_case": n_case, "n_control": n_control, "cells_per_sample": cells,
            "predicted_power": p["power"], "predicted_ci_low": p["ci_low"],
            "predicted_ci_high": p["ci_high"], "predicted_from": p["subset"],
            "measured_power": measured, "cohorts": len(hits[contrast]),
            "measured_se": float(np.sqrt(measured * (1 - measured) / len(hits[contrast]))),
            "difference": p["power"] - measured,
        })  # fmt: skip
    return pd.DataFrame(fit_rows), pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["reference", "speed", "pilot"], required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_power"))
    parser.add_argument("--cells", type=int, default=800)
    parser.add_argument("--concentration", type=float, default=150.0)
    parser.add_argument("--cohorts", type=int, default=30)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.part == "reference":
        table = reference()
        table.to_csv(RESULTS / "power_reference.csv", index=False)
    elif args.part == "speed":
        table = speed()
        table.to_csv(RESULTS / "power_speed.csv", index=False)
    else:
        fit, table = pilot(args.work, args.cells, args.concentration, args.cohorts)
        fit.to_csv(RESULTS / "power_pilot.csv", index=False)
        print(fit.to_string(index=False))
        table.to_csv(RESULTS / "power_pipeline.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

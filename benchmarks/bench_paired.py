"""Paired designs: calibration and power of the within-donor tests against the unpaired ones.

Each cohort has ``n`` donors with two samples each (``pre`` / ``post``, 2,000 cells each).
Compositions start from the simulator's expected shares (`sccohort.simulate.design.
base_shares`); each donor multiplies every subset's share by a log-normal factor of SD
``--donor-sd`` (0.46: the median coefficient of variation of the manually gated l2 shares
across the 20 donors of the Kotliarov cohort in ``../shared/data/kotliarov_adt9``, measured
by ``--measure``), each sample again by one of SD ``--within-sd`` (0.1, a choice: samples
of one donor differ less than donors do), then cells are drawn multinomially. Pseudobulks:
2,000 genes of gamma-distributed means, a log-normal donor effect per gene (SD 0.3) and
negative binomial counts (dispersion 0.05) per sample.

- **composition**: the default test (`compare_abundance`) on the paired design (a donor
  column each, within-donor relabellings, or the moderated t below 10 donors) and, on the
  same counts, unpaired (each sample its own donor). Null: the fraction of subsets with
  p < 0.05 (38 subsets per cohort); power: the subset whose expected share is nearest 3 %
  planted 2-fold in every ``post`` sample, found at p < 0.05, at donor SDs ``--power-sd``
  (0.3 / 0.46 / 0.6: the range of the log-share SD across donors of the Kotliarov subsets
  of 0.5-3 % share, healthy donors; patient cohorts vary more).
- **pseudobulk**: `pseudobulk_de` (DESeq2, donor blocking) paired and unpaired on null
  genes: the fraction of genes with p < 0.05.

Run: ``python benchmarks/bench_paired.py`` (about 10 minutes on 2 cores); writes
``benchmarks/results/paired.csv``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort.cohort import Contrast, SampleSheet
from sccohort.simulate.biology import SUBSETS
from sccohort.simulate.design import SimParams, base_shares
from sccohort.stats import compare_abundance, pseudobulk_de

RESULTS = Path(__file__).parent / "results" / "paired.csv"
KOTLIAROV = Path(__file__).resolve().parents[2] / "shared/data/kotliarov_adt9/cells_adt9.h5ad"
CONTRAST = Contrast("post", "timepoint", case="post", control="pre")
CELLS = 2000


def sheets(n: int) -> tuple[SampleSheet, SampleSheet]:
    """The paired sheet (donor D<i>, samples pre / post) and the same samples unpaired."""
    ids = [f"D{d}_{tp}" for d in range(n) for tp in ("pre", "post")]
    timepoints = ["pre", "post"] * n
    lines = pd.Series(range(2, 2 * n + 2), index=pd.Index(ids, name="sample_id"))

    def sheet(donors: list[str]) -> SampleSheet:
        table = pd.DataFrame(
            {"donor_id": donors, "timepoint": timepoints, "tissue": "blood"},
            index=pd.Index(ids, name="sample_id"),
        )
        return SampleSheet(table, None, lines)

    return sheet([i.split("_")[0] for i in ids]), sheet(ids)


def both_designs(n: int) -> tuple[SampleSheet, dict]:
    """The paired sheet, and the contrast's paired and unpaired designs on its samples."""
    paired_sheet, unpaired_sheet = sheets(n)
    designs = {
        "paired": CONTRAST.design(None, samples=paired_sheet),
        "unpaired": CONTRAST.design(None, samples=unpaired_sheet),
    }
    return paired_sheet, designs


def composition(
    n: int, fold: float, donor_sd: float, args: argparse.Namespace, rng: np.random.Generator
) -> pd.DataFrame:
    """Samples x subsets counts; the planted subset ``fold``-fold in ``post`` samples."""
    expected = base_shares(SimParams())
    planted = int(np.argmin(np.abs(expected - 0.03)))
    rows = []
    for _ in range(n):
        donor = expected * np.exp(rng.normal(0.0, donor_sd, len(expected)))
        for side_fold in (1.0, fold):
            shares = donor * np.exp(rng.normal(0.0, args.within_sd, len(expected)))
            shares[planted] *= side_fold
            rows.append(rng.multinomial(CELLS, shares / shares.sum()))
    return pd.DataFrame(rows, columns=[s.name for s in SUBSETS])


def measured_donor_cv() -> float:
    """Median CV across donors of the Kotliarov cohort's gated l2 shares (sampling removed)."""
    import anndata as ad

    obs = ad.read_h5ad(KOTLIAROV, backed="r").obs
    counts = pd.crosstab(obs["donor_id"], obs["cell_type_l2"]).drop(columns="undefined")
    shares = counts.div(counts.sum(axis=1), axis=0)
    mean, var = shares.mean(), shares.var(ddof=1)
    sampling = mean * (1 - mean) / counts.sum(axis=1).mean()
    return float(np.median(np.sqrt((var - sampling).clip(lower=0)) / mean))


def composition_rows(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    planted = SUBSETS[int(np.argmin(np.abs(base_shares(SimParams()) - 0.03)))].name
    rows = []
    for n in args.donors:
        paired_sheet, designs = both_designs(n)
        runs = [("null", 1.0, args.null, args.donor_sd)]
        if n in args.power_donors:
            runs += [("power", 2.0, args.power, sd) for sd in args.power_sd]
        for kind, fold, cohorts, donor_sd in runs:
            hits = {name: [] for name in designs}
            start = time.perf_counter()
            for _ in range(cohorts):
                counts = composition(n, fold, donor_sd, args, rng)
                counts.index = paired_sheet.table.index
                totals = pd.DataFrame(CELLS, index=counts.index, columns=counts.columns)
                for name, design in designs.items():
                    res = compare_abundance(counts, totals, design, level="subset", seed=1)
                    res = res.set_index("subset")["pvalue"]
                    hits[name] += (
                        list(res.dropna() < 0.05) if kind == "null" else [res[planted] < 0.05]
                    )
            for name, found in hits.items():
                rows.append(
                    {
                        "test": "composition",
                        "kind": kind,
                        "donors": n,
                        "donor_sd": donor_sd,
                        "design": name,
                        "cohorts": cohorts,
                        "rate": round(float(np.mean(found)), 4),
                        "n": len(found),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
            print(rows[-2], rows[-1], flush=True)
    return rows


def pseudobulk(n: int, rng: np.random.Generator, genes: int = 2000) -> pd.DataFrame:
    mean = rng.gamma(1.5, 60.0, genes)
    rows = []
    for _ in range(n):
        donor = mean * np.exp(rng.normal(0.0, 0.3, genes))
        for _side in range(2):
            rows.append(rng.negative_binomial(1 / 0.05, 1 / (1 + 0.05 * donor)))
    return pd.DataFrame(rows, columns=[f"G{i}" for i in range(genes)])


def pseudobulk_rows(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    rows = []
    for n in args.donors:
        paired_sheet, designs = both_designs(n)
        pvalues = {name: [] for name in designs}
        for _ in range(args.de_cohorts):
            counts = pseudobulk(n, rng)
            counts.index = paired_sheet.table.index
            for name, design in designs.items():
                if name == "unpaired" and n < 3:
                    continue
                de = pseudobulk_de(counts, design, group="null", min_donors=2)
                pvalues[name] += list(de["pvalue"].dropna())
        for name, values in pvalues.items():
            if values:
                rows.append(
                    {
                        "test": "pseudobulk",
                        "kind": "null",
                        "donors": n,
                        "donor_sd": 0.3,
                        "design": name,
                        "cohorts": args.de_cohorts,
                        "rate": round(float(np.mean(np.array(values) < 0.05)), 4),
                        "n": len(values),
                        "seconds": np.nan,
                    }
                )
        print(rows[-2:], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--donors", type=int, nargs="+", default=[4, 6, 8, 12])
    parser.add_argument("--power-donors", type=int, nargs="+", default=[6])
    parser.add_argument("--null", type=int, default=200)
    parser.add_argument("--power", type=int, default=200)
    parser.add_argument("--de-cohorts", type=int, default=20)
    parser.add_argument("--donor-sd", type=float, default=0.46)
    parser.add_argument("--power-sd", type=float, nargs="+", default=[0.3, 0.46, 0.6])
    parser.add_argument("--within-sd", type=float, default=0.1)
    parser.add_argument("--measure", action="store_true", help="print the Kotliarov CV")
    args = parser.parse_args()
    if args.measure:
        print(f"median donor CV of the Kotliarov l2 shares: {measured_donor_cv():.3f}")
        return
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(7)
    rows = composition_rows(args, rng) + pseudobulk_rows(args, rng)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

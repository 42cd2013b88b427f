"""Calibration (null) and power of donor-level abundance tests on count-level simulations.

    python benchmarks/bench_association_calibration.py [--quick] [--cells 2000] [--out DIR]

Donor compositions come from the cohort simulator's model (``sccohort.simulate.design``: 38
subsets, Dirichlet around the expected composition with concentration 300, CD8_Naive falling
with age) with the reference study's 27 donors and ages; each donor gets ``--cells`` cells
(Poisson) drawn multinomially. Contrasts, all with the study's labels:
``4_vs_17`` (SRC within SSc), ``12_vs_9`` (ILD within SSc), ``21_vs_6`` (SSc vs HD).

(a) null: no clinical effect; fraction of p < 0.05 (and < 0.01) over all cohorts x subsets.
(b) power: CD4_TEM (3.2% of cells) expanded 1.5 / 2 / 2.5 / 3-fold (and depleted 0.4-fold) in the
4 SRC donors; power =
fraction of cohorts where it has padj < 0.05 (BH over the 38 subsets; Bonferroni for the
study's KS as published), with the false discoveries among the other subsets.

Methods: the default test (``sccohort.stats.abundance.compare_abundance``: arcsine-sqrt shares,
moderated t, age covariate, Freedman-Lane permutations), the same on log2 shares
(``default_log2``), the default without covariate (exact enumeration where <= 20,000
relabellings), the default's moderated t with parametric p-values (= propeller with
``transform="asin"``, no permutation: ``propeller_param``), the study's KS
(``sccohort.stats.tests.ks_test``), Student's t-test on shares, and a binomial GLM on the counts
(``count/total ~ group + age``, Wald test; a vectorised IRLS checked against statsmodels).
Writes association_calibration.csv and association_power.csv to ``--out``
(benchmarks/results; the full run takes about 10 minutes on 2 busy cores, --quick about 2).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.simulate.biology import SUBSETS
from sccohort.simulate.design import SimParams, base_shares, clinical_table, donor_shares
from sccohort.stats.abundance import compare_abundance
from sccohort.stats.tests import ks_test

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = [s.name for s in SUBSETS]
PLANTED = "CD4_TEM"
AGED = "CD8_Naive"
PARAMS = SimParams()
FOLDS = (1.5, 2.0, 2.5, 3.0, 0.4)  # 0.4: a depletion (1 / 2.5)


def clinical() -> ClinicalTable:
    table = clinical_table().set_index("donor_id")
    table["age"] = table["age"].astype(float)
    for col in ("SRC", "ILD", "ARA"):
        table[col] = table[col].replace("", np.nan).astype(object)
    types = {"group": "binary", "age": "continuous", "sex": "binary"}
    types |= {"SRC": "binary", "ILD": "binary", "ARA": "binary"}
    return ClinicalTable(table, types)


def designs(table: ClinicalTable) -> dict[str, tuple]:
    """Name -> (design with age, design without covariate)."""
    specs = {
        "4_vs_17": Contrast("SRC", "SRC", "yes", "no", within={"group": "SSc"}),
        "12_vs_9": Contrast("ILD", "ILD", "yes", "no", within={"group": "SSc"}),
        "21_vs_6": Contrast("SSc_vs_HD", "group", "SSc", "HD"),
    }
    out = {}
    for name, c in specs.items():
        with_age = Contrast(c.name, c.variable, c.case, c.control, c.within, ["age"])
        out[name] = (with_age.design(table), c.design(table))
    return out


def simulate_counts(
    rng: np.random.Generator, ages: pd.Series, folds: pd.Series, cells: int
) -> pd.DataFrame:
    """Donors x subsets counts from the simulator's composition model."""
    rows = []
    for donor, age in ages.items():
        fold = float(folds.get(donor, 1.0))
        share = donor_shares(PARAMS, float(age), {PLANTED: fold} if fold != 1 else {}, rng)
        rows.append(rng.multinomial(rng.poisson(cells), share))
    return pd.DataFrame(rows, index=ages.index, columns=NAMES)


def binomial_glm_p(counts: np.ndarray, totals: np.ndarray, x: np.ndarray, term: int) -> np.ndarray:
    """Wald p of ``x[:, term]`` in a logistic GLM per subset (columns), vectorised IRLS."""
    n, g = counts.shape
    prop = (counts + 0.5) / (totals + 1)
    eta = np.log(prop / (1 - prop))
    beta = np.zeros((g, x.shape[1]))
    for _ in range(25):
        mu = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
        w = totals * mu * (1 - mu)  # n x g
        z = eta + (counts / totals - mu) / (mu * (1 - mu))
        xtwx = np.einsum("ni,ng,nj->gij", x, w, x)
        xtwz = np.einsum("ni,ng->gi", x, w * z)
        new = np.linalg.solve(xtwx, xtwz[..., None])[..., 0]
        eta = x @ new.T
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
    mu = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
    w = totals * mu * (1 - mu)
    cov = np.linalg.inv(np.einsum("ni,ng,nj->gij", x, w, x))
    z = beta[:, term] / np.sqrt(cov[:, term, term])
    return 2 * stats.norm.sf(np.abs(z))


def run_methods(
    counts: pd.DataFrame, design_cov, design_plain, n_perm: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Name -> p-values (one per subset, column order of counts), and seconds, per method."""
    donors = design_cov.donors
    c = counts.loc[donors]
    total = pd.DataFrame(
        np.repeat(c.sum(axis=1).to_numpy()[:, None], c.shape[1], axis=1),
        index=c.index,
        columns=c.columns,
    )
    out, seconds = {}, {}
    t0 = time.perf_counter()
    res = compare_abundance(c, total, design_cov, level="subset", n_perm=n_perm, seed=seed)
    seconds["default"] = time.perf_counter() - t0
    out["default"] = res["pvalue"].to_numpy()
    n, p = design_cov.matrix.shape
    dof = n - p + res["df_prior"].to_numpy()
    out["propeller_param"] = 2 * stats.t.sf(np.abs(res["statistic"].to_numpy()), dof)
    t0 = time.perf_counter()
    res = compare_abundance(
        c, total, design_cov, level="subset", n_perm=n_perm, seed=seed, transform="log2"
    )
    seconds["default_log2"] = time.perf_counter() - t0
    out["default_log2"] = res["pvalue"].to_numpy()
    t0 = time.perf_counter()
    res = compare_abundance(c, total, design_plain, level="subset", n_perm=n_perm, seed=seed)
    seconds["default_nocov"] = time.perf_counter() - t0
    out["default_nocov"] = res["pvalue"].to_numpy()
    shares = c / total
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["ks"] = ks_test(shares, design_plain, "subset", n_boot=1)["pvalue"].to_numpy()
    seconds["ks"] = time.perf_counter() - t0
    case = (design_plain.group.loc[donors] == "case").to_numpy()
    s = shares.to_numpy()
    out["ttest_share"] = stats.ttest_ind(s[case], s[~case], axis=0).pvalue
    t0 = time.perf_counter()
    x = design_cov.matrix.to_numpy(dtype=float)
    term = list(design_cov.matrix.columns).index(design_cov.term)
    out["binomial_glm"] = binomial_glm_p(c.to_numpy(float), total.to_numpy(float), x, term)
    seconds["binomial_glm"] = time.perf_counter() - t0
    return out, seconds


def check_glm(counts: pd.DataFrame, design) -> float:
    """Largest |log10 p| difference of the vectorised IRLS vs statsmodels on one cohort."""
    c = counts.loc[design.donors].to_numpy(float)
    tot = np.repeat(c.sum(axis=1)[:, None], c.shape[1], axis=1)
    x = design.matrix.to_numpy(dtype=float)
    ours = binomial_glm_p(c, tot, x, 1)
    ref = []
    for j in range(c.shape[1]):
        endog = np.column_stack([c[:, j], tot[:, j] - c[:, j]])
        ref.append(sm.GLM(endog, x, family=sm.families.Binomial()).fit().pvalues[1])
    return float(np.max(np.abs(np.log10(ours) - np.log10(ref))))


def check_limma(counts: pd.DataFrame, design) -> float | None:
    """Largest |t| difference of the default test's moderated t vs R limma (None without R)."""
    if shutil.which("Rscript") is None:
        return None
    c = counts.loc[design.donors]
    total = pd.DataFrame(
        np.repeat(c.sum(axis=1).to_numpy()[:, None], c.shape[1], axis=1),
        index=c.index,
        columns=c.columns,
    )
    ours = compare_abundance(c, total, design, level="subset", n_perm=10)["statistic"].to_numpy()
    y = np.arcsin(np.sqrt(c / total))
    with tempfile.TemporaryDirectory() as tmp:
        y.to_csv(f"{tmp}/y.csv")
        design.matrix.to_csv(f"{tmp}/x.csv")
        script = (
            "suppressMessages(library(limma));"
            f"y <- t(as.matrix(read.csv('{tmp}/y.csv', row.names=1, check.names=FALSE)));"
            f"x <- as.matrix(read.csv('{tmp}/x.csv', row.names=1));"
            "fit <- eBayes(lmFit(y, x));"
            f"write.csv(fit$t[, 2], '{tmp}/t.csv')"
        )
        done = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        ref = pd.read_csv(f"{tmp}/t.csv", index_col=0).iloc[:, 0].to_numpy()
    return float(np.max(np.abs(ours - ref)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few cohorts (about a minute)")
    parser.add_argument("--cells", type=int, default=2000, help="cells per donor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the two CSVs")
    args = parser.parse_args()
    n_null, n_power = (40, 30) if args.quick else (200, 120)
    null_perm, power_perm = (1000, 2000) if args.quick else (2000, 10_000)
    table = clinical()
    ages = table.table["age"]
    all_designs = designs(table)
    rng = np.random.default_rng(args.seed)

    probe = simulate_counts(rng, ages, pd.Series(dtype=float), args.cells)
    glm_diff = check_glm(probe, all_designs["4_vs_17"][0])
    limma_diff = check_limma(probe, all_designs["4_vs_17"][0])
    print(f"vectorised binomial GLM vs statsmodels: max |dlog10 p| = {glm_diff:.2e}")
    print(f"default test's moderated t vs R limma eBayes: max |dt| = {limma_diff}")
    assert glm_diff < 1e-3 and (limma_diff is None or limma_diff < 1e-8)

    rows = []
    aged = NAMES.index(AGED)
    for name, (design_cov, design_plain) in all_designs.items():
        pvals: dict[str, list] = {}
        secs: dict[str, float] = {}
        t0 = time.perf_counter()
        for k in range(n_null):
            counts = simulate_counts(rng, ages, pd.Series(dtype=float), args.cells)
            out, seconds = run_methods(counts, design_cov, design_plain, null_perm, k)
            for m, p in out.items():
                pvals.setdefault(m, []).append(p)
            for m, s in seconds.items():
                secs[m] = secs.get(m, 0.0) + s
        for m, ps in pvals.items():
            p = np.array(ps)
            rows.append(
                {
                    "design": name,
                    "method": m,
                    "covariate_age": m
                    in ("default", "default_log2", "propeller_param", "binomial_glm"),
                    "n_cohorts": n_null,
                    "n_pvalues": p.size,
                    "type1_p05": (p < 0.05).mean(),
                    "type1_p01": (p < 0.01).mean(),
                    "type1_p05_aged_subset": (p[:, aged] < 0.05).mean(),
                    "n_perm": null_perm if m.startswith("default") else 0,
                    "seconds_per_cohort": secs.get(m, np.nan) / n_null,
                    "cells_per_donor": args.cells,
                }
            )
        print(f"null {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    calib = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    calib.to_csv(args.out / "association_calibration.csv", index=False)
    print(calib.round(4).to_string(index=False))

    design_cov, design_plain = all_designs["4_vs_17"]
    cases = design_cov.group[design_cov.group == "case"].index
    planted = NAMES.index(PLANTED)
    rows = []
    for fold in FOLDS:
        hits: dict[str, list] = {}
        t0 = time.perf_counter()
        for k in range(n_power):
            counts = simulate_counts(rng, ages, pd.Series(fold, index=cases), args.cells)
            out, _ = run_methods(counts, design_cov, design_plain, power_perm, k)
            out["ks_bonferroni"] = np.minimum(out["ks"] * len(NAMES), 1.0)
            for m, p in out.items():
                padj = p if m == "ks_bonferroni" else multipletests(p, method="fdr_bh")[1]
                sig = padj < 0.05
                false = np.delete(sig, planted).sum()
                hits.setdefault(m, []).append((sig[planted], false, false / max(1, sig.sum())))
        for m, h in hits.items():
            a = np.array(h, dtype=float)
            rows.append(
                {
                    "design": "4_vs_17",
                    "planted_subset": PLANTED,
                    "base_share": round(float(base_shares(PARAMS)[planted]), 4),
                    "fold": fold,
                    "method": m,
                    "adjust": "bonferroni" if m == "ks_bonferroni" else "bh",
                    "n_cohorts": n_power,
                    "power": a[:, 0].mean(),
                    "mean_false_discoveries": a[:, 1].mean(),
                    "fdr": a[:, 2].mean(),
                    "n_perm": power_perm if m.startswith("default") else 0,
                    "cells_per_donor": args.cells,
                }
            )
        print(f"power fold {fold}: {time.perf_counter() - t0:.0f} s", flush=True)
    power = pd.DataFrame(rows)
    power.to_csv(args.out / "association_power.csv", index=False)
    print(power.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

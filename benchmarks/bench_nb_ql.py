"""Our edgeR QL F-test (``sccohort.stats.nb_ql``) against R edgeR 3.40 and edgepython.

The pipeline of miloR's ``testNhoods`` (and of ``sccohort.stats.neighbourhoods``)::

    DGEList(counts, lib.size) [+ calcNormFactors(TMM)] -> estimateDisp(design, tagwise = FALSE)
    -> glmQLFit(robust = TRUE) -> glmQLFTest(coef)

is run three ways on the same count matrices: ours, R edgeR (``Rscript``, the installed
edgeR 3.x) and, if importable, edgepython (the GPL Python port sccohort used before; legacy
QL). Matrices (neighbourhoods x samples):

* ``nhood_4v23_*``: 500 neighbourhood-like rows x 27 samples (mean ~3 cells per sample, many
  zeros; NB dispersion trend times log-normal noise), design intercept + group (4 vs 23) +
  age, 25 rows with a planted 3-fold difference; TMM and "total" normalisation (library
  sizes = cells per sample, no TMM), as ``neighbourhoods(normalisation=...)``;
* ``nhood_12v15_*``: the same with 12 vs 15 and sparser counts (mean ~1.5);
* ``null_4v23``: no planted rows; ``hetero_12v15``: more spread of the dispersions (the
  robust prior-df path with a finite prior df);
* ``kotliarov_*``: real neighbourhood counts: the 20 real donors of the Kotliarov cohort
  (``../shared/data``, 9 antibodies, CLR as the embedding, 1,000 cells per donor, k = 30,
  prop = 0.1), tested for batch (10 vs 10) and for a made-up null group with batch as
  covariate;
* ``demo_src``: with ``--cohort OUT/cohort.h5mu`` of a finished demo run (27 simulated
  donors, ``X_harmony``): the SRC contrast within SSc (4 vs 17, + age) on its baseline
  samples, the neighbourhoods of the default preset.

Reported per matrix and pair: largest |log2 FC difference|, Spearman of log2 FC and of
-log10 p, largest |log10 p difference|, agreement of the calls p < 0.05 (fraction of rows
called the same), and seconds per run (R: the edgeR calls only, without starting R).

Usage::

    python benchmarks/bench_nb_ql.py [--cohort OUT/cohort.h5mu]

Writes ``benchmarks/results/nb_ql_edger.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import stats

from sccohort.stats.nb_ql import ql_ftest, tmm_factors

nb = importlib.import_module("sccohort.stats.neighbourhoods")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "nb_ql_edger.csv"
KOTLIAROV = HERE.parents[1] / "shared" / "data" / "kotliarov_adt9" / "cells_adt9.h5ad"

R_SCRIPT = r"""
suppressMessages(library(edgeR))
args <- commandArgs(TRUE)
counts <- as.matrix(read.csv(args[1], header = FALSE))
design <- as.matrix(read.csv(args[2], header = FALSE))
lib <- scan(args[3], quiet = TRUE)
t0 <- Sys.time()
if (args[4] == "tmm") {
  y <- calcNormFactors(DGEList(counts = counts, lib.size = colSums(counts)), method = "TMM")
} else {
  y <- DGEList(counts = counts, lib.size = lib)
}
y <- estimateDisp(y, design, tagwise = FALSE)
res <- glmQLFTest(glmQLFit(y, design, robust = TRUE), coef = as.integer(args[5]))
cat(as.numeric(difftime(Sys.time(), t0, units = "secs")), "\n", file = paste0(args[6], ".time"))
out <- data.frame(logFC = res$table$logFC, PValue = res$table$PValue)
write.csv(out, args[6], row.names = FALSE)
cat(as.character(packageVersion("edgeR")), "\n", file = paste0(args[6], ".version"))
"""


# ---------------------------------------------------------------------------------------
# Matrices


def simulated(seed, n_case, mean, *, planted=25, spread=0.5, g=500, n=27):
    """Neighbourhood-like counts: NB with a dispersion trend, group + age design."""
    rng = np.random.default_rng(seed)
    group = np.r_[np.ones(n_case), np.zeros(n - n_case)]
    design = np.column_stack([np.ones(n), group, rng.normal(60, 10, n).round()])
    abundance = rng.lognormal(np.log(mean), 1.0, g)
    cells = rng.uniform(600, 1200, n).round()
    mu = abundance[:, None] * cells[None, :] / cells.mean()
    fold = np.where(np.arange(g) < planted, 3.0, 1.0)
    mu = mu * np.where(group[None, :] == 1, fold[:, None], 1.0)
    disp = (0.05 + 0.5 / np.sqrt(abundance)) * rng.lognormal(0, spread, g)
    counts = rng.negative_binomial(1 / disp[:, None], 1 / (1 + mu * disp[:, None]))
    return counts.astype(float), design, cells


def nhood_counts(embedding, sample_of_cell, samples, seed=0, k=30, prop=0.1, cap=1000):
    """Neighbourhood x sample counts and kept cells per sample (``neighbourhoods``' steps)."""
    rng = np.random.default_rng(seed)
    keep = nb._subsample(sample_of_cell, samples, cap, rng)
    x = embedding[keep]
    knn_index, _, nn = nb._knn(x, k)
    index_cells = nb._refined_index_cells(x, knn_index, nn, prop, rng)
    members = nb._membership(knn_index, index_cells)
    return nb._sample_counts(members, sample_of_cell[keep], samples)


def kotliarov():
    """Real neighbourhood counts of the 20 Kotliarov donors: (counts, cells, donors table)."""
    adata = ad.read_h5ad(KOTLIAROV)
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=float)
    logs = np.log1p(x)
    clr = logs - logs.mean(axis=1, keepdims=True)
    donor = adata.obs["donor_id"].astype(str).to_numpy()
    donors = sorted(set(donor))
    counts, cells = nhood_counts(clr, donor, donors)
    table = adata.obs.groupby("donor_id", observed=True)["batch"].first().loc[donors]
    return counts, cells, table


def demo_src(cohort: Path):
    """Neighbourhood counts of a demo run, SRC within SSc (+ age), baseline samples."""
    with h5py.File(cohort, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        emb = f["obsm/X_harmony"][:]
    clinical = pd.read_csv(cohort.parent / "input" / "clinical.csv", index_col="donor_id")
    base = (obs["timepoint"] == "baseline").to_numpy()
    obs, emb = obs[base], emb[base]
    ssc = clinical[clinical["group"] == "SSc"]
    sample_of = obs.groupby("donor_id", observed=True)["sample_id"].first()
    donors = [d for d in ssc.index if d in sample_of.index]
    samples = [str(sample_of[d]) for d in donors]
    counts, cells = nhood_counts(emb[:, :30], obs["sample_id"].astype(str).to_numpy(), samples)
    design = np.column_stack(
        [np.ones(len(donors)), (ssc.loc[donors, "SRC"] == "yes"), ssc.loc[donors, "age"]]
    ).astype(float)
    return counts, design, cells


def matrices(cohort: Path | None) -> dict[str, tuple]:
    """name -> (counts, design, coef, normalisation, cells per sample)."""
    out = {}
    for norm in ("tmm", "total"):
        c, d, cells = simulated(1, 4, 3.0)
        out[f"nhood_4v23_{norm}"] = (c, d, 1, norm, cells)
        c, d, cells = simulated(2, 12, 1.5)
        out[f"nhood_12v15_{norm}"] = (c, d, 1, norm, cells)
    c, d, cells = simulated(3, 4, 3.0, planted=0)
    out["null_4v23"] = (c, d, 1, "tmm", cells)
    c, d, cells = simulated(4, 12, 2.0, spread=1.5)
    out["hetero_12v15"] = (c, d, 1, "tmm", cells)
    if KOTLIAROV.exists():
        c, cells, batch = kotliarov()
        b = (batch.to_numpy() == batch.iloc[0]).astype(float)
        null = np.arange(len(b)) % 2
        out["kotliarov_batch"] = (c, np.column_stack([np.ones(len(b)), b]), 1, "tmm", cells)
        design = np.column_stack([np.ones(len(b)), null, b])
        out["kotliarov_null_group"] = (c, design, 1, "tmm", cells)
    if cohort is not None:
        c, d, cells = demo_src(cohort)
        out["demo_src"] = (c, d, 1, "tmm", cells)
    return out


# ---------------------------------------------------------------------------------------
# Engines


def run_ours(counts, design, coef, norm, cells):
    t0 = time.perf_counter()
    if norm == "tmm":
        lib = counts.sum(axis=0)
        res = ql_ftest(counts, design, coef, lib_size=lib, norm_factors=tmm_factors(counts, lib))
    else:
        res = ql_ftest(counts, design, coef, lib_size=cells)
    return res["logfc"], res["pvalue"], time.perf_counter() - t0


def run_r(counts, design, coef, norm, cells, tmp: Path, name: str):
    paths = [tmp / f"{name}_{part}" for part in ("counts.csv", "design.csv", "lib.txt")]
    np.savetxt(paths[0], counts, delimiter=",", fmt="%d")
    np.savetxt(paths[1], design, delimiter=",", fmt="%.17g")
    np.savetxt(paths[2], cells, fmt="%.17g")
    out = tmp / f"{name}_r.csv"
    script = tmp / "edger.R"
    script.write_text(R_SCRIPT)
    cmd = ["Rscript", str(script), *map(str, paths), norm, str(coef + 1), str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    table = pd.read_csv(out)
    seconds = float(Path(f"{out}.time").read_text())
    return table["logFC"].to_numpy(), table["PValue"].to_numpy(), seconds


def run_edgepython(counts, design, coef, norm, cells):
    import edgepython as ep

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if norm == "tmm":
            y = ep.make_dgelist(counts=counts, lib_size=counts.sum(axis=0))
            y = ep.calc_norm_factors(y, method="TMM")
        else:
            y = ep.make_dgelist(counts=counts, lib_size=cells)
        y = ep.estimate_disp(y, design=design, tagwise=False)
        fit = ep.glm_ql_fit(y, design=design, robust=True, legacy=True)
        table = ep.glm_ql_ftest(fit, coef=coef)["table"]
    seconds = time.perf_counter() - t0
    return table["logFC"].to_numpy(float), table["PValue"].to_numpy(float), seconds


def agreement(a, b) -> dict:
    """Agreement of (log2 FC, p) pairs a and b."""
    lp_a, lp_b = -np.log10(np.maximum(a[1], 1e-300)), -np.log10(np.maximum(b[1], 1e-300))
    return {
        "max_abs_logfc_diff": float(np.max(np.abs(a[0] - b[0]))),
        "spearman_logfc": float(stats.spearmanr(a[0], b[0])[0]),
        "spearman_neglog10p": float(stats.spearmanr(lp_a, lp_b)[0]),
        "max_abs_log10p_diff": float(np.max(np.abs(lp_a - lp_b))),
        "calls_agree": float(np.mean((a[1] < 0.05) == (b[1] < 0.05))),
        "n_calls_a": int((a[1] < 0.05).sum()),
        "n_calls_b": int((b[1] < 0.05).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", type=Path, default=None, help="cohort.h5mu of a demo run")
    args = parser.parse_args()
    try:
        import edgepython  # noqa: F401

        have_ep = True
    except ImportError:
        have_ep = False
        print("edgepython not importable: its rows are left out")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (counts, design, coef, norm, cells) in matrices(args.cohort).items():
            ours = run_ours(counts, design, coef, norm, cells)
            ref = run_r(counts, design, coef, norm, cells, Path(tmp), name)
            pairs = {"ours vs R edgeR": (ours, ref)}
            seconds = {"seconds_ours": ours[2], "seconds_r": ref[2]}
            if have_ep:
                run_edgepython(counts, design, coef, norm, cells)  # warm its numba kernels
                peer = run_edgepython(counts, design, coef, norm, cells)
                pairs["ours vs edgepython"] = (ours, peer)
                pairs["edgepython vs R edgeR"] = (peer, ref)
                seconds["seconds_edgepython"] = peer[2]
            base = {
                "matrix": name, "rows": counts.shape[0], "samples": counts.shape[1],
                "zero_fraction": round(float((counts == 0).mean()), 3), "normalisation": norm,
            }  # fmt: skip
            for comparison, (a, b) in pairs.items():
                rows.append({**base, "comparison": comparison, **agreement(a, b), **seconds})
            print(pd.DataFrame(rows[-len(pairs) :]).to_string(index=False))
    table = pd.DataFrame(rows)
    table.to_csv(RESULTS, index=False, float_format="%.6g")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Check sccohort's dsb and CLR against R and against the dsb paper's stated properties.

Data: ../shared/data/dsb_pbmc_adt (Kotliarov et al. 2020 CITE-seq via the dsb package; 2,872
cells x 87 antibodies + 8,005 empty droplets).

1. R reference. The R package dsb is not in Debian (``apt-cache search r-cran-dsb``: nothing)
   and CRAN is unreachable, but DSBNormalizeProtein (dsb 1.0.x, R/dsb.r, CC0) is a short
   function over mclust, prcomp and limma, which Debian ships (r-cran-mclust 6.0.0,
   r-bioc-limma 3.54.1). Its computation is run verbatim below in R and compared number by
   number: ambient-corrected values, per-cell background mean mu1, technical component,
   final matrix.
2. Seurat 4.3 (r-cran-seurat) NormalizeData(method = "CLR", margin = 1 / 2) against clr().
3. Properties from the dsb paper: negative populations near 0, lineage-marker positive
   populations > 3.5, isotype controls near 0, technical component ~ library size.
4. Speed of the vectorised per-cell mixtures at cohort scale (230,000 cells x 150 proteins).

Run:  python benchmarks/bench_dsb_check.py [--skip-scale]
Writes benchmarks/results/dsb_check.csv (check, value, expected, ok).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.stats as st

from sccohort.pp.dsb import dsb, isotype_controls
from sccohort.pp.gmm import gmm2_background_mean
from sccohort.pp.normalize import clr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb_pbmc_adt"
OUT = ROOT / "benchmarks" / "results" / "dsb_check.csv"

R_DSB = r"""
suppressMessages({library(mclust); library(limma)})
args <- commandArgs(trailingOnly = TRUE)
d <- args[1]
adt <- t(as.matrix(read.csv(file.path(d, "cells.csv"), check.names = FALSE)))
adtu <- t(as.matrix(read.csv(file.path(d, "empty.csv"), check.names = FALSE)))
iso <- readLines(file.path(d, "isotypes.txt"))
# --- dsb::DSBNormalizeProtein (dsb 1.0.x), default arguments, denoise + isotypes ---
adtu_log <- log(adtu + 10)
adt_log <- log(adt + 10)
mu_u <- apply(adtu_log, 1, mean)
sd_u <- apply(adtu_log, 1, sd)
norm_adt <- apply(adt_log, 2, function(x) (x - mu_u) / sd_u)
step1 <- norm_adt
t0 <- Sys.time()
cellwise_background_mean <- apply(norm_adt, 2, function(x) {
  g <- mclust::Mclust(x, G = 2, warn = FALSE, verbose = FALSE)
  return(g$parameters$mean[1])
})
t_mclust <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
noise_matrix <- rbind(norm_adt[iso, ], cellwise_background_mean)
g <- stats::prcomp(t(noise_matrix), scale = TRUE)
noise_vector <- g$x[, 1]
norm_adt <- limma::removeBatchEffect(norm_adt, covariates = noise_vector)
# ---
write.csv(t(step1), file.path(d, "r_step1.csv"), row.names = FALSE)
write.csv(t(norm_adt), file.path(d, "r_dsb.csv"), row.names = FALSE)
write.csv(data.frame(mu1 = cellwise_background_mean, tech = noise_vector),
          file.path(d, "r_cells.csv"), row.names = FALSE)
writeLines(as.character(t_mclust), file.path(d, "r_time.txt"))
"""

R_CLR = r"""
suppressMessages(library(Seurat))
d <- commandArgs(trailingOnly = TRUE)[1]
m <- t(as.matrix(read.csv(file.path(d, "clr_in.csv"), check.names = FALSE)))
colnames(m) <- paste0("c", seq_len(ncol(m)))
for (mg in c(1, 2)) {
  n <- as.matrix(NormalizeData(m, normalization.method = "CLR", margin = mg, verbose = FALSE))
  write.csv(t(n), file.path(d, paste0("clr_m", mg, ".csv")), row.names = FALSE)
}
writeLines(as.character(packageVersion("Seurat")), file.path(d, "seurat_version.txt"))
"""


def _row(rows: list, check: str, value: float, expected: str, ok: bool | None) -> None:
    rows.append({"check": check, "value": value, "expected": expected, "ok": ok})
    flag = "" if ok is None else ("  ok" if ok else "  FAIL")
    print(f"{check:<62} {value:>12.4g}  {expected}{flag}")


def load() -> tuple[ad.AnnData, ad.AnnData]:
    cells = ad.read_h5ad(DATA / "cells_citeseq_mtx.h5ad")
    empty = ad.read_h5ad(DATA / "empty_drop_citeseq_mtx.h5ad")
    cells.layers["counts"] = cells.X.copy()
    return cells, empty


def check_against_r(rows: list, cells: ad.AnnData, empty: ad.AnnData, ours: ad.AnnData) -> None:
    if shutil.which("Rscript") is None:
        _row(rows, "R reference available", 0, "Rscript on PATH", None)
        return
    iso = isotype_controls(cells)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pd.DataFrame(cells.X.toarray(), columns=cells.var_names).to_csv(
            d / "cells.csv", index=False
        )
        pd.DataFrame(empty.X.toarray(), columns=empty.var_names).to_csv(
            d / "empty.csv", index=False
        )
        (d / "isotypes.txt").write_text("\n".join(iso) + "\n")
        (d / "dsb.R").write_text(R_DSB)
        t0 = time.perf_counter()
        subprocess.run(["Rscript", str(d / "dsb.R"), str(d)], check=True)
        r_total = time.perf_counter() - t0
        r_step1 = pd.read_csv(d / "r_step1.csv").to_numpy()
        r_dsb = pd.read_csv(d / "r_dsb.csv").to_numpy()
        r_cells = pd.read_csv(d / "r_cells.csv")
        r_mclust = float((d / "r_time.txt").read_text())

    step1 = cells.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dsb(step1, empty, denoise_counts=False, empty_layer=None)
    x = np.asarray(ours.X, dtype=np.float64)
    mu1 = ours.obs["dsb_background_mean"].to_numpy()
    tech = ours.obs["dsb_technical_component"].to_numpy()
    mu1_diff = np.abs(mu1 - r_cells["mu1"].to_numpy())
    _row(
        rows,
        "R: step I (ambient) max |ours - R|",
        np.abs(step1.X - r_step1).max(),
        "< 1e-5",
        np.abs(step1.X - r_step1).max() < 1e-5,
    )
    _row(
        rows,
        "R: mu1 (per-cell background mean) median |ours - R|",
        np.median(mu1_diff),
        "< 0.01",
        np.median(mu1_diff) < 0.01,
    )
    _row(
        rows,
        "R: mu1 share of cells with |ours - R| > 0.05",
        np.mean(mu1_diff > 0.05),
        "< 0.01",
        np.mean(mu1_diff > 0.05) < 0.01,
    )
    _row(
        rows,
        "R: mu1 Pearson r ours vs R",
        np.corrcoef(mu1, r_cells["mu1"])[0, 1],
        "> 0.999",
        np.corrcoef(mu1, r_cells["mu1"])[0, 1] > 0.999,
    )
    tech_r = abs(np.corrcoef(tech, r_cells["tech"])[0, 1])
    _row(rows, "R: technical component |Pearson r| ours vs R", tech_r, "> 0.999", tech_r > 0.999)
    err = np.abs(x - r_dsb)
    _row(rows, "R: dsb matrix median |ours - R|", np.median(err), "< 0.01", np.median(err) < 0.01)
    _row(
        rows,
        "R: dsb matrix 99.9th pct |ours - R|",
        np.quantile(err, 0.999),
        "< 0.1",
        np.quantile(err, 0.999) < 0.1,
    )
    _row(rows, "R: dsb matrix max |ours - R|", err.max(), "report", None)
    _row(rows, "R: mclust per-cell fits, seconds (R, 2,872 cells)", r_mclust, "report", None)
    _row(rows, "R: whole R dsb script incl. csv io, seconds", r_total, "report", None)


def check_clr_against_seurat(rows: list, cells: ad.AnnData) -> None:
    if shutil.which("Rscript") is None:
        return
    small = cells[:300].copy()
    counts = small.X.toarray()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pd.DataFrame(counts, columns=small.var_names).to_csv(d / "clr_in.csv", index=False)
        (d / "clr.R").write_text(R_CLR)
        subprocess.run(["Rscript", str(d / "clr.R"), str(d)], check=True)
        seurat = {m: pd.read_csv(d / f"clr_m{m}.csv").to_numpy() for m in (1, 2)}
        version = (d / "seurat_version.txt").read_text().strip()
    for margin, seurat_margin in (("cell", 2), ("feature", 1)):
        a = small.copy()
        clr(a, margin=margin)
        diff = np.abs(np.asarray(a.X, dtype=np.float64) - seurat[seurat_margin]).max()
        _row(
            rows,
            f"Seurat {version} CLR margin={seurat_margin} vs clr(margin='{margin}') max |d|",
            diff,
            "< 1e-5",
            diff < 1e-5,
        )


def check_properties(rows: list, cells: ad.AnnData, ours: ad.AnnData) -> None:
    x = np.asarray(ours.X)

    def col(name: str) -> np.ndarray:
        return x[:, ours.var_names.get_loc(name)]

    cd3, cd19, cd14 = col("CD3_PROT"), col("CD19_PROT"), col("CD14_PROT")
    t_cells = (cd3 > 3.5) & (cd19 < 3.5) & (cd14 < 3.5)
    b_cells = (cd19 > 3.5) & (cd3 < 3.5) & (cd14 < 3.5)
    monos = (cd14 > 3.5) & (cd3 < 3.5) & (cd19 < 3.5)
    for label, mask in (("T (CD3+)", t_cells), ("B (CD19+)", b_cells), ("mono (CD14+)", monos)):
        _row(rows, f"cells called {label} share", mask.mean(), "report", None)
    for marker, pos, neg in (
        ("CD3", t_cells, b_cells | monos),
        ("CD19", b_cells, t_cells | monos),
        ("CD14", monos, t_cells | b_cells),
    ):
        v = col(f"{marker}_PROT")
        _row(
            rows,
            f"{marker} median in positive lineage",
            np.median(v[pos]),
            "> 3.5",
            np.median(v[pos]) > 3.5,
        )
        _row(
            rows,
            f"{marker} median in other lineages (negative)",
            np.median(v[neg]),
            "|x| < 1",
            abs(np.median(v[neg])) < 1,
        )
    # negative population of every protein: values below the protein's own median-split mode
    neg_medians = []
    for j in range(x.shape[1]):
        v = x[:, j]
        neg_medians.append(
            np.median(v[v < np.quantile(v, 0.5)]) if ours.var["dsb_normalised"].iloc[j] else 0
        )
    _row(
        rows,
        "all proteins: median of lower half, median over proteins",
        float(np.median(neg_medians)),
        "|x| < 1",
        abs(np.median(neg_medians)) < 1,
    )
    for name in isotype_controls(cells):
        m = float(np.median(col(name)))
        _row(rows, f"isotype {name} median", m, "|x| < 0.5", abs(m) < 0.5)
    lib = np.log10(np.asarray(cells.layers["counts"].sum(axis=1)).ravel())
    rho = st.spearmanr(ours.obs["dsb_technical_component"], lib)[0]
    _row(rows, "Spearman(technical component, log10 protein library size)", rho, "> 0.3", rho > 0.3)
    rho_mu = st.spearmanr(ours.obs["dsb_background_mean"], lib)[0]
    _row(
        rows,
        "Spearman(background mean mu1, log10 protein library size)",
        rho_mu,
        "> 0.3",
        rho_mu > 0.3,
    )


def check_scale(rows: list) -> None:
    rng = np.random.default_rng(0)
    n_cells, n_prot = 230_000, 150
    values = rng.normal(size=(n_cells, n_prot))
    positive = rng.random((n_cells, n_prot)) < 0.2
    values[positive] += rng.normal(5, 1, size=positive.sum())
    t0, c0 = time.perf_counter(), time.process_time()
    mu1 = gmm2_background_mean(values)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    label = f"per-cell mixtures, {n_cells:,} cells x {n_prot} proteins"
    _row(rows, f"{label}, wall s", secs, "report (2 shared cores)", None)
    _row(rows, f"{label}, CPU s", cpu, "report", None)
    _row(
        rows,
        "  their background means: median |mu1 - 0| (truth 0)",
        np.median(np.abs(mu1)),
        "< 0.1",
        np.median(np.abs(mu1)) < 0.1,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-scale", action="store_true", help="skip the 230,000-cell timing")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"data folder {DATA} not found", file=sys.stderr)
        return 1
    cells, empty = load()
    rows: list = []
    ours = cells.copy()
    t0 = time.perf_counter()
    dsb(ours, empty, empty_layer=None)
    _row(
        rows,
        "sccohort dsb seconds (2,872 cells x 87 proteins)",
        time.perf_counter() - t0,
        "report",
        None,
    )
    check_against_r(rows, cells, empty, ours)
    check_clr_against_seurat(rows, cells)
    check_properties(rows, cells, ours)
    if not args.skip_scale:
        check_scale(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(OUT, index=False)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

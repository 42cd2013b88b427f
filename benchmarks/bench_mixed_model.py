"""Benchmark ``sccohort.stats.mixed_model`` against R lme4 + lmerTest, statsmodels and limma.

Data: simulated cohorts with unbalanced repeated samples (16 donors with 1-3 samples each;
``time``, a sample-level 0/1 with some donors sampled on one side only; ``group``, a
donor-level 0/1), and per sample

- composition: multinomial counts of 30 subsets (2,000-6,000 cells; donor random effects on
  the log shares, ``time`` effects in subsets 0-4, ``group`` effects in 5-9), transformed to
  CLR of counts + 0.5 with crumblr-style precision weights (delta method: the variance of
  CLR_i is about (1 - 2/D) / c_i + sum_k(1 / c_k) / D^2 for counts c, D subsets);
- pseudobulk: negative-binomial counts of 2,000 genes (donor random effects, 10 % of genes
  with a ``time`` effect, 10 % with a ``group`` effect), genes with mean count < 5 dropped.

Comparisons (``y ~ time + group + (1 | donor)``, REML), for both terms:

1. ``lmerTest``: R lme4 ``lmer(..., REML = TRUE, weights = w)`` + lmerTest's Satterthwaite
   t-test, unweighted and with the same weights (composition: the crumblr-style weights;
   pseudobulk: limma's voom weights, E and weights from R);
2. ``statsmodels``: ``MixedLM(...).fit(reml=True)``, unweighted (it has no weights); its p
   is a Wald z-test from its own joint Hessian, so only effects are expected to agree;
3. ``dream recipe``: pseudobulk, ours end to end (`voom_weights` + `random_intercept`) vs
   R limma::voom + lmerTest per gene (variancePartition's ``dream`` is not in Debian, so its
   recipe is written out by hand: voom weights, then lmer with them, Satterthwaite);
   plus voom's weights themselves.

Also: null calibration (fraction p < 0.05 over many null features, Gaussian and pseudobulk
counts; R lmerTest on 1,000 of the Gaussian ones) and power for a ``time`` effect against a
donor-fixed-effect model (``y ~ time + donor``, which can only use donors sampled on both
sides: the others are dropped), and speed for 20,000 genes x 60 samples.
Writes ``benchmarks/results/mixed_model.csv``.

Run: ``python benchmarks/bench_mixed_model.py [--null-cohorts 20]``
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from sccohort.stats.mixed_model import random_intercept, voom_weights

RESULTS = Path(__file__).resolve().parent / "results" / "mixed_model.csv"
TERMS = ("time", "group")

R_LMER = r"""
suppressMessages({library(lme4); library(lmerTest); library(limma)})
args <- commandArgs(TRUE)  # mode, input, meta, out, seconds [, weights]
meta <- read.csv(args[3]); meta$donor <- factor(meta$donor)
design <- model.matrix(~ time + group, meta)
if (args[1] == "voom") {
  v <- voom(t(as.matrix(read.csv(args[2]))), design)
  Y <- t(v$E); W <- t(v$weights)
  write.csv(W, paste0(args[4], ".weights.csv"), row.names = FALSE)
} else {
  Y <- as.matrix(read.csv(args[2]))
  W <- if (length(args) > 5) as.matrix(read.csv(args[6])) else matrix(1, nrow(Y), ncol(Y))
}
t0 <- Sys.time()
out <- t(vapply(seq_len(ncol(Y)), function(j) {
  d <- meta; d$y <- Y[, j]; d$w <- W[, j]
  m <- suppressMessages(suppressWarnings(
    lmer(y ~ time + group + (1 | donor), data = d, REML = TRUE, weights = w)))
  co <- summary(m)$coefficients
  c(co["time", c(1, 2, 3, 5)], co["group", c(1, 2, 3, 5)],
    as.data.frame(VarCorr(m))$vcov[1], sigma(m)^2, isSingular(m))
}, numeric(11)))
cat(as.numeric(difftime(Sys.time(), t0, units = "secs")), "\n", file = args[5])
stat <- c("effect", "se", "df", "pvalue")
colnames(out) <- c(paste0("time_", stat), paste0("group_", stat), "tau2", "sigma2", "singular")
write.csv(out, args[4], row.names = FALSE)
"""


def design(seed: int, n_donors: int = 16) -> pd.DataFrame:
    """Samples: donor (1-3 samples each), time (sample-level 0/1), group (donor-level 0/1)."""
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(n_donors), rng.integers(1, 4, size=n_donors))
    group = rng.permutation(np.arange(n_donors) % 2)[donor]
    return pd.DataFrame(
        {"donor": donor, "time": rng.integers(0, 2, size=len(donor)), "group": group}
    )


def x_of(meta: pd.DataFrame) -> np.ndarray:
    return np.column_stack([np.ones(len(meta)), meta["time"], meta["group"]]).astype(float)


def composition(meta: pd.DataFrame, seed: int, n_subsets: int = 30):
    """CLR of multinomial counts (n x 30) and crumblr-style delta-method weights."""
    rng = np.random.default_rng(seed)
    n_donors = meta["donor"].max() + 1
    base = rng.normal(0.0, 1.0, size=n_subsets)
    effect_time, effect_group = np.zeros(n_subsets), np.zeros(n_subsets)
    effect_time[:5], effect_group[5:10] = 0.6, 0.6
    logits = (
        base
        + rng.normal(0.0, 0.4, size=(n_donors, n_subsets))[meta["donor"]]
        + np.outer(meta["time"], effect_time)
        + np.outer(meta["group"], effect_group)
        + rng.normal(0.0, 0.15, size=(len(meta), n_subsets))
    )
    share = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cells = rng.integers(2000, 6000, size=len(meta))
    counts = np.stack([rng.multinomial(c, s) for c, s in zip(cells, share, strict=True)])
    c = counts + 0.5
    clr = np.log(c) - np.log(c).mean(axis=1, keepdims=True)
    var = (1 - 2 / n_subsets) / c + (1 / c).sum(axis=1, keepdims=True) / n_subsets**2
    return clr, 1.0 / var


def pseudobulk(meta: pd.DataFrame, seed: int, n_genes: int = 2000, effects: bool = True):
    """NB counts, samples x genes, genes with mean count >= 5."""
    rng = np.random.default_rng(seed)
    n_donors = meta["donor"].max() + 1
    log_mu = np.log(rng.gamma(0.6, 60.0, size=n_genes) + 0.5)
    lfc_time, lfc_group = np.zeros(n_genes), np.zeros(n_genes)
    if effects:
        lfc_time[:200] = rng.choice([-1, 1], 200) * np.log(2.0)
        lfc_group[200:400] = rng.choice([-1, 1], 200) * np.log(2.0)
    lib = rng.uniform(0.6, 1.6, size=len(meta))
    mu = (
        np.exp(
            log_mu
            + rng.normal(0.0, 0.3, size=(n_donors, n_genes))[meta["donor"]]
            + np.outer(meta["time"], lfc_time)
            + np.outer(meta["group"], lfc_group)
        )
        * lib[:, None]
    )
    size = 1 / rng.uniform(0.05, 0.2, size=n_genes)
    counts = rng.negative_binomial(size, size / (size + mu))
    return counts[:, counts.mean(axis=0) >= 5]


def run_r(mode: str, values: np.ndarray, meta: pd.DataFrame, tmp: Path, weights=None):
    """R lmer + lmerTest per feature (``mode`` 'voom': limma::voom on counts first)."""
    (tmp / "lmer.R").write_text(R_LMER)
    pd.DataFrame(values).to_csv(tmp / "values.csv", index=False)
    meta.to_csv(tmp / "meta.csv", index=False)
    cmd = ["Rscript", str(tmp / "lmer.R"), mode, str(tmp / "values.csv"), str(tmp / "meta.csv"),
           str(tmp / "out.csv"), str(tmp / "seconds.txt")]  # fmt: skip
    if weights is not None:
        pd.DataFrame(weights).to_csv(tmp / "weights.csv", index=False)
        cmd.append(str(tmp / "weights.csv"))
    subprocess.run(cmd, check=True, capture_output=True)
    out = pd.read_csv(tmp / "out.csv")
    if mode == "voom":
        out.attrs["weights"] = pd.read_csv(tmp / "out.csv.weights.csv").to_numpy()
    out.attrs["seconds"] = float((tmp / "seconds.txt").read_text())
    return out


def ours(y, meta, weights=None) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = {t: random_intercept(y, x_of(meta), meta["donor"], i + 1, weights=weights)
           for i, t in enumerate(TERMS)}  # fmt: skip
    return res, time.perf_counter() - t0


def statsmodels_fits(y, meta) -> tuple[pd.DataFrame, float]:
    t0, rows = time.perf_counter(), []
    for j in range(y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.MixedLM(y[:, j], x_of(meta), groups=meta["donor"]).fit(reml=True)
        row = {"converged": bool(fit.converged)}
        for i, t in enumerate(TERMS):
            row[f"{t}_effect"], row[f"{t}_pvalue"] = fit.fe_params[i + 1], fit.pvalues[i + 1]
        rows.append(row)
    return pd.DataFrame(rows), time.perf_counter() - t0


def agreement(mine: dict, theirs: pd.DataFrame, term: str) -> dict:
    """Over the features the reference fitted (statsmodels: converged, finite p)."""
    ok = np.isfinite(theirs[f"{term}_pvalue"].to_numpy())
    if "converged" in theirs:
        ok &= theirs["converged"].to_numpy(bool)
    extra = {"n_reference_failed": int((~ok).sum())}
    if "singular" in theirs:
        extra["singular_ours_reference"] = (
            f"{int(mine[term]['singular'].sum())} / {int(theirs['singular'].sum())}"
        )
    a, b = mine[term]["effect"][ok], theirs[f"{term}_effect"].to_numpy()[ok]
    pa = -np.log10(mine[term]["pvalue"][ok])
    pb = -np.log10(theirs[f"{term}_pvalue"].to_numpy()[ok])
    worst = int(np.argmax(np.abs(pa - pb)))
    return {
        **extra,
        "n_features": len(a),
        "spearman_effect": stats.spearmanr(a, b).statistic,
        "max_abs_effect_diff": float(np.abs(a - b).max()),
        "spearman_log10p": stats.spearmanr(pa, pb).statistic,
        "max_abs_log10p_diff": float(np.abs(pa - pb).max()),
        "worst_log10p_ours_theirs": f"{pa[worst]:.4g} / {pb[worst]:.4g}",
    }


def compare(data: str, weights: str, reference: str, mine, secs, theirs, secs_ref) -> list:
    return [
        {"section": "agreement", "data": data, "weights": weights, "reference": reference,
         "term": t, **agreement(mine, theirs, t), "seconds_ours": secs,
         "seconds_reference": secs_ref}
        for t in TERMS
    ]  # fmt: skip


def agreement_rows(seed: int, tmp: Path) -> list[dict]:
    meta = design(seed)
    rows = []
    clr, w = composition(meta, seed)
    for label, weights in (("none", None), ("crumblr-style", w)):
        mine, secs = ours(clr, meta, weights)
        r = run_r("lmer", clr, meta, tmp, weights)
        rows += compare("composition", label, "lmerTest", mine, secs, r, r.attrs["seconds"])
        if weights is None:
            sm_res, sm_secs = statsmodels_fits(clr, meta)
            rows += compare("composition", "none", "statsmodels", mine, secs, sm_res, sm_secs)
    counts = pseudobulk(meta, seed)
    t0 = time.perf_counter()
    logcpm, vw = voom_weights(counts, x_of(meta))
    voom_secs = time.perf_counter() - t0
    r = run_r("voom", counts, meta, tmp)
    mine, secs = ours(logcpm, meta, vw)
    rows += compare("pseudobulk", "voom", "dream recipe (limma::voom + lmerTest)", mine,
                    secs + voom_secs, r, r.attrs["seconds"])  # fmt: skip
    rows.append({"section": "agreement", "data": "pseudobulk", "weights": "voom",
                 "reference": "limma::voom weights", "n_features": counts.shape[1],
                 "max_rel_weight_diff": float(np.abs(vw / r.attrs["weights"] - 1).max()),
                 "seconds_ours": voom_secs})  # fmt: skip
    mine, secs = ours(logcpm, meta)
    r = run_r("lmer", logcpm, meta, tmp)
    rows += compare("pseudobulk", "none", "lmerTest", mine, secs, r, r.attrs["seconds"])
    sm_res, sm_secs = statsmodels_fits(logcpm, meta)
    rows += compare("pseudobulk", "none", "statsmodels", mine, secs, sm_res, sm_secs)
    return rows


def gaussian(meta: pd.DataFrame, rng, n_features: int, effect: float = 0.0) -> np.ndarray:
    """Features with donor SD uniform in [0, 1.5], residual SD 1, ``effect`` x time."""
    n_donors = meta["donor"].max() + 1
    donor_sd = rng.uniform(0.0, 1.5, size=n_features)
    u = rng.normal(size=(n_donors, n_features))[meta["donor"]] * donor_sd
    return u + rng.normal(size=(len(meta), n_features)) + effect * meta["time"].to_numpy()[:, None]


def donor_fixed_pvalues(y: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
    """``y ~ time + donor`` (OLS) on the donors sampled at both times: p of time."""
    both = meta.groupby("donor")["time"].transform("nunique").to_numpy() == 2
    m, yy = meta[both], y[both]
    codes = pd.factorize(m["donor"])[0]
    onehot = np.eye(codes.max() + 1)[codes]
    size = onehot.sum(axis=0)
    tc = m["time"].to_numpy(float) - onehot @ (onehot.T @ m["time"].to_numpy(float) / size)
    yc = yy - onehot @ (onehot.T @ yy / size[:, None])
    beta = tc @ yc / (tc @ tc)
    df = len(m) - len(size) - 1
    s2 = ((yc - np.outer(tc, beta)) ** 2).sum(axis=0) / df
    return 2 * stats.t.sf(np.abs(beta / np.sqrt(s2 / (tc @ tc))), df)


def calibration_rows(n_cohorts: int, tmp: Path) -> list[dict]:
    rows, frac = [], {t: [] for t in TERMS}
    for seed in range(n_cohorts):
        meta = design(100 + seed)
        y = gaussian(meta, np.random.default_rng(seed), 2000)
        mine, _ = ours(y, meta)
        for t in TERMS:
            frac[t].append(mine[t]["pvalue"])
        if seed < 2:  # lmerTest on the first 1,000 features of the first two cohorts
            r = run_r("lmer", y[:, :1000], meta, tmp)
            for t in TERMS:
                rows.append(
                    {"section": "null", "data": f"gaussian, cohort {seed}", "term": t,
                     "reference": "lmerTest", "n_features": 1000,
                     "frac_p_below_0.05": float((r[f"{t}_pvalue"] < 0.05).mean()),
                     "frac_p_below_0.05_ours": float((mine[t]["pvalue"][:1000] < 0.05).mean())}
                )  # fmt: skip
    for t in TERMS:
        p = np.concatenate(frac[t])
        rows.append({"section": "null", "data": f"gaussian, {n_cohorts} cohorts", "term": t,
                     "reference": "ours", "n_features": len(p),
                     "frac_p_below_0.05": float((p < 0.05).mean())})  # fmt: skip
    pb = {t: [] for t in TERMS}
    for seed in range(max(n_cohorts // 2, 1)):
        meta = design(200 + seed)
        counts = pseudobulk(meta, 300 + seed, effects=False)
        logcpm, vw = voom_weights(counts, x_of(meta))
        mine, _ = ours(logcpm, meta, vw)
        for t in TERMS:
            pb[t].append(mine[t]["pvalue"])
    for t in TERMS:
        p = np.concatenate(pb[t])
        rows.append({"section": "null", "data": f"pseudobulk voom, {len(pb[t])} cohorts",
                     "term": t, "reference": "ours", "n_features": len(p),
                     "frac_p_below_0.05": float((p < 0.05).mean())})  # fmt: skip
    return rows


def power_rows(n_cohorts: int) -> list[dict]:
    rows, cut = [], {}
    for effect in (0.0, 0.5, 1.0):
        mixed, fixed, kept = [], [], []
        for seed in range(n_cohorts):
            meta = design(400 + seed)
            y = gaussian(meta, np.random.default_rng(500 + seed), 1000, effect)
            mixed.append(random_intercept(y, x_of(meta), meta["donor"], 1)["pvalue"])
            fixed.append(donor_fixed_pvalues(y, meta))
            kept.append((meta.groupby("donor")["time"].nunique() == 2).sum())
        for label, p in (("random intercept (ours)", mixed), ("donor fixed effects", fixed)):
            p = np.concatenate(p)
            if effect == 0.0:  # size-adjusted power: each method's 5 % null quantile
                cut[label] = np.quantile(p, 0.05)
            rows.append({"section": "power", "data": f"gaussian, time effect {effect} SD",
                         "term": "time", "reference": label, "n_features": len(p),
                         "frac_p_below_0.05": float((p < 0.05).mean()),
                         "frac_below_null_5pct_quantile": float((p < cut[label]).mean()),
                         "note": f"donors used by the fixed model: median {np.median(kept):.0f}"
                         " of 16"})  # fmt: skip
    return rows


def speed_rows(per_feature_r: float) -> list[dict]:
    rng = np.random.default_rng(9)
    sizes = np.r_[np.full(15, 3), np.full(5, 2), np.full(5, 1)]
    donor = np.repeat(np.arange(25), sizes)
    meta = pd.DataFrame({"donor": donor, "time": rng.integers(0, 2, 60),
                         "group": (np.arange(25) % 2)[donor]})  # fmt: skip
    y = gaussian(meta, rng, 20_000)
    weights = rng.uniform(0.5, 2.0, size=y.shape)
    rows = []
    for label, w in (("none", None), ("per gene", weights)):
        t0 = time.perf_counter()
        random_intercept(y, x_of(meta), meta["donor"], 1, weights=w)
        rows.append({"section": "speed", "data": "20,000 features x 60 samples (25 donors)",
                     "weights": label, "term": "time", "n_features": 20_000,
                     "seconds_ours": time.perf_counter() - t0,
                     "seconds_reference": per_feature_r * 20_000,
                     "reference": "lmerTest (pseudobulk seconds per gene x 20,000)"})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--null-cohorts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = agreement_rows(args.seed, Path(tmp))
        rows += calibration_rows(args.null_cohorts, Path(tmp))
    rows += power_rows(args.null_cohorts)
    pb = [r for r in rows if r.get("reference") == "lmerTest" and r["data"] == "pseudobulk"]
    rows += speed_rows(pb[0]["seconds_reference"] / pb[0]["n_features"])
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False, float_format="%.4g")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string())


if __name__ == "__main__":
    main()

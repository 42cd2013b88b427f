"""AUPRC of recovering planted subsets: the default test against KS, Milo, scCODA and CNA.

Cohorts come from the simulator's composition model (benchmarks/paper_cohort.py over
`sccohort.simulate.design`: 27 donors of the reference study, a Dirichlet per donor around
the age-dependent expected shares, the planted folds on CD14_EGR1 in SRC donors and
CD8_TEM_T2ISG in ILD donors; 38 subsets). Two contrasts within SSc, both adjusted for age:
SRC (4 vs 17 donors; positive CD14_EGR1) and ILD (12 vs 9; positive CD8_TEM_T2ISG). The other
37 subsets are the negatives of a contrast (the other planted subset included: it is not
associated with that variable by design).

Settings:

- ``counts_<contrast>_fold<f>``: perfect labels, 1,500 cells per donor drawn multinomially;
  methods that work on counts: ``default`` (`sccohort.stats.abundance.compare_abundance`,
  score -log10 p, called padj < 0.05), ``ks_bonferroni`` (the study's test,
  `sccohort.stats.tests.ks_test`, score -log10 p, called Bonferroni p < 0.05) and ``sccoda``
  (pertpy 1.0.3 ``Sccoda``, formula ``term + age`` with age standardised, automatic
  reference, NUTS with 500 warm-up + 1,500 draws and tree depth <= 5; score = the term's
  inclusion probability, called = credible at pertpy's default estimated FDR 0.05). scCODA
  takes ~25 s per run here, so it runs on the first ``SCCODA_COHORTS`` (4) cohorts of each
  counts setting only.
- ``cells_<contrast>_fold3``: cohorts drawn the same way (1,000 cells per donor) laid out as
  cells in a synthetic 10-d embedding: a Gaussian blob (sd 1) per subset, its centre its l1
  lineage's centre (N(0, 6^2) per dim) plus N(0, 2.5^2) per dim, so subsets of a lineage are
  neighbours. ``default`` and ``ks_bonferroni`` run on the per-donor counts (scCODA is left
  out here for time), plus ``milo`` (`sccohort.stats.neighbourhoods.neighbourhoods`, preset
  "default" (k = 30, prop = 0.1), d = 10; subset score = the best -log10 p among the
  neighbourhoods whose majority label is the subset, called = any such neighbourhood with
  spatial FDR < 0.05) and ``cna`` (CNA 0.2.6, ``cna.tl.association`` on scanpy's default kNN
  graph with y = the term, covs = age, 1,000 null permutations; subset score = the largest
  |neighbourhood correlation| among the subset's cells, called = the global CNA p < 0.05 and
  any of its cells beyond CNA's 5 % FDR correlation threshold).

AUPRC is ``sklearn.metrics.average_precision_score`` of the subset scores (ties count as one
threshold); with one positive per contrast it is 1 / (rank of the planted subset) when there
are no ties. ``tpr_at_005`` is the fraction of cohorts whose planted subset is called;
``fp_at_005`` the mean number of negative subsets called per cohort.

scCODA runs in the scratch venv /tmp/milo/venv (pertpy + jax), CNA in /tmp/auprc/venv
(``pip install cna "scipy<1.15" "scikit-learn<1.7"``); this script calls itself there with
``--peer`` (cohorts are handed over as files under /tmp/auprc/work). A peer whose venv is
missing or that fails is recorded as skipped with the reason.

Run: ``python benchmarks/bench_association_auprc.py`` (10 cohorts per setting) or ``--quick``
(3); writes benchmarks/results/association_auprc.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORK = Path("/tmp/auprc/work")
PEER_PYTHON = {"sccoda": "/tmp/milo/venv/bin/python", "cna": "/tmp/auprc/venv/bin/python"}
CONTRASTS = {"SRC": "CD14_EGR1", "ILD": "CD8_TEM_T2ISG"}
FOLDS = {"counts": (2.0, 3.0), "cells": (3.0,)}
COUNT_CELLS = 1500
CELL_CELLS = 1000
DIMS = 10
N_PERM = 2000
SCCODA_SAMPLES, SCCODA_WARMUP, SCCODA_TREE_DEPTH = 1500, 500, 5
#: scCODA takes ~25 s per run on 2 cores, so it runs on the first cohorts of each setting only.
SCCODA_COHORTS = 4
OUT = Path(__file__).resolve().parent / "results" / "association_auprc.csv"


# ---------------------------------------------------------------- peers (run in their venvs)


def _peer_sccoda(jobs: list[Path]) -> None:
    """Run scCODA on every job directory (counts.csv, samples.csv) -> sccoda.csv."""
    import logging

    import anndata as ad
    import numpyro
    import pertpy as pt

    logging.getLogger().setLevel(logging.ERROR)
    # pertpy replaces zero counts by 0.5, so a sample's total is not an integer, which numpyro
    # 0.22's DirichletMultinomial rejects when validating; the log-likelihood itself is defined.
    numpyro.enable_validation(False)
    for job in jobs:
        t0 = time.perf_counter()
        counts = pd.read_csv(job / "counts.csv", index_col=0)
        samples = pd.read_csv(job / "samples.csv", index_col=0).loc[counts.index]
        covariates = samples[["term", "age"]].astype(float)
        covariates["age"] = (covariates["age"] - covariates["age"].mean()) / covariates["age"].std()
        adata = ad.AnnData(
            X=counts.to_numpy(dtype=float),
            obs=covariates,
            var=pd.DataFrame(index=counts.columns),
        )
        model = pt.tl.Sccoda()
        mdata = model.load(adata, type="sample_level")
        mdata = model.prepare(mdata, formula="term + age", reference_cell_type="automatic")
        model.run_nuts(
            mdata,
            num_samples=SCCODA_SAMPLES,
            num_warmup=SCCODA_WARMUP,
            rng_key=0,
            max_tree_depth=SCCODA_TREE_DEPTH,
        )
        eff = model.get_effect_df(mdata).loc["term"]
        pd.DataFrame(
            {
                "subset": eff.index,
                "score": eff["Inclusion probability"].to_numpy(),
                "called": eff["Final Parameter"].to_numpy() != 0,
                "seconds": time.perf_counter() - t0,
            }
        ).to_csv(job / "sccoda.csv", index=False)


def _peer_cna(jobs: list[Path]) -> None:
    """Run CNA on every job directory (emb.npy, cells.csv, samples.csv) -> cna.csv."""
    import anndata as ad
    import cna
    import scanpy as sc
    from scanpy.neighbors import _common
    from scipy import sparse

    # scanpy 1.11.5 calls ``getnnz`` on the kNN distances, which arrive as a scipy sparse array
    # (no ``getnnz``) with this venv's scipy; hand it a sparse matrix instead.
    shortcut = _common._ind_dist_shortcut
    _common._ind_dist_shortcut = lambda d: shortcut(sparse.csr_matrix(d))

    for job in jobs:
        t0 = time.perf_counter()
        samples = pd.read_csv(job / "samples.csv", index_col=0)
        cells = pd.read_csv(job / "cells.csv", index_col=0)
        keep = cells["donor_id"].isin(samples.index).to_numpy()
        cells = cells[keep]
        emb = np.load(job / "emb.npy")[keep]
        data = ad.AnnData(X=emb, obs=cells.copy())
        data.obsm["X_pca"] = emb
        t1 = time.perf_counter()
        sc.pp.neighbors(data, use_rep="X_pca", random_state=0)
        print(f"neighbours {time.perf_counter() - t1:.1f} s", flush=True)
        res = cna.tl.association(
            data,
            samples["term"].astype(float),
            "donor_id",
            covs=samples[["age"]].astype(float),
            Nnull=1000,
            seed=0,
            return_full=True,
        )
        ncorr = np.abs(data.obs["coef"].fillna(0.0).to_numpy(dtype=float))
        fdrs = res.fdrs
        row = fdrs[fdrs["fdr"] <= 0.05]
        thresh = float(row["threshold"].min()) if len(row) else np.inf
        per_cell = pd.DataFrame(
            {"subset": cells["subset"].to_numpy(), "score": ncorr, "hit": ncorr > thresh}
        )
        agg = per_cell.groupby("subset").agg(score=("score", "max"), hit=("hit", "any"))
        agg["called"] = agg["hit"] & (float(res.p) < 0.05)
        agg["global_p"] = float(res.p)
        agg["seconds"] = time.perf_counter() - t0
        agg.drop(columns="hit").reset_index().to_csv(job / "cna.csv", index=False)


# ---------------------------------------------------------------- cohorts


def _cells(counts: pd.DataFrame, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthetic embedding: one Gaussian blob per subset, subsets of a lineage close together."""
    from sccohort.simulate.biology import SUBSETS

    rng = np.random.default_rng(10_000 + seed)
    lineages = sorted({s.l1 for s in SUBSETS})
    lineage_centre = dict(zip(lineages, rng.normal(0, 6, (len(lineages), DIMS)), strict=True))
    centre = {s.name: lineage_centre[s.l1] + rng.normal(0, 2.5, DIMS) for s in SUBSETS}
    emb, rows = [], []
    for donor, row in counts.iterrows():
        for subset, n in row.items():
            if n:
                emb.append(centre[subset] + rng.normal(0, 1, (int(n), DIMS)))
                rows += [(f"{donor}:{subset}:{i}", f"{donor}_s", donor, subset) for i in range(n)]
    obs = pd.DataFrame(rows, columns=["cell", "sample_id", "donor_id", "subset"]).set_index("cell")
    return np.vstack(emb), obs


# ---------------------------------------------------------------- our methods


def _score_default(counts: pd.DataFrame, design) -> pd.DataFrame:
    from paper_cohort import default_test

    return _from_pvalues(default_test(counts, design, n_perm=N_PERM))


def _score_ks(counts: pd.DataFrame, design) -> pd.DataFrame:
    from sccohort.stats.tests import ks_test

    shares = counts.div(counts.sum(axis=1), axis=0)
    return _from_pvalues(ks_test(shares, design, "subset", n_boot=200))


def _from_pvalues(res: pd.DataFrame) -> pd.DataFrame:
    p = res["pvalue"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "subset": res["subset"].astype(str).to_numpy(),
            "score": np.where(np.isfinite(p), -np.log10(np.maximum(p, 1e-300)), 0.0),
            "called": (res["padj"] < 0.05).to_numpy(),
        }
    )


def _score_milo(emb: np.ndarray, obs: pd.DataFrame, design) -> pd.DataFrame:
    from sccohort.stats.neighbourhoods import neighbourhoods

    samples = [f"{d}_s" for d in design.donors]
    res = neighbourhoods(emb, obs, design, samples=samples, preset="default", d=DIMS, seed=0)
    res["score"] = -np.log10(np.maximum(res["pvalue"].to_numpy(dtype=float), 1e-300))
    res["called"] = res["padj"] < 0.05
    agg = res.groupby("subset").agg(score=("score", "max"), called=("called", "any"))
    return agg.reset_index()


# ---------------------------------------------------------------- evaluation


def _evaluate(scores: pd.DataFrame, subsets: list[str], positive: str) -> dict:
    """AUPRC and calls of one method on one contrast; subsets without a score get score 0."""
    from sklearn.metrics import average_precision_score

    s = scores.set_index("subset").reindex(subsets)
    score = s["score"].fillna(0.0).to_numpy(dtype=float)
    called = s["called"].eq(True).to_numpy(dtype=bool)
    truth = np.array([x == positive for x in subsets])
    return {
        "auprc": float(average_precision_score(truth, score)),
        "tp": bool(called[truth].any()),
        "fp": int(called[~truth].sum()),
    }


def _run_peer(name: str, jobs: list[Path]) -> str:
    """Run a peer over job dirs in its venv; returns '' or the reason it was skipped."""
    python = PEER_PYTHON[name]
    if not Path(python).exists():
        return f"venv {python} missing"
    cmd = [python, str(Path(__file__).resolve()), "--peer", name, *map(str, jobs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
    return ""


def main(n_cohorts: int) -> pd.DataFrame:
    """Run all settings and return the summary table (also written to ``OUT``)."""
    from paper_cohort import donor_counts, within_ssc

    WORK.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []  # one per (setting, method, cohort)
    peer_jobs: dict[str, list[tuple[str, Path, list[str], str]]] = {"sccoda": [], "cna": []}
    for level, cells in (("counts", COUNT_CELLS), ("cells", CELL_CELLS)):
        for fold in FOLDS[level]:
            for seed in range(n_cohorts):
                counts = donor_counts(fold, seed + (0 if level == "counts" else 500), cells)
                subsets = list(counts.columns)
                if level == "cells":
                    emb, obs = _cells(counts, seed)
                for variable, positive in CONTRASTS.items():
                    setting = f"{level}_{variable}_fold{fold:g}"
                    design = within_ssc(variable, list(counts.index))
                    donors = list(design.donors)
                    sub = counts.loc[donors]
                    methods = {
                        "default": lambda sub=sub, design=design: _score_default(sub, design),
                        "ks_bonferroni": lambda sub=sub, design=design: _score_ks(sub, design),
                    }
                    if level == "cells":
                        methods["milo"] = lambda emb=emb, obs=obs, design=design: _score_milo(
                            emb, obs, design
                        )
                    for method, fn in methods.items():
                        t0 = time.perf_counter()
                        scores = fn()
                        rec = _evaluate(scores, subsets, positive)
                        rec |= {"setting": setting, "method": method, "seconds": 0.0}
                        rec["seconds"] = time.perf_counter() - t0
                        records.append(rec)
                    job = WORK / f"{setting}_s{seed}"
                    job.mkdir(parents=True, exist_ok=True)
                    sub.to_csv(job / "counts.csv")
                    samples = pd.DataFrame(
                        {"term": design.matrix[design.term], "age": design.matrix["age"]}
                    )
                    samples.to_csv(job / "samples.csv")
                    if level == "counts" and seed < SCCODA_COHORTS:
                        peer_jobs["sccoda"].append((setting, job, subsets, positive))
                    if level == "cells":
                        np.save(job / "emb.npy", emb)
                        obs.to_csv(job / "cells.csv")
                        peer_jobs["cna"].append((setting, job, subsets, positive))
            print(f"{level} fold {fold:g}: done", flush=True)
    skipped: dict[str, str] = {}
    for name, jobs in peer_jobs.items():
        for _, job, _, _ in jobs:
            (job / f"{name}.csv").unlink(missing_ok=True)
        t0 = time.perf_counter()
        reason = _run_peer(name, [j for _, j, _, _ in jobs])
        print(f"{name}: {time.perf_counter() - t0:.0f} s {reason}", flush=True)
        for setting, job, subsets, positive in jobs:
            out = job / f"{name}.csv"
            if not out.exists():
                skipped[name] = reason or "no output"
                continue
            scores = pd.read_csv(out)
            rec = _evaluate(scores, subsets, positive)
            rec |= {"setting": setting, "method": name, "seconds": float(scores["seconds"].iloc[0])}
            records.append(rec)
    table = _summarise(pd.DataFrame(records), skipped, peer_jobs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT, index=False, float_format="%.4g")
    return table


NOTES = {
    "default": "compare_abundance asin + moderated t + Freedman-Lane perms; padj BH",
    "ks_bonferroni": "study's KS on shares; Bonferroni",
    "sccoda": "pertpy Sccoda NUTS; score inclusion prob; called credible at est. FDR 0.05",
    "milo": "sccohort neighbourhoods (k=30 prop=0.1); subset = best nhood by majority label; "
    "called spatial FDR",
    "cna": "CNA association; subset = max |ncorr| of its cells; called global p<0.05 and "
    "cell FDR 5%",
}


def _summarise(recs: pd.DataFrame, skipped: dict[str, str], jobs: dict) -> pd.DataFrame:
    rows = []
    for (setting, method), g in recs.groupby(["setting", "method"], sort=False):
        rows.append(
            {
                "setting": setting,
                "method": method,
                "n_cohorts": len(g),
                "auprc_mean": g["auprc"].mean(),
                "auprc_sd": g["auprc"].std(ddof=1) if len(g) > 1 else np.nan,
                "tpr_at_005": g["tp"].mean(),
                "fp_at_005": g["fp"].mean(),
                "seconds": g["seconds"].mean(),
                "note": NOTES[method],
            }
        )
    for name, reason in skipped.items():
        for setting in sorted({s for s, _, _, _ in jobs[name]}):
            if not any(r["setting"] == setting and r["method"] == name for r in rows):
                rows.append(
                    {
                        "setting": setting,
                        "method": name,
                        "n_cohorts": 0,
                        "note": f"skipped: {reason}",
                    }
                )
    order = {m: i for i, m in enumerate(NOTES)}
    table = pd.DataFrame(rows)
    table["_o"] = table["method"].map(order)
    return table.sort_values(["setting", "_o"]).drop(columns="_o").reset_index(drop=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cohorts per setting")
    parser.add_argument("--cohorts", type=int, default=None, help="cohorts per setting")
    parser.add_argument("--peer", choices=sorted(PEER_PYTHON), help=argparse.SUPPRESS)
    parser.add_argument("jobs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer == "sccoda":
        _peer_sccoda(args.jobs)
    elif args.peer == "cna":
        _peer_cna(args.jobs)
    else:
        n = args.cohorts or (3 if args.quick else 10)
        t_start = time.perf_counter()
        result = main(n)
        with pd.option_context("display.width", 200, "display.max_colwidth", 40):
            print(result.drop(columns="note").to_string(index=False))
        print(f"total {time.perf_counter() - t_start:.0f} s; wrote {OUT}")

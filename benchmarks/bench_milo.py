"""Benchmark ``sccohort.stats.neighbourhoods`` against R edgeR and pertpy's / milopy's Milo.

Data: the processed dev cohort (``/tmp/devcohort/run/cohort.h5mu``, paper design: CD14_EGR1 3x
in the 4 SRC donors, CD8_TEM_T2ISG 3x in the 12 ILD donors; baseline samples; ``X_harmony``)
and, for calibration, synthetic null embeddings (Gaussian blobs) with the study's group sizes.

Comparisons, for the contrasts SRC and ILD (``~ age + group``, within SSc), both presets:

1. ``edger_same_nhoods``: R edgeR (Rscript; DGEList(lib.size = colSums), TMM, estimateDisp,
   glmQLFit(robust = TRUE), glmQLFTest: miloR's ``testNhoods``) on our neighbourhood counts.
2. ``pertpy_same_nhoods``: pertpy 1.0.3 ``Milo.count_nhoods`` + ``da_nhoods(solver="edger")``
   (rpy2 -> R edgeR) + spatial FDR on our neighbourhoods.
3. ``pertpy_own_nhoods``: pertpy's ``make_nhoods`` (its own refined sampling) on our kNN
   graph; compared per cell (mean logFC of the neighbourhoods holding the cell; cells in no
   neighbourhood of either left out) and by its own planted-subset index cells.
4. ``milopy_same_nhoods``: milopy 0.3.0 (``test_nhoods``: edgepython, robust QL, edgeR-4
   style) on our neighbourhoods.

pertpy and milopy run in a scratch venv (``/tmp/milo/venv``; they pull pynndescent 0.7 / jax);
missing peers are reported as skipped. Also: null calibration of both presets (fraction of
neighbourhoods with p < 0.05, runs with any spatial FDR < 0.1) and the speed of our edgeR
QL test (``sccohort.stats.nb_ql``).
Writes ``benchmarks/results/milo_agreement.csv``.

Run: ``python benchmarks/bench_milo.py [--null-runs 10]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse, stats

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.config import load_config

nb = importlib.import_module("sccohort.stats.neighbourhoods")

RESULTS = Path(__file__).resolve().parent / "results" / "milo_agreement.csv"
COHORT = Path("/tmp/devcohort/run/cohort.h5mu")
INPUT = Path("/tmp/devcohort/input")
SCRATCH_PY = Path("/tmp/milo/venv/bin/python")
PLANTED = {"SRC": "CD14_EGR1", "ILD": "CD8_TEM_T2ISG"}

R_EDGER = r"""
suppressMessages(library(edgeR))
args <- commandArgs(TRUE)
counts <- as.matrix(read.csv(args[1])); design <- as.matrix(read.csv(args[2]))
t0 <- Sys.time()
y <- DGEList(counts = counts, lib.size = colSums(counts))
y <- calcNormFactors(y, method = "TMM")
y <- estimateDisp(y, design)
fit <- glmQLFit(y, design, robust = TRUE)
res <- topTags(glmQLFTest(fit, coef = 2), n = Inf, sort.by = "none")$table
cat(as.numeric(difftime(Sys.time(), t0, units = "secs")), "\n", file = args[4])
write.csv(res[, c("logFC", "PValue")], args[3], row.names = FALSE)
"""

PEERS = r"""
import json, sys, warnings
import numpy as np, pandas as pd, anndata as ad
warnings.simplefilter("ignore")
adata = ad.read_h5ad(sys.argv[1]); spec = json.loads(sys.argv[2]); out = {}
formula = "~ age + " + spec["variable"]
try:
    import pertpy as pt
    for mode in ("same", "own"):
        a = adata.copy()
        milo = pt.tl.Milo()
        if mode == "own":
            del a.obsm["nhoods"]
            milo.make_nhoods(a, prop=spec["prop"], seed=spec["seed"])
        mdata = milo.load(a)
        mdata = milo.count_nhoods(mdata, sample_col="sample_id")
        milo.da_nhoods(mdata, design=formula, solver="edger")
        milo.annotate_nhoods(mdata, anno_col="subset")
        var = mdata["milo"].var
        out["pertpy_" + mode] = {
            "index_cell": list(map(str, var["index_cell"])),
            "logFC": var["logFC"].tolist(), "PValue": var["PValue"].tolist(),
            "SpatialFDR": var["SpatialFDR"].tolist(),
        }
        if mode == "own":
            nh = mdata["rna"].obsm["nhoods"].tocsc()
            out["pertpy_own"]["cell_mean_logfc"] = (
                np.asarray(nh @ var["logFC"].to_numpy()).ravel()
                / np.maximum(np.asarray(nh.sum(1)).ravel(), 1)
            ).tolist()
    out["pertpy_version"] = pt.__version__
except Exception as err:  # report, do not fail the benchmark
    out["pertpy_error"] = repr(err)[:300]
try:
    import milopy
    from importlib.metadata import version
    a = adata.copy()
    # numeric 0/1: patsy puts categorical terms before numeric ones, and milopy tests the last
    term = spec["variable"] + "_case"
    a.obs[term] = (a.obs[spec["variable"]] == spec["case"]).astype(float)
    a.uns["nhood_indices"] = np.flatnonzero(a.obs["nhood_ixs_refined"].to_numpy() == 1)
    milopy.count_cells(a, "sample_id")
    samples = a.uns["nhood_counts"].columns
    df = a.obs.drop_duplicates("sample_id").set_index("sample_id").loc[samples]
    df = df[["age", term]]
    milopy.test_nhoods(a, "~ age + " + term, df)
    res = a.uns["nhood_test_results"]
    out["milopy_same"] = {"logFC": res["logFC"].tolist(), "PValue": res["PValue"].tolist()}
    out["milopy_version"] = version("milopy")
except Exception as err:
    out["milopy_error"] = repr(err)[:300]
json.dump(out, open(sys.argv[3], "w"))
"""


def load_cohort() -> tuple[np.ndarray, pd.DataFrame]:
    """Baseline cells of the dev cohort: X_harmony (cells x 30) and obs."""
    with h5py.File(COHORT, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        emb = f["obsm/X_harmony"][:]
    base = (obs["timepoint"] == "baseline").to_numpy()
    return emb[base], obs[base]


def build(emb, obs, design, samples, params, seed):
    """Re-run the steps of ``neighbourhoods`` (same seed, same order) and keep the pieces."""
    sample_of_donor = nb._check_inputs(emb, obs, design, samples, "subset")
    rng = np.random.default_rng(seed)
    cell_sample = obs["sample_id"].astype(str).to_numpy()
    wanted = list(sample_of_donor.values())
    keep = nb._subsample(cell_sample, wanted, params.cells_per_sample, rng)
    x = emb[keep, : min(params.d, emb.shape[1])]
    knn_index, knn_dist, nn = nb._knn(x, params.k)
    index_cells = nb._refined_index_cells(x, knn_index, nn, params.prop, rng)
    members = nb._membership(knn_index, index_cells)
    codes = pd.Categorical(cell_sample[keep], categories=wanted).codes
    onehot = sparse.csr_matrix(
        (np.ones(len(keep)), (np.arange(len(keep)), codes)), shape=(len(keep), len(wanted))
    )
    counts = np.asarray((members.T @ onehot).todense())
    matrix = design.matrix.loc[list(sample_of_donor)]
    return dict(
        keep=keep, x=x, knn_index=knn_index, knn_dist=knn_dist, index_cells=index_cells,
        members=members, counts=counts, samples=wanted, matrix=matrix,
    )  # fmt: skip


def run_edger(counts: np.ndarray, matrix: pd.DataFrame, tmp: Path) -> tuple[pd.DataFrame, float]:
    pd.DataFrame(counts).to_csv(tmp / "counts.csv", index=False)
    matrix.reset_index(drop=True).to_csv(tmp / "design.csv", index=False)
    (tmp / "edger.R").write_text(R_EDGER)
    subprocess.run(
        ["Rscript", str(tmp / "edger.R"), str(tmp / "counts.csv"), str(tmp / "design.csv"),
         str(tmp / "edger.csv"), str(tmp / "edger_time.txt")],
        check=True, capture_output=True,
    )  # fmt: skip
    return pd.read_csv(tmp / "edger.csv"), float((tmp / "edger_time.txt").read_text())


def run_peers(built, obs, design, clinical, params, seed, tmp: Path) -> dict:
    if not SCRATCH_PY.exists():
        return {"pertpy_error": "no scratch venv", "milopy_error": "no scratch venv"}
    keep, variable = built["keep"], design.contrast.variable
    cells = obs.iloc[keep]
    donor = cells["donor_id"].astype(str)
    tab = clinical.table
    cell_obs = pd.DataFrame(
        {
            "sample_id": cells["sample_id"].astype(str).to_numpy(),
            "subset": cells["subset"].astype(str).to_numpy(),
            "age": tab.loc[donor, "age"].to_numpy(dtype=float),
            variable: tab.loc[donor, variable].astype(str).to_numpy(),
        },
        index=cells.index.astype(str),
    )
    n, k = built["knn_index"].shape
    rows = np.repeat(np.arange(n), k)
    dist = sparse.csr_matrix((built["knn_dist"].ravel(), (rows, built["knn_index"].ravel())))
    conn = ((dist + dist.T) > 0).astype(float)
    a = ad.AnnData(obs=cell_obs, obsm={"X_emb": built["x"]})
    a.obsp["connectivities"], a.obsp["distances"] = conn.tocsr(), dist.tocsr()
    a.uns["neighbors"] = {"params": {"use_rep": "X_emb"}}
    a.obsm["nhoods"] = built["members"].tocsr()
    refined = np.zeros(n, dtype=int)
    refined[built["index_cells"]] = 1
    a.obs["nhood_ixs_refined"] = refined
    kth = np.zeros(n)
    kth[built["index_cells"]] = built["knn_dist"][built["index_cells"], -1]
    a.obs["nhood_kth_distance"] = kth
    a.write_h5ad(tmp / "cells.h5ad")
    (tmp / "peers.py").write_text(PEERS)
    spec = json.dumps(
        {"variable": variable, "case": design.contrast.case, "prop": params.prop, "seed": seed}
    )
    proc = subprocess.run(
        [str(SCRATCH_PY), str(tmp / "peers.py"), str(tmp / "cells.h5ad"), spec,
         str(tmp / "peers.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"pertpy_error": proc.stderr[-300:], "milopy_error": proc.stderr[-300:]}
    return json.loads((tmp / "peers.json").read_text())


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    ok = np.isfinite(ours) & np.isfinite(theirs)
    a, b = ours[ok], theirs[ok]
    rho = stats.spearmanr(a, b).statistic if len(a) > 2 else np.nan
    return {
        "n": int(ok.sum()),
        "sign_agreement": float((np.sign(a) == np.sign(b)).mean()) if len(a) else np.nan,
        "spearman": float(rho),
        "max_abs_diff": float(np.abs(a - b).max()) if len(a) else np.nan,
    }


def compare_contrast(emb, obs, design, clinical, samples, preset, seed, tmp) -> list[dict]:
    name, planted = design.contrast.name, PLANTED[design.contrast.name]
    params = nb.PRESETS[preset]
    t0 = time.perf_counter()
    res = nb.neighbourhoods(emb, obs, design, samples=samples, preset=preset, seed=seed)
    seconds = time.perf_counter() - t0
    built = build(emb, obs, design, samples, params, seed)
    ids = obs.index.to_numpy()[built["keep"]][built["index_cells"]].astype(str)
    ours = res.set_index("nhood").loc[ids]
    is_planted = (ours["subset"] == planted).to_numpy()
    base = {"contrast": name, "preset": preset, "planted_subset": planted}
    sig = ours.loc[is_planted, "padj"] < 0.1
    rows = [
        {
            **base, "comparison": "ours", "scope": "planted", "n": int(is_planted.sum()),
            "n_significant": int(sig.sum()),
            "median_effect": ours.loc[is_planted, "effect"].median(),
            "min_padj": ours.loc[is_planted, "padj"].min(), "seconds": seconds,
            "n_nhoods": len(ours), "median_nhood_cells": ours["n_cells"].median(),
            "n_significant_other": int((ours.loc[~is_planted, "padj"] < 0.1).sum()),
        }
    ]  # fmt: skip
    edger, r_seconds = run_edger(built["counts"], built["matrix"], tmp)
    peers = run_peers(built, obs, design, clinical, params, seed, tmp)
    theirs = {"edger_same_nhoods": (edger["logFC"].to_numpy(), r_seconds)}
    for key, label in (
        ("pertpy_same", "pertpy_same_nhoods"),
        ("milopy_same", "milopy_same_nhoods"),
    ):
        if key in peers:
            theirs[label] = (np.asarray(peers[key]["logFC"], dtype=float), np.nan)
        else:
            err = peers.get(f"{key.split('_')[0]}_error", "missing")
            rows.append({**base, "comparison": label, "scope": "skipped", "note": err})
    for label, (lfc, secs) in theirs.items():
        for scope, mask in (("planted", is_planted), ("all", np.ones_like(is_planted))):
            rows.append(
                {**base, "comparison": label, "scope": scope, **agreement(
                    ours["effect"].to_numpy()[mask], lfc[mask]), "seconds": secs}
            )  # fmt: skip
    if "pertpy_same" in peers:  # spatial FDR on the same nhoods
        fdr = np.asarray(peers["pertpy_same"]["SpatialFDR"], dtype=float)
        rows.append(
            {**base, "comparison": "pertpy_same_nhoods_spatialfdr", "scope": "planted",
             "n": int(is_planted.sum()), "n_significant": int((fdr[is_planted] < 0.1).sum()),
             **{f"{k}": v for k, v in agreement(ours["padj"].to_numpy(), fdr).items()
                if k in ("spearman", "max_abs_diff")}}
        )  # fmt: skip
    if "pertpy_own" in peers:  # per cell: mean logFC of the nhoods holding it
        m = built["members"]
        ours_cell = np.asarray(m @ ours["effect"].to_numpy()).ravel() / np.maximum(
            np.asarray(m.sum(axis=1)).ravel(), 1
        )
        theirs_cell = np.asarray(peers["pertpy_own"]["cell_mean_logfc"], dtype=float)
        # cells in no neighbourhood (mean over none = 0) are left out
        ours_cell[np.asarray(m.sum(axis=1)).ravel() == 0] = np.nan
        theirs_cell[theirs_cell == 0] = np.nan
        in_planted = obs["subset"].astype(str).to_numpy()[built["keep"]] == planted
        for scope, mask in (("planted_cells", in_planted), ("all_cells", np.ones_like(in_planted))):
            rows.append(
                {**base, "comparison": "pertpy_own_nhoods", "scope": scope,
                 **agreement(ours_cell[mask], theirs_cell[mask])}
            )  # fmt: skip
        own = pd.DataFrame({k: v for k, v in peers["pertpy_own"].items() if k != "cell_mean_logfc"})
        cell_subset = obs["subset"].astype(str)
        own_planted = cell_subset.loc[own["index_cell"]].to_numpy() == planted
        rows.append(
            {**base, "comparison": "pertpy_own_nhoods", "scope": "planted_index_cells",
             "n": int(own_planted.sum()),
             "n_significant": int((own.loc[own_planted, "SpatialFDR"] < 0.1).sum()),
             "median_effect": own.loc[own_planted, "logFC"].median(), "n_nhoods": len(own)}
        )  # fmt: skip
    return rows


def null_calibration(runs: int) -> list[dict]:
    """Synthetic null blobs, 4 vs 17 donors, age covariate, 600 cells per sample."""
    rows = []
    for preset in ("default", "study"):
        pvals, any_hit, secs = [], 0, []
        for seed in range(runs):
            emb, obs, design, samples = _null_blobs(seed)
            t0 = time.perf_counter()
            res = nb.neighbourhoods(emb, obs, design, samples=samples, preset=preset, seed=seed)
            secs.append(time.perf_counter() - t0)
            pvals.append(res["pvalue"].to_numpy())
            any_hit += bool((res["padj"] < 0.1).any())
        p = np.concatenate(pvals)
        rows.append(
            {"contrast": "null_4v17", "preset": preset, "comparison": "null_calibration",
             "scope": f"{runs} runs", "n": len(p), "frac_p_below_0.05": float((p < 0.05).mean()),
             "runs_any_spatialfdr_below_0.1": any_hit,
             "ks_uniform": float(stats.kstest(p, "uniform").statistic),
             "seconds": float(np.median(secs))}
        )  # fmt: skip
    return rows


def _null_blobs(seed: int, cells: int = 600, dims: int = 30, n_blobs: int = 8):
    rng = np.random.default_rng(1000 + seed)
    centres = rng.normal(0, 5, (n_blobs, dims))
    donors = [f"D{i}" for i in range(21)]
    emb = np.vstack(
        [centres[rng.integers(0, n_blobs, cells)] + rng.normal(0, 1, (cells, dims)) for _ in donors]
    )
    obs = pd.DataFrame(
        {"sample_id": np.repeat(donors, cells), "donor_id": np.repeat(donors, cells),
         "subset": "x"}, index=[f"c{i}" for i in range(len(emb))],
    )  # fmt: skip
    clinical = pd.DataFrame(
        {"grp": ["yes"] * 4 + ["no"] * 17, "age": rng.normal(63, 11, 21).round()},
        index=pd.Index(donors, name="donor_id"),
    )
    table = ClinicalTable(clinical, {"grp": "binary", "age": "continuous"})
    design = Contrast("null", "grp", case="yes", control="no", covariates=["age"]).design(table)
    return emb, obs, design, donors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    emb, obs = load_cohort()
    config = load_config(INPUT / "sccohort.toml")
    clinical = ClinicalTable.from_csv(INPUT / "clinical.csv")
    samples = sorted(obs["sample_id"].astype(str).unique())
    donors = obs["donor_id"].astype(str).unique()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_milo_") as tmp:
        for name in ("SRC", "ILD"):
            design = config.contrasts[name].design(clinical, donors)
            for preset in ("default", "study"):
                print(f"{name} {preset} ...", file=sys.stderr, flush=True)
                rows += compare_contrast(
                    emb, obs, design, clinical, samples, preset, args.seed, Path(tmp)
                )
    rows += null_calibration(args.null_runs)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS, index=False, float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns=["note"], errors="ignore").to_string(index=False))


if __name__ == "__main__":
    main()

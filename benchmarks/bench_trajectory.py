"""Trajectories on the simulated kidney continuum: `tl.pseudotime`, `tl.trajectory_genes`.

    python benchmarks/bench_trajectory.py --seeds 1 2 3 4 5 6

Per seed: kidney samples of 4 SSc donors (`simulate_cohort(..., tissue="kidney")`, 800 blood
cells per donor, so 400 nuclei per kidney sample), the continuum's cells (truth states; no
doublets or low-quality cells), log-normalised, 1,000 HVGs, 20 PCs. Diffusion pseudotime
rooted at CD14_EGR1 against the planted pseudotime (Spearman), beside two simple
alternatives on the same PCs (the first diffusion component and the first principal
component, oriented with the root low); whether the states' medians come in the planted
order; `trajectory_genes` on the DPT pseudotime (and on the planted one): AUPRC of the
planted genes among all tested genes (score: F), the planted genes at padj < 0.05 and the
share of them with the planted direction; the null rate (p < 0.05) with the pseudotime
shuffled across cells (5 shuffles). Writes ``benchmarks/results/trajectory.csv``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from sccohort.io import read_sample
from sccohort.simulate import simulate_cohort
from sccohort.tl import pseudotime, trajectory_genes

DONORS = ["SSc1", "SSc19", "SSc2", "SSc3"]
STATES = ["CD14_EGR1", "Mac_int1", "Mac_int2", "Mac_THBS1"]


def continuum(out: Path, seed: int) -> tuple[ad.AnnData, pd.DataFrame]:
    """The continuum cells of a fresh kidney cohort, log-normalised with PCs, and the truth."""
    simulate_cohort(out, "paper", donors=DONORS, tissue="kidney", cells_per_donor=800,
                    seed=seed, n_empty=100)  # fmt: skip
    samples = pd.read_csv(out / "samples.csv")
    truth = pd.read_csv(out / "truth" / "cells.csv.gz", keep_default_na=False)
    truth = truth.set_index("cell_id")
    traj = pd.read_csv(out / "truth" / "trajectory.csv").set_index("cell_id")
    parts = []
    for row in samples[samples["tissue"] == "kidney"].itertuples():
        rna = read_sample(out / row.path, row.sample_id).mod["rna"]
        parts.append(ad.AnnData(sp.csr_matrix(rna.layers["counts"]),
                                obs=pd.DataFrame(index=rna.obs_names),
                                var=pd.DataFrame(index=rna.var_names)))  # fmt: skip
    a = ad.concat(parts)
    t = truth.loc[a.obs_names]
    keep = t.index.isin(traj.index) & ~t["doublet"].astype(bool) & ~t["low_quality"].astype(bool)
    a = a[keep].copy()
    a.obs["state"] = traj.loc[a.obs_names, "state"].to_numpy()
    a.obs["true_t"] = traj.loc[a.obs_names, "pseudotime"].to_numpy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=1000)
    sc.pp.pca(a, n_comps=20, mask_var="highly_variable", random_state=0)
    return a, pd.read_csv(out / "truth" / "trajectory_genes.csv")


def alternatives(a: ad.AnnData) -> dict[str, float]:
    """Spearman of the first diffusion component and of PC1 (root group low) with the truth."""
    w = ad.AnnData(obs=pd.DataFrame(index=a.obs_names), obsm={"r": a.obsm["X_pca"]})
    sc.pp.neighbors(w, n_neighbors=15, use_rep="r", method="gauss", random_state=0)
    sc.tl.diffmap(w, n_comps=10)
    root = (a.obs["state"] == STATES[0]).to_numpy()
    out = {}
    for name, v in (("dc1", w.obsm["X_diffmap"][:, 1]), ("pc1", a.obsm["X_pca"][:, 0])):
        v = v if np.median(v[root]) < np.median(v[~root]) else -v
        out[f"spearman_{name}"] = float(spearmanr(v, a.obs["true_t"])[0])
    return out


def one_seed(seed: int, work: Path) -> dict:
    a, planted = continuum(work / f"cohort_{seed}", seed)
    clock = time.perf_counter()
    order = pseudotime(a, "state", STATES[0])
    pseudotime_s = time.perf_counter() - clock
    clock = time.perf_counter()
    genes = trajectory_genes(a)
    genes_s = time.perf_counter() - clock
    on_truth = trajectory_genes(a, pseudotime_key="true_t")
    found = genes.merge(planted, on="gene", suffixes=("", "_planted"))
    found = found[found["padj"] < 0.05]
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(5):
        shuffled = a.copy()
        shuffled.obs["pseudotime"] = rng.permutation(shuffled.obs["pseudotime"].to_numpy())
        null.append(float((trajectory_genes(shuffled)["pvalue"] < 0.05).mean()))
    return {
        "seed": seed, "n_cells": a.n_obs,
        "spearman_dpt": float(spearmanr(a.obs["pseudotime"], a.obs["true_t"])[0]),
        **alternatives(a),
        "order_ok": order["group"].tolist() == STATES,
        "auprc": average_precision_score(genes["gene"].isin(planted["gene"]), genes["statistic"]),
        "auprc_planted_pseudotime": average_precision_score(
            on_truth["gene"].isin(planted["gene"]), on_truth["statistic"]
        ),
        "planted_genes": len(planted), "planted_found": len(found),
        "direction_accuracy": float((found["direction"] == found["direction_planted"]).mean()),
        "null_rate": float(np.mean(null)), "genes_tested": len(genes),
        "pseudotime_s": pseudotime_s, "trajectory_genes_s": genes_s,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        table = pd.DataFrame([one_seed(s, Path(tmp)) for s in args.seeds])
    out = Path(__file__).parent / "results" / "trajectory.csv"
    table.to_csv(out, index=False)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

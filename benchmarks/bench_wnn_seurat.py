"""Parity of sccohort's WNN with Seurat 4.3 FindMultiModalNeighbors on real ECCITE-seq cells.

Run: ``python benchmarks/bench_wnn_seurat.py`` (needs ``Rscript`` with Seurat 4.3:
``apt-get install -y r-cran-seurat``).

Both tools get identical inputs: the RNA PCs (LogNormalize 1e4, vst 2,000 HVGs, scale, 30 PCs)
and ADT PCs (CLR margin 2, scale, 18 PCs) are computed once by Seurat and exported, so the
comparison isolates WNN itself. Seurat then runs FindMultiModalNeighbors + FindClusters(wsnn,
SLM, resolution 0.8); we run ``wnn_graph`` on the same PCs and cluster (a) our SNN graph with
Seurat's own SLM (same clustering code, isolates the graph), (b) our SNN graph with Leiden
(resolution 0.8) and (c) our UMAP connectivities with Leiden (resolution 0.8, scanpy's way).
muon's WNN (``mu.pp.neighbors``) is tried in a subprocess on the same PCs; set
``MUON_PATH`` to a folder holding muon (``pip install --target DIR --no-deps muon==0.1.9``)
when it is not in the environment.

Writes ``benchmarks/results/wnn_seurat.csv``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import io as spio
from scipy import sparse, stats
from sklearn.metrics import adjusted_rand_score

from sccohort.tl.wnn import wnn_graph

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "eccite_pbmc" / "eccite_control_500.h5mu"
OUT = HERE / "results" / "wnn_seurat.csv"

MUON_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd, anndata as ad, mudata as md, scanpy as sc
import muon as mu
tmp = sys.argv[1]
pca = pd.read_csv(f"{tmp}/pca.csv", index_col=0)
apca = pd.read_csv(f"{tmp}/apca.csv", index_col=0)
rna = ad.AnnData(np.zeros((len(pca), 1), dtype=np.float32), obs=pd.DataFrame(index=pca.index))
prot = ad.AnnData(np.zeros((len(pca), 1), dtype=np.float32), obs=pd.DataFrame(index=pca.index))
rna.obsm["X_pca"] = pca.to_numpy()
prot.obsm["X_pca"] = apca.to_numpy()
sc.pp.neighbors(rna, n_neighbors=20, use_rep="X_pca")
sc.pp.neighbors(prot, n_neighbors=20, use_rep="X_pca")
mdata = md.MuData({"rna": rna, "prot": prot})
t0 = time.perf_counter()
mu.pp.neighbors(mdata, n_neighbors=20, key_added="wnn")
secs = time.perf_counter() - t0
sc.tl.leiden(mdata, neighbors_key="wnn", resolution=0.8, random_state=0, key_added="leiden")
pd.DataFrame({"rna_weight": mdata.obs["rna:mod_weight"].to_numpy(),
              "cluster": mdata.obs["leiden"].astype(str).to_numpy()},
             index=mdata.obs_names).to_csv(f"{tmp}/muon.csv")
json.dump({"seconds": secs}, open(f"{tmp}/muon.json", "w"))
"""


def write_inputs(tmp: Path) -> list[str]:
    """Raw counts of the 500 cells as MatrixMarket (features x cells) for R."""
    mdata = md.read_h5mu(DATA)
    rna, prot = mdata.mod["rna"], mdata.mod["prot"]
    common = rna.obs_names.intersection(prot.obs_names, sort=False)
    rna, prot = rna[common], prot[common]
    for name, adata in (("rna", rna), ("adt", prot)):
        counts = sparse.csr_matrix(adata.layers["counts"] if "counts" in adata.layers else adata.X)
        spio.mmwrite(tmp / f"{name}.mtx", counts.T.tocoo().astype(np.float64))
        (tmp / f"{name}_features.txt").write_text("\n".join(adata.var_names) + "\n")
    (tmp / "barcodes.txt").write_text("\n".join(common) + "\n")
    return list(common)


def rscript(*args: str) -> None:
    subprocess.run(["Rscript", str(HERE / "wnn_seurat.R"), *args], check=True)


def seurat_slm(graph: sparse.spmatrix, tmp: Path, name: str) -> np.ndarray:
    """Seurat's FindClusters (SLM, resolution 0.8) on a cells x cells graph."""
    spio.mmwrite(tmp / f"{name}.mtx", sparse.coo_matrix(graph))
    rscript("cluster", str(tmp), name)
    return pd.read_csv(tmp / f"{name}_clusters.csv")["cluster"].astype(str).to_numpy()


def leiden(graph: sparse.spmatrix, resolution: float = 0.8) -> np.ndarray:
    import anndata as ad

    adata = ad.AnnData(np.zeros((graph.shape[0], 1), dtype=np.float32))
    sc.tl.leiden(
        adata,
        adjacency=sparse.csr_matrix(graph),
        resolution=resolution,
        flavor="igraph",
        n_iterations=-1,
        random_state=0,
    )
    return adata.obs["leiden"].astype(str).to_numpy()


def run_muon(tmp: Path) -> dict:
    env = dict(os.environ)
    if os.environ.get("MUON_PATH"):
        env["PYTHONPATH"] = os.environ["MUON_PATH"] + os.pathsep + env.get("PYTHONPATH", "")
    script = tmp / "muon_wnn.py"
    script.write_text(MUON_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        status = "crashed" if proc.returncode < 0 else "failed"
        return {"status": f"{status} (exit {proc.returncode}: {tail[0][:120]})"}
    res = pd.read_csv(tmp / "muon.csv", index_col=0)
    secs = json.loads((tmp / "muon.json").read_text())["seconds"]
    return {"status": "ran", "weights": res["rna_weight"].to_numpy(), "seconds": secs,
            "clusters": res["cluster"].astype(str).to_numpy()}  # fmt: skip


def main() -> None:
    if not DATA.exists():
        sys.exit(f"benchmark data not found: {DATA}")
    rows = []
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "n_cells": None,
    }
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        cells = write_inputs(tmp)
        meta["n_cells"] = len(cells)
        t0 = time.perf_counter()
        rscript("seurat", str(tmp))
        r_total = time.perf_counter() - t0
        timing = pd.read_csv(tmp / "seurat_timing.csv").set_index("step")["seconds"]
        pca = pd.read_csv(tmp / "pca.csv", index_col=0)
        apca = pd.read_csv(tmp / "apca.csv", index_col=0)
        assert list(pca.index) == cells, "Seurat reordered the cells"
        s_w = pd.read_csv(tmp / "seurat_weights.csv")["rna_weight"].to_numpy()
        s_cl = pd.read_csv(tmp / "seurat_clusters.csv")["cluster"].astype(str).to_numpy()
        s_nn = pd.read_csv(tmp / "seurat_nn_idx.csv").to_numpy() - 1
        s_snn = sparse.csr_matrix(spio.mmread(tmp / "seurat_wsnn.mtx"))

        emb = {"rna": pca.to_numpy(), "prot": apca.to_numpy()}
        t0 = time.perf_counter()
        res = wnn_graph(emb)
        ours_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = wnn_graph(emb)
        ours_warm = time.perf_counter() - t0
        w = res.weights[:, 0]
        overlap = np.mean(
            [len(set(a) & set(b)) / len(a) for a, b in zip(s_nn, res.knn_indices, strict=True)]
        )
        snn_diff = abs(res.snn - s_snn).max()

        variants = {
            "sccohort wnn_graph + Seurat SLM on our SNN": seurat_slm(res.snn, tmp, "ours_snn"),
            "sccohort wnn_graph + Leiden on our SNN": leiden(res.snn),
            "sccohort wnn_graph + Leiden on UMAP connectivities": leiden(res.connectivities),
        }
        for name, cl in variants.items():
            rows.append(
                {
                    "method": name,
                    "status": "ran",
                    "rna_weight_pearson": stats.pearsonr(w, s_w)[0],
                    "rna_weight_spearman": stats.spearmanr(w, s_w)[0],
                    "rna_weight_max_abs_diff": np.abs(w - s_w).max(),
                    "knn_overlap": overlap,
                    "snn_max_abs_diff": snn_diff,
                    "ari_vs_seurat": adjusted_rand_score(s_cl, cl),
                    "n_clusters": len(set(cl)),
                    "n_clusters_seurat": len(set(s_cl)),
                    "wnn_seconds": ours_warm,
                    "wnn_seconds_first_call": ours_first,
                    "seurat_fmmn_seconds": timing["FindMultiModalNeighbors"],
                }
            )
        mu_res = run_muon(tmp)
        row = {"method": "muon 0.1.9 mu.pp.neighbors + Leiden", "status": mu_res["status"]}
        if mu_res["status"] == "ran":
            row.update(
                rna_weight_pearson=stats.pearsonr(mu_res["weights"], s_w)[0],
                rna_weight_spearman=stats.spearmanr(mu_res["weights"], s_w)[0],
                rna_weight_max_abs_diff=np.abs(mu_res["weights"] - s_w).max(),
                ari_vs_seurat=adjusted_rand_score(s_cl, mu_res["clusters"]),
                n_clusters=len(set(mu_res["clusters"])),
                wnn_seconds=mu_res["seconds"],
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    for key, value in meta.items():
        table.insert(0, key, value)
    table["seurat_total_seconds_incl_pca"] = r_total
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT, index=False, float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns=["date", "machine"]).to_string(index=False))
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()

"""Benchmark the embedding stage (sccohort.tl.embed) against the plain scanpy way, one run.

Steps, each timed with the peak RSS of the process during the step (psutil, sampled every
50 ms): HVG, RNA PCA, protein PCA, Harmony (RNA), Harmony (protein), neighbours, Leiden, UMAP.
sccohort: `highly_variable_genes` (QC genes excluded), `pca_rna` (no dense cells x genes),
`pca_prot`, `harmony` x2, `sc.pp.neighbors` on the harmonised RNA PCs, `leiden`, `umap`
(subsample rule above `UMAP_MAX_CELLS`). Plain scanpy: `sc.pp.highly_variable_genes(flavor=
"seurat", batch_key)`, HVG subset + `sc.pp.scale(max_value=10)` (dense) + `sc.pp.pca`,
the same for proteins, `harmonypy.run_harmony` x2 (scanpy's harmony_integrate is broken
with harmonypy 2.1), `sc.pp.neighbors`,
`sc.tl.leiden(flavor="igraph")`, `sc.tl.umap` on all cells.

Usage::

    python benchmarks/bench_embed.py --cells-per-donor 8500 --cache /tmp/embed_bench_cohort

The cohort is simulated once into ``--cache`` (``simulate_cohort(..., seed=0)``; 8,500 cells
per donor = ~230,000 cells) and reused. Writes ``benchmarks/results/embed.csv`` with one row
per step: seconds and peak RSS increase during the step (GB) of both ways and their ratios
(plain / sccohort).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import scanpy as sc

from sccohort import read_cohort
from sccohort.pp.normalize import clr, normalize_rna
from sccohort.simulate import simulate_cohort
from sccohort.tl import embed, metrics

RESULTS = Path(__file__).resolve().parent / "results" / "embed.csv"


def measured(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds and the peak RSS increase (GB) of the process while ``fn`` runs."""
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return seconds, (peak[0] - start) / 1e9


def load(cache: Path, cells_per_donor: int) -> tuple:
    if not (cache / "samples.csv").exists():
        simulate_cohort(cache, design="paper", cells_per_donor=cells_per_donor, seed=0)
    mdata = read_cohort(cache / "samples.csv")
    rna, prot = mdata.mod["rna"], mdata.mod["prot"]
    for mod in (rna, prot):
        mod.obs = mdata.obs.loc[mod.obs_names, ["sample_id", "donor_id", "batch"]].copy()
        mod.obs["sample_id"] = mod.obs["sample_id"].astype("category")
    normalize_rna(rna)
    clr(prot)
    truth = pd.read_csv(cache / "truth" / "cells.csv.gz", index_col="cell_id")
    return rna, prot, truth.loc[rna.obs_names, "l2"].to_numpy()


def ours(rna, prot, rows: dict) -> None:
    steps = [
        ("hvg", lambda: embed.highly_variable_genes(rna, n_top_genes=2000)),
        ("pca_rna", lambda: embed.pca_rna(rna, n_comps=50)),
        ("pca_prot", lambda: embed.pca_prot(prot)),
        ("harmony_rna", lambda: embed.harmony(rna, "X_pca")),
        (
            "harmony_prot",
            lambda: embed.harmony(prot, "X_pca_prot", key_added="X_harmony_prot"),
        ),
        ("neighbors", lambda: sc.pp.neighbors(rna, use_rep="X_harmony", n_neighbors=15)),
        ("leiden", lambda: embed.leiden(rna, resolution=1.0)),
        ("umap", lambda: embed.umap(rna)),
    ]
    for name, fn in steps:
        rows.setdefault(name, {})["sccohort_s"], rows[name]["sccohort_gb"] = measured(fn)
        print(name, rows[name], flush=True)


def harmony_plain(adata) -> None:
    """harmonypy as a user calls it. scanpy 1.11.5's sc.external.pp.harmony_integrate fails
    with harmonypy 2.1 (it transposes Z_corr, which 2.x already returns cells x dims)."""
    import harmonypy

    ho = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs, "sample_id", verbose=False)
    adata.obsm["X_pca_harmony"] = np.asarray(ho.Z_corr)


def plain(rna, prot, rows: dict, max_cells: int | None) -> None:
    note = ""
    if max_cells is not None and rna.n_obs > max_cells:
        idx = np.sort(np.random.default_rng(0).choice(rna.n_obs, max_cells, replace=False))
        rna, prot = rna[idx].copy(), prot[idx].copy()
        note = f"plain way on a random {max_cells} cells"

    def hvg() -> None:
        sc.pp.highly_variable_genes(rna, n_top_genes=2000, flavor="seurat", batch_key="sample_id")

    def pca() -> None:
        sub = rna[:, rna.var["highly_variable"]].copy()
        sc.pp.scale(sub, max_value=10)
        sc.pp.pca(sub, n_comps=50)
        rna.obsm["X_pca"] = sub.obsm["X_pca"]

    def pca_p() -> None:
        sub = prot.copy()
        sc.pp.scale(sub, max_value=10)
        sc.pp.pca(sub, n_comps=30)
        prot.obsm["X_pca"] = sub.obsm["X_pca"]

    steps = [
        ("hvg", hvg),
        ("pca_rna", pca),
        ("pca_prot", pca_p),
        ("harmony_rna", lambda: harmony_plain(rna)),
        ("harmony_prot", lambda: harmony_plain(prot)),
        ("neighbors", lambda: sc.pp.neighbors(rna, use_rep="X_pca_harmony", n_neighbors=15)),
        ("leiden", lambda: sc.tl.leiden(rna, flavor="igraph", n_iterations=2, directed=False)),
        ("umap", lambda: sc.tl.umap(rna)),
    ]
    for name, fn in steps:
        rows.setdefault(name, {})["plain_s"], rows[name]["plain_gb"] = measured(fn)
        rows[name]["plain_cells"] = rna.n_obs
        rows[name]["note"] = note
        print(name, rows[name], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells-per-donor", type=int, default=8500)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/embed_bench_cohort"))
    ap.add_argument("--plain-max-cells", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    rna, prot, l2 = load(args.cache, args.cells_per_donor)
    print(f"{rna.n_obs} cells, {rna.n_vars} genes, {prot.n_vars} antibodies", flush=True)
    rows: dict = {}
    ours(rna, prot, rows)
    batch = rna.obs["batch"].to_numpy()
    idx = metrics.subsample(rna.n_obs, 20_000, seed=0)
    quality = {
        "ilisi_lane_pca": metrics.ilisi(rna.obsm["X_pca"][idx], batch[idx]),
        "ilisi_lane_harmony": metrics.ilisi(rna.obsm["X_harmony"][idx], batch[idx]),
        "ari_leiden_l2": metrics.ari(rna.obs["leiden"].to_numpy(), l2),
    }
    print(quality, flush=True)
    for key in ("X_pca", "X_harmony", "X_umap"):
        rna.obsm[f"ours_{key}"] = rna.obsm.pop(key)
    plain(rna, prot, rows, args.plain_max_cells)

    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("step").reset_index()
    table.insert(1, "cells", rna.n_obs)
    table["time_ratio"] = table["plain_s"] / table["sccohort_s"]
    table["rss_ratio"] = table["plain_gb"] / table["sccohort_gb"]
    for key, value in quality.items():
        table[key] = value
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

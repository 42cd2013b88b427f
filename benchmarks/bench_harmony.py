"""Our Harmony (``sccohort.tl.harmony_kernel``) against harmonypy 2.x (C++), side by side.

Data sets (PCs, batch key, labels for purity):

* ``kotliarov``: the real 20-donor, two-batch Kotliarov CITE-seq cohort (``../shared/data/
  kotliarov_adt9``, 58,654 cells x 9 antibodies): CLR (per cell), ``pca_prot`` (8 PCs);
  batch key ``donor_id`` (20), and ``donor_id`` + ``batch`` (two keys, theta 2 each); labels
  the authors' manual gating (``cell_type_l2``, 15 types; "undefined" cells unlabelled).
* ``simulated``: the simulator's paper cohort (29 samples of 27 donors, 139 antibodies),
  singlets of good quality only, CLR, ``pca_prot`` (30 PCs); batch key ``sample_id`` (29);
  labels the true l2 types. Sizes ``--cells-per-sample`` (default 2,000 and 8,000 per sample
  before QC: about 55,000 and 220,000 cells).

Each method runs in a fresh process (``--worker``): its first call on 300 cells loads what
it needs (our numba kernels from their cache; reported as ``warmup_s``), then the timed
call on all cells with harmonypy's defaults and ``max_iter_harmony = 20`` (as
``sccohort.tl.harmony``); ``peak_extra_mb`` is the process's peak RSS during that call (Linux
``VmHWM``, reset before it) minus its RSS before it. harmonypy runs with its default threads
(one per physical core), ours on one thread. ``--repeats`` runs alternate the two methods;
``seconds`` is the fastest (the VM is shared), ``seconds_all`` lists all. harmonypy also
runs with seed 1: its agreement with itself between two seeds is the yardstick for ours.

Metrics, on ``--queries`` random cells (neighbours among all cells, exact, Euclidean):
``knn15_vs_harmonypy`` (share of the 15 nearest neighbours two embeddings share, with
harmonypy seed 0), per-dimension Pearson ``corr_min`` / ``corr_mean`` and
``mad_vs_harmonypy`` (mean absolute difference, all cells; ``mad_rel`` divides it by the mean
absolute correction harmonypy made); batch mixing ``other_batch30`` (share of the 30 nearest
neighbours from another batch) and ``ilisi`` (median, perplexity 30); cell types
``same_label30`` (share of the 30 nearest labelled neighbours with the cell's label) and
``clisi`` (median).

Usage::

    python benchmarks/bench_harmony.py [--cells-per-sample 2000 8000] [--repeats 2]

Writes ``benchmarks/results/harmony.csv``; caches data and embeddings in ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "harmony.csv"
KOTLIAROV = HERE.parents[1] / "shared" / "data" / "kotliarov_adt9" / "cells_adt9.h5ad"
MAX_ITER = 20


# --------------------------------------------------------------------------------------------
# data


def _clr_pca(counts, n_comps: int | None) -> np.ndarray:
    import anndata as ad
    import scipy.sparse as sp

    from sccohort.pp.normalize import clr
    from sccohort.tl import pca_prot

    a = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    a.layers["counts"] = a.X.copy()
    clr(a)
    pca_prot(a, n_comps=n_comps)
    return np.asarray(a.obsm["X_pca_prot"], dtype=np.float32)


def kotliarov(cache: Path) -> tuple[np.ndarray, pd.DataFrame]:
    path = cache / "kotliarov.npz"
    if not path.exists():
        import anndata as ad

        a = ad.read_h5ad(KOTLIAROV)
        pcs = _clr_pca(a.X, n_comps=8)
        obs = a.obs[["donor_id", "batch", "cell_type_l2"]].astype(str)
        obs["label"] = obs["cell_type_l2"].where(obs["cell_type_l2"] != "undefined", "")
        np.savez(path, pcs=pcs, **{c: obs[c].to_numpy() for c in obs})
    z = np.load(path, allow_pickle=True)
    obs = pd.DataFrame({c: z[c] for c in ("donor_id", "batch", "label")})
    return z["pcs"], obs


def simulated(cache: Path, cells_per_sample: int) -> tuple[np.ndarray, pd.DataFrame]:
    path = cache / f"simulated_{cells_per_sample}.npz"
    if not path.exists():
        from sccohort.simulate.counts import simulate_sample
        from sccohort.simulate.design import (
            SimParams,
            clinical_table,
            default_batches,
            sample_specs,
        )

        clinical = clinical_table().set_index("donor_id")
        adt, obs = [], []
        for spec in sample_specs(default_batches(None)):
            c = simulate_sample(
                spec, clinical.loc[spec.donor_id], "paper", SimParams(n_empty=0),
                cells_per_sample, 0, list(clinical.index).index(spec.donor_id),
                int(spec.batch[1:]) - 1,
            )  # fmt: skip
            t = c.truth
            good = (~t["doublet"] & ~t["low_quality"] & (t["contaminant"] == "")).to_numpy()
            adt.append(np.asarray(c.adt)[good])
            obs.append(t.loc[good, ["sample_id", "l2"]])
            print(f"  simulated {spec.sample_id}: {good.sum()} cells", flush=True)
        obs = pd.concat(obs, ignore_index=True).astype(str)
        pcs = _clr_pca(np.vstack(adt), n_comps=30)
        np.savez(path, pcs=pcs, sample_id=obs["sample_id"].to_numpy(), label=obs["l2"].to_numpy())
    z = np.load(path, allow_pickle=True)
    return z["pcs"], pd.DataFrame({"sample_id": z["sample_id"], "label": z["label"]})


# --------------------------------------------------------------------------------------------
# one run in its own process


def _memory_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak) of this process in kB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(method: str, data: Path, keys: list[str], theta: float, seed: int, out: Path) -> None:
    z = np.load(data, allow_pickle=True)
    pcs = z["pcs"]
    obs = pd.DataFrame({k: z[k] for k in keys})
    if method == "sccohort":
        from sccohort.tl.harmony_kernel import run_harmony

        def call(x: np.ndarray, meta: pd.DataFrame) -> tuple[np.ndarray, int, bool, float]:
            res = run_harmony(
                x, [meta[k].to_numpy() for k in keys], theta=theta,
                max_iter_harmony=MAX_ITER, seed=seed,
            )  # fmt: skip
            return res.z_corr, res.n_iterations, res.converged, res.objective_harmony[-1]
    else:
        import harmonypy

        def call(x: np.ndarray, meta: pd.DataFrame) -> tuple[np.ndarray, int, bool, float]:
            ho = harmonypy.run_harmony(
                x, meta, keys, theta=theta, max_iter_harmony=MAX_ITER,
                random_state=seed, verbose=False,
            )  # fmt: skip
            n_iter = len(ho.objective_harmony) - 1
            return np.asarray(ho.Z_corr), n_iter, n_iter < MAX_ITER, ho.objective_harmony[-1]

    rng = np.random.default_rng(0)
    small = np.sort(rng.choice(pcs.shape[0], 300, replace=False))
    start = time.perf_counter()
    call(pcs[small], obs.iloc[small].reset_index(drop=True))
    warmup = time.perf_counter() - start
    # Peak RSS of this call: reset the high-water mark (Linux >= 4.0). getrusage's ru_maxrss
    # would not do: after fork + exec it starts at the parent's RSS.
    Path("/proc/self/clear_refs").write_text("5")
    base = _memory_kb("VmRSS")
    start = time.perf_counter()
    corrected, n_iter, converged, objective = call(pcs, obs)
    seconds = time.perf_counter() - start
    peak = _memory_kb("VmHWM")
    np.save(out.with_suffix(".npy"), np.asarray(corrected, dtype=np.float32))
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "warmup_s": warmup,
                "peak_extra_mb": (peak - base) / 1024,
                "iterations": n_iter,
                "converged": bool(converged),
                "objective": float(objective),
            }
        )
    )


def run_method(method: str, data: Path, keys: list[str], theta: float, seed: int) -> dict:
    out = data.with_name(f"{data.stem}_{method}_{seed}")
    cmd = [
        sys.executable, __file__, "--worker", method, "--data", str(data), "--keys", *keys,
        "--theta", str(theta), "--seed", str(seed), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    info = json.loads(out.with_suffix(".json").read_text())
    info["z"] = np.load(out.with_suffix(".npy"))
    return info


# --------------------------------------------------------------------------------------------
# metrics


def knn(x: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> tuple:
    """Exact Euclidean k nearest other cells of ``x[queries]``: (distances, indices)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    xt = np.ascontiguousarray(x.T)
    dist = np.empty((queries.size, k), dtype=np.float32)
    idx = np.empty((queries.size, k), dtype=np.int64)
    for start in range(0, queries.size, block):
        q = queries[start : start + block]
        d = sq[None, :] - 2.0 * (x[q] @ xt)
        d[np.arange(q.size), q] = np.inf  # not the cell itself
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        dd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(dd, axis=1, kind="stable")
        idx[start : start + q.size] = np.take_along_axis(part, order, axis=1)
        dd = np.take_along_axis(dd, order, axis=1) + sq[q, None]
        dist[start : start + q.size] = np.sqrt(np.maximum(dd, 0.0))
    return dist, idx


def _lisi(dist: np.ndarray, idx: np.ndarray, codes: np.ndarray, valid: np.ndarray) -> float:
    """Median LISI (perplexity 30) of labelled query cells over their labelled neighbours."""
    from sccohort.tl.metrics import _perplexity_weights

    w = _perplexity_weights(dist.astype(np.float64), 30.0) * valid[idx]
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    share = np.zeros((idx.shape[0], codes.max() + 1))
    np.add.at(
        share, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), codes[idx].ravel()), w.ravel()
    )
    return float(np.median(1.0 / (share**2).sum(axis=1)))


def neighbourhood_metrics(
    z: np.ndarray, queries: np.ndarray, batch: np.ndarray, label: np.ndarray
) -> dict:
    dist, idx = knn(z, queries, 90)
    bcodes = pd.factorize(batch)[0]
    has = label != ""
    lcodes = np.where(has, pd.factorize(label)[0], 0)
    own = bcodes[queries][:, None]
    lab = has[idx[:, :30]]
    same = (lcodes[idx[:, :30]] == lcodes[queries][:, None]) & lab
    labelled = has[queries]
    return {
        "other_batch30": float((bcodes[idx[:, :30]] != own).mean()),
        "ilisi": _lisi(dist, idx, bcodes, np.ones(z.shape[0])),
        "same_label30": float((same.sum(1) / np.maximum(lab.sum(1), 1))[labelled].mean()),
        "clisi": _lisi(dist[labelled], idx[labelled], lcodes, has.astype(float)),
        "_knn": idx[:, :15],
    }


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean([np.intersect1d(p, q).size for p, q in zip(a, b, strict=True)]) / a.shape[1]
    )


# --------------------------------------------------------------------------------------------


def bench(name: str, pcs: np.ndarray, obs: pd.DataFrame, keys: list[str], args) -> list[dict]:
    data = args.cache / f"run_{name}.npz"
    np.savez(data, pcs=pcs, **{k: obs[k].to_numpy() for k in keys})
    print(f"{name}: {pcs.shape[0]} cells x {pcs.shape[1]} PCs, keys {keys}", flush=True)
    runs: dict[str, list[dict]] = {"sccohort": [], "harmonypy": []}
    for _ in range(args.repeats):
        for method in runs:
            runs[method].append(run_method(method, data, keys, 2.0, 0))
    runs["harmonypy seed 1"] = [run_method("harmonypy", data, keys, 2.0, 1)]
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(pcs.shape[0], min(args.queries, pcs.shape[0]), replace=False))
    batch = obs[keys[0]].to_numpy().astype(str)
    label = obs["label"].to_numpy().astype(str)
    ref = runs["harmonypy"][0]["z"]
    ref_nn = None
    rows = []
    for method, results in [("raw PCs", [{"z": pcs}]), *runs.items()]:
        z = results[0]["z"]
        m = neighbourhood_metrics(z, queries, batch, label)
        if method == "harmonypy":
            ref_nn = m["_knn"]
        row = {
            "dataset": name, "cells": pcs.shape[0], "pcs": pcs.shape[1],
            "batch_key": "+".join(keys), "batches": int(obs[keys[0]].nunique()), "method": method,
            "load1": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        if "seconds" in results[0]:
            secs = [r["seconds"] for r in results]
            row |= {
                "seconds": round(min(secs), 2),
                "seconds_all": " ".join(f"{s:.2f}" for s in secs),
                "warmup_s": round(results[0]["warmup_s"], 2),
                "peak_extra_mb": round(max(r["peak_extra_mb"] for r in results)),
                "iterations": results[0]["iterations"],
                "converged": results[0]["converged"],
                "objective": round(results[0]["objective"], 3),
            }
        corr = [np.corrcoef(z[:, i], ref[:, i])[0, 1] for i in range(z.shape[1])]
        row |= {
            "corr_min": round(float(min(corr)), 5),
            "corr_mean": round(float(np.mean(corr)), 5),
            "mad_vs_harmonypy": round(float(np.abs(z - ref).mean()), 5),
            "mad_rel": round(float(np.abs(z - ref).mean() / np.abs(ref - pcs).mean()), 4),
        }
        row |= {k: round(v, 4) for k, v in m.items() if not k.startswith("_")}
        row["_knn"] = m["_knn"]
        rows.append(row)
    for row in rows:
        row["knn15_vs_harmonypy"] = round(overlap(row.pop("_knn"), ref_nn), 4)
    print(pd.DataFrame(rows).drop(columns=["seconds_all"], errors="ignore").to_string(), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells-per-sample", type=int, nargs="*", default=[2000, 8000])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_harmony"))
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--worker", choices=["sccohort", "harmonypy"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--keys", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--theta", type=float, default=2.0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.keys, args.theta, args.seed, args.out)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not args.skip_real and KOTLIAROV.is_file():
            pcs, obs = kotliarov(args.cache)
            rows += bench("kotliarov", pcs, obs, ["donor_id"], args)
            rows += bench("kotliarov_2keys", pcs, obs, ["donor_id", "batch"], args)
        for cps in args.cells_per_sample:
            pcs, obs = simulated(args.cache, cps)
            rows += bench(f"simulated_{cps}", pcs, obs, ["sample_id"], args)
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

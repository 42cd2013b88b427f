"""Speed and memory from raw Cell Ranger files to WNN clusters + UMAP: sccohort vs plain scanpy.

One command (issue 3, item 5: ~230,000 cells, 27 donors / 29 samples, 139 antibodies)::

    python benchmarks/bench_preprocess_embed.py --cells-per-donor 8500

Expected duration on 2 idle cores: ~2 min to simulate the cohort once (cached in
``--cache``, default /tmp/bench_preprocess_embed/cohort), about 6.5 min for sccohort and
60-90 min for the plain way (muon's per-cell dsb mixtures, ~90 s per 8,500-cell sample,
scrublet, muon's WNN (capped at 15 min) and UMAP on every cell dominate);
``--skip-plain`` runs only sccohort, ``--steps-plain preprocess,embed`` stops the plain way
before its UMAP.

Each side runs in a fresh subprocess (under ``/usr/bin/time -v``) while this process samples
the memory of the subprocess and all its descendants (Dask workers included) every 0.5 s with
psutil; memory is that tree's peak (`TreeSampler`: summed RSS, PSS for forked helpers and
their parent), time is wall clock.

- sccohort: ``sccohort.pipeline.run_pipeline`` on the cohort's own ``sccohort.toml`` with
  ``pipeline.STAGES`` restricted to ``preprocess`` (per-sample read, summary, QC, doublets,
  RNA log-normalisation as Dask tasks, join, protein CLR/dsb), ``embed`` (HVG, PCA, protein
  PCA, Harmony x2, WNN, Leiden; starts the UMAP layout on a Dask worker) and ``umap``
  (collects it). Per-step seconds and tree peaks come from ``OUT/run.json``.
- plain (scanpy 1.11 + muon defaults, what a user would write): per sample
  ``mu.read_10x_h5`` of the filtered and raw matrices, ``mu.prot.pp.dsb`` with the raw
  droplets and the isotype controls (or ``mu.prot.pp.clr`` when our config uses CLR),
  ``sc.pp.calculate_qc_metrics`` + the study's fixed thresholds (mito < 20 %, 200 < genes
  < 5,000); concatenation; ``sc.pp.scrublet(batch_key="sample")``; ``sc.pp.normalize_total``
  + ``sc.pp.log1p``; then ``sc.pp.highly_variable_genes(batch_key="sample")``, HVG subset +
  ``sc.pp.scale(max_value=10)`` + ``sc.pp.pca(30)``, protein ``sc.pp.pca``,
  ``harmonypy.run_harmony`` x2 (scanpy's harmony_integrate is broken with harmonypy 2.1),
  ``sc.pp.neighbors`` per modality, muon's WNN ``mu.pp.neighbors`` (run in a spawned child:
  muon 0.1.9 can abort the interpreter there, see ECOSYSTEM.md; if it dies the plain way
  falls back to ``sc.pp.neighbors`` on both Harmony embeddings side by side and the CSV
  says so; likewise if it runs past 15 minutes, and the plain embed time is then a lower
  bound), ``sc.tl.leiden(flavor="igraph", n_iterations=2)`` and ``sc.tl.umap`` on all
  cells. Plain per-step peaks come from this process's sampling within each step's window.

Writes ``benchmarks/results/preprocess_embed.csv`` (step, sccohort_s, plain_s, ratio =
plain / sccohort, sccohort_peak_gb, plain_peak_gb, cells, machine, date, and for the total
row the adjusted Rand index of each side's Leiden clusters against the simulator's true l2
labels, over the true singlets each side kept) and prints it; with ``--skip-plain`` the
sccohort columns go to ``benchmarks/results/preprocess_embed_sccohort.csv`` instead, so the
last side-by-side table stays. muon is a benchmark-only dependency (``pip install muon``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess_embed.csv"
RESULTS_OURS = RESULTS.with_name("preprocess_embed_sccohort.csv")
OUR_STAGES = ("preprocess", "embed", "umap")
PLAIN_STEPS = ("preprocess", "embed", "umap")
MITO_MAX_PCT, MIN_GENES, MAX_GENES = 20.0, 200, 5000
WNN_TIMEOUT_S = 900  # muon's WNN is slow (185 s on 500 cells in bench_wnn_seurat)


# ----------------------------------------------------------------------------- parent side


class TreeSampler:
    """Memory of a process and all its descendants (`sccohort.run_log.tree_memory`: RSS,
    PSS where a helper was forked), sampled every ``interval`` s (less often while samples
    are costly: `sccohort.run_log.sampler_wait`)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (unix time, GB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from sccohort.run_log import sampler_wait, tree_memory

        while not self._stop.is_set():
            start = time.perf_counter()
            total = tree_memory(self.root)
            if total:
                self.samples.append((time.time(), total / 2**30))
            self._stop.wait(sampler_wait(self.interval, time.perf_counter() - start))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Peak GB between two unix times (the whole run by default)."""
        inside = [gb for t, gb in self.samples if start <= t <= end]
        return round(max(inside), 3) if inside else float("nan")


def run_sampled(cmd: list[str], log: Path) -> tuple[int, float, TreeSampler, float | None]:
    """Run ``cmd`` under ``/usr/bin/time -v`` (when present) with its output in ``log``.

    Returns the exit code, wall seconds, the sampler of its process tree and the largest
    single process (GB) that ``time -v`` reports (None without ``/usr/bin/time``).
    """
    if Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        code = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    max_rss = None
    for line in log.read_text().splitlines():
        if "Maximum resident set size" in line:  # the largest single process, not the tree
            max_rss = round(int(line.rsplit(":", 1)[1]) / 2**20, 3)
    return code, wall, sampler, max_rss


def run_worker(role: str, args: argparse.Namespace, result: Path) -> tuple[dict, TreeSampler]:
    """Run this script as ``--worker role``; its JSON and sampler."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", role]
    cmd += ["--cache", str(args.cache), "--out", str(args.out), "--result", str(result)]
    cmd += ["--steps-plain", ",".join(args.steps_plain)]
    log = args.out / f"{role}.log"
    print(f"[{role}] running ({log})", flush=True)
    code, wall, sampler, max_rss = run_sampled(cmd, log)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"[{role}] failed with exit code {code}; end of {log}:\n{tail}")
    info = json.loads(result.read_text())
    info["wall_s"] = round(wall, 3)
    if max_rss is not None:
        info["time_v_max_rss_gb"] = max_rss
    print(f"[{role}] done in {wall:.1f} s, tree peak {sampler.peak():.2f} GB", flush=True)
    return info, sampler


def ensure_cohort(
    cache: Path, cells_per_donor: int, donors: int | None, n_donors: int | None = None
) -> None:
    """Simulate the paper-design cohort into ``cache`` once (seed 0).

    ``donors``: only the paper's first N donors (quick checks); ``n_donors``: a cohort of N
    donors drawn in the paper's proportions (`sccohort.simulate.simulate_cohort`).
    """
    if (cache / "sccohort.toml").is_file():
        return
    from sccohort.simulate import simulate_cohort
    from sccohort.simulate.design import clinical_table

    names = list(clinical_table()["donor_id"])
    chosen = None
    if donors:  # quick checks: the first donors that keep every contrast's groups >= 2 donors
        first = ["SSc1", "SSc2", "SSc3", "SSc4", "SSc5", "HD1", "HD2"]
        if donors < len(first):
            raise SystemExit(f"--donors must be at least {len(first)} (contrasts need 2 per group)")
        chosen = [*first, *[d for d in names if d not in first]][:donors]
    print(f"simulating {cells_per_donor} cells per sample into {cache}", flush=True)
    t0 = time.perf_counter()
    simulate_cohort(
        cache, design="paper", cells_per_donor=cells_per_donor, seed=0, donors=chosen,
        n_donors=n_donors, n_jobs=os.cpu_count() or 1,
    )  # fmt: skip
    print(f"simulated in {time.perf_counter() - t0:.0f} s", flush=True)


def ari_vs_truth(labels: pd.Series, cache: Path) -> float:
    """ARI of ``labels`` (index cell id) against the true l2, over the true singlets kept."""
    from sklearn.metrics import adjusted_rand_score

    truth = pd.read_csv(cache / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth[~truth["doublet"].astype(bool)]
    common = labels.index.intersection(truth.index)
    return round(adjusted_rand_score(truth.loc[common, "l2"], labels.loc[common]), 4)


def main(args: argparse.Namespace) -> pd.DataFrame:
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_cohort(args.cache, args.cells_per_donor, args.donors)
    ours, ours_sampler = run_worker("sccohort", args, args.out / "sccohort.json")
    rows = {s["stage"]: s for s in ours["stages"]}
    table = pd.DataFrame(
        {
            "step": [*OUR_STAGES, "total"],
            "sccohort_s": [rows[s]["wall_s"] for s in OUR_STAGES] + [ours["wall_s"]],
            "sccohort_peak_gb": [rows[s]["peak_rss_gb"] for s in OUR_STAGES]
            + [ours_sampler.peak()],
        }
    )
    ours_labels = pd.read_csv(args.out / "sccohort_leiden.csv", index_col=0).iloc[:, 0]
    table["plain_s"] = float("nan")
    table["plain_peak_gb"] = float("nan")
    table["sccohort_ari_l2"] = [None] * 3 + [ari_vs_truth(ours_labels, args.cache)]
    table["plain_ari_l2"] = None
    note = f"sccohort cells kept {ours['cells']}"
    if not args.skip_plain:
        plain, sampler = run_worker("plain", args, args.out / "plain.json")
        for step, (start, end) in plain["windows"].items():
            i = table.index[table["step"] == step][0]
            table.loc[i, "plain_s"] = round(end - start, 3)
            table.loc[i, "plain_peak_gb"] = sampler.peak(start, end)
        last = table.index[-1]
        table.loc[last, "plain_s"] = plain["wall_s"]
        table.loc[last, "plain_peak_gb"] = sampler.peak()
        if (args.out / "plain_leiden.csv").is_file():
            labels = pd.read_csv(args.out / "plain_leiden.csv", index_col=0).iloc[:, 0]
            table.loc[last, "plain_ari_l2"] = ari_vs_truth(labels, args.cache)
        note += f"; plain cells kept {plain['cells']}; plain WNN: {plain['wnn']}"
    table["ratio"] = (table["plain_s"] / table["sccohort_s"]).round(2)
    table["cells"] = ours["cells_read"]
    cpus = os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table["machine"] = f"{platform.node()} {cpus} cores, load {load} at start of write"
    table["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    table["note"] = note
    cols = ["step", "sccohort_s", "plain_s", "ratio", "sccohort_peak_gb", "plain_peak_gb"]
    cols += ["cells", "machine", "date", "sccohort_ari_l2", "plain_ari_l2", "note"]
    table = table[cols]
    path = RESULTS
    if args.skip_plain:
        path = RESULTS_OURS
        table = table.drop(columns=["plain_s", "ratio", "plain_peak_gb", "plain_ari_l2"])
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["machine", "note"]).to_string(index=False))
    print(note)
    print(f"sccohort /usr/bin/time -v max RSS of one process: {ours.get('time_v_max_rss_gb')} GB")
    print(f"wrote {path}")
    return table


# ----------------------------------------------------------------------------- workers


def worker_sccohort(cache: Path, out: Path, result: Path) -> None:
    """Run the pipeline's preprocess, embed and umap stages; write timings and Leiden labels."""
    import anndata as ad
    import h5py

    from sccohort import pipeline
    from sccohort.config import load_config

    t0 = time.perf_counter()
    stages = tuple(s for s in pipeline.STAGES if s.name in OUR_STAGES)
    assert [s.name for s in stages] == list(OUR_STAGES), [s.name for s in pipeline.STAGES]
    pipeline.STAGES = stages
    run_dir = out / "sccohort_run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    record = pipeline.run_pipeline(load_config(cache / "sccohort.toml"), run_dir)
    wall = time.perf_counter() - t0
    with h5py.File(run_dir / "cohort.h5mu", "r") as f:
        obs = ad.io.read_elem(f["obs"])
    obs["leiden"].astype(str).to_csv(out / "sccohort_leiden.csv")
    qc = pd.read_csv(run_dir / "tables" / "qc.csv")
    cells_read = int(qc["cells_in"].sum())
    info = {
        "stages": record["stages"],
        "inner_wall_s": round(wall, 3),
        "cells": int(len(obs)),
        "cells_read": cells_read,
        "scheduler": record.get("scheduler"),
    }
    result.write_text(json.dumps(info, indent=1, default=str))


def _muon_wnn_child(parts: dict, workdir: Path) -> None:
    """muon's WNN on the modalities' Harmony PCs and kNN graphs; the graph saved in ``workdir``.

    ``parts`` maps modality -> (cell ids, Harmony PCs, connectivities, distances, neighbors
    uns), plain objects because a MuData does not pickle into a spawned process.
    """
    import anndata as ad
    import muon as mu
    import scipy.sparse as sp

    mods = {}
    for name, (cells, pcs, conn, dist, uns) in parts.items():
        mod = ad.AnnData(obs=pd.DataFrame(index=cells))
        mod.obsm["X_harmony"] = pcs
        mod.obsp["connectivities"], mod.obsp["distances"] = conn, dist
        mod.uns["neighbors"] = uns
        mods[name] = mod
    slim = mu.MuData(mods)
    mu.pp.neighbors(slim, n_neighbors=20, random_state=0)
    sp.save_npz(workdir / "wnn_dist.npz", slim.obsp["distances"].tocsr())
    (workdir / "wnn_uns.json").write_text(json.dumps(slim.uns["neighbors"], default=str))
    sp.save_npz(workdir / "wnn.npz", slim.obsp["connectivities"].tocsr())


def _plain_wnn(rna, prot, workdir: Path):  # noqa: ANN001, ANN202
    """muon's WNN graph in a spawned child (it may abort); fallback: kNN on both embeddings.

    Returns an AnnData without matrices holding the graph, and a note on which way gave it.
    """
    import multiprocessing as mp

    import anndata as ad
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    parts = {
        name: (
            list(adata.obs_names),
            np.asarray(adata.obsm["X_harmony"]),
            adata.obsp["connectivities"],
            adata.obsp["distances"],
            dict(adata.uns["neighbors"]),
        )
        for name, adata in (("rna", rna), ("prot", prot))
    }
    graph = ad.AnnData(obs=pd.DataFrame(index=rna.obs_names))
    path = workdir / "wnn.npz"
    path.unlink(missing_ok=True)
    proc = mp.get_context("spawn").Process(target=_muon_wnn_child, args=(parts, workdir))
    proc.start()
    proc.join(WNN_TIMEOUT_S)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        why = f"timed out after {WNN_TIMEOUT_S} s"
    else:
        why = f"died (exit code {proc.exitcode})"
    if proc.exitcode == 0 and path.is_file():
        graph.obsp["connectivities"] = sp.load_npz(path)
        graph.obsp["distances"] = sp.load_npz(workdir / "wnn_dist.npz")
        graph.uns["neighbors"] = json.loads((workdir / "wnn_uns.json").read_text())
        return graph, "muon mu.pp.neighbors"
    graph.obsm["X_both"] = np.hstack([rna.obsm["X_harmony"], prot.obsm["X_harmony"]])
    sc.pp.neighbors(graph, n_neighbors=20, use_rep="X_both", random_state=0)
    note = f"muon WNN {why}; fell back to kNN on joined Harmony PCs"
    return graph, note


def worker_plain(cache: Path, out: Path, result: Path, steps: list[str]) -> None:
    """The same steps as a user would write them with scanpy + muon defaults."""
    import anndata as ad
    import harmonypy
    import muon as mu
    import numpy as np
    import scanpy as sc

    from sccohort.config import load_config

    config = load_config(cache / "sccohort.toml")
    samples = pd.read_csv(cache / "samples.csv", index_col="sample_id")
    method = config.normalize.protein
    if method == "auto":
        has_raw = "raw_path" in samples and samples["raw_path"].notna().all()
        method = "dsb" if has_raw else "clr"
    windows: dict[str, tuple[float, float]] = {}
    info: dict[str, object] = {"protein": method, "wnn": "not run"}

    # read + QC + doublets + normalise
    start = time.time()
    parts = {}
    cells_read = 0
    for sample_id, row in samples.iterrows():
        m = mu.read_10x_h5(cache / row["path"])
        m.mod["rna"].var_names_make_unique()
        prot = m.mod["prot"]
        prot.X = prot.X.astype(np.float32)  # muon's clr/dsb fail on integer counts
        if method == "dsb":
            raw = mu.read_10x_h5(cache / row["raw_path"])
            raw.mod["prot"].X = raw.mod["prot"].X.astype(np.float32)
            isotypes = [v for v in prot.var_names if "isotype" in v.lower()]
            mu.prot.pp.dsb(m, raw, isotype_controls=isotypes or None, random_state=0)
            del raw
        else:
            mu.prot.pp.clr(prot)
        rna = m.mod["rna"]
        cells_read += rna.n_obs
        rna.var["mt"] = rna.var_names.str.startswith("MT-")
        sc.pp.calculate_qc_metrics(rna, qc_vars=["mt"], inplace=True, percent_top=None)
        keep = (
            (rna.obs["pct_counts_mt"] < MITO_MAX_PCT)
            & (rna.obs["n_genes_by_counts"] > MIN_GENES)
            & (rna.obs["n_genes_by_counts"] < MAX_GENES)
        ).to_numpy()
        m = m[keep].copy()
        m.obs_names = [f"{sample_id}:{b}" for b in m.obs_names]
        for mod in m.mod.values():
            mod.obs_names = m.obs_names
        parts[sample_id] = m
    info["cells_read"] = cells_read
    rna = ad.concat({s: p.mod["rna"] for s, p in parts.items()}, label="sample")
    prot = ad.concat({s: p.mod["prot"] for s, p in parts.items()}, label="sample")
    del parts
    sc.pp.scrublet(rna, batch_key="sample", random_state=0)
    singlets = ~rna.obs["predicted_doublet"].to_numpy()
    rna, prot = rna[singlets].copy(), prot[singlets].copy()
    rna.layers["counts"] = rna.X.copy()
    sc.pp.normalize_total(rna, target_sum=config.normalize.target_sum)
    sc.pp.log1p(rna)
    windows["preprocess"] = (start, time.time())
    info["cells"] = int(rna.n_obs)

    if "embed" in steps:
        start = time.time()
        cfg = config.embedding
        sc.pp.highly_variable_genes(rna, n_top_genes=cfg.n_top_genes, batch_key="sample")
        hvg = rna[:, rna.var["highly_variable"]].copy()
        sc.pp.scale(hvg, max_value=10)
        sc.pp.pca(hvg, n_comps=cfg.n_pcs, random_state=0)
        rna.obsm["X_pca"] = hvg.obsm["X_pca"]
        del hvg
        n_prot = cfg.n_pcs_prot or min(prot.n_vars - 1, 30)
        sc.pp.pca(prot, n_comps=n_prot, random_state=0)
        for adata in (rna, prot):
            ho = harmonypy.run_harmony(
                adata.obsm["X_pca"], adata.obs, ["sample"], random_state=0, verbose=False
            )
            z = np.asarray(ho.Z_corr)
            adata.obsm["X_harmony"] = z if z.shape[0] == adata.n_obs else z.T
            sc.pp.neighbors(adata, n_neighbors=cfg.n_neighbors, use_rep="X_harmony")
        graph, info["wnn"] = _plain_wnn(rna, prot, out)
        sc.tl.leiden(
            graph, resolution=cfg.resolution, flavor="igraph", n_iterations=2, random_state=0
        )
        windows["embed"] = (start, time.time())
        graph.obs["leiden"].astype(str).to_csv(out / "plain_leiden.csv")
        if "umap" in steps:
            start = time.time()
            sc.tl.umap(graph, random_state=0)
            windows["umap"] = (start, time.time())
    info["windows"] = windows
    result.write_text(json.dumps(info, indent=1))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells-per-donor", type=int, default=8500, help="cells per sample")
    p.add_argument("--donors", type=int, default=None, help="only the first N donors (checks)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/bench_preprocess_embed/cohort"))
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_preprocess_embed/out"))
    p.add_argument("--skip-plain", action="store_true", help="time sccohort only")
    p.add_argument(
        "--steps-plain",
        default="preprocess,embed,umap",
        help="plain steps to run, a prefix of preprocess,embed,umap",
    )
    p.add_argument("--worker", choices=["sccohort", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps_plain = [s for s in args.steps_plain.split(",") if s]
    if args.steps_plain != list(PLAIN_STEPS[: len(args.steps_plain)]) or not args.steps_plain:
        p.error("--steps-plain must be a prefix of preprocess,embed,umap")
    return args


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.worker == "sccohort":
        worker_sccohort(ARGS.cache, ARGS.out, ARGS.result)
    elif ARGS.worker == "plain":
        worker_plain(ARGS.cache, ARGS.out, ARGS.result, ARGS.steps_plain)
    else:
        main(ARGS)

"""The same run with the RNA in memory and on disk gives the same results (issue 8).

One command (the 230,000-cell cohort of ``bench_pipeline_scale.py``)::

    python benchmarks/bench_rna_on_disk.py --cells-per-donor 8500 \
        --cache /tmp/bench_preprocess_embed/cohort --out /tmp/bench_rna_on_disk

Runs ``sccohort run`` twice on the cached cohort with the same seed, ``[run] rna_on_disk =
"never"`` (all genes of all cells in memory) and ``"always"`` (counts in
``OUT/rna_counts.h5``, read by blocks of genes, `sccohort.pp.store`), each under
``/usr/bin/time -v`` with its process tree's memory sampled. Then compares every table
byte for byte (gzip: decompressed), the cell labels (``leiden``, ``l1``, ``l2``, ``subset``:
ARI and identity) and the embeddings (``X_pca``, ``X_harmony``, ``X_umap``: identical arrays).

Writes ``benchmarks/results/rna_on_disk.csv`` (one row per compared item: ``item, equal,
ari``; then one per run and measure: ``item, value``, wall seconds and peak GB) and prints
it. ``--reuse`` compares runs already in ``OUT/never`` and ``OUT/always``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess_embed import ensure_cohort, run_sampled  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rna_on_disk.csv"
MODES = ("never", "always")


def run(cache: Path, out: Path, mode: str) -> dict:
    """``sccohort run`` with ``rna_on_disk = mode``; wall s, tree peak GB, largest process GB."""
    toml = (cache / "sccohort.toml").read_text()
    config = cache / f"rna_on_disk_{mode}.toml"  # beside the cohort: its paths are relative
    config.write_text(toml.replace("[run]\n", f'[run]\nrna_on_disk = "{mode}"\n', 1))
    cmd = [sys.executable, "-m", "sccohort", "run", str(config), "--out", str(out / mode)]
    print(f"running {' '.join(cmd)}", flush=True)
    code, wall, sampler, max_rss = run_sampled(cmd, out / f"{mode}.log")
    if code != 0:
        log = (out / f"{mode}.log").read_text()[-3000:]
        raise SystemExit(f"sccohort run ({mode}) failed ({code}):\n{log}")
    return {"seconds": round(wall, 1), "peak_gb": sampler.peak(), "largest_process_gb": max_rss}


def _content(path: Path) -> bytes:
    """A table's bytes (decompressed: a gzip header holds its time of writing)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def compare(never: Path, always: Path) -> pd.DataFrame:
    """One row per table, label column and embedding: equal (and ARI for labels)."""
    rows = []
    names = sorted({p.name for p in (never / "tables").iterdir()})
    others = sorted({p.name for p in (always / "tables").iterdir()})
    if names != others:
        rows.append({"item": "table names", "equal": False})
    for name in names:
        a, b = never / "tables" / name, always / "tables" / name
        equal = b.is_file() and _content(a) == _content(b)
        rows.append({"item": f"tables/{name}", "equal": equal})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mudata's notices about shared names
        a = mudata.read_h5mu(never / "cohort.h5mu")
        b = mudata.read_h5mu(always / "cohort.h5mu")
    same_cells = list(a.obs_names) == list(b.obs_names)
    rows.append({"item": "cells (obs_names)", "equal": same_cells})
    for column in ("leiden", "l1", "l2", "subset"):
        x = a.obs[column].astype(str)
        y = b.obs[column].astype(str).reindex(x.index)
        rows.append(
            {
                "item": f"obs/{column}",
                "equal": bool((x == y).all()),
                "ari": adjusted_rand_score(x, y),
            }
        )
    for key in ("X_pca", "X_harmony", "X_umap"):
        equal = same_cells and np.array_equal(a.obsm[key], b.obsm[key])
        rows.append({"item": f"obsm/{key}", "equal": equal})
    return pd.DataFrame(rows, columns=["item", "equal", "ari", "value"]).astype({"equal": object})


def main(args: argparse.Namespace) -> pd.DataFrame:
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_cohort(args.cache, args.cells_per_donor, None)
    timings = {}
    if not args.reuse:
        for mode in MODES:
            timings[mode] = run(args.cache, args.out, mode)
    table = compare(args.out / "never", args.out / "always")
    for mode, timing in timings.items():
        for key, value in timing.items():
            table.loc[len(table)] = {"item": f"run {mode}: {key}", "value": value}
    qc = pd.read_csv(args.out / "never" / "tables" / "qc.csv")
    table["droplets"] = int(qc["cells_in"].sum())
    table["machine"] = f"{platform.node()} {os.cpu_count()} cores"
    table["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.drop(columns=["machine"]).to_string(index=False))
    compared = table[table["equal"].notna()]
    print(f"{int(compared['equal'].sum())} of {len(compared)} items equal; wrote {RESULTS}")
    return table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells-per-donor", type=int, default=8500, help="cells per sample")
    p.add_argument("--cache", type=Path, default=Path("/tmp/bench_preprocess_embed/cohort"))
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_rna_on_disk"))
    p.add_argument("--reuse", action="store_true", help="compare OUT/never and OUT/always")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())

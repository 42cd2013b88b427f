"""The whole pipeline, raw Cell Ranger files to the report, on a large simulated cohort.

One command per size (issue 8; 139 antibodies in both)::

    python benchmarks/bench_pipeline_scale.py --cells-per-donor 8500   # 27 donors, 230,000
    python benchmarks/bench_pipeline_scale.py --n-donors 100 --cells-per-donor 10000 \
        --cache /tmp/bench_pipeline_scale/cohort_1m --out /tmp/bench_pipeline_scale/run_1m

Runs ``sccohort run`` (every stage, the config's default local Dask cluster) in a subprocess
under ``/usr/bin/time -v`` while this process samples the memory of that process and all its
descendants every 0.5 s (Dask workers and forked helpers included: summed RSS, with PSS for
forked helpers and their parent so the pages they share count once). Per stage it reports the
wall seconds and the peak memory the pipeline itself records in ``run.json`` (the same measure);
the total row has the wall clock of the whole command, the sampled tree peak and
``/usr/bin/time``'s largest single process (RSS). Targets (issue 8): 230,000 cells in <= 10 min with
<= 8 GB; 1,000,000 cells (100 donors x 10,000: 102 samples with the SSc4 timepoints) in
<= 30 min with <= 16 GB. The cohort is simulated once into ``--cache`` (the 27-donor one is
the same cohort and cache as ``bench_preprocess_embed.py``).

Writes ``benchmarks/results/pipeline_scale.csv`` (size, stage, seconds, peak GB, cells,
machine, date; the rows of other sizes are kept) and prints this size's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess_embed import ensure_cohort, run_sampled  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_scale.csv"


def run(cache: Path, out: Path) -> tuple[dict, float, float, float | None]:
    """``sccohort run`` on the cached cohort; run.json, wall s, tree peak GB, time -v max GB."""
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "sccohort", "run", str(cache / "sccohort.toml"), "--out", str(out)]
    print(f"running {' '.join(cmd)} (log {log})", flush=True)
    code, wall, sampler, max_rss = run_sampled(cmd, log)
    if code != 0:
        raise SystemExit(f"sccohort run failed ({code}); end of {log}:\n{log.read_text()[-3000:]}")
    return json.loads((out / "run.json").read_text()), wall, sampler.peak(), max_rss


def main(args: argparse.Namespace) -> pd.DataFrame:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ensure_cohort(args.cache, args.cells_per_donor, None, args.n_donors)
    record, wall, tree_peak, max_rss = run(args.cache, args.out)
    cells = int(pd.read_csv(args.out / "tables" / "qc.csv")["cells_in"].sum())
    rows = [
        {"stage": s["stage"], "seconds": s["wall_s"], "peak_gb": s["peak_rss_gb"]}
        for s in record["stages"]
    ]
    rows.append({"stage": "total (wall clock)", "seconds": round(wall, 1), "peak_gb": tree_peak})
    table = pd.DataFrame(rows)
    table.insert(0, "size", f"{args.n_donors or 27} donors x {args.cells_per_donor} cells")
    table["cells"] = cells
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table["machine"] = f"{platform.node()} {os.cpu_count()} cores, load {load} at the end"
    table["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    table["note"] = (
        f"stage peaks: run.json tree memory; total: sampled tree memory (RSS, PSS for forks); "
        f"largest single process (time -v) {max_rss} GB; scheduler {record.get('scheduler')}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.is_file():  # keep the other sizes' latest rows
        earlier = pd.read_csv(RESULTS)
        if "size" in earlier:
            earlier = earlier[earlier["size"] != table["size"].iloc[0]]
            table = pd.concat([earlier, table], ignore_index=True)
    table.to_csv(RESULTS, index=False)
    mine = table[table["size"] == table["size"].iloc[-1]]
    print(mine.drop(columns=["machine", "note"]).to_string(index=False))
    print(mine["note"].iloc[0])
    print(f"wrote {RESULTS}")
    return table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells-per-donor", type=int, default=8500, help="cells per sample")
    p.add_argument(
        "--n-donors", type=int, default=None, help="donors in the paper's proportions (27)"
    )
    p.add_argument("--cache", type=Path, default=Path("/tmp/bench_preprocess_embed/cohort"))
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_pipeline_scale/run"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())

"""Time the README's demo command from an installed package, as a new user would run it.

Creates a fresh virtual environment (``--venv``; reused when it exists), installs the
package from this checkout with ``pip install .`` (not editable), then runs
``sccohort demo --out OUT`` under ``/usr/bin/time -v``. The first run in a new environment
includes numba's compilation of cached functions; ``--runs 2`` also times a second run
(warm caches, what every later run of the user sees). Writes
``benchmarks/results/demo.csv``: one row per run with the wall time, the process tree's peak
RSS, the per-stage wall times from ``run.json`` and the load average before the run.

Usage::

    python benchmarks/bench_demo.py --venv /tmp/sccohort-demo-venv --out /tmp/sccohort-demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _install(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    return venv / "bin" / "sccohort"


def _time_demo(sccohort: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    done = subprocess.run(
        ["/usr/bin/time", "-v", str(sccohort), "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    run = json.loads((out / "run.json").read_text())
    row = {
        "wall_s": round(hours * 3600 + minutes * 60 + seconds, 1),
        "peak_rss_gb": round(rss / 2**20, 2),
        "load_avg_before": round(load, 2),
    }
    row |= {f"{s['stage']}_s": s["wall_s"] for s in run["stages"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/sccohort-demo-venv"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/sccohort-demo"))
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    sccohort = _install(args.venv)
    rows = []
    for i in range(args.runs):
        row = {"run": i + 1} | _time_demo(sccohort, args.out)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    table["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    table["date"] = date.today().isoformat()
    target = ROOT / "benchmarks" / "results" / "demo.csv"
    table.to_csv(target, index=False)
    print(f"written {target}")


if __name__ == "__main__":
    main()

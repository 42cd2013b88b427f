"""Two runs of the same cohort, before and after a restructuring: same outputs, same speed?

    python benchmarks/bench_refactor_identity.py --before RUN_A --after RUN_B \
        [--timing-before BIG_A --timing-after BIG_B]

RUN_A / RUN_B are finished run folders of one cohort and seed (e.g. ``sccohort demo`` with
the code before and after the change: ``git worktree add /tmp/old <commit>`` and
``PYTHONPATH=/tmp/old/src sccohort demo --out RUN_A``). Compared:

- every file under ``tables/`` and ``figures/``: byte for byte; where a table differs, each
  differing column's largest absolute and relative difference, and whether any call at
  padj < 0.01 / 0.05 / 0.1 changed;
- the cells' labels (``leiden, l1, l2, subset, qc_pass``) and every ``obsm`` embedding of
  ``cohort.h5mu``.

With ``--timing-*`` (two runs of ``bench_pipeline_scale.py``, e.g. the 230k cohort) it adds
each run's wall time per stage and the ratio. Writes
``benchmarks/results/refactor_identity.csv`` (one row per compared item) and prints it.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "refactor_identity.csv"
LABELS = ("leiden", "l1", "l2", "subset", "qc_pass")


def _files(root: Path, sub: str) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in (root / sub).rglob("*") if p.is_file()}


def _table_difference(a: Path, b: Path) -> str:
    """How two CSV tables differ: columns, largest differences, changed significance calls."""
    x, y = pd.read_csv(a), pd.read_csv(b)
    if list(x.columns) != list(y.columns) or x.shape != y.shape:
        return f"shape/columns differ: {x.shape} vs {y.shape}"
    parts = []
    for column in x.columns:
        u, v = x[column], y[column]
        if u.equals(v):
            continue
        if not (pd.api.types.is_numeric_dtype(u) and pd.api.types.is_numeric_dtype(v)):
            parts.append(f"{column}: {int((u.astype(str) != v.astype(str)).sum())} texts differ")
            continue
        diff = (u - v).abs()
        rel = (diff / u.abs().where(u.abs() > 0)).max()
        parts.append(f"{column}: max abs {diff.max():.3g}, max rel {rel:.3g}")
        if column == "padj":
            changed = sum(int(((u < t) != (v < t)).sum()) for t in (0.01, 0.05, 0.1))
            parts.append(f"calls at padj < 0.01/0.05/0.1 changed: {changed}")
    return "; ".join(parts)


def compare_files(before: Path, after: Path) -> list[dict]:
    rows = []
    for sub in ("tables", "figures"):
        old, new = _files(before, sub), _files(after, sub)
        for name in sorted(set(old) | set(new)):
            if name not in old or name not in new:
                rows.append({"item": name, "identical": False, "detail": "only in one run"})
                continue
            same = old[name].read_bytes() == new[name].read_bytes()
            detail = ""
            if not same and name.endswith(".csv"):
                detail = _table_difference(old[name], new[name])
            rows.append({"item": name, "identical": same, "detail": detail})
    return rows


def compare_cells(before: Path, after: Path) -> list[dict]:
    import sccohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old, new = sccohort.read_h5mu(before), sccohort.read_h5mu(after)
    rows = []
    for column in LABELS:
        if column in old.obs:
            same = old.obs[column].astype(str).equals(new.obs[column].astype(str))
            rows.append({"item": f"obs[{column}]", "identical": same, "detail": ""})
    for key in old.obsm:
        same = key in new.obsm and np.array_equal(np.asarray(old.obsm[key]), new.obsm[key])
        rows.append({"item": f"obsm[{key}]", "identical": same, "detail": ""})
    return rows


def compare_timing(before: Path, after: Path) -> list[dict]:
    rows = []
    stages = {
        name: {s["stage"]: s["wall_s"] for s in json.loads((p / "run.json").read_text())["stages"]}
        for name, p in (("before", before), ("after", after))
    }
    for stage in stages["before"]:
        t0, t1 = stages["before"][stage], stages["after"].get(stage, np.nan)
        rows.append(
            {"item": f"time {stage}", "identical": None, "detail": f"{t0:.1f} s -> {t1:.1f} s"}
        )
    total0, total1 = sum(stages["before"].values()), sum(stages["after"].values())
    rows.append(
        {
            "item": "time total (stages)",
            "identical": None,
            "detail": f"{total0:.1f} s -> {total1:.1f} s (ratio {total1 / total0:.3f})",
        }
    )
    return rows


def main(args: argparse.Namespace) -> pd.DataFrame:
    rows = compare_files(args.before, args.after) + compare_cells(args.before, args.after)
    if args.timing_before and args.timing_after:
        rows += compare_timing(args.timing_before, args.timing_after)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 120):
        print(table[table["identical"] != True].to_string(index=False))  # noqa: E712
    n = int((table["identical"] == True).sum())  # noqa: E712
    print(f"{n} of {int(table['identical'].notna().sum())} items identical; wrote {RESULTS}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--timing-before", type=Path)
    parser.add_argument("--timing-after", type=Path)
    main(parser.parse_args())

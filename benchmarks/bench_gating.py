"""The characterise stage's gating: subsets sharing their sorts vs one subset at a time.

One command per finished run (its ``cohort.h5mu`` and ``tables/gating.csv``)::

    python benchmarks/bench_gating.py --run /tmp/bench_pipeline_scale/run_1m

Takes the run's associated subsets (those of ``tables/gating.csv``), their parent lineages
as the stage chooses them, and the run's settings (3 gates, 30 % held-out donors, seed 0),
then times `sccohort.stats.gating.gate_subsets` (the stage's call: the panel checked once,
all cells, each lineage and the training donors' cells sorted once) against
`gating_strategy` + `protein_markers` subset by subset (everything sorted per subset), after
one small warm-up call that compiles the numba kernels. Checks that both give the same
tables and that they equal the run's own ``gating.csv`` and ``protein_markers.csv``.

Writes ``benchmarks/results/gating.csv`` (run, cells, proteins, subsets, seconds of each
way, ratio, equal) and prints it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import mudata
import numpy as np
import pandas as pd

from sccohort.stages.donors import _parent_l1
from sccohort.stats.gating import GatingOptions, gate_subsets, gating_strategy
from sccohort.stats.protein_markers import protein_markers

RESULTS = Path(__file__).resolve().parent / "results" / "gating.csv"
OPTIONS = GatingOptions(max_gates=3, test_donors=0.3, seed=0)  # the stage's defaults


def _as_written(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as the stage's CSV reads back (same float text)."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def main(args: argparse.Namespace) -> pd.DataFrame:
    cohort = mudata.read_h5mu(args.run / "cohort.h5mu")
    obs, prot = cohort.obs, cohort.mod["prot"]
    cells = obs.loc[prot.obs_names]
    written = pd.read_csv(args.run / "tables" / "gating.csv")
    subsets = list(dict.fromkeys(written["subset"]))
    l1 = cells["l1"].astype(str)
    masks = {
        s: ((cells["subset"] == s).to_numpy(), (l1 == _parent_l1(obs, s)).to_numpy())
        for s in subsets
    }
    donors = cells["donor_id"].astype(str).to_numpy()
    small = np.arange(prot.n_obs) % max(prot.n_obs // 20_000, 1) == 0  # warm-up: compile
    first = subsets[0]
    gate_subsets(prot[small], {first: (masks[first][0][small], masks[first][1][small])},
                 donors[small], OPTIONS)  # fmt: skip

    start = time.perf_counter()
    shared = gate_subsets(prot, masks, donors, OPTIONS)
    t_shared = time.perf_counter() - start
    start = time.perf_counter()
    alone = [
        (
            gating_strategy(prot, t, p, donors, subset=s, options=OPTIONS),
            protein_markers(prot, t, p, subset=s),
        )
        for s, (t, p) in masks.items()
    ]
    t_alone = time.perf_counter() - start

    gates = [
        pd.concat([r.to_frame() for r, _ in res], ignore_index=True) for res in (shared, alone)
    ]
    markers = [pd.concat([m for _, m in res], ignore_index=True) for res in (shared, alone)]
    equal = gates[0].equals(gates[1]) and markers[0].equals(markers[1])
    as_run = _as_written(gates[0]).equals(written) and _as_written(markers[0]).equals(
        pd.read_csv(args.run / "tables" / "protein_markers.csv")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = pd.DataFrame(
        [
            {
                "run": str(args.run),
                "cells": prot.n_obs,
                "proteins": prot.n_vars,
                "subsets": len(subsets),
                "shared_s": round(t_shared, 1),
                "one_by_one_s": round(t_alone, 1),
                "ratio": round(t_alone / t_shared, 2),
                "equal_one_by_one": equal,
                "equal_run_tables": as_run,
                "machine": f"{platform.node()} {os.cpu_count()} cores, load {load}",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        ]
    )
    if RESULTS.is_file():  # keep the other runs' rows
        earlier = pd.read_csv(RESULTS)
        table = pd.concat([earlier[earlier["run"] != str(args.run)], table], ignore_index=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.drop(columns=["machine"]).to_string(index=False))
    print(f"wrote {RESULTS}")
    return table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished run's output folder")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())

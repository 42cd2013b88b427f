"""Protein-only annotation against manual gating: the 20-donor, 9-antibody Kotliarov cohort.

    python benchmarks/bench_protein_annotation.py [--root DIR] [--cells-per-donor N]

Writes the cohort (one .h5ad per donor, from ``../shared/data/kotliarov_adt9``) into
``--root/cohort``, runs the whole pipeline on it with the command line (``sccohort run``) into
``--root/run``, and compares the l1 labels with the gating labels of ADTnorm's authors over
the types a panel of CD3, CD4, CD8, CD14, CD19, CD25, CD45RA, CD56 and CD127 can name
(CD4 T, CD8 T, monocytes, B, NK; DCs and "undefined" cells have no marker in the panel).
Macro-F1 is reported two ways: over the cells gated as one of those five types, and over all
cells (gated DCs and undefined cells then count against any of the five labels they get).
At l2 the panel names naive CD4 T cells (CD45RA) and Tregs (CD25, CD127). Results go to
``benchmarks/results/protein_annotation.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mudata as md
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from real_cohorts import KOTLIAROV, kotliarov_cohort  # noqa: E402

L1 = {"CD4 T": "CD4 T", "CD8 T": "CD8 T", "monocytes": "Mono", "B": "B", "NK": "NK"}
L2 = {"naive CD4": "CD4 Naive", "Treg": "Treg"}
RESULTS = Path(__file__).resolve().parent / "results" / "protein_annotation.csv"


def _scores(obs: pd.DataFrame, truth: str, pred: str, names: dict[str, str]) -> list[dict]:
    labels = list(names.values())
    gated = obs[truth].isin(names)
    rows = []
    for scope, cells in (("gated as a named type", gated), ("all cells", obs.index == obs.index)):
        y = obs.loc[cells, truth].map(names).fillna("(other)")
        p = obs.loc[cells, pred].astype(str)
        per_type = f1_score(y, p, labels=labels, average=None)
        row = {"level": pred, "scope": scope, "cells": int(cells.sum())}
        row["macro_f1"] = round(float(per_type.mean()), 4)
        row |= {
            f"f1_{label}": round(float(f), 4) for label, f in zip(labels, per_type, strict=True)
        }
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/bench_protein_annotation")
    ap.add_argument("--cells-per-donor", type=int, default=None)
    args = ap.parse_args()
    if not KOTLIAROV.is_file():
        sys.exit(f"the Kotliarov data are not at {KOTLIAROV}")
    root = Path(args.root)
    config = kotliarov_cohort(root / "cohort", cells_per_donor=args.cells_per_donor)
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "sccohort", "run", str(config), "--out", str(root / "run")],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = md.read_h5mu(root / "run" / "cohort.h5mu").obs
    truth = pd.read_csv(root / "cohort" / "truth.csv", index_col=0)
    obs = obs.join(truth, how="inner")
    rows = _scores(obs, "cell_type_l1", "l1", L1) + _scores(obs, "cell_type_l2", "l2", L2)
    record = json.loads((root / "run" / "run.json").read_text())
    common = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {record['machine']['cpus']} cores",
        "cells_after_qc": len(obs),
        "pipeline_s": round(seconds, 1),
    }
    table = pd.DataFrame([common | row for row in rows])
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    print(table.to_string(index=False))
    print(pd.crosstab(obs["cell_type_l1"], obs["l1"]))


if __name__ == "__main__":
    main()

"""The tissue side of a whole run on simulated cohorts with kidney samples (issue 23).

    python benchmarks/bench_tissue.py --seeds 1 2 3            # paper design, about 2 min each
    python benchmarks/bench_tissue.py --part null --seeds 1    # null design
    python benchmarks/bench_tissue.py --part large --seeds 1   # 60 donors (9 with SRC)

Per cohort: `sccohort simulate --tissue kidney` (``--cells-per-donor``, default 800: kidney
samples of 400 nuclei) and `sccohort run` with the simulator's config, then, against the truth
files: the trajectory's root and terminal states (the main one last), the share of the planted
Mac_THBS1 cells in the main terminal state and of those whose likeliest fate it is, Spearman of
pseudotime with the planted one on the continuum's cells, AUPRC of the planted trajectory
genes; how well tissue T, NK and CD14_EGR1 cells take their blood subsets (share of the planted
subset's cells labelled with it); the planted ligand-receptor pairs' rank within their source
and target and their padj for SRC in the kidney; the rate of p < 0.05 and the count of padj <
0.05 among the other interactions (in the null design: all of them). The null and large cohorts
set ``[tissue] root = "CD14_EGR1"``, so the trajectory's interactions are tested whatever the
blood's association finds (nothing in the null design). Appends to
``benchmarks/results/tissue.csv``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

RESULTS = Path(__file__).parent / "results" / "tissue.csv"
KEYS = ["source", "target", "ligand", "receptor"]
IMMUNE = ("CD8_TEM_T2ISG", "CD4_TEM", "NK")


def run_cohort(folder: Path, design: str, seed: int, cells: int, n_donors: int | None) -> float:
    """Simulate and run one cohort; returns the run's seconds."""
    sim = [sys.executable, "-m", "sccohort", "simulate", "--out", str(folder / "input"),
           "--design", design, "--cells-per-donor", str(cells), "--seed", str(seed),
           "--tissue", "kidney"]  # fmt: skip
    if n_donors is not None:
        sim += ["--n-donors", str(n_donors)]
    subprocess.run(sim, check=True, capture_output=True)
    if design == "null" or n_donors is not None:  # the trajectory's interactions are tested
        config = folder / "input" / "sccohort.toml"  # whatever the blood association finds
        config.write_text(config.read_text() + '\n[tissue]\nroot = "CD14_EGR1"\n')
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sccohort", "run", str(folder / "input" / "sccohort.toml"),
         "--out", str(folder / "out")],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def trajectory_scores(inp: Path, out: Path) -> dict:
    record = json.loads((out / "run.json").read_text())
    resolved = record["resolved"]
    cells = pd.read_csv(out / "tables" / "trajectory_cells.csv.gz")
    truth = pd.read_csv(inp / "truth" / "trajectory.csv").set_index("cell_id")
    on = cells[cells["cell_id"].isin(truth.index)].set_index("cell_id")
    end = on.index.isin(truth.index[truth["state"] == "Mac_THBS1"])
    genes = pd.read_csv(out / "tables" / "trajectory_genes.csv")
    planted = genes["gene"].isin(pd.read_csv(inp / "truth" / "trajectory_genes.csv")["gene"])
    terminal = resolved.get("tissue.terminal")
    likeliest = on.filter(like="fate_").idxmax(axis=1) == f"fate_{terminal}"
    return {
        "root": resolved.get("tissue.root"),
        "terminal": terminal,
        "terminal_states": ";".join(resolved.get("tissue.terminal_states", [])),
        "terminal_holds_planted_end": round(float(on.loc[end, "terminal"].mean()), 3),
        "fate_planted_end": round(float(likeliest[end].mean()), 3),
        "continuum_on_trajectory": round(len(on) / len(truth), 3),
        "spearman": round(
            float(spearmanr(on["pseudotime"], truth.loc[on.index, "pseudotime"])[0]), 3
        ),
        "auprc_genes": round(float(average_precision_score(planted, genes["statistic"])), 3),
    }


def transfer_scores(inp: Path, out: Path) -> dict:
    import mudata as md

    obs = md.read_h5mu(out / "tissue.h5mu").mod["rna"].obs
    truth = pd.read_csv(inp / "truth" / "cells.csv.gz", index_col="cell_id").loc[obs.index]
    return {
        f"transfer_{name}": round(
            float((obs.loc[truth["subset"] == name, "subset"] == name).mean()), 3
        )
        for name in (*IMMUNE, "CD14_EGR1")
    }


def interaction_scores(inp: Path, out: Path, terminal: str, design: str) -> dict:
    names = {"Endo": "Endothelial", "Mac_THBS1": terminal}
    truth = pd.read_csv(inp / "truth" / "interactions.csv").replace(names)
    scores = pd.read_csv(out / "tables" / "interaction_scores.csv")
    path = out / "tables" / "interactions.csv"
    tests = (
        pd.read_csv(path)
        if path.is_file()
        else pd.DataFrame(columns=[*KEYS, "contrast", "tissue", "pvalue", "padj"])
    )
    kidney = scores[scores["tissue"] == "kidney"]
    ranks = truth[KEYS].merge(kidney, on=KEYS, how="left")["rank"]
    src = tests[(tests["contrast"] == "SRC") & (tests["tissue"] == "kidney")]
    planted = truth[KEYS].merge(src, on=KEYS, how="left")
    changed = set(truth["ligand"])  # a raised ligand changes all its pairs from the source
    sources = set(truth["source"])
    is_planted = tests["ligand"].isin(changed) & tests["source"].isin(sources)
    if design == "null":
        is_planted &= False
    others = tests[~is_planted]
    return {
        "planted_rank_max": float(ranks.max()),
        "planted_padj": ";".join(f"{p:.3g}" for p in planted["padj"]),
        "planted_found": int((planted["padj"] < 0.05).sum()),
        "n_tests": len(tests),
        "other_rate_p05": round(float((others["pvalue"] < 0.05).mean()), 4)
        if len(others)
        else np.nan,
        "other_padj05": int((others["padj"] < 0.05).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("paper", "null", "large"), default="paper")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cells-per-donor", type=int, default=800)
    args = parser.parse_args()
    design = "null" if args.part == "null" else "paper"
    n_donors = 60 if args.part == "large" else None
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            seconds = run_cohort(folder, design, seed, args.cells_per_donor, n_donors)
            inp, out = folder / "input", folder / "out"
            row = {"part": args.part, "seed": seed, "cells_per_donor": args.cells_per_donor,
                   "run_s": round(seconds, 1)}  # fmt: skip
            row |= trajectory_scores(inp, out)
            row |= transfer_scores(inp, out)
            row |= interaction_scores(inp, out, row["terminal"], design)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    old = pd.read_csv(RESULTS, keep_default_na=False) if RESULTS.is_file() else pd.DataFrame()
    if len(old):
        old = old[~((old["part"] == args.part) & old["seed"].isin(args.seeds))]
    pd.concat([old, table], ignore_index=True).to_csv(RESULTS, index=False)


if __name__ == "__main__":
    main()

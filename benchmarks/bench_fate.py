"""Fate probabilities: `sccohort.tl.fate_probabilities` against CellRank 2 on planted trees.

    python benchmarks/bench_fate.py --cellrank-python /tmp/crvenv/bin/python

CellRank cannot share sccohort's environment: CellRank 2.0.7 (the newest for Python 3.11)
needs pygpcca, which pins ``jinja2==3.0.3`` where sccohort needs ``jinja2>=3.1``; so it runs
in its own virtual environment (``python -m venv /tmp/crvenv && /tmp/crvenv/bin/pip install
cellrank==2.0.7``), on the same cells written as h5ad. Without ``--cellrank-python`` only
sccohort's side runs.

Cohorts: a stem that parts at pseudotime 0.35 into 2 or 3 arms in 5 dimensions (900 cells,
noise sd 0.02 or 0.05 around the curve; the pseudotime given to both is the planted one plus
noise of sd 0.02); groups: the stem, each arm, and each arm's end (pseudotime >= 0.75).
Both use the same kNN graph kind (15 neighbours, Gaussian kernel) and the pseudotime
kernel's soft scheme (b = 10, nu = 0.5). Per cohort and method: whether the terminal states
found are exactly the arms' ends (CellRank: GPCCA macrostates, arms + 1 of them, terminal by
stability), the share of cells past the branch point (pseudotime > 0.45) whose likeliest fate
is their planted arm, with the terminal states found and with the true ends given, and the
seconds. Appends to ``benchmarks/results/fate.csv``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "fate.csv"
BRANCH_POINT = 0.35

CELLRANK = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import anndata as ad, numpy as np, scanpy as sc, cellrank as cr
adata = ad.read_h5ad(sys.argv[1]); arms = int(sys.argv[2]); out = {}
start = time.perf_counter()
sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", method="gauss", random_state=0)
pk = cr.kernels.PseudotimeKernel(adata, time_key="pseudotime")
pk.compute_transition_matrix(threshold_scheme="soft", show_progress_bar=False)
def fates(g):
    g.compute_fate_probabilities(solver="direct", use_petsc=False, show_progress_bar=False)
    lin = g.fate_probabilities
    return [str(n) for n in lin.names], np.asarray(lin).tolist()
g = cr.estimators.GPCCA(pk)
ends = {f"end{a}": list(adata.obs_names[adata.obs["state"] == f"end{a}"]) for a in range(arms)}
g.set_terminal_states(ends)
out["given"] = fates(g)
out["given_s"] = time.perf_counter() - start
start = time.perf_counter()
g = cr.estimators.GPCCA(pk)
try:
    g.compute_schur(n_components=arms + 5)
    g.compute_macrostates(n_states=arms + 1, cluster_key="state")
    g.predict_terminal_states(method="stability")
    out["found"] = fates(g)
except Exception as exc:  # noqa: BLE001 - reported, not raised
    out["error"] = repr(exc)
out["found_s"] = time.perf_counter() - start
json.dump(out, open(sys.argv[3], "w"))
"""


def tree(n: int, seed: int, arms: int, noise: float):
    import anndata as ad

    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    arm = rng.integers(0, arms, n)
    direction = np.eye(5)[1 : arms + 1]
    x = t[:, None] * np.eye(5)[0] + np.clip(t - BRANCH_POINT, 0, None)[:, None] * direction[arm]
    x += rng.normal(0, noise, x.shape)
    state = np.where(t < BRANCH_POINT, "stem", np.char.add("arm", arm.astype(str)))
    state = np.where(t >= 0.75, np.char.add("end", arm.astype(str)), state)
    obs = pd.DataFrame(
        {"state": state, "pseudotime": np.clip(t + rng.normal(0, 0.02, n), 0, None)},
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(x.astype(np.float32), obs=obs, obsm={"X_pca": x}), t, arm


def accuracy(names: list[str], probs: np.ndarray, t: np.ndarray, arm: np.ndarray) -> float:
    """Share of cells past the branch point whose likeliest fate is their planted arm."""
    label = np.array([int(str(n).removeprefix("end").split("_")[0].split(",")[0])
                      if str(n).startswith("end") else -1 for n in names])  # fmt: skip
    past = t > BRANCH_POINT + 0.1
    return float((label[np.nanargmax(probs[past], axis=1)] == arm[past]).mean())


def exact(names: list[str], arms: int) -> bool:
    found = sorted(str(n).split("_")[0] for n in names)
    return found == [f"end{a}" for a in range(arms)]


def ours(adata, t, arm, arms: int) -> dict:
    from sccohort.tl import fate_probabilities

    start = time.perf_counter()
    fate_probabilities(adata, "state", n_neighbors=15)
    found_s = time.perf_counter() - start
    found = adata.obsm["fate"]
    start = time.perf_counter()
    ends = [f"end{a}" for a in range(arms)]
    fate_probabilities(adata, "state", n_neighbors=15, terminal_states=ends, key_added="given")
    given_s = time.perf_counter() - start
    given = adata.obsm["given"]
    return {
        "terminal_exact": exact(list(found.columns), arms),
        "terminal_states": ";".join(found.columns),
        "accuracy_found": round(accuracy(list(found.columns), found.to_numpy(), t, arm), 4),
        "accuracy_given": round(accuracy(list(given.columns), given.to_numpy(), t, arm), 4),
        "found_s": round(found_s, 2),
        "given_s": round(given_s, 2),
    }


def cellrank(python: str, adata, t, arm, arms: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        h5ad, out = Path(tmp) / "cells.h5ad", Path(tmp) / "out.json"
        adata.write_h5ad(h5ad)
        subprocess.run([python, "-c", CELLRANK, str(h5ad), str(arms), str(out)], check=True,
                       capture_output=True)  # fmt: skip
        res = json.loads(out.read_text())
    row = {
        "accuracy_given": round(accuracy(res["given"][0], np.array(res["given"][1]), t, arm), 4),
        "given_s": round(res["given_s"], 2),
        "found_s": round(res["found_s"], 2),
    }
    if "found" in res:
        names, probs = res["found"][0], np.array(res["found"][1])
        row |= {
            "terminal_exact": exact(names, arms),
            "terminal_states": ";".join(names),
            "accuracy_found": round(accuracy(names, probs, t, arm), 4),
        }
    else:
        row |= {"terminal_exact": False, "terminal_states": res["error"][:80]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cellrank-python", default=None)
    args = parser.parse_args()
    rows = []
    for arms in (2, 3):
        for noise in (0.02, 0.05):
            for seed in args.seeds:
                adata, t, arm = tree(900, seed, arms, noise)
                base = {"arms": arms, "noise": noise, "seed": seed}
                rows.append(base | {"method": "sccohort"} | ours(adata.copy(), t, arm, arms))
                if args.cellrank_python:
                    res = cellrank(args.cellrank_python, adata, t, arm, arms)
                    rows.append(base | {"method": "cellrank 2.0.7"} | res)
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    table.to_csv(RESULTS, index=False)
    summary = table.groupby(["method", "arms", "noise"])[
        ["terminal_exact", "accuracy_found", "accuracy_given", "found_s", "given_s"]
    ].agg(["min", "max"])
    print(summary.to_string())


if __name__ == "__main__":
    main()

"""Pseudobulk DE: our engines (deseq2, pydeseq2) against R DESeq2 on the same pseudobulks.

Reads the processed dev cohort (``cohort.h5mu`` of a paper-design simulation, 27 donors),
sums raw counts per donor x group (l2 and subset) with ``sccohort.stats.pseudobulk``, and for
a few contrast x group pairs runs

* ``pseudobulk_de`` with each engine: ``deseq2`` (ours, vectorised, the default) and
  ``pydeseq2`` (one process); MLE log2 fold changes, BH over the tested genes,
* R DESeq2 (``Rscript benchmarks/pseudobulk_deseq2.R``: ``DESeq(full = design matrix)``,
  ``results(independentFiltering = FALSE)``) on the very same filtered counts and design,
* and, if ``edgepython`` (the PyPI edgeR port) is importable, edgeR's quasi-likelihood F-test
  as the measured alternative engine (install it outside the project venv, e.g.
  ``pip install --target /tmp/edgepython --no-deps edgepython`` and ``PYTHONPATH=/tmp/edgepython``).

The clinical contrasts of a small simulated cohort give few significant genes, so one more
job compares CD16 vs CD14 monocyte pseudobulks across donors (unpaired, adjusted for age;
``deseq2`` engine only), where thousands of genes differ and the overlap of significant
genes is a real test.

Reports per pair: genes tested, Spearman of log2 fold changes and of -log10 p against R,
Jaccard of genes with padj < 0.05, and seconds per subset (R: DESeq() + results() only).

Usage::

    python benchmarks/bench_pseudobulk_deseq2.py [--cohort PATH] [--config PATH]

Writes ``benchmarks/results/pseudobulk_deseq2.csv``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
from scipy import stats

from sccohort.cohort import Contrast, ContrastDesign
from sccohort.config import build_designs, load_config, load_inputs
from sccohort.stats.pseudobulk import pseudobulk
from sccohort.stats.pseudobulk_de import _align, filter_by_expr, pseudobulk_de

HERE = Path(__file__).resolve().parent
#: (contrast, level, group) pairs compared.
PAIRS = [
    ("SRC", "l2", "CD14 Mono"),
    ("SRC", "subset", "CD14_EGR1"),
    ("ILD", "l2", "CD8 TEM"),
    ("ILD", "subset", "CD8_TEM_T2ISG"),
    ("SSc_vs_HD", "l2", "CD4 Naive"),
    ("SSc_vs_HD", "l2", "NK"),
    ("ILD", "l2", "B naive"),
]
#: Our engines, in the order run.
ENGINES = ("deseq2", "pydeseq2")
#: Fewest cells per donor x group (the rare planted subsets have ~10 cells per donor).
MIN_CELLS = 5
ALPHA = 0.05
#: Two l2 types compared across donors (unpaired, adjusted for age): thousands of DE genes.
CELLTYPES = ("CD14 Mono", "CD16 Mono")


def _celltype_design(
    counts: dict[str, pd.DataFrame], control: str, case: str, age: pd.Series
) -> tuple[pd.DataFrame, ContrastDesign]:
    """Pseudobulks of two l2 types stacked (rows ``donor|type``) and their design."""
    donors = sorted(set(counts[control].index) & set(counts[case].index))
    frame = pd.concat(
        [
            counts[control].loc[donors].rename(index=lambda d: f"{d}|{control}"),
            counts[case].loc[donors].rename(index=lambda d: f"{d}|{case}"),
        ]
    )
    n = len(donors)
    term = f"celltype[{case}]"
    matrix = pd.DataFrame(
        {
            "intercept": 1.0,
            term: [0.0] * n + [1.0] * n,
            "age": np.tile(age.loc[donors].to_numpy(dtype=float), 2),
        },
        index=frame.index,
    )
    design = ContrastDesign(
        contrast=Contrast(f"{case}_vs_{control}", "celltype", case=case, control=control),
        kind="binary",
        units=frame.index,
        group=pd.Series(["control"] * n + ["case"] * n, index=frame.index),
        matrix=matrix,
        n_case=n,
        n_control=n,
        term=term,
    )
    return frame, design


def _edger(y: pd.DataFrame, matrix: pd.DataFrame, term: str) -> tuple[pd.DataFrame, float]:
    import edgepython as ep

    start = time.perf_counter()
    dge = ep.calc_norm_factors(ep.make_dgelist(y.to_numpy().T))
    fit = ep.glm_ql_fit(dge, design=matrix.to_numpy(dtype=float))
    res = ep.glm_ql_ftest(fit, coef=list(matrix.columns).index(term))
    secs = time.perf_counter() - start
    table = pd.DataFrame(res["table"])
    out = pd.DataFrame(
        {
            "gene": y.columns,
            "effect": table["logFC"].to_numpy(),
            "pvalue": table["PValue"].to_numpy(),
        }
    )
    out["padj"] = stats.false_discovery_control(out["pvalue"].to_numpy(), method="bh")
    return out, secs


def _compare(ours: pd.DataFrame, ref: pd.DataFrame) -> dict:
    both = ours.merge(ref, on="gene", suffixes=("", "_r"))
    ok = both["effect"].notna() & both["effect_r"].notna()
    rho_lfc = stats.spearmanr(both.loc[ok, "effect"], both.loc[ok, "effect_r"])[0]
    okp = both["pvalue"].notna() & both["pvalue_r"].notna()
    rho_p = stats.spearmanr(both.loc[okp, "pvalue"], both.loc[okp, "pvalue_r"])[0]
    sig = set(both.loc[both["padj"] < ALPHA, "gene"])
    sig_r = set(both.loc[both["padj_r"] < ALPHA, "gene"])
    union = sig | sig_r
    return {
        "n_genes": len(both),
        "spearman_lfc": rho_lfc,
        "spearman_pvalue": rho_p,
        "max_abs_lfc_diff": float(np.nanmax(np.abs(both["effect"] - both["effect_r"]))),
        "n_sig": len(sig),
        "n_sig_r": len(sig_r),
        "jaccard_sig": len(sig & sig_r) / len(union) if union else np.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="/tmp/devcohort/run/cohort.h5mu")
    parser.add_argument("--config", default="/tmp/devcohort/input/sccohort.toml")
    parser.add_argument("--out", default=str(HERE / "results" / "pseudobulk_deseq2.csv"))
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.read_h5mu(args.cohort)
    cfg = load_config(args.config)
    sheet, clinical = load_inputs(cfg)
    designs = build_designs(cfg, sheet, clinical)
    primary = sheet.primary_samples(cfg.primary_timepoint, cfg.primary_tissue)
    counts = {}
    for level in ("l2", "subset"):
        start = time.perf_counter()
        counts[level], _ = pseudobulk(
            mdata, groupby=level, samples=list(primary.index), min_cells=MIN_CELLS
        )
        print(f"pseudobulk by {level}: {time.perf_counter() - start:.2f} s")
    del mdata
    try:
        import edgepython  # noqa: F401

        have_edger = True
    except ImportError:
        have_edger = False
        print("edgepython not importable: the edgeR QL rows are left out")

    import pydeseq2.dds  # noqa: F401  (import time is not DE time)

    jobs = []  # (contrast, level, group, counts, design, engines)
    for contrast, level, group in PAIRS:
        frame = counts[level].get(group)
        if frame is None:
            print(f"{contrast} / {group}: no pseudobulk")
            continue
        reason = _align(frame, designs[contrast], group, 3)[4]
        if reason is not None:
            print(f"{contrast} / {group}: skipped ({reason})")
            continue
        jobs.append((contrast, level, group, frame, designs[contrast], ENGINES))
    # many true differences, so the overlap of significant genes is tested on thousands
    frame, design = _celltype_design(counts["l2"], *CELLTYPES, clinical.table["age"])
    jobs.append((design.contrast.name, "l2", "/".join(CELLTYPES), frame, design, ENGINES[:1]))

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_pseudobulk_") as tmp:
        folder = Path(tmp)
        manifest, ours_all, edger_all = [], {}, {}
        for i, (contrast, level, group, frame, design, engines) in enumerate(jobs):
            y, matrix, *_ = _align(frame, design, group, 3)
            y = y.loc[:, filter_by_expr(y, matrix).to_numpy()]
            print(f"{contrast} / {group}: {y.shape[0]} donors x {y.shape[1]} genes")
            for engine in engines:
                start = time.perf_counter()
                ours = pseudobulk_de(frame, design, group=group, level=level, engine=engine)
                secs = time.perf_counter() - start
                assert set(y.columns) == set(ours["gene"])
                ours_all[i, engine] = (ours, secs)
                print(f"  {engine}: {secs:.1f} s")
            y.to_csv(folder / f"j{i}_counts.csv")
            matrix.to_csv(folder / f"j{i}_design.csv")
            manifest.append({"id": f"j{i}", "term": list(matrix.columns).index(design.term)})
            if have_edger:
                if not edger_all:
                    _edger(y, matrix, design.term)  # compile edgepython's numba kernels
                edger_all[i] = _edger(y, matrix, design.term)
        pd.DataFrame(manifest).to_csv(folder / "manifest.csv", index=False)
        subprocess.run(["Rscript", str(HERE / "pseudobulk_deseq2.R"), str(folder)], check=True)
        for i, (contrast, level, group, frame, design, engines) in enumerate(jobs):
            r = pd.read_csv(folder / f"j{i}_r.csv")
            ref = r.rename(columns={"log2FoldChange": "effect"})[
                ["gene", "effect", "pvalue", "padj"]
            ]
            base = {
                "contrast": contrast,
                "level": level,
                "subset": group,
                "n_donors": len(_align(frame, design, group, 3)[0]),
            }
            results = [(engine, *ours_all[i, engine]) for engine in engines]
            if i in edger_all:
                results.append(("edgepython (edgeR QL F-test)", *edger_all[i]))
            for engine, table, secs in results:
                rows.append(
                    {
                        **base,
                        "engine": engine,
                        "reference": "R DESeq2",
                        **_compare(table[["gene", "effect", "pvalue", "padj"]], ref),
                        "seconds": secs,
                        "seconds_r": float(r["seconds"].iloc[0]),
                    }
                )
    result = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(args.out, index=False, float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""``sccohort power``: how many donors a cohort needs, from a pilot run or the reference design.

`plan_power` takes the between-donor variation from a finished run (`io.read_pilot`, then
`stats.fit_donor_variation`) or the reference design (`stats.reference_variation`), runs the
power grid (`stats.abundance_power`), answers the inverse questions
(`stats.detectable_fold`, `stats.donors_needed`) and writes, in ``OUT``: ``power.csv``,
``detectable_fold.csv``, ``donors_needed.csv``, ``variation.csv``, ``power.html`` (with
``figures/power_curves.png`` / ``.svg``) and ``power.json`` (request, versions, seed,
timings). Every request is checked before anything is written; each file is written
atomically.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from sccohort import pl
from sccohort.errors import InputError
from sccohort.io.atomic import write_csv, write_json
from sccohort.io.pilot import read_pilot
from sccohort.report.build import FigureBlock, Items, Paragraph, Section, TableBlock, build_report
from sccohort.run_log import package_versions
from sccohort.stats.donor_variation import (
    DonorVariation,
    fit_donor_variation,
    reference_variation,
)
from sccohort.stats.power import abundance_power, detectable_fold, donors_needed

__all__ = ["PowerRequest", "plan_power"]

#: ``--design`` values: where the variation comes from without a pilot.
POWER_DESIGNS = ("paper",)


@dataclass
class PowerRequest:
    """What ``sccohort power`` was asked (the grid, the test, the source of the variation).

    Exactly one of ``design`` (``"paper"``) and ``pilot`` (a finished run's folder).
    ``None`` grids take the defaults below; ``cells_per_sample`` defaults to the source's.
    """

    design: str | None = None
    pilot: str | None = None
    level: str = "subset"
    n_case: list[int] = field(default_factory=lambda: [4, 8, 12, 20])
    n_control: list[int] | None = None
    control_ratio: float | None = None
    fold: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0, 4.0])
    base_share: list[float] | None = None
    subsets: list[str] | None = None
    cells_per_sample: list[float] | None = None
    n_sim: int = 200
    fdr: float = 0.05
    n_perm: int = 10_000
    target_power: float = 0.8
    seed: int = 0


def plan_power(
    request: PowerRequest,
    out: str | Path,
    *,
    scheduler: object = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run the power analysis of ``request`` and write its files to ``out``.

    Returns the record written as ``power.json``.

    Raises
    ------
    InputError
        A bad request (see `stats.abundance_power`), a ``pilot`` that is not a finished run,
        both or neither of ``design`` and ``pilot``, an ``out`` that is a file.
    """
    started, clock = datetime.now(UTC), time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file", key="--out", hint="give a folder for the results")
    variation, source_text = _variation(request)
    if not 0 < request.target_power < 1:
        raise InputError(
            f"the target power must be in (0, 1), got {request.target_power}",
            key="--target-power",
        )
    power = abundance_power(
        variation,
        n_case=request.n_case,
        n_control=request.n_control,
        control_ratio=request.control_ratio,
        fold=request.fold,
        base_share=request.base_share,
        subsets=request.subsets,
        cells_per_sample=request.cells_per_sample,
        n_sim=request.n_sim,
        fdr=request.fdr,
        n_perm=request.n_perm,
        seed=request.seed,
        scheduler=scheduler,
        progress=progress,
    )
    simulated = time.perf_counter() - clock
    folds = detectable_fold(power, request.target_power)
    donors = donors_needed(power, request.target_power)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(power, out / "power.csv")
    write_csv(folds, out / "detectable_fold.csv")
    write_csv(donors, out / "donors_needed.csv")
    write_csv(variation.table(), out / "variation.csv")
    build_report(
        out,
        _sections(request, variation, source_text, power, folds, donors),
        {
            "title": "sccohort power",
            "subtitle": source_text,
            "FDR": request.fdr,
            "simulations per design": request.n_sim,
            "seed": request.seed,
        },  # fmt: skip
        filename="power.html",
        workers=0,
    )
    record = {
        "sccohort_power": 1,
        "command": sys.argv,
        "request": asdict(request),
        "source": source_text,
        "variation": _variation_summary(variation),
        "designs": int(len(power)),
        "seconds": {"simulation": simulated, "total": time.perf_counter() - clock},
        "started": started.isoformat(timespec="seconds"),
        "versions": package_versions(),
        "files": ["power.csv", "detectable_fold.csv", "donors_needed.csv", "variation.csv",
                  "power.html", "figures/power_curves.png", "figures/power_curves.svg"],
    }  # fmt: skip
    write_json(record, out / "power.json")
    return record


def _variation(request: PowerRequest) -> tuple[DonorVariation, str]:
    """The request's variation and a sentence on where it comes from."""
    if (request.design is None) == (request.pilot is None):
        raise InputError(
            "give either --design paper or --from RUN_FOLDER (exactly one)",
            key="--design",
            hint="--design paper uses the reference study's design; --from a finished run fits "
            "the variation of its donors",
        )
    if request.design is not None:
        if request.design not in POWER_DESIGNS:
            raise InputError(
                f"unknown design '{request.design}'",
                key="--design",
                hint=f"use one of: {', '.join(POWER_DESIGNS)}",
            )
        variation = reference_variation()
        return variation, (
            "the reference design: the simulator's 38 blood subsets, one Dirichlet of "
            f"concentration {variation.pooled_concentration:g} between donors"
        )
    pilot = read_pilot(request.pilot, request.level)
    variation = fit_donor_variation(pilot.counts, qc_loss=pilot.qc_loss, source=pilot.source)
    return variation, (
        f"the pilot run {pilot.source}: {variation.n_donors} donors, {pilot.counts.shape[1]} "
        f"subsets at level '{pilot.level}'"
    )


def _variation_summary(v: DonorVariation) -> dict:
    return {
        "source": v.source or "reference design",
        "n_donors": v.n_donors,
        "subsets": int(len(v.shares)),
        "pooled_concentration": v.pooled_concentration,
        "prior_df": v.prior_df if np.isfinite(v.prior_df) else "inf",
        "cells_per_sample": v.cells_per_sample,
        "cells_cv": v.cells_cv,
        "qc_loss": None if np.isnan(v.qc_loss) else v.qc_loss,
    }


def _sections(
    request: PowerRequest,
    variation: DonorVariation,
    source: str,
    power: pd.DataFrame,
    folds: pd.DataFrame,
    donors: pd.DataFrame,
) -> list[Section]:
    target = f"{100 * request.target_power:g} %"
    found = f"padj < {request.fdr:g}"
    design = Section("Design", "design", [Paragraph(_design_text(request, variation, source))])
    curves = Section(
        "Power curves",
        "curves",
        [
            FigureBlock(
                pl.power_curves(power, request.target_power),
                "power_curves",
                f"Power (share of {request.n_sim} simulated cohorts in which the planted subset "
                f"has {found}) against the fold of its share in the cases, with 95% intervals; "
                f"dashed: {target}.",
            ),
            TableBlock(power, "Every design of the grid.", csv="power.csv", max_rows=60),
        ],
    )
    inverse = Section(
        f"What reaches {target} power",
        "targets",
        [
            TableBlock(
                folds,
                f"The smallest fold each design detects with {target} power, interpolated on "
                "the log scale between the grid's folds (fold_grid: the grid's own fold).",
                csv="detectable_fold.csv",
            ),
            TableBlock(
                donors,
                f"The fewest cases each effect needs for {target} power (by the grid's numbers "
                "of cases).",
                csv="donors_needed.csv",
            ),
        ],
    )
    fitted = Section(
        "Between-donor variation",
        "variation",
        [
            TableBlock(
                variation.table(),
                "Mean share of each subset and its Dirichlet-equivalent concentration (between-"
                "donor variance share (1 - share) / (concentration + 1)); cv: between-donor SD "
                "over the share.",
                csv="variation.csv",
            )
        ],
    )
    return [design, curves, inverse, fitted, _limits(request)]


def _design_text(request: PowerRequest, v: DonorVariation, source: str) -> str:
    cells = (
        f"{v.cells_per_sample:,.0f} cells per sample after QC (median; CV {v.cells_cv:.2f})"
        if request.cells_per_sample is None
        else f"{', '.join(f'{c:,.0f}' for c in request.cells_per_sample)} cells per sample"
    )
    loss = (
        f" The pilot's QC removed {100 * v.qc_loss:.1f} % of cells: to keep N cells, load "
        f"N / {1 - v.qc_loss:.2f}."
        if np.isfinite(v.qc_loss)
        else ""
    )
    spread = (
        "every subset took the pooled value (their spread is what sampling gives)"
        if not np.isfinite(v.prior_df)
        else f"each subset's estimate squeezed towards it with {v.prior_df:.1f} prior df"
    )
    return (
        f"Donor-to-donor variation from {source}; pooled Dirichlet concentration "
        f"{v.pooled_concentration:.0f}, {spread}. Each simulated cohort draws its donors' "
        f"compositions from this variation, {cells}, the planted subset's share multiplied "
        f"by the fold in the cases, and is tested with the pipeline's default test "
        f"(arcsine-square-root shares, precision weights, moderated t, every relabelling of "
        f"the donors up to 20,000, else {request.n_perm:,} random ones; Benjamini-Hochberg "
        f"over the level's {len(v.shares)} subsets at FDR {request.fdr:g}).{loss}"
    )


def _limits(request: PowerRequest) -> Section:
    return Section(
        "What this does not include",
        "limits",
        [
            Items(
                [
                    "Cells are counted with perfect labels: clustering errors dilute a subset "
                    "and cost power in a real run (benchmarks/bench_power.py compares the two).",
                    "No covariates: a run that adjusts for age or sex spends one donor's "
                    "degree of freedom on each.",
                    "One sample per donor (unpaired); paired and repeated designs gain power "
                    "this page does not count.",
                    f"Seed {request.seed}: the same request gives the same numbers.",
                ]
            )
        ],
    )

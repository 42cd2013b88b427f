"""Read a finished run as a pilot: its donors' composition at one level and its QC losses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sccohort.errors import InputError

__all__ = ["Pilot", "read_pilot"]


@dataclass(frozen=True)
class Pilot:
    """What a power analysis takes from a finished run.

    Attributes
    ----------
    counts
        Donors x subsets cells of the level (the primary sample of each donor with at least
        the run's ``min_cells``), index ``donor_id``.
    qc_loss
        Fraction of the primary samples' cells that QC removed.
    contrasts
        The run's ``tables/contrasts.csv`` (``contrast, n_case, n_control, ...``; empty when
        the run had none).
    level
        The level read.
    source
        The run folder.

    Examples
    --------
    >>> from sccohort.io import Pilot
    >>> counts = pd.DataFrame({"B": [90, 120, 60], "T": [910, 880, 940]},
    ...                       index=pd.Index(["D1", "D2", "D3"], name="donor_id"))
    >>> pilot = Pilot(counts, qc_loss=0.1, contrasts=pd.DataFrame(), level="l1", source="out")
    >>> pilot.counts.sum(axis=1).tolist()
    [1000, 1000, 1000]
    """

    counts: pd.DataFrame
    qc_loss: float
    contrasts: pd.DataFrame
    level: str
    source: str


def read_pilot(run: str | Path, level: str = "subset") -> Pilot:
    """Read ``run`` (a finished ``sccohort run`` output folder) as a pilot at ``level``.

    Raises
    ------
    InputError
        The folder is not a finished run (no ``run.json``, or its status is not
        ``finished``), lacks ``tables/composition.csv``, or has no such level.

    Examples
    --------
    >>> from sccohort.io import read_pilot
    >>> read_pilot("/nonexistent/out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    sccohort.errors.InputError: ... is not a finished sccohort run ...
    """
    run = Path(run)
    record = _finished_record(run)
    composition = _table(run, "composition.csv")
    config = record.get("config", {})
    settings = config.get("run", {})
    timepoint = settings.get("primary_timepoint", "baseline")
    tissue = settings.get("primary_tissue", "blood")
    min_cells = int(config.get("association", {}).get("min_cells", 0) or 0)
    at = composition[(composition["level"] == level) & (composition["parent"] == "all")]
    if at.empty:
        levels = sorted(composition.loc[composition["parent"] == "all", "level"].unique())
        raise InputError(
            f"the run has no composition at level '{level}'",
            file=run / "tables" / "composition.csv",
            hint=f"use one of: {', '.join(map(str, levels))}",
        )
    primary = at[(at["timepoint"].astype(str) == str(timepoint)) & (at["tissue"] == tissue)]
    if primary.empty:  # a run without the timepoint column's value: every donor's first sample
        primary = at
    first = primary.drop_duplicates("donor_id")["sample_id"]
    primary = primary[primary["sample_id"].isin(first)]
    counts = primary.pivot_table(
        index="donor_id", columns="subset", values="count", aggfunc="sum", fill_value=0
    )
    counts = counts[counts.sum(axis=1) >= max(min_cells, 1)]
    return Pilot(
        counts=counts.astype(int),
        qc_loss=_qc_loss(run, list(first)),
        contrasts=_optional_table(run, "contrasts.csv"),
        level=level,
        source=str(run),
    )


def _finished_record(run: Path) -> dict:
    path = run / "run.json"
    hint = "point --from at the output folder of a run that finished (sccohort run ... --out)"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(
            f"{run} is not a finished sccohort run (no readable run.json)", hint=hint
        ) from None
    if not isinstance(record, dict) or record.get("status") != "finished":
        status = record.get("status") if isinstance(record, dict) else None
        raise InputError(
            f"{run} is not a finished sccohort run (status: {status or 'unknown'})",
            file=path,
            hint=hint,
        )
    return record


def _table(run: Path, name: str) -> pd.DataFrame:
    path = run / "tables" / name
    if not path.is_file():
        raise InputError(
            f"the run has no tables/{name}",
            file=run,
            hint="rerun it with this version of sccohort, or point --from at another run",
        )
    return pd.read_csv(path)


def _optional_table(run: Path, name: str) -> pd.DataFrame:
    path = run / "tables" / name
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _qc_loss(run: Path, samples: list[str]) -> float:
    qc = _optional_table(run, "qc.csv")
    if qc.empty or not {"sample_id", "cells_in", "cells_out"} <= set(qc.columns):
        return float("nan")
    qc = qc[qc["sample_id"].astype(str).isin(samples)]
    cells_in = float(qc["cells_in"].sum())
    return float(1 - qc["cells_out"].sum() / cells_in) if cells_in > 0 else float("nan")

"""The stages of a run: what each one does to the cohort and which files it writes.

Each stage is a function of the :class:`RunState` that returns the files it wrote (through
:mod:`sccohort.io.atomic`); :data:`STAGES` lists them in order. The runner in
:mod:`sccohort.pipeline` executes them, checkpoints and resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from sccohort.io.tables import CORE_COLUMNS
from sccohort.report.assemble import assemble_report
from sccohort.stages.base import Progress, RunState, Silent, Stage
from sccohort.stages.cells import (
    check_inputs,
    stage_annotate,
    stage_embed,
    stage_markers,
    stage_preprocess,
    stage_subsets,
    stage_umap,
)
from sccohort.stages.characterise import stage_characterise
from sccohort.stages.donors import (
    stage_association,
    stage_composition,
    stage_de,
    stage_neighbourhoods,
)
from sccohort.stages.interactions import stage_interactions
from sccohort.stages.spatial import stage_spatial
from sccohort.stages.tissue import stage_tissue, stage_trajectory

__all__ = [
    "CORE_COLUMNS",
    "STAGES",
    "Progress",
    "RunState",
    "Silent",
    "Stage",
    "check_inputs",
]


def stage_report(state: RunState) -> list[Path]:
    """``report.html`` (one self-contained file) and ``figures/`` (PNG + SVG of each figure).

    The methods section reads ``run.json`` as the runner wrote it before this stage (config,
    versions, seeds, the timings of every earlier stage). The report is the last stage, so
    it shows the run as finished (``final=True``).
    """
    run_json = json.loads((state.out / "run.json").read_text())
    cfg = state.config.characterise
    before = _file_stamps(state.out / "figures")
    path = assemble_report(
        state.out,
        state.mdata,
        state.clinical,
        state.config,
        run_json,
        alpha=cfg.alpha,
        max_subsets=cfg.max_subsets,
        final=True,
    )
    # the figures this report wrote: a user's own files kept there (--overwrite) are not ours
    after = _file_stamps(state.out / "figures")
    figures = sorted(p for p, stamp in after.items() if before.get(p) != stamp)
    return [path, *figures]


def _file_stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    """Regular files of ``folder`` -> (inode, modification time in ns)."""
    if not folder.is_dir():
        return {}
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink()
    }


STAGES: tuple[Stage, ...] = (
    Stage(
        "preprocess",
        "Reading, QC and normalising each sample",
        stage_preprocess,
        changes_cohort=True,
    ),
    Stage(
        "embed",
        "Embedding: PCA, Harmony, WNN, Leiden",
        stage_embed,
        changes_cohort=True,
        saves_cohort=True,
    ),
    Stage("annotate", "Annotating cell types", stage_annotate, changes_cohort=True),
    Stage(
        "subsets",
        "Finding and naming subsets",
        stage_subsets,
        changes_cohort=True,
        saves_cohort=True,
    ),
    Stage("markers", "Ranking subset markers", stage_markers),
    Stage("composition", "Counting cells per donor and subset", stage_composition),
    Stage("association", "Testing subsets against each contrast", stage_association),
    Stage("neighbourhoods", "Neighbourhood differential abundance", stage_neighbourhoods),
    Stage("de", "Pseudobulk differential expression", stage_de),
    Stage("characterise", "Characterising associated subsets", stage_characterise),
    Stage("tissue", "Tissue cells: QC, cell types, integration with the blood", stage_tissue),
    Stage("trajectory", "Trajectory from the root subset into the tissue", stage_trajectory),
    Stage("interactions", "Ligand-receptor interactions and their tests", stage_interactions),
    Stage("spatial", "Slides: cell types, niches and their tests", stage_spatial),
    Stage("umap", "UMAP layout (laid out beside the statistics)", stage_umap, changes_cohort=True),
    Stage("report", "Writing the report", stage_report),
)

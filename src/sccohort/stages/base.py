"""What every stage shares: the run state, the stage record, progress displays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sccohort.cohort import ClinicalTable, SampleSheet
from sccohort.config import Config


class Progress(Protocol):
    """What the pipeline tells a progress display (the CLI draws it with rich)."""

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """A stage begins (``index`` is 1-based)."""

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage are finished."""

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """A stage ended, or was taken from its checkpoint when ``resumed``."""


class Silent:
    """A progress display that shows nothing."""

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """Show nothing."""

    def advance(self, done: int, total: int) -> None:
        """Show nothing."""

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """Show nothing."""


@dataclass
class RunState:
    """Everything the stages share: validated inputs, the cohort object, the output folder.

    ``scheduler`` is what `sccohort.cluster.compute` runs per-sample tasks on;
    ``background`` holds jobs a stage started for a later one (name -> ``Background``).
    ``resolved``: settings a stage resolved from the data (``"embedding.n_top_genes"`` ->
    1000 for a 1,000-gene panel set to ``"auto"``); ``skipped``: analyses that could not run
    on these data, each ``{"stage", "analysis", "reason"}``. Both go to ``run.json`` and
    the report's methods. ``tissue_samples``: the sheet's samples of other tissues than
    the primary one (None: none); ``tissue``: their cells (`sccohort.stages.tissue`);
    ``slides``: the sheet's spatial slides (None: none; `sccohort.stages.spatial`).
    """

    config: Config
    out: Path
    samples: SampleSheet
    clinical: ClinicalTable | None
    progress: Progress
    mdata: Any = None
    scheduler: Any = None
    background: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    tissue_samples: SampleSheet | None = None
    tissue: Any = None
    slides: SampleSheet | None = None

    def skip(self, stage: str, analysis: str, reason: str) -> None:
        """Record that ``analysis`` of ``stage`` did not run on these data, and why."""
        entry = {"stage": stage, "analysis": analysis, "reason": reason}
        if entry not in self.skipped:
            self.skipped.append(entry)


@dataclass(frozen=True)
class Stage:
    """A named step: ``run(state)`` does the work and returns the files it wrote.

    ``changes_cohort`` marks stages that modify ``state.mdata``. ``saves_cohort`` stages
    also keep a copy of the cohort object in their checkpoint, so a resumed run can start
    after them; cheap cohort-changing stages between two saves are re-run on resume
    rather than writing the whole object to disk each time.
    """

    name: str
    description: str
    run: Callable[[RunState], list[Path]]
    changes_cohort: bool = False
    saves_cohort: bool = False

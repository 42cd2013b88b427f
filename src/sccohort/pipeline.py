"""The named stages of a run: inputs, outputs, checkpoints, resume and ``run.json``.

A run is a list of :class:`Stage` objects executed in order on one :class:`RunState`.
After each stage the pipeline writes a checkpoint (``checkpoints/<n>_<stage>.json``,
plus ``checkpoints/<n>_<stage>.h5mu`` when the stage saves the cohort object, see
`write_cohort`) and rewrites ``run.json``. ``resume=True`` re-validates the checkpoints
(same config and inputs, every output file present with its recorded checksum) and
starts after the last good one. Once every stage has finished, the last cohort object
becomes ``OUT/cohort.h5mu`` and the earlier ones are removed (``keep_checkpoints=True``
keeps them). Stage functions are the only code that writes files, and they write
through :mod:`sccohort.io.atomic`, so a crash never leaves a half file that looks whole.

Warnings: each stage runs with every warning recorded in ``run.json`` (``"warnings"``:
stage, category, message, source); sccohort's own (`sccohort.errors.is_own_warning`) are
then raised again, each distinct message once, for the caller to show; the rest (numpy,
pandas, anndata, mudata, dask ...) and log records of level WARNING and above stay in
``run.json``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import traceback
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from sccohort.checkpoints import (
    _drop_checkpoints_after,
    _fingerprint,
    _finish_checkpoints,
    _resumable_checkpoints,
    _write_checkpoint,
    input_checksums,
)
from sccohort.cluster import dask_scheduler, describe_scheduler, resolve_scheduler
from sccohort.cohort import SampleSheet
from sccohort.config import Config, load_inputs
from sccohort.io.atomic import write_json
from sccohort.io.cohort_file import read_h5mu
from sccohort.out_folder import OutFolder
from sccohort.run_log import PeakMemory, WarningLog, package_versions
from sccohort.stages import STAGES, Progress, RunState, Silent, Stage, check_inputs

__all__ = ["STAGES", "Progress", "RunState", "Stage", "run_pipeline"]


# ---------------------------------------------------------------------------------------
# The output folder: a run owns only what it wrote


def _other_samples(config: Config, samples: SampleSheet) -> tuple:
    """Tissue samples and slides of the sheet, every input checked; the inputs' checksums."""
    sheet = SampleSheet.from_csv(config.samples)
    tissue_samples, slides = sheet.other_tissues(config.primary_tissue), sheet.slides()
    check_inputs(config, samples, tissue_samples, slides)
    checksums = input_checksums(config, samples)
    for other in (tissue_samples, slides):
        if other is not None:
            checksums |= input_checksums(config, other)
    return tissue_samples, slides, checksums


def run_pipeline(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    scheduler: Any = None,
    command: Iterable[str] | None = None,
    keep_checkpoints: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every stage of ``STAGES`` on the cohort that ``config`` describes.

    Parameters
    ----------
    config
        A loaded config (:func:`sccohort.config.load_config`).
    out
        The output folder (created). A run writes only the names in ``OWNED`` and removes
        only files an earlier run wrote (``run.json`` lists them, see `OutFolder`).
    resume
        Start after the last checkpoint that matches this config and these inputs.
    progress
        Receives stage and within-stage progress; silent when ``None``.
    scheduler
        Where per-sample tasks and background jobs run (see :mod:`sccohort.cluster`):
        ``"local"`` (a local Dask cluster, one worker process per core), a scheduler
        address, a ``distributed.Client``, ``"threads"`` / ``"sync"``, or ``None`` for the
        config's ``[run] scheduler`` (default ``"auto"``).
    command
        The command line, recorded in ``run.json``.
    keep_checkpoints
        Keep every stage's cohort object under ``checkpoints/`` after the run has finished
        (by default only ``cohort.h5mu`` stays, and a resumed run starts after the last
        stage that saved the cohort).
    overwrite
        Run even though ``tables/`` or ``figures/`` hold files no run wrote (or OUT holds
        run outputs without a ``run.json``): they are kept, and a file the run writes
        replaces one of the same name. Without it such a folder is refused.

    Returns
    -------
    The ``run.json`` record (also written to ``OUT/run.json``). ``"warnings"`` lists every
    warning and log record (WARNING or above) raised during the run; sccohort's own
    warnings are also raised again (`sccohort.errors.is_own_warning`), the others are not.

    Raises
    ------
    InputError
        For any problem with the config, the inputs or the output folder, before anything
        is written.
    Exception
        A stage's error, after ``run.json`` recorded it (``status`` ``"failed"``,
        ``failed_stage``, ``error`` and ``traceback``).
    """
    out = Path(out).resolve()
    progress = progress or Silent()
    log = WarningLog()
    with log.capture("inputs"):
        samples, clinical = load_inputs(config)  # validates everything before writing anything
        tissue_samples, slides, checksums = _other_samples(config, samples)
    fingerprint = _fingerprint(config, checksums)
    stages = STAGES
    folder = OutFolder.prepare(out, stages=stages, resume=resume, overwrite=overwrite)
    good = _resumable_checkpoints(out, stages, fingerprint) if resume else []
    if resume:
        _drop_checkpoints_after(out, stages, len(good))

    state = RunState(config, out, samples, clinical, progress, scheduler=scheduler)
    state.tissue_samples, state.slides = tissue_samples, slides
    cohort_checkpoint = next((r["cohort"] for r in reversed(good) if r.get("cohort")), None)
    if cohort_checkpoint is not None:
        state.mdata = read_h5mu(out / cohort_checkpoint)
    if good:
        state.resolved.update(good[-1].get("resolved", {}))
        state.skipped.extend(good[-1].get("skipped", []))
    record = _new_record(config, fingerprint, checksums, command, keep_checkpoints)
    record["warnings"] = log.records
    # settings resolved from the data (a panel's HVGs) and analyses the data did not allow
    record["resolved"], record["skipped"] = state.resolved, state.skipped
    if scheduler is None:
        input_bytes = sum(Path(f).stat().st_size for f in checksums)
        scheduler = resolve_scheduler(config.run.scheduler, input_bytes)
    with contextlib.ExitStack() as cluster:
        phase = "scheduler"  # where the run is, for run.json if it stops there
        try:
            with log.capture(phase):
                state.scheduler = cluster.enter_context(dask_scheduler(scheduler))
                record["scheduler"] = describe_scheduler(state.scheduler)
            for index, stage in enumerate(stages):
                progress.stage_started(stage.name, stage.description, index + 1, len(stages))
                if index < len(good):
                    record["stages"].append({**good[index]["timing"], "resumed": True})
                    progress.stage_finished(stage.name, 0.0, resumed=True)
                    continue
                phase = stage.name
                _save_record(record, folder)
                with log.capture(phase):
                    timing = _run_stage(state, stages, index, fingerprint)
                record["stages"].append({**timing, "resumed": False})
                progress.stage_finished(stage.name, timing["wall_s"], resumed=False)
            phase = "finish"
            with log.capture(phase):
                _finish_checkpoints(out, stages, keep=keep_checkpoints)
                cluster.close()
        except BaseException as exc:
            _record_failure(record, exc, phase)
            _save_record(record, folder)
            with log.capture("shutdown"):
                cluster.close()
            raise
    record.update(status="finished", finished=_now())
    _save_record(record, folder)
    return record


def _save_record(record: dict[str, Any], folder: OutFolder) -> None:
    """Write ``run.json`` with the files the run has written so far (``"files"``)."""
    record["files"] = sorted({*folder.files(), "run.json"})
    write_json(record, folder.path / "run.json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_record(
    config: Config,
    fingerprint: str,
    checksums: dict[str, str],
    command: Iterable[str] | None,
    keep_checkpoints: bool,
) -> dict[str, Any]:
    """The ``run.json`` record of a run that starts now (``status`` ``"running"``)."""
    return {
        "sccohort_run": 1,
        "status": "running",
        "started": _now(),
        "finished": None,
        "command": list(command) if command is not None else None,
        "keep_checkpoints": keep_checkpoints,
        "config": config.to_dict(),
        "seeds": {"run": config.seed},
        "fingerprint": fingerprint,
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "inputs": checksums,
        "stages": [],
    }


def _run_stage(
    state: RunState, stages: Sequence[Stage], index: int, fingerprint: str
) -> dict[str, Any]:
    """Run stage ``index`` of ``stages`` and write its checkpoint; returns its timing."""
    stage = stages[index]
    start = time.perf_counter()
    with PeakMemory() as memory:
        written = stage.run(state)
    timing = {
        "stage": stage.name,
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_rss_gb": round(memory.peak_gb, 3),
    }
    _write_checkpoint(state, stages, index, written, fingerprint, timing)
    return timing


def _record_failure(record: dict[str, Any], exc: BaseException, stage: str) -> None:
    """Note in ``record`` where and how the run stopped, with the traceback."""
    record.update(
        status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
        failed_stage=stage,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )

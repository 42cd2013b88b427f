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
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from sccohort.cluster import dask_scheduler, describe_scheduler, resolve_scheduler
from sccohort.cohort import SampleSheet
from sccohort.config import Config, load_inputs
from sccohort.errors import InputError, SccohortWarning, is_own_warning
from sccohort.io.atomic import write_h5mu, write_json
from sccohort.io.h5 import mudata_options
from sccohort.pp.store import RNA_STORE_FILE
from sccohort.stages import STAGES, Progress, RunState, Silent, Stage, check_inputs

__all__ = ["STAGES", "Progress", "RunState", "Stage", "read_h5mu", "run_pipeline", "write_cohort"]

#: Names a run writes inside OUT; nothing else there is ever touched, and of these a run
#: removes only the files an earlier run wrote (`OutFolder`).
OWNED = (
    "run.json", "cohort.h5mu", RNA_STORE_FILE, "report.html", "checkpoints", "tables", "figures",
)  # fmt: skip
VERSIONED_PACKAGES = (
    "sccohort", "numpy", "scipy", "pandas", "anndata", "mudata", "scanpy", "h5py", "dask",
    "distributed", "scikit-learn", "statsmodels", "harmonypy", "leidenalg", "igraph",
    "umap-learn", "pynndescent", "numba", "edgepython", "matplotlib", "jinja2",
)  # fmt: skip


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(config: Config, samples: SampleSheet) -> dict[str, str]:
    """SHA-256 of the config, both tables, each sample's files and other files it names."""
    files: list[Path] = [config.path, config.samples]
    if config.clinical is not None:
        files.append(config.clinical)
    for extra in (
        config.annotation.reference,
        config.characterise.gene_sets,
        config.characterise.tf_targets,
    ):
        if extra is not None:
            files.append(extra)
    for column in ("path", "raw_path"):
        if column not in samples.table:
            continue
        for value in samples.table[column].dropna():
            path = Path(value)
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            )
    return {str(p): sha256_file(p) for p in files if p.is_file()}


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def tree_memory(root: psutil.Process) -> int | None:
    """Bytes of memory held by ``root`` and all its descendants.

    RSS for each process, except where a child was forked from its parent (same command
    line: a forked helper pool): those children and their parents count their PSS, which
    splits the pages they share, so shared pages count once. Reading PSS walks every page
    of a process (slow for large ones), so it is read only then. None when
    the tree changed while it was read (a fork's shared pages would count twice).
    """
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        return None
    procs = [root, *children]
    pids = {p.pid for p in procs}
    command: dict[int, list[str]] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            command[proc.pid] = proc.cmdline()
    shared: set[int] = set()
    for child in children:
        with contextlib.suppress(psutil.Error):
            parent = child.ppid()
            if child.pid in command and command.get(parent) == command[child.pid]:
                shared.update((child.pid, parent))
    total = 0
    for proc in procs:
        try:
            total += _pss(proc) if proc.pid in shared else proc.memory_info().rss
        except psutil.Error:
            continue
    try:
        if {c.pid for c in root.children(recursive=True)} != pids - {root.pid}:
            return None
    except psutil.Error:
        return None
    return total


def _pss(proc: psutil.Process) -> int:
    try:
        return proc.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):  # no PSS on this system
        return proc.memory_info().rss


#: A memory sampler uses at most this share of one core: after a sample that took t seconds
#: it waits at least t / SAMPLER_DUTY. Reading the PSS of a large process and its forked
#: helpers takes a sizeable part of a second; sampled at a fixed period regardless, the
#: sampler took a noticeable share of a million-cell run's CPU time.
SAMPLER_DUTY = 0.03


def sampler_wait(interval: float, took: float) -> float:
    """Seconds to wait before the next memory sample: ``interval``, longer for costly ones."""
    return max(interval, took / SAMPLER_DUTY)


class PeakMemory:
    """Context manager sampling the memory of this process and its children (Dask workers).

    ``peak_gb`` holds the largest `tree_memory` seen (sampled every ``interval`` seconds, less
    often while a sample is costly, see `sampler_wait`; plus at entry and exit).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_gb = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        total = tree_memory(self._proc)
        if total is not None:
            self.peak_gb = max(self.peak_gb, total / 2**30)

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            start = time.perf_counter()
            self._sample()
            wait = sampler_wait(self.interval, time.perf_counter() - start)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _fingerprint(config: Config, checksums: dict[str, str]) -> str:
    text = json.dumps(
        {"config": config.to_dict(), "inputs": checksums}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _checkpoint_name(index: int, stage: Stage) -> str:
    return f"{index + 1:02d}_{stage.name}"


def _resumable_checkpoints(out: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Checkpoints of the leading stages that a resumed run can take as done.

    A run restarts from the last good checkpoint that saved the cohort; good checkpoints
    right after it are kept while their stages did not change the cohort.
    """
    good = _good_checkpoints(out, fingerprint)
    restore = max((i for i, record in enumerate(good) if record.get("cohort")), default=-1)
    keep = restore + 1
    while keep < len(good) and not STAGES[keep].changes_cohort:
        keep += 1
    return good[:keep]


def _good_checkpoints(out: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Checkpoints of the leading stages that are complete and match this run."""
    good: list[dict[str, Any]] = []
    for index, stage in enumerate(STAGES):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.json"
        if not path.is_file():
            break
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            break
        if record.get("fingerprint") != fingerprint:
            break
        files = dict(record.get("outputs", {}))
        if record.get("cohort"):
            files[record["cohort"]] = record["cohort_sha256"]
        if not all(
            (out / rel).is_file() and sha256_file(out / rel) == digest
            for rel, digest in files.items()
        ):
            break
        good.append(record)
    return good


# ---------------------------------------------------------------------------------------
# The output folder: a run owns only what it wrote


#: Folders of OUT a run writes into: real folders, never symbolic links.
RUN_FOLDERS = ("checkpoints", "tables", "figures")
#: Folders where files no run wrote stop a new run (unless ``overwrite``).
USER_FOLDERS = ("tables", "figures")
#: Temporary files of an interrupted write: `sccohort.io.atomic.atomic_path`
#: (``.<stem>.<pid>.tmp<suffix>``) and `_publish` (``.cohort.h5mu.tmp``).
_TEMPORARY = re.compile(r"^\..+\.(\d+\.tmp(\.[^.]+)?|h5mu\.tmp)$")
#: Files named in a refusal, at most.
_LISTED = 3


@dataclass
class OutFolder:
    """The output folder of a run and the files it owns.

    A run owns only what it wrote: ``run.json`` lists those files (``"files"``, paths
    relative to OUT), and a new run removes only them. Files a run did not write are never
    removed; in ``tables/`` or ``figures/`` they stop a fresh run unless ``overwrite``
    (a run's file of the same name then replaces one). No symbolic link is followed.

    Attributes
    ----------
    path
        OUT (absolute).
    earlier
        The files an earlier run in OUT wrote (its ``run.json``), or ``None`` when it
        recorded none (no run, or one from before this record existed).
    foreign
        Files in OUT that no run wrote when this one started, with their identity: one
        that a stage replaces is this run's.
    """

    path: Path
    earlier: set[str] | None = None
    foreign: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, out: Path, *, resume: bool, overwrite: bool) -> OutFolder:
        """Check OUT, then create it and remove what the earlier run wrote.

        A resumed run (``resume``) keeps the earlier run's files but for what an
        interrupted write left (temporary files).

        Raises
        ------
        InputError
            Before anything is written: OUT is a file or cannot be written, a folder a
            run writes into is a symbolic link or a file, OUT holds run outputs without a
            ``run.json``, or (a fresh run without ``overwrite``) files no run wrote are in
            ``tables/`` or ``figures/``.
        """
        _check_writable(out)
        folder = cls(out, earlier=_earlier_files(out))
        present = folder._files()
        folder.foreign = {
            rel: identity for rel, identity in present.items() if not folder._earlier_run(rel)
        }
        if not overwrite:
            folder._refuse_other_folder()
            if not resume:
                folder._refuse_foreign()
        out.mkdir(parents=True, exist_ok=True)
        folder._remove_earlier(present, temporary_only=resume)
        return folder

    def files(self) -> list[str]:
        """What this run has written so far (and, resumed, what the run before it wrote)."""
        return sorted(
            rel
            for rel, identity in self._files().items()
            if self.foreign.get(rel) != identity and not _TEMPORARY.match(Path(rel).name)
        )

    def _earlier_run(self, rel: str) -> bool:
        """Whether an earlier run wrote ``rel`` (or, without its list, could have)."""
        if _TEMPORARY.match(Path(rel).name):
            return True
        if self.earlier is not None:
            return rel in self.earlier
        if not (self.path / "run.json").is_file():
            return False
        # a run from before run.json listed its files: its fixed names are its own
        return "/" not in rel or rel.startswith("checkpoints/") and _is_checkpoint(rel)

    def _files(self) -> dict[str, tuple[int, int]]:
        """Regular files of the names a run owns: relative path -> (inode, mtime)."""
        found: dict[str, tuple[int, int]] = {}
        for name in OWNED:
            top = self.path / name
            if name in RUN_FOLDERS:
                if top.is_dir() and not top.is_symlink():
                    for root, _, names in os.walk(top):
                        for file in names:
                            _add_file(found, self.path, Path(root) / file)
            else:
                _add_file(found, self.path, top)
        return found

    def _refuse_other_folder(self) -> None:
        """Refuse a folder that holds names a run writes but no ``run.json``."""
        if (self.path / "run.json").is_file():
            return
        ours = [name for name in OWNED if (self.path / name).exists()]
        if ours:
            raise InputError(
                f"the output folder holds {', '.join(ours)} but no run.json, so it is not an "
                "sccohort run folder and nothing in it will be overwritten",
                file=self.path,
                hint="Choose an empty or new folder for --out, or pass --overwrite to write "
                "into it anyway (files a run did not write are kept)",
            )

    def _refuse_foreign(self) -> None:
        """Refuse files no run wrote (and links) in ``tables/`` and ``figures/``."""
        mine = sorted(
            rel for rel in self.foreign if rel.split("/", 1)[0] in USER_FOLDERS and "/" in rel
        )
        mine += sorted(_links(self.path))
        if mine:
            listed = ", ".join(mine[:_LISTED]) + (", ..." if len(mine) > _LISTED else "")
            raise InputError(
                f"{len(mine)} file(s) in the output folder were not written by an earlier run "
                f"({listed}); a run never removes them",
                file=self.path,
                hint="Move them elsewhere, choose another --out, or pass --overwrite to run "
                "anyway (they are kept; a run's file of the same name replaces one)",
            )

    def _remove_earlier(self, present: dict[str, tuple[int, int]], temporary_only: bool) -> None:
        """Remove the files an earlier run wrote (regular files only, links untouched).

        ``temporary_only``: only what an interrupted write left (a resumed run keeps the
        rest).
        """
        for rel in present:
            if rel in self.foreign:
                continue
            if not temporary_only or _TEMPORARY.match(Path(rel).name):
                (self.path / rel).unlink()


def _add_file(found: dict[str, tuple[int, int]], out: Path, path: Path) -> None:
    """Note ``path`` in ``found`` when it is a regular file (not a link)."""
    try:
        info = path.lstat()
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        found[path.relative_to(out).as_posix()] = (info.st_ino, info.st_mtime_ns)


def _links(out: Path) -> list[str]:
    """Symbolic links (and other non-files) inside the folders a user may write into."""
    found = []
    for name in USER_FOLDERS:
        top = out / name
        if not top.is_dir() or top.is_symlink():
            continue
        for root, dirs, names in os.walk(top):
            for entry in [*dirs, *names]:
                path = Path(root) / entry
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    found.append(path.relative_to(out).as_posix())
    return found


def _is_checkpoint(rel: str) -> bool:
    names = {_checkpoint_name(i, s) for i, s in enumerate(STAGES)}
    stem, _, suffix = Path(rel).name.partition(".")
    return stem in names and suffix in ("json", "h5mu")


def _earlier_files(out: Path) -> set[str] | None:
    """The files the earlier run in ``out`` listed in its ``run.json``, if it did."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str)}


def _check_writable(out: Path) -> None:
    """Raise an :class:`InputError` unless a run can create ``out`` or write into it."""
    hint = "Choose a folder you can write to for --out"
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(
                "the output path exists and is not a folder", file=out, hint="Choose a folder"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError("the output folder is not writable", file=out, hint=hint)
    else:
        parent = next(p for p in out.parents if p.exists() or p.is_symlink())
        if not parent.is_dir():
            raise InputError(
                f"the output folder cannot be created: {parent} is a file, not a folder",
                file=out,
                hint=hint,
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(
                f"the output folder cannot be created: {parent} is not writable",
                file=out,
                hint=hint,
            )
        return
    for name in OWNED:
        target = out / name
        if target.is_symlink():
            raise InputError(
                f"'{name}' in the output folder is a symbolic link; a run writes only files "
                "and folders it made, and follows no link",
                file=out,
                hint=f"Remove the link {target}, or choose another --out",
            )
        if name in RUN_FOLDERS and target.exists() and not target.is_dir():
            raise InputError(
                f"'{name}' in the output folder is a file; a run writes a folder there",
                file=out,
                hint=f"Move {target} elsewhere, or choose another --out",
            )
        if name in RUN_FOLDERS and target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"'{name}' in the output folder is not writable", file=out, hint=hint)


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
        check_inputs(config, samples)
        checksums = input_checksums(config, samples)
    fingerprint = _fingerprint(config, checksums)
    folder = OutFolder.prepare(out, resume=resume, overwrite=overwrite)
    good = _resumable_checkpoints(out, fingerprint) if resume else []
    if resume:
        _drop_checkpoints_after(out, len(good))

    state = RunState(config, out, samples, clinical, progress, scheduler=scheduler)
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
            for index, stage in enumerate(STAGES):
                progress.stage_started(stage.name, stage.description, index + 1, len(STAGES))
                if index < len(good):
                    record["stages"].append({**good[index]["timing"], "resumed": True})
                    progress.stage_finished(stage.name, 0.0, resumed=True)
                    continue
                phase = stage.name
                _save_record(record, folder)
                with log.capture(phase):
                    timing = _run_stage(state, index, stage, fingerprint)
                record["stages"].append({**timing, "resumed": False})
                progress.stage_finished(stage.name, timing["wall_s"], resumed=False)
            phase = "finish"
            with log.capture(phase):
                _finish_checkpoints(out, keep=keep_checkpoints)
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
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "inputs": checksums,
        "stages": [],
    }


def _run_stage(state: RunState, index: int, stage: Stage, fingerprint: str) -> dict[str, Any]:
    """Run one stage and write its checkpoint; returns its timing."""
    start = time.perf_counter()
    with PeakMemory() as memory:
        written = stage.run(state)
    timing = {
        "stage": stage.name,
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_rss_gb": round(memory.peak_gb, 3),
    }
    _write_checkpoint(state, index, stage, written, fingerprint, timing)
    return timing


def _record_failure(record: dict[str, Any], exc: BaseException, stage: str) -> None:
    """Note in ``record`` where and how the run stopped, with the traceback."""
    record.update(
        status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
        failed_stage=stage,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )


def _drop_checkpoints_after(out: Path, n_good: int) -> None:
    """Remove the checkpoints of stages after the first ``n_good``: never trusted later."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return
    for index, stage in enumerate(STAGES):
        if index < n_good:
            continue
        for suffix in (".json", ".h5mu"):
            path = folder / f"{_checkpoint_name(index, stage)}{suffix}"
            if path.is_file() and not path.is_symlink():
                path.unlink()


#: Distinct warnings recorded per stage in ``run.json``; further ones are counted.
MAX_WARNINGS = 200


class WarningLog:
    """The warnings of a run, recorded stage by stage; sccohort's own raised again once.

    ``records`` holds one dict per distinct warning (``stage``, ``category``, ``message``,
    ``source``, and ``details`` when a `SccohortWarning` carries them), in the order seen.
    Log records of level WARNING and above that reach the root logger are recorded the
    same way (``category`` ``"logging.WARNING"`` ..., ``source`` the logger's name).
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str, str, str]] = set()
        self._raised: set[tuple[type, str]] = set()

    @contextlib.contextmanager
    def capture(self, stage: str) -> Iterator[None]:
        """Record every warning and log record raised inside the block under ``stage``.

        Sccohort's own warnings are raised again after the block (each distinct message
        once per run), with the file and line they came from.
        """
        caught: list[warnings.WarningMessage] = []
        logs = _LogRecords()
        root = logging.getLogger()
        failed = True
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")  # every warning, once per place
                root.addHandler(logs)
                try:
                    yield
                finally:
                    root.removeHandler(logs)
            failed = False
        finally:
            own = [*self._add_warnings(stage, caught), *self._add_logs(stage, logs.records)]
            with contextlib.suppress(Warning) if failed else contextlib.nullcontext():
                self._raise_again(own)

    def _add(self, entry: dict[str, Any]) -> None:
        key = (entry["stage"], entry["category"], entry["message"], entry["source"])
        if key in self._seen:
            return
        self._seen.add(key)
        stage = [r for r in self.records if r["stage"] == entry["stage"]]
        if len(stage) < MAX_WARNINGS:
            self.records.append(entry)
        elif len(stage) == MAX_WARNINGS:
            self.records.append({**entry, "message": "(further warnings not listed)"})

    def _add_warnings(
        self, stage: str, caught: list[warnings.WarningMessage]
    ) -> list[warnings.WarningMessage]:
        own = []
        for item in caught:
            category = item.category
            entry = {
                "stage": stage,
                "category": f"{category.__module__}.{category.__qualname__}",
                "message": str(item.message),
                "source": f"{item.filename}:{item.lineno}",
            }
            details = getattr(item.message, "details", None)
            if details:
                entry["details"] = details
            self._add(entry)
            if is_own_warning(category, item.filename):
                own.append(item)
        return own

    def _add_logs(self, stage: str, records: list[logging.LogRecord]) -> list[Any]:
        own = []
        for rec in records:
            details = _LogRecords.details(rec)
            entry = {
                "stage": stage,
                "category": f"logging.{rec.levelname}",
                "message": rec.getMessage(),
                "source": rec.name,
            }
            if details:
                entry["details"] = details
            self._add(entry)
            if rec.name == "sccohort" or rec.name.startswith("sccohort."):
                message = SccohortWarning(entry["message"], details=details)
                own.append(warnings.WarningMessage(message, SccohortWarning, rec.pathname,
                                                   rec.lineno))  # fmt: skip
        return own

    def _raise_again(self, own: list[warnings.WarningMessage]) -> None:
        for item in own:
            key = (item.category, str(item.message))
            if key in self._raised:
                continue
            self._raised.add(key)
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


class _LogRecords(logging.Handler):
    """Keeps the log records of level WARNING and above that reach it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @staticmethod
    def details(record: logging.LogRecord) -> str | None:
        """The record's traceback, if it has one."""
        if record.exc_info:
            return "".join(traceback.format_exception(*record.exc_info))
        return record.exc_text or None


def _write_checkpoint(
    state: RunState,
    index: int,
    stage: Stage,
    written: list[Path],
    fingerprint: str,
    timing: dict[str, Any],
) -> None:
    name = _checkpoint_name(index, stage)
    out = state.out
    entry: dict[str, Any] = {
        "stage": stage.name,
        "fingerprint": fingerprint,
        "timing": timing,
        "outputs": {str(p.relative_to(out)): sha256_file(p) for p in written},
        "cohort": None,
        # what the stages so far resolved from the data and could not run: a resumed run
        # starts from them
        "resolved": state.resolved,
        "skipped": state.skipped,
    }
    last_change = max(i for i, s in enumerate(STAGES) if s.changes_cohort)
    if stage.saves_cohort or index == last_change:  # the final object is always saved
        rel = f"checkpoints/{name}.h5mu"
        write_cohort(state.mdata, out / rel, final=index == last_change)
        entry.update(cohort=rel, cohort_sha256=sha256_file(out / rel))
    write_json(entry, out / "checkpoints" / f"{name}.json")


def _finish_checkpoints(out: Path, *, keep: bool) -> None:
    """Publish the last cohort object as ``OUT/cohort.h5mu``; unless ``keep``, drop the rest.

    Without ``keep`` the last checkpoint's record is pointed at ``cohort.h5mu`` (so a
    resumed run still starts after it), earlier ones lose their cohort, and every
    ``checkpoints/*.h5mu`` is removed. Each step leaves records that name existing files.
    """
    records = _checkpoint_records(out)
    saved = [(path, r) for path, r in records if r.get("cohort")]
    if not saved:
        return
    last_path, last = saved[-1]
    if last["cohort"] != COHORT_FILE:
        _publish(out / last["cohort"], out / COHORT_FILE)
    if keep:
        return
    if last["cohort"] != COHORT_FILE:
        write_json({**last, "cohort": COHORT_FILE}, last_path)
    for path, entry in saved[:-1]:
        write_json({**entry, "cohort": None, "cohort_sha256": None}, path)
    for index, stage in enumerate(STAGES):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.h5mu"
        if path.is_file() and not path.is_symlink():
            path.unlink()


def _checkpoint_records(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of this run's checkpoints, in stage order."""
    found = []
    for index, stage in enumerate(STAGES):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.json"
        if path.is_file():
            found.append((path, json.loads(path.read_text())))
    return found


def _publish(source: Path, target: Path) -> None:
    """Make ``source`` available as ``target`` (a hard link, else a copy), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


#: The final cohort object inside OUT.
COHORT_FILE = "cohort.h5mu"
#: ``uns`` key of a written cohort listing what it leaves out and how to rebuild it.
LEFT_OUT_KEY = "left_out"
#: Rows of the RNA checked before its ``.X`` is left out as rebuildable.
CHECK_ROWS = 500
#: mudata's ``pull_on_update`` while a cohort is written or read: its default (None), set
#: explicitly because the option is global to the process. With ``False`` (mudata 0.4's
#: default) reading retypes ``obs`` columns (an all-NaN float column becomes ``Int64``).
MUDATA_PULL = None


def write_cohort(mdata: Any, path: Path, *, final: bool) -> None:
    """Write the cohort object (``.h5mu``) atomically, compressed, each value once.

    Left out, and listed in ``uns["left_out"]`` with how to rebuild them (`read_h5mu`
    does): the RNA ``.X`` when it is ``log1p`` of ``layers["counts"]``
    (`sccohort.pp.normalize.normalize_rna`; about half the file), another
    modality's ``.X`` that is its counts as float32 (hashtags), and a modality's ``obsm``
    arrays and ``obs`` columns that repeat the MuData's own. The object in memory is
    left as it was.

    Parameters
    ----------
    mdata
        The cohort.
    path
        The ``.h5mu`` file.
    final
        The run's last cohort object (``cohort.h5mu``): gzip, which every HDF5 reader has;
        otherwise a checkpoint that only a resumed run reads: lzf (about half the time).
    """
    with _left_out(mdata), mudata_options(pull_on_update=MUDATA_PULL):
        write_h5mu(mdata, path, compression="gzip" if final else "lzf")


def read_h5mu(path: str | Path) -> Any:
    """Read a cohort object that a run wrote (``cohort.h5mu`` or a checkpoint).

    ``mudata.read_h5mu`` reads the same file; this also rebuilds what the file leaves out
    as derived from other values (listed in its ``uns["left_out"]``, see `write_cohort`),
    bit for bit: the log-normalised RNA ``.X`` and the copies of the MuData's ``obsm`` and
    ``obs`` in the modalities. It prints nothing.

    Parameters
    ----------
    path
        The ``.h5mu`` file, or a run's output folder (its ``cohort.h5mu``).

    Returns
    -------
    mudata.MuData
        The cohort as the run held it in memory.
    """
    import mudata

    path = Path(path)
    if path.is_dir():
        path = path / COHORT_FILE
    with warnings.catch_warnings(), mudata_options(pull_on_update=MUDATA_PULL):
        warnings.simplefilter("ignore")  # mudata's notices of its coming defaults
        mdata = mudata.read_h5mu(path)
    _restore_left_out(mdata)
    return mdata


@contextlib.contextmanager
def _left_out(mdata: Any) -> Iterator[None]:  # noqa: PLR0912 - takes values out and puts them back; both halves stay side by side
    """Take the derived values out of ``mdata`` (noted in ``uns``) and put them back after."""
    taken: list[tuple[Any, str, str, Any]] = []  # (container, kind, key, value)
    note: dict[str, Any] = {}
    orders: dict[str, list[str]] = {}
    for name, adata in mdata.mod.items():
        entry: dict[str, Any] = {}
        how = _x_recipe(name, adata)
        if how is not None:
            taken.append((adata, "X", "X", adata.X))
            entry["X"] = how
        same_obsm = _repeated_obsm(mdata, adata)
        for key in same_obsm:
            taken.append((adata.obsm, "map", key, adata.obsm[key]))
        if same_obsm:
            entry["obsm"] = same_obsm
        same_obs = _repeated_obs(mdata, adata)
        if same_obs:
            orders[name] = list(adata.obs.columns)
            entry["obs"] = same_obs
            entry["obs_order"] = orders[name]
        if entry:
            note[name] = entry
    if not note:
        yield
        return
    for container, kind, key, _ in taken:
        if kind == "X":
            container.X = None
        else:
            del container[key]
    frames = {name: mdata.mod[name].obs for name in orders}
    for name in orders:
        adata = mdata.mod[name]
        adata.obs = adata.obs.drop(columns=note[name]["obs"])
    mdata.uns[LEFT_OUT_KEY] = {"about": LEFT_OUT_ABOUT, **note}
    try:
        yield
    finally:
        del mdata.uns[LEFT_OUT_KEY]
        for name, frame in frames.items():
            mdata.mod[name].obs = frame
        for container, kind, key, value in taken:
            if kind == "X":
                container.X = value
            else:
                container[key] = value


LEFT_OUT_ABOUT = (
    "This file leaves out values that repeat others or are computed from them; "
    "sccohort.read_h5mu(path) puts them back. With mudata.read_h5mu, per modality: 'X' says "
    "how to rebuild its .X from its layers['counts']; 'obsm' lists arrays equal to the "
    "MuData's obsm of the same name; 'obs' lists columns equal to the MuData's obs columns "
    "of the same name (for the modality's cells), 'obs_order' the modality's column order."
)


def _x_recipe(name: str, adata: Any) -> str | None:
    """How ``adata.X`` is rebuilt from ``layers["counts"]``, or None if it is not derived."""
    counts = adata.layers.get("counts") if adata.X is not None else None
    if counts is None:
        return None
    params = adata.uns.get("normalize_rna", {})
    if name == "rna" and params.get("method") == "log1p" and _is_log1p_of(adata, counts):
        target = float(params["target_sum"])
        return (
            f"log1p(counts / the cell's total count * {target!r}) as float32 CSR: "
            f"sccohort.pp.normalize.normalize_rna(mdata['{name}'], target_sum={target!r})"
        )
    if _is_float32_of(adata.X, counts):
        return "layers['counts'] as float32 CSR"
    return None


def _is_log1p_of(adata: Any, counts: Any) -> bool:
    """Whether ``.X`` is `normalize_rna`'s log1p of ``counts`` (checked on spread rows)."""
    import anndata as ad
    import scipy.sparse as sp

    from sccohort.pp.normalize import normalize_rna

    x = adata.X
    if not (sp.issparse(x) and sp.issparse(counts)) or x.shape != counts.shape:
        return False
    rows = np.unique(np.linspace(0, x.shape[0] - 1, min(CHECK_ROWS, x.shape[0])).astype(int))
    part = ad.AnnData(X=sp.csr_matrix(counts[rows]))
    normalize_rna(part, target_sum=float(adata.uns["normalize_rna"]["target_sum"]), layer=None)
    return _same_csr(sp.csr_matrix(x[rows]), part.X) and x.dtype == np.float32


def _is_float32_of(x: Any, counts: Any) -> bool:
    import scipy.sparse as sp

    if not (sp.issparse(x) and sp.issparse(counts)) or x.shape != counts.shape:
        return False
    return x.dtype == np.float32 and _same_csr(sp.csr_matrix(x), sp.csr_matrix(counts))


def _same_csr(a: Any, b: Any) -> bool:
    """Same stored entries (positions and values, compared as float32), bit for bit."""
    return (
        a.nnz == b.nnz
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(
            a.data.astype(np.float32).view(np.uint32), b.data.astype(np.float32).view(np.uint32)
        )
    )


def _repeated_obsm(mdata: Any, adata: Any) -> list[str]:
    """Keys of ``adata.obsm`` equal to the MuData's ``obsm`` of the same name."""
    if not adata.obs_names.equals(mdata.obs_names):
        return []
    return [
        key
        for key, value in adata.obsm.items()
        if key in mdata.obsm and _same_array(value, mdata.obsm[key])
    ]


def _same_array(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _repeated_obs(mdata: Any, adata: Any) -> list[str]:
    """Columns of ``adata.obs`` equal to the MuData's ``obs`` column of the same name."""
    same = []
    for column in adata.obs.columns:
        if column not in mdata.obs.columns:
            continue
        mine = adata.obs[column].astype(object).to_numpy()
        theirs = mdata.obs[column].reindex(adata.obs_names).astype(object).to_numpy()
        if pd.Series(mine).equals(pd.Series(theirs)):
            same.append(column)
    return same


def _restore_left_out(mdata: Any) -> None:
    """Put back what `write_cohort` left out (``uns["left_out"]``), then drop the note."""
    import scipy.sparse as sp

    from sccohort.pp.normalize import normalize_rna

    note = mdata.uns.pop(LEFT_OUT_KEY, None) or {}
    for name, entry in note.items():
        if name not in mdata.mod or not isinstance(entry, dict):
            continue
        adata = mdata.mod[name]
        if "X" in entry:
            if str(entry["X"]).startswith("log1p"):
                target = float(adata.uns["normalize_rna"]["target_sum"])
                normalize_rna(adata, target_sum=target)
            else:
                adata.X = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
        for key in entry.get("obsm", []):
            adata.obsm[key] = mdata.obsm[key]
        columns = list(entry.get("obs", []))
        if columns:
            obs = adata.obs.copy()
            for column in columns:
                obs[column] = mdata.obs[column].reindex(adata.obs_names)
            order = [c for c in entry.get("obs_order", []) if c in obs.columns]
            adata.obs = obs[order + [c for c in obs.columns if c not in order]]

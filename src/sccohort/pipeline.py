"""The named stages of a run: inputs, outputs, checkpoints, resume and ``run.json``.

A run is a list of :class:`Stage` objects executed in order on one :class:`RunState`.
After each stage the pipeline writes a checkpoint (``checkpoints/<n>_<stage>.json``,
plus ``checkpoints/<n>_<stage>.h5mu`` when the stage saves the cohort object: without the
RNA ``.X``, rebuilt from the counts on resume, except the final one) and
rewrites ``run.json``. ``resume=True`` re-validates the checkpoints (same config and
inputs, every output file present with its recorded checksum) and starts after the
last good one. Stage functions are the only code that writes files, and they write
through :mod:`sccohort.io.atomic`, so a crash never leaves a half file that looks whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from sccohort.cluster import dask_scheduler, describe_scheduler, resolve_scheduler
from sccohort.cohort import SampleSheet
from sccohort.config import Config, load_inputs
from sccohort.errors import InputError
from sccohort.io.atomic import write_h5mu, write_json
from sccohort.pp.store import RNA_STORE_FILE
from sccohort.stages import STAGES, Progress, RunState, Silent, Stage, check_inputs

__all__ = ["STAGES", "Progress", "RunState", "Stage", "run_pipeline"]

#: Files and folders a run owns inside OUT; nothing else there is ever touched.
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
    of a process (about 0.1 s for 6 GB of small arrays), so it is read only then. None when
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
#: it waits at least t / SAMPLER_DUTY. Reading the PSS of a 10 GB process and its forked
#: helpers takes about 0.3 s; sampled every 0.5 s regardless, it took 8 % of a million-cell
#: run's CPU time (py-spy).
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


def _prepare_out(out: Path, resume: bool) -> None:
    """Create OUT; on a fresh run, remove what an earlier run left (only names we own)."""
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", file=out)
    out.mkdir(parents=True, exist_ok=True)
    has_ours = [name for name in OWNED if (out / name).exists()]
    if has_ours and not (out / "run.json").is_file():
        raise InputError(
            f"the output folder holds {', '.join(has_ours)} but no run.json, so it is not an "
            "sccohort run folder and nothing in it will be overwritten",
            file=out,
            hint="choose an empty or new folder for --out",
        )
    if resume:
        return
    for name in OWNED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_pipeline(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    scheduler: Any = None,
    command: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Run every stage of ``STAGES`` on the cohort that ``config`` describes.

    Parameters
    ----------
    config
        A loaded config (:func:`sccohort.config.load_config`).
    out
        The output folder (created; only the names in ``OWNED`` are ever written or removed).
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

    Returns
    -------
    The ``run.json`` record (also written to ``OUT/run.json``).

    Raises
    ------
    InputError
        For any problem with the config or the inputs, before anything is written.
    """
    out = Path(out).resolve()
    progress = progress or Silent()
    samples, clinical = load_inputs(config)  # validates everything before writing anything
    check_inputs(config, samples)
    checksums = input_checksums(config, samples)
    fingerprint = _fingerprint(config, checksums)
    _prepare_out(out, resume)

    good = _resumable_checkpoints(out, fingerprint) if resume else []
    if resume and (out / "checkpoints").is_dir():
        # drop checkpoints after the last good one so they can never be trusted later
        keep = {f"{_checkpoint_name(i, s)}" for i, s in enumerate(STAGES[: len(good)])}
        for path in (out / "checkpoints").iterdir():
            if path.name.split(".")[0] not in keep:
                path.unlink()

    state = RunState(config, out, samples, clinical, progress, scheduler=scheduler)
    cohort_checkpoint = next((r["cohort"] for r in reversed(good) if r.get("cohort")), None)
    if cohort_checkpoint is not None:
        state.mdata = read_cohort(out / cohort_checkpoint)

    record: dict[str, Any] = {
        "sccohort_run": 1,
        "status": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "finished": None,
        "command": list(command) if command is not None else None,
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
    if scheduler is None:
        input_bytes = sum(Path(f).stat().st_size for f in checksums)
        scheduler = resolve_scheduler(config.run.scheduler, input_bytes)
    with dask_scheduler(scheduler) as state.scheduler:
        record["scheduler"] = describe_scheduler(state.scheduler)
        for index, stage in enumerate(STAGES):
            progress.stage_started(stage.name, stage.description, index + 1, len(STAGES))
            if index < len(good):
                record["stages"].append({**good[index]["timing"], "resumed": True})
                progress.stage_finished(stage.name, 0.0, resumed=True)
                continue
            write_json(record, out / "run.json")
            start = time.perf_counter()
            try:
                with PeakMemory() as memory:
                    written = stage.run(state)
            except Exception as exc:
                record.update(
                    status="failed", failed_stage=stage.name, error=f"{type(exc).__name__}: {exc}"
                )
                write_json(record, out / "run.json")
                raise
            timing = {
                "stage": stage.name,
                "wall_s": round(time.perf_counter() - start, 3),
                "peak_rss_gb": round(memory.peak_gb, 3),
            }
            _write_checkpoint(state, index, stage, written, fingerprint, timing)
            record["stages"].append({**timing, "resumed": False})
            progress.stage_finished(stage.name, timing["wall_s"], resumed=False)

    _publish_cohort(out)
    record.update(status="finished", finished=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(record, out / "run.json")
    return record


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
    }
    last_change = max(i for i, s in enumerate(STAGES) if s.changes_cohort)
    if stage.saves_cohort or index == last_change:  # the final object is always saved
        rel = f"checkpoints/{name}.h5mu"
        write_cohort(state.mdata, out / rel, final=index == last_change)
        entry.update(cohort=rel, cohort_sha256=sha256_file(out / rel))
    write_json(entry, out / "checkpoints" / f"{name}.json")


def write_cohort(mdata: Any, path: Path, *, final: bool) -> None:
    """Write the cohort object (``.h5mu``) atomically.

    A checkpoint that is not ``final`` leaves out the log-normalised RNA ``.X`` (half the
    file: 3 of 6 GB at 230,000 cells), which `read_cohort` rebuilds bit for bit from
    ``layers["counts"]``; the final object, published as ``cohort.h5mu``, keeps it.
    """
    rna = mdata.mod.get("rna")
    rebuild = not final and rna is not None and _rebuildable(rna)
    x = rna.X if rebuild else None
    if rebuild:
        rna.X = None
    try:
        write_h5mu(mdata, path)
    finally:
        if rebuild:
            rna.X = x


def read_cohort(path: Path) -> Any:
    """Read a cohort checkpoint (``.h5mu``), rebuilding the RNA ``.X`` a checkpoint left out."""
    import mudata

    from sccohort.pp.normalize import normalize_rna

    mdata = mudata.read_h5mu(path)
    rna = mdata.mod.get("rna")
    if rna is not None and rna.X is None and _rebuildable(rna):
        normalize_rna(rna, target_sum=rna.uns["normalize_rna"]["target_sum"])
    return mdata


def _rebuildable(rna: Any) -> bool:
    params = rna.uns.get("normalize_rna", {})
    return params.get("method") == "log1p" and "counts" in rna.layers


def _publish_cohort(out: Path) -> None:
    """Make the newest cohort checkpoint available as ``OUT/cohort.h5mu`` (hard link or copy)."""
    latest = sorted((out / "checkpoints").glob("*.h5mu"))
    if not latest:
        return
    target = out / "cohort.h5mu"
    tmp = out / ".cohort.h5mu.tmp"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(latest[-1], tmp)
    except OSError:
        shutil.copy2(latest[-1], tmp)
    os.replace(tmp, target)

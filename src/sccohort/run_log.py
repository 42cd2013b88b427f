"""What a run records about itself besides its results: peak memory and warnings.

`PeakMemory` samples the memory of the process tree (proportional set size, so shared pages
count once) in a thread; `WarningLog` records every warning and log record of a stage for
``run.json`` and raises sccohort's own again, each distinct message once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import psutil

from sccohort.errors import SccohortWarning, is_own_warning

#: Packages whose versions a run records.
VERSIONED_PACKAGES = (
    "sccohort", "numpy", "scipy", "pandas", "anndata", "mudata", "scanpy", "h5py", "dask",
    "distributed", "scikit-learn", "statsmodels", "graspologic-native",
    "umap-learn", "pynndescent", "numba", "matplotlib", "jinja2",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Python's and the main packages' versions (``"not installed"`` where absent)."""
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

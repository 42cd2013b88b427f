"""Where a run's parallel work goes: a Dask cluster (local or existing) or local threads.

Per-sample stages are lists of ``dask.delayed`` tasks (`compute`); longer cohort-level jobs
that later stages need (the UMAP layout) run beside the main process (`Background`).

- ``"local"``: a ``distributed.LocalCluster`` of one single-threaded worker process per
  core, started for the run and closed after it (its workers are spawned, so a Python
  script that starts a run must guard its entry point with ``if __name__ == "__main__":``);
- ``"tcp://HOST:PORT"`` (or any scheduler address): an existing cluster
  (``dask scheduler`` + ``dask worker``); its workers need sccohort installed and must read
  the input files at the same paths;
- a ``distributed.Client``: used as it is (not closed);
- ``"threads"`` / ``"sync"``: Dask's local schedulers in this process (no worker
  processes; background jobs run when their result is asked for);
- ``"auto"`` (the default): ``"local"`` when the machine has several cores and the count
  files hold at least `AUTO_LOCAL_BYTES`, else ``"threads"`` (starting worker processes
  costs a few seconds, more than a small cohort's per-sample work).

The workers of a local cluster share the terminal of the run, so they print nothing: Dask's
own log records below CRITICAL are dropped, and each worker ignores warnings and log
records that its task does not collect (`QuietWorker`). Per-sample tasks collect their
warnings and send them back (``PreparedSample.warnings``), and so does `Background`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dask
from dask.callbacks import Callback
from distributed.diagnostics.plugin import WorkerPlugin

from sccohort.errors import InputError

#: Dask settings of the local cluster. Its default housekeeping (the workers' statistical
#: profiler every 10 ms, event-loop ticks every 20 ms, memory and system monitors) kept an
#: idle 2-worker cluster busy on a fifth of a core, and the wake-ups stall the parallel
#: numba loops of the main process (the 230k embed stage ran measurably slower beside it).
#: Dask also starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
#: adaptive mmap threshold, so every large temporary array is mapped afresh (page faults,
#: slower per-sample tasks); freed memory is handed back after each compute instead
#: (`release_memory`).
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}

#: Dask's in-process schedulers.
LOCAL_SCHEDULERS = ("threads", "threading", "sync", "synchronous")
#: Count files of at least this size make ``"auto"`` start a local cluster.
AUTO_LOCAL_BYTES = 20 * 2**20


class _Progress(Callback):
    """Counts finished tasks of an in-process Dask computation."""

    def __init__(self, keys: set, progress: Callable[[int, int], None]) -> None:
        super().__init__()
        self._keys = keys
        self._progress = progress
        self._done = 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if key in self._keys:
            self._done += 1
            self._progress(self._done, len(self._keys))


def _is_client(scheduler: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(scheduler, Client)


def local_workers() -> int:
    """Worker processes of the default local cluster: one per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_scheduler(choice: Any, input_bytes: int) -> Any:
    """``"auto"`` -> ``"local"`` or ``"threads"`` (see the module docstring); else ``choice``."""
    if choice != "auto":
        return choice
    return "local" if local_workers() > 1 and input_bytes >= AUTO_LOCAL_BYTES else "threads"


@contextmanager
def dask_scheduler(scheduler: Any = "local", n_workers: int | None = None) -> Iterator[Any]:
    """Open what `compute` and `Background` run on, for the duration of a run.

    Parameters
    ----------
    scheduler
        ``None`` or ``"local"`` (a LocalCluster of ``n_workers`` single-threaded processes,
        default one per core), a scheduler address, a ``distributed.Client``, or one of
        `LOCAL_SCHEDULERS`.
    n_workers
        Workers of a local cluster.

    Yields
    ------
    A ``distributed.Client``, or the name of an in-process Dask scheduler.

    Raises
    ------
    InputError
        The scheduler address cannot be reached.
    """
    if scheduler in LOCAL_SCHEDULERS or _is_client(scheduler):
        yield scheduler
        return
    from distributed import Client, LocalCluster

    if scheduler is None or scheduler == "local":
        with warnings.catch_warnings(), dask.config.set(QUIET_LOCAL_CLUSTER):
            # the scheduler's HTTP endpoint moves to a free port if 8787 is taken; not news
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = LocalCluster(
                n_workers=n_workers or local_workers(),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # a failed task is the run's error, not a log
            )
            client = Client(cluster)
            client.register_plugin(QuietWorker(), name="sccohort-quiet-worker")
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = Client(str(scheduler), timeout="20s")
    except (OSError, TimeoutError) as err:
        raise InputError(
            f"cannot reach the Dask scheduler at '{scheduler}': {err}",
            key="--scheduler",
            hint="Start one with `dask scheduler` (and workers with `dask worker ADDRESS`), "
            "or leave out --scheduler to use a local cluster",
        ) from err
    try:
        yield client
    finally:
        client.close()


class QuietWorker(WorkerPlugin):
    """Keeps a local cluster's worker off the terminal it shares with the run.

    Warnings that a task does not collect are ignored, and log records end at a
    ``NullHandler`` of the root logger (so neither ``logging.lastResort`` nor an implicit
    ``basicConfig`` prints them). Runs on every worker, also one started again.
    """

    def setup(self, worker: Any) -> None:
        """Silence this worker process."""
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logging.NullHandler())


def describe_scheduler(scheduler: Any) -> dict[str, Any]:
    """What ran the tasks, for ``run.json``: kind, address and workers of a cluster."""
    if not _is_client(scheduler):
        return {"kind": str(scheduler or "threads")}
    info = scheduler.scheduler_info()
    workers = info.get("workers", {})
    return {
        "kind": "distributed",
        "address": str(scheduler.scheduler.address),
        "workers": len(workers),
        "threads": int(sum(w.get("nthreads", 0) for w in workers.values())),
    }


def compute(
    tasks: list,
    scheduler: Any = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, Any], Any] | None = None,
) -> list:
    """Compute ``dask.delayed`` tasks; results in task order.

    Parameters
    ----------
    tasks
        Delayed objects (one per sample).
    scheduler
        A ``distributed.Client``, a scheduler address (a client is opened for this call),
        ``None`` (Dask's local threads) or one of `LOCAL_SCHEDULERS`.
    progress
        Called as ``progress(done, total)`` after each task.
    on_result
        ``on_result(i, result)`` replaces task ``i``'s result as it arrives (on a
        distributed cluster one at a time, as tasks end; in process, after all of them).

    Raises
    ------
    Exception
        The first failing task's own error (an `InputError` naming the sample).
    """
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        name = "threads" if scheduler is None else scheduler
        if progress is None:
            results = list(dask.compute(*tasks, scheduler=name))
        else:
            with _Progress({t.key for t in tasks}, progress):
                results = list(dask.compute(*tasks, scheduler=name))
        if on_result is not None:
            results = [on_result(i, r) for i, r in enumerate(results)]
        return results
    from distributed import Client, as_completed

    client = scheduler if _is_client(scheduler) else Client(scheduler)
    try:
        futures = client.compute(tasks)
        order = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        # fetch each result as its task ends, so transfers overlap the tasks still running
        for done, future in enumerate(as_completed(futures), start=1):
            i = order[future.key]
            results[i] = future.result()  # re-raises the task's error
            if on_result is not None:
                results[i] = on_result(i, results[i])
            future.release()
            if progress is not None:
                progress(done, len(futures))
        client.run(release_memory)
        return results
    finally:
        if client is not scheduler:
            client.close()


def release_memory() -> None:
    """Collect reference cycles and hand freed heap back to the OS (glibc ``malloc_trim``).

    Run on every worker after a batch of tasks: their AnnData objects hold cycles, and the
    memory would otherwise stay with the idle worker (about 0.6 GB each per sample task).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _apply(function: Callable[..., Any], args: tuple) -> tuple[Any, list[tuple]]:
    """``function(*args)`` on a worker, with the warnings it raised (to raise them again)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        value = function(*args)
    return value, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


class Background:
    """A function call that runs on a Dask worker while this process goes on.

    On an in-process scheduler (or ``None``) the call runs when `result` is first asked for.
    """

    def __init__(self, scheduler: Any, function: Callable[..., Any], *args: Any) -> None:
        self._call = (function, args)
        self._future = None
        if _is_client(scheduler):
            # large arguments go to a worker directly, not inside the task graph
            [packed] = scheduler.scatter([args], hash=False)
            self._future = scheduler.submit(_apply, function, packed, pure=False)

    def result(self) -> Any:
        """The call's return value (waits for it; re-raises its error and its warnings)."""
        if self._future is not None:
            value, caught = self._future.result()
            for message, category, filename, lineno in caught:
                warnings.warn_explicit(message, category, filename, lineno)
            return value
        function, args = self._call
        return function(*args)

"""Figure output: PNG bytes for embedding (base64) and PNG + SVG files under ``figures/``.

Rendering is the report's costliest step. :func:`render_figure` runs a figure's layout
engine once and draws each format once (``savefig`` alone would lay the figure out and draw
it an extra time for every format). :class:`FigureWriter` renders figures in a forked
worker process while the caller goes on building the next ones, and renders itself those
no worker has started by the time it asks for them, so a report keeps two cores busy.
"""

from __future__ import annotations

import base64
import io
import logging
import logging.handlers
import multiprocessing
import os
import queue
import re
import sys
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from ..io.atomic import atomic_path

#: Resolution of embedded and saved PNGs (the report shows them at up to ~900 px wide).
DPI = 110
#: zlib level of the PNGs: the same pixels as the default level 6, written about twice as
#: fast, in files about 2 % larger.
PNG_COMPRESSION = 3
#: Most worker processes of a `FigureWriter` by default; the calling process renders as
#: well, so a report uses two cores. (A forked worker shares the caller's memory pages,
#: but tools that add up the resident memory of processes count them twice.)
MAX_WORKERS = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")

# SVGs carry no creation date, so equal figures give byte-identical files
_SVG_META = {"Date": None}
_PNG_META = {"Software": None}
# rcParams under which set_layout_engine(None) removes the engine instead of making one
_NO_AUTO_LAYOUT = {"figure.autolayout": False, "figure.constrained_layout.use": False}


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (letters, digits, ``_ . -``; others -> ``_``)."""
    cleaned = _SAFE.sub("_", str(name)).strip("._")
    return cleaned or "figure"


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG (Agg), white background."""
    buffer = io.BytesIO()
    fig.savefig(
        buffer, format="png", dpi=dpi, metadata=_PNG_META,
        pil_kwargs={"compress_level": PNG_COMPRESSION},
    )  # fmt: skip
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@contextmanager
def _laid_out_once(fig: Figure, dpi: float):
    """Run ``fig``'s layout engine at ``dpi`` (that of the PNG) and keep it off inside.

    With an engine set, every ``savefig`` runs it again after a full extra draw; the
    positions it computed stay on the artists, so both formats can reuse them. The
    engine is put back on exit.
    """
    engine = fig.get_layout_engine()
    if engine is None:
        yield
        return
    original_dpi = fig.dpi
    fig.dpi = dpi
    try:
        engine.execute(fig)
    finally:
        fig.dpi = original_dpi
    with matplotlib.rc_context(_NO_AUTO_LAYOUT):
        fig.set_layout_engine(None)
    try:
        yield
    finally:
        fig.set_layout_engine(engine)


def render_figure(fig: Figure, stem: str, dpi: int = DPI) -> tuple[bytes, bytes]:
    """The figure as PNG and SVG bytes, laid out once.

    Parameters
    ----------
    fig
        The figure (its layout engine is run once, then restored).
    stem
        File stem; salts the SVG's element ids, so SVGs of one report never share ids
        and equal figures give byte-identical files.
    dpi
        Resolution of the PNG.

    Returns
    -------
    tuple of bytes
        ``(png, svg)``.
    """
    with _laid_out_once(fig, dpi):
        png = png_bytes(fig, dpi)
        buffer = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": stem, "svg.fonttype": "none"}):
            fig.savefig(buffer, format="svg", metadata=_SVG_META)
    return png, buffer.getvalue()


def _write(folder: Path, stem: str, png: bytes, svg: bytes) -> list[Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path, data in zip(paths, (png, svg), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return paths


def save_figure(fig: Figure, folder: Path, name: str) -> tuple[bytes, list[Path]]:
    """Write ``folder/<name>.png`` and ``folder/<name>.svg`` atomically.

    Parameters
    ----------
    fig
        The figure.
    folder
        Target folder (created).
    name
        File stem; made file-name safe with `safe_name`.

    Returns
    -------
    tuple
        The PNG bytes and the ``[png, svg]`` paths.
    """
    stem = safe_name(name)
    png, svg = render_figure(fig, stem)
    return png, _write(Path(folder), stem, png, svg)


# ---------------------------------------------------------------------------------------
# worker processes

_LOG_QUEUE: queue.SimpleQueue = queue.SimpleQueue()


def _start_worker() -> None:
    """Initialise a forked worker: its own stdout/stderr and log handling.

    Another thread of the parent (a progress bar, a log handler) may have held the locks
    of the inherited stream objects at the fork; the worker therefore writes through new
    stream objects, and hands its log records to the parent instead of emitting them.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = os.dup(stream.fileno())
        except (AttributeError, OSError, ValueError):  # no file descriptor behind it
            fd = os.open(os.devnull, os.O_WRONLY)
        fresh = open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        setattr(sys, name, fresh)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        logger.handlers = []
        logger.propagate = True
    logging.getLogger().addHandler(logging.handlers.QueueHandler(_LOG_QUEUE))


def _render_in_worker(fig: Figure, stem: str, folder: Path) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        png, svg = render_figure(fig, stem)
    paths = _write(folder, stem, png, svg)
    records = []
    while not _LOG_QUEUE.empty():
        records.append(_LOG_QUEUE.get_nowait())
    return {
        "png": png,
        "paths": paths,
        "warnings": [(str(w.message), w.category, w.filename, w.lineno) for w in caught],
        "records": records,
    }


def default_workers() -> int:
    """Worker processes for figures: one fewer than the usable cores, at most `MAX_WORKERS`.

    0 where processes cannot be forked safely (only Linux is trusted with ``fork``).
    """
    if not sys.platform.startswith("linux"):
        return 0
    cores = len(os.sched_getaffinity(0))
    return max(0, min(MAX_WORKERS, cores - 1))


@dataclass
class _Job:
    fig: Figure
    stem: str
    future: Future | None = None
    png: bytes | None = None
    paths: list[Path] | None = None


class FigureWriter:
    """Renders figures to ``folder/<stem>.png`` and ``.svg``, in worker processes if any.

    `submit` hands a figure to a worker (forked on first use) and returns at once;
    `results` renders in this process every figure no worker has started, waits for the
    rest, and returns each figure's PNG bytes. A figure a worker could not render
    (unpicklable, or a worker died) is rendered here, so errors surface as they would
    without workers. Output does not depend on which process rendered a figure.

    Parameters
    ----------
    folder
        Where the files go (created).
    workers
        Worker processes; default `default_workers`; 0 renders everything in this process.
    """

    def __init__(self, folder: str | Path, *, workers: int | None = None) -> None:
        self.folder = Path(folder)
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self._jobs: dict[str, _Job] = {}
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (figures not yet started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(self, fig: Figure, stem: str) -> None:
        """Start rendering ``fig`` as ``stem`` (a unique, file-name-safe stem)."""
        if stem in self._jobs:
            raise ValueError(f"figure '{stem}' was submitted twice")
        job = _Job(fig, stem)
        self._jobs[stem] = job
        if self.workers > 0:
            try:
                job.future = self._executor().submit(_render_in_worker, fig, stem, self.folder)
            except Exception as exc:  # no process could be started: render here
                logging.getLogger(__name__).info("rendering figures in one process: %s", exc)
                self.workers = 0

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
            )  # fmt: skip
        return self._pool

    def _render_here(self, job: _Job) -> None:
        job.png, job.paths = save_figure(job.fig, self.folder, job.stem)

    def results(self) -> dict[str, tuple[bytes, list[Path]]]:
        """Every submitted figure's PNG bytes and file paths, in submission order.

        Raises whatever rendering a figure raised.
        """
        jobs = list(self._jobs.values())
        # take back, latest first, what no worker has started; workers go on from the front
        for job in reversed(jobs):
            if job.future is None or job.future.cancel():
                self._render_here(job)
        for job in jobs:
            if job.png is not None:
                continue
            try:
                result = job.future.result()
            except Exception:  # rendered again here: a real error is raised from here
                self._render_here(job)
                continue
            job.png, job.paths = result["png"], result["paths"]
            for message, category, filename, lineno in result["warnings"]:
                warnings.warn_explicit(message, category, filename, lineno)
            for record in result["records"]:
                logging.getLogger(record.name).handle(record)
        return {job.stem: (job.png, job.paths) for job in jobs}

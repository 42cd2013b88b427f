"""The ``sccohort`` command: parse, call the pipeline or the simulator, print.

The console shows only sccohort's own messages:

- input errors (:class:`sccohort.errors.SccohortError`) print one clear message, no
  traceback, and exit with code 2; any other error prints one line (naming the stage of a
  run that failed and ``run.json``, which holds the traceback) and exits with code 1
  (``SCCOHORT_DEBUG=1`` shows the traceback);
- sccohort's own warnings (`sccohort.errors.is_own_warning`) print as one line
  ``warning: <message>``, each distinct message once; every other warning and log record
  stays off the console (a run records them in ``run.json``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sccohort import __version__
from sccohort.errors import SccohortError, is_own_warning

app = typer.Typer(
    name="sccohort",
    help="Donor-level associations between immune cell subsets and clinical manifestations "
    "from CITE-seq cohorts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# no emoji: a message quoting a file ("root:x:0:0") must print as it is
console = Console(stderr=True, emoji=False)
T = TypeVar("T")


def _guard(call: Callable[[], T]) -> T:
    """Run ``call`` with only sccohort's messages on the console.

    Input errors print one line and exit with code 2; any other error one line and exit
    code 1 (re-raised with ``SCCOHORT_DEBUG=1`` set). Warnings: see `_console_warnings`.
    """
    with _console_warnings():
        try:
            return call()
        except SccohortError as exc:
            _error(str(exc))
            raise typer.Exit(code=2) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("SCCOHORT_DEBUG"):
                raise
            _error(f"unexpected {type(exc).__name__}: {exc}")
            raise typer.Exit(code=1) from None


def _error(text: str) -> None:
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _warning(text: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _console_warnings() -> Iterator[None]:
    """Show sccohort's own warnings as ``warning: <message>`` (each once), drop the rest.

    Log records of level WARNING and above go the same way: those of sccohort's loggers
    are shown, others (libraries' notices) are not.
    """
    shown: set[str] = set()

    def show(text: str) -> None:
        if text not in shown:
            shown.add(text)
            _warning(text)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if is_own_warning(category, filename):
            show(str(message))

    handler = _ConsoleLog(show)
    root = logging.getLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show_warning
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


class _ConsoleLog(logging.Handler):
    """Shows sccohort's log records of level WARNING and above; keeps others off the console.

    Being a handler of the root logger, it also stops Python from printing records that
    no handler takes (``logging.lastResort``).
    """

    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._show = show

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "sccohort" or record.name.startswith("sccohort."):
            self._show(record.getMessage())


class RichProgress:
    """Draws the pipeline's progress with rich: one line per stage, a bar for its units."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """Add a line for the stage."""
        self._task = self._progress.add_task(f"[{index}/{total}] {description}", total=None)

    def advance(self, done: int, total: int) -> None:
        """Move the stage's bar."""
        self._progress.update(self._task, completed=done, total=total)

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """Fill the stage's bar and note its time."""
        task = self._progress.tasks[-1]
        note = "from checkpoint" if resumed else f"{seconds:.1f} s"
        self._progress.update(
            self._task, total=task.total or 1, completed=task.total or 1,
            description=f"{task.description} ({note})",
        )  # fmt: skip


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _run(
    config_path: Path,
    out: Path,
    resume: bool,
    scheduler: str | None,
    keep_checkpoints: bool,
    overwrite: bool = False,
) -> dict[str, Any]:
    from sccohort.config import load_config
    from sccohort.pipeline import run_pipeline

    config = load_config(config_path)
    with _progress_bar() as bar:
        try:
            record = run_pipeline(
                config,
                out,
                resume=resume,
                progress=RichProgress(bar),
                scheduler=scheduler,
                command=sys.argv,
                keep_checkpoints=keep_checkpoints,
                overwrite=overwrite,
            )
        except SccohortError:
            raise
        except KeyboardInterrupt:
            _error(f"interrupted; {out / 'run.json'} says where, and --resume continues from there")
            raise typer.Exit(code=130) from None
        except Exception as exc:
            if os.environ.get("SCCOHORT_DEBUG"):
                raise
            _error(_failure_line(exc, out))
            raise typer.Exit(code=1) from None
    table = Table(title=escape(f"sccohort run finished: {out}"))
    for column in ("stage", "seconds", "peak RSS (GB)", "from checkpoint"):
        table.add_column(column)
    for stage in record["stages"]:
        table.add_row(
            stage["stage"], f"{stage['wall_s']:.1f}", f"{stage['peak_rss_gb']:.2f}",
            "yes" if stage["resumed"] else "",
        )  # fmt: skip
    console.print(table)
    return record


def _failure_line(exc: Exception, out: Path) -> str:
    """One line for a run that stopped on an unexpected error: where, what, and run.json."""
    error = f"{type(exc).__name__}: {exc}"
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((out / "run.json").read_text())
    if record.get("error") != error or not record.get("failed_stage"):  # not this run's record
        return f"unexpected {error} (SCCOHORT_DEBUG=1 shows the traceback)"
    return (
        f"stage '{record['failed_stage']}' failed: {error}. The traceback is in "
        f"{out / 'run.json'}; --resume starts again after the last finished stage."
    )


KEEP_CHECKPOINTS_HELP = (
    "Keep each stage's cohort object under OUT/checkpoints after the run has finished "
    "(default: only cohort.h5mu stays)."
)
OVERWRITE_HELP = (
    "Run even though OUT/tables or OUT/figures hold files no run wrote; they are kept (a file "
    "the run writes replaces one of the same name). A run removes only what an earlier run "
    "wrote (listed in run.json)."
)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The run's TOML config.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    resume: Annotated[
        bool, typer.Option(help="Start after the last finished stage of an earlier run in OUT.")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Where per-sample tasks run: a Dask scheduler address (tcp://HOST:PORT), "
            "'local' (a local cluster, one worker per core) or 'threads'; default: the "
            "config's [run] scheduler ('auto')."
        ),
    ] = None,
    keep_checkpoints: Annotated[bool, typer.Option(help=KEEP_CHECKPOINTS_HELP)] = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Run the pipeline on the cohort a config describes; results go to OUT."""
    _guard(lambda: _run(config, out, resume, scheduler, keep_checkpoints, overwrite))


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="The run's TOML config.")]) -> None:
    """Check the config, sample sheet, clinical table, contrasts and count files; write nothing.

    Each sample's count file is opened and checked (headers, shapes, every stored value,
    barcodes, features) without loading its matrix; the command prints per sample its
    format, cells, modalities with their feature counts, how genes are named, and how
    features were assigned to modalities (feature types, the rule, or the modality column).
    """
    from sccohort.cohort import SampleSheet
    from sccohort.config import build_designs, load_config, load_inputs
    from sccohort.io.probe import probe_table
    from sccohort.stages import check_inputs
    from sccohort.stats.permutation import attainable_significance, describe_attainable

    def check() -> None:
        cfg = load_config(config)
        samples, clinical = load_inputs(cfg)
        sheet = SampleSheet.from_csv(cfg.samples)
        tissue, slides = sheet.other_tissues(cfg.primary_tissue), sheet.slides()
        probes = check_inputs(cfg, samples, tissue, slides)
        unreachable: list[str] = []
        table = Table(title=escape(f"{config}: valid"))
        table.add_column("what")
        table.add_column("count / design")
        table.add_row("samples", str(len(samples.table)))
        if tissue is not None:
            kinds = ", ".join(sorted(set(tissue.table["tissue"].astype(str))))
            use = "tissue stages" if cfg.tissue.analyse else "left out: [tissue] analyse = false"
            table.add_row(escape(f"samples of {kinds}"), escape(f"{len(tissue)} ({use})"))
        if slides is not None:
            use = "spatial stage" if cfg.spatial.analyse else "left out: [spatial] analyse = false"
            table.add_row("spatial slides", escape(f"{len(slides)} ({use})"))
        table.add_row("donors", str(samples.table["donor_id"].nunique()))
        if clinical is not None:
            types = ", ".join(f"{k} ({v})" for k, v in clinical.types.items())
            table.add_row("clinical variables", escape(types))
        for name, design in build_designs(cfg, samples, clinical).items():
            reach = attainable_significance(
                design, n_perm=cfg.association.n_perm, max_exact=cfg.association.max_exact,
                alpha=cfg.characterise.alpha,
            )  # fmt: skip
            floor = (
                "moderated t (no permutation floor)"
                if reach["scheme"] == "within-donor-t"
                else f"smallest p-value {reach['min_pvalue']:.3g}"
            )
            table.add_row(escape(f"contrast {name}"), escape(f"{design.describe()}; {floor}"))
            if not reach["reachable"]:
                unreachable.append(describe_attainable(reach, cfg.characterise.alpha))
        console.print(table)
        for text in unreachable:
            _warning(text)
        console.print(_frame_table(probe_table(probes), "count files"))

    _guard(check)


def _frame_table(frame: Any, title: str) -> Table:
    """A rich table of a DataFrame's rows (numbers with thousands separators)."""
    table = Table(title=escape(title))
    for column in frame.columns:
        table.add_column(escape(str(column)), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(f"{v:,}" if isinstance(v, int) else str(v)) for v in row))
    return table


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the simulated cohort.")],
    design: Annotated[
        str,
        typer.Option(
            help="Cohort design: 'paper', 'null', 'stim' (healthy donors, a control and an "
            "interferon-stimulated sample each) or 'prepost' (patients with 1-3 samples before "
            "and after a treatment that doubles CD14_EGR1)."
        ),
    ] = "paper",
    cells_per_donor: Annotated[int, typer.Option(help="Cells per sample (before QC).")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    jobs: Annotated[int, typer.Option(help="Worker processes (0: one per core).")] = 0,
    n_donors: Annotated[
        int | None,
        typer.Option(
            help="Donors, drawn in the paper's proportions (22% HD; of SSc 4/21 SRC, 12/21 ILD) "
            "with the same planted effects; default: the paper's 27 donors ('stim': 2, "
            "'prepost': 6)."
        ),
    ] = None,
    tissue: Annotated[
        str | None,
        typer.Option(
            help="Also write tissue samples: 'kidney' (RNA only, half the cells, for every SSc "
            "donor; truth/trajectory.csv, truth/interactions.csv)."
        ),
    ] = None,
    spatial: Annotated[
        str | None,
        typer.Option(
            help="Also write a kidney slide per SSc donor, as CosMx flat files and Xenium "
            "outputs; samples.csv names this format: 'cosmx' or 'xenium' (truth/spatial.csv)."
        ),
    ] = None,
    cells_per_slide: Annotated[int, typer.Option(help="Cells per slide (--spatial).")] = 5000,
    donors: Annotated[
        str | None, typer.Option(help="Only these donors, comma-separated (e.g. SSc1,SSc2,HD1).")
    ] = None,
) -> None:
    """Simulate a CITE-seq cohort with known truth (Cell Ranger h5 files, tables, config)."""
    chosen = [d.strip() for d in donors.split(",") if d.strip()] if donors else None
    _guard(
        lambda: _simulate(
            out,
            design,
            cells_per_donor,
            seed,
            jobs,
            n_donors=n_donors,
            tissue=tissue,
            spatial=spatial,
            cells_per_slide=cells_per_slide,
            donors=chosen,
        )  # fmt: skip
    )


def _simulate(
    out: Path,
    design: str,
    cells_per_donor: int,
    seed: int,
    jobs: int = 0,
    n_donors: int | None = None,
    tissue: str | None = None,
    spatial: str | None = None,
    cells_per_slide: int = 5000,
    donors: list[str] | None = None,
    **params: float,
) -> Path:
    from sccohort.errors import InputError
    from sccohort.simulate import DESIGNS, simulate_cohort
    from sccohort.simulate.tissue import TISSUES

    if design not in DESIGNS:
        raise InputError(
            f"unknown design '{design}'", key="--design", hint=f"use one of {', '.join(DESIGNS)}"
        )
    if tissue is not None and tissue not in TISSUES:
        raise InputError(
            f"unknown tissue '{tissue}'", key="--tissue", hint=f"use one of {', '.join(TISSUES)}"
        )
    if cells_per_donor < 50:
        raise InputError(
            f"--cells-per-donor is {cells_per_donor}", hint="simulate at least 50 cells per donor"
        )
    if spatial is not None and cells_per_slide < 100:
        raise InputError(f"--cells-per-slide is {cells_per_slide}",
                         hint="simulate at least 100 cells per slide")  # fmt: skip
    with _progress_bar() as bar:
        task = bar.add_task(f"Simulating the '{design}' cohort", total=None)
        path = simulate_cohort(
            out,
            design=design,
            cells_per_donor=cells_per_donor,
            seed=seed,
            n_jobs=jobs or os.cpu_count() or 1,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            n_donors=n_donors,
            tissue=tissue,
            spatial=spatial,
            cells_per_slide=cells_per_slide,
            donors=donors,
            **params,
        )
    toml = escape(str(path / "sccohort.toml"))
    console.print(f"cohort written to {escape(str(path))}; run it with: sccohort run {toml}")
    return path


#: Fold of the demo's planted expansions (see `demo`).
DEMO_FOLD = 4.0


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of the demo.")] = Path(
        "sccohort-demo"
    ),
    cells_per_donor: Annotated[int, typer.Option(help="Cells per sample.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    keep_checkpoints: Annotated[bool, typer.Option(help=KEEP_CHECKPOINTS_HELP)] = False,
    input_only: Annotated[
        bool,
        typer.Option(
            help="Only write the cohort's input files (OUT/input), e.g. for the API tutorial."
        ),
    ] = False,
    tissue: Annotated[
        str | None,
        typer.Option(
            help="Also simulate and analyse tissue samples: 'kidney' (a sample of half the "
            "cells for every SSc donor; the tissue, trajectory and interactions stages)."
        ),
    ] = None,
) -> None:
    """Simulate the reference study's cohort into OUT/input and run the whole pipeline on it.

    The demo plants 4-fold expansions of CD14_EGR1 (SRC) and CD8_TEM_T2ISG (ILD), not the
    simulator's default 3-fold: with the donors' own variation, 27 donors find both far more
    often at 4-fold (benchmarks/bench_demo_power.py; numbers in the README). With
    ``--tissue kidney`` the cohort has kidney samples too and the run its tissue side.
    """

    def go() -> None:
        cohort = _simulate(
            out / "input", "paper", cells_per_donor, seed, tissue=tissue, egr1_fold=DEMO_FOLD,
            t2isg_fold=DEMO_FOLD,
        )  # fmt: skip
        if input_only:
            return
        _run(cohort / "sccohort.toml", out, False, None, keep_checkpoints)
        console.print(escape(f"demo finished: results in {out}"))

    _guard(go)


def _numbers(text: str | None, option: str, kind: type = float) -> list | None:
    """``"4,8,12"`` as a list of ``kind``; ``None`` stays ``None``."""
    from sccohort.errors import InputError

    if text is None:
        return None
    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise InputError(
            f"'{text}' is not a list of {what}", key=option, hint=f"e.g. {option} 4,8,12"
        ) from None
    if not values:
        raise InputError("the list is empty", key=option, hint=f"e.g. {option} 4,8,12")
    return values


@app.command()
def power(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results.")],
    design: Annotated[
        str | None, typer.Option(help="Built-in design instead of a pilot: 'paper'.")
    ] = None,
    from_run: Annotated[
        Path | None,
        typer.Option("--from", help="A finished run whose donors' variation to fit (pilot)."),
    ] = None,
    level: Annotated[str, typer.Option(help="The pilot's level (l1, l2, subset).")] = "subset",
    n_case: Annotated[str, typer.Option(help="Cases per cohort, e.g. 4,8,12,20.")] = "4,8,12,20",
    n_control: Annotated[
        str | None, typer.Option(help="Controls, every pair with --n-case (default: as cases).")
    ] = None,
    control_ratio: Annotated[
        float | None, typer.Option(help="Controls per case instead of --n-control.")
    ] = None,
    fold: Annotated[str, typer.Option(help="Folds of the share in cases.")] = "1.5,2,3,4",
    base_share: Annotated[
        str | None,
        typer.Option(help="Baseline shares of the planted subset (default 0.01,0.03,0.1)."),
    ] = None,
    subset: Annotated[
        str | None, typer.Option(help="Subsets to plant at their own share, e.g. CD14_EGR1.")
    ] = None,
    cells_per_sample: Annotated[
        str | None, typer.Option(help="Cells per sample after QC (default: the source's).")
    ] = None,
    n_sim: Annotated[int, typer.Option(help="Simulated cohorts per design.")] = 200,
    fdr: Annotated[float, typer.Option(help="Found: Benjamini-Hochberg padj below it.")] = 0.05,
    n_perm: Annotated[int, typer.Option(help="Random permutations of large designs.")] = 10_000,
    target_power: Annotated[float, typer.Option(help="Power the inverse questions aim at.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same numbers).")] = 0,
    scheduler: Annotated[
        str, typer.Option(help="'threads' (default), 'local' (a Dask cluster) or an address.")
    ] = "threads",
) -> None:
    """Power and sample size for the next cohort, from a pilot run or the reference design.

    Simulates donors x subsets cell counts from the donors' variation and tests each cohort
    with the pipeline's default test. Writes power.csv, detectable_fold.csv,
    donors_needed.csv, variation.csv, power.html and power.json to OUT.
    """

    def go() -> None:
        from sccohort.cluster import dask_scheduler
        from sccohort.power_plan import PowerRequest, plan_power

        request = PowerRequest(
            design=design,
            pilot=None if from_run is None else str(from_run),
            level=level,
            n_case=_numbers(n_case, "--n-case", int),
            n_control=_numbers(n_control, "--n-control", int),
            control_ratio=control_ratio,
            fold=_numbers(fold, "--fold"),
            base_share=_numbers(base_share, "--base-share"),
            subsets=None if subset is None else [s for s in subset.split(",") if s],
            cells_per_sample=_numbers(cells_per_sample, "--cells-per-sample"),
            n_sim=n_sim,
            fdr=fdr,
            n_perm=n_perm,
            target_power=target_power,
            seed=seed,
        )
        with _progress_bar() as bar, dask_scheduler(scheduler) as client:
            task = bar.add_task("Simulating cohorts, design by design", total=None)
            plan_power(
                request,
                out,
                scheduler=client,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        console.print(escape(f"power analysis written to {out / 'power.html'}"))

    _guard(go)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sccohort {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Donor-level associations between immune cell subsets and clinical manifestations."""


def main() -> None:
    """Console entry point."""
    # helper processes inherit -W options: after an interrupted run, multiprocessing's
    # resource tracker would print a library warning about the workers' semaphores
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    app()

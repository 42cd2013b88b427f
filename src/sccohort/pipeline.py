"""The named stages of a run: inputs, outputs, checkpoints, resume and ``run.json``.

A run is a list of :class:`Stage` objects executed in order on one :class:`RunState`.
After each stage the pipeline writes a checkpoint (``checkpoints/<n>_<stage>.json``,
plus ``checkpoints/<n>_<stage>.h5mu`` when the stage changed the cohort object) and
rewrites ``run.json``. ``resume=True`` re-validates the checkpoints (same config and
inputs, every output file present with its recorded checksum) and starts after the
last good one. Stage functions are the only code that writes files, and they write
through :mod:`sccohort.io.atomic`, so a crash never leaves a half file that looks whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scanpy as sc

from sccohort.cohort import ClinicalTable, SampleSheet
from sccohort.config import Config, load_inputs
from sccohort.errors import InputError
from sccohort.io.atomic import write_csv, write_h5mu, write_json
from sccohort.io.read import read_raw_droplets, read_samples
from sccohort.pp.normalize import clr, dsb, normalize_rna
from sccohort.pp.qc import METRICS as QC_METRICS
from sccohort.pp.qc import run_qc
from sccohort.pp.summary import sample_summary
from sccohort.tl.annotate import annotate
from sccohort.tl.embed import harmony, highly_variable_genes, leiden, pca_prot, pca_rna, umap
from sccohort.tl.wnn import wnn

#: Files and folders a run owns inside OUT; nothing else there is ever touched.
OWNED = ("run.json", "cohort.h5mu", "report.html", "checkpoints", "tables", "figures")
VERSIONED_PACKAGES = (
    "sccohort", "numpy", "scipy", "pandas", "anndata", "mudata", "scanpy", "h5py", "dask",
    "distributed", "scikit-learn", "statsmodels", "harmonypy", "leidenalg", "igraph",
    "umap-learn", "pynndescent", "numba",
)  # fmt: skip


class Progress(Protocol):
    """What the pipeline tells a progress display (the CLI draws it with rich)."""

    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        """A stage begins (``index`` is 1-based)."""

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage are finished."""

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        """A stage ended, or was taken from its checkpoint when ``resumed``."""


class _Silent:
    def stage_started(self, name: str, description: str, index: int, total: int) -> None:
        pass

    def advance(self, done: int, total: int) -> None:
        pass

    def stage_finished(self, name: str, seconds: float, resumed: bool) -> None:
        pass


@dataclass
class RunState:
    """Everything the stages share: validated inputs, the cohort object, the output folder."""

    config: Config
    out: Path
    samples: SampleSheet
    clinical: ClinicalTable | None
    progress: Progress
    mdata: Any = None
    scheduler: Any = None


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


def _stage_ingest(state: RunState) -> list[Path]:
    """Read every sample of the sample sheet into one MuData (one Dask task per sample)."""
    mdata = read_samples(
        state.samples.table, scheduler=state.scheduler, progress=state.progress.advance
    )
    for adata in mdata.mod.values():
        adata.X = None  # raw counts live in layers["counts"]; normalisation fills .X
    state.mdata = mdata
    return []


def _stage_summary(state: RunState) -> list[Path]:
    """Per-sample cells, median genes and UMIs, proteins detected -> ``tables/samples.csv``."""
    table = sample_summary(state.mdata, state.samples.table)
    return [write_csv(table, state.out / "tables" / "samples.csv")]


def _stage_qc(state: RunState) -> list[Path]:
    """Flag and remove low-quality cells, doublets, platelets, red cells -> ``tables/qc*.csv``.

    The cohort keeps the cells that pass; every cell's metrics and reason are in
    ``tables/qc_cells.csv.gz``. A sample left with no cells is dropped with a warning.
    """
    mdata = state.mdata
    params = dataclasses.asdict(state.config.qc) | {"seed": state.config.seed}
    table = run_qc(mdata, **params)
    columns = ["sample_id", "qc_pass", "qc_reason", "doublet_score", *QC_METRICS]
    cells = mdata.obs[[c for c in columns if c in mdata.obs]]
    written = [
        write_csv(table, state.out / "tables" / "qc.csv"),
        write_csv(
            cells.rename_axis("cell_id"), state.out / "tables" / "qc_cells.csv.gz", index=True
        ),
    ]
    keep = mdata.obs["qc_pass"].to_numpy(dtype=bool)
    if not keep.any():
        raise InputError(
            "no cell of any sample passed quality control",
            file=state.out / "tables" / "qc.csv",
            hint="check the QC table; for unusual data set [qc] mode or thresholds in the config",
        )
    state.mdata = mdata[keep].copy()
    return written


def _protein_method(state: RunState) -> str:
    method = state.config.normalize.protein
    if method != "auto":
        return method
    raw = state.samples.table.get("raw_path")
    return "dsb" if raw is not None and raw.notna().all() else "clr"


def _stage_normalize(state: RunState) -> list[Path]:
    """RNA total-count + log1p into ``.X``; protein CLR or dsb (per sample, its own droplets)."""
    mdata = state.mdata
    normalize_rna(mdata.mod["rna"], target_sum=state.config.normalize.target_sum)
    if "prot" not in mdata.mod:
        return []
    prot = mdata.mod["prot"]
    method = _protein_method(state)
    if method == "clr":
        clr(prot, margin="cell")
    else:
        prot.X = np.zeros(prot.shape, dtype=np.float32)
        samples = mdata.obs.loc[prot.obs_names, "sample_id"].astype(str).to_numpy()
        for sample_id in pd.unique(samples):
            rows = np.flatnonzero(samples == sample_id)
            part = prot[rows].copy()
            raw = state.samples.table.loc[sample_id, "raw_path"]
            if raw is None or pd.isna(raw) or not str(raw):
                raise InputError(
                    "dsb needs the sample's raw droplets but raw_path is empty",
                    file=state.config.samples,
                    sample=sample_id,
                    column="raw_path",
                    hint="add the raw_feature_bc_matrix path or set [normalize] protein = 'clr'",
                )
            barcodes = [name.split(":", 1)[1] for name in part.obs_names]
            empty = read_raw_droplets(raw, barcodes, sample_id, modalities=("prot",))
            dsb(part, empty[:, part.var_names].copy())
            prot.X[rows] = part.X
    prot.uns["normalization"] = {"method": method}
    return []


def _stage_embed(state: RunState) -> list[Path]:
    """HVG, PCA, protein PCA, Harmony, the WNN graph, Leiden and UMAP."""
    cfg, mdata = state.config.embedding, state.mdata
    seed = state.config.seed
    rna = mdata.mod["rna"]
    rna.obs["sample_id"] = mdata.obs.loc[rna.obs_names, "sample_id"].to_numpy()
    highly_variable_genes(rna, n_top_genes=cfg.n_top_genes, batch_key="sample_id")
    pca_rna(rna, n_comps=cfg.n_pcs)
    mdata.obsm["X_pca"] = rna.obsm["X_pca"]
    reps = {"rna": "X_pca"}
    if "prot" in mdata.mod:
        pca_prot(mdata.mod["prot"], n_comps=cfg.n_pcs_prot or None)
        mdata.obsm["X_pca_prot"] = mdata.mod["prot"].obsm["X_pca_prot"]
        reps["prot"] = "X_pca_prot"
    if cfg.harmony_key:
        for modality, basis in list(reps.items()):
            adata = mdata.mod[modality]
            adata.obs[cfg.harmony_key] = mdata.obs.loc[adata.obs_names, cfg.harmony_key].to_numpy()
            key = "X_harmony" if modality == "rna" else "X_harmony_prot"
            harmony(adata, basis=basis, batch_key=cfg.harmony_key, key_added=key, seed=seed)
            mdata.obsm[key] = adata.obsm[key]
            reps[modality] = key
    graph = ad.AnnData(obs=pd.DataFrame(index=mdata.obs_names))
    for modality, key in reps.items():
        graph.obsm[f"{modality}_{key}"] = mdata.obsm[key]
    if len(reps) > 1:
        wnn(
            graph,
            {m: f"{m}_{k}" for m, k in reps.items()},
            n_neighbors=cfg.n_neighbors,
            random_state=seed,
        )
        # cluster the shared-nearest-neighbour graph, as Seurat's FindClusters on "wsnn"
        # (ARI 0.99 with Seurat on the real ECCITE cells, 0.87 on the UMAP connectivities)
        graph.uns["wnn_snn"] = graph.uns["wnn"] | {"connectivities_key": "wnn_snn"}
        cluster_key = "wnn_snn"
    else:  # RNA only: the RNA kNN graph stands in for the WNN graph, under the same name
        sc.pp.neighbors(
            graph, n_neighbors=cfg.n_neighbors, use_rep="rna_" + reps["rna"], key_added="wnn",
            random_state=seed,
        )  # fmt: skip
        graph.obs["rna_weight"] = 1.0
        cluster_key = "wnn"
    leiden(graph, neighbors_key=cluster_key, resolution=cfg.resolution, seed=seed)
    umap(graph, neighbors_key="wnn", max_cells=cfg.umap_max_cells, seed=seed)
    for key in ("wnn_connectivities", "wnn_distances", "wnn_snn"):
        if key in graph.obsp:
            mdata.obsp[key] = graph.obsp[key]
    for column in [c for c in graph.obs if c.endswith("_weight")] + ["leiden"]:
        mdata.obs[column] = graph.obs[column].to_numpy()
    mdata.obsm["X_umap"] = graph.obsm["X_umap"]
    for key in ("wnn", "leiden", "umap"):
        if key in graph.uns:
            mdata.uns[key] = graph.uns[key]
    return []


def _stage_annotate(state: RunState) -> list[Path]:
    """Cell types in the Azimuth vocabulary (l1, l2) from shipped RNA and protein markers.

    Writes ``obs`` ``l1``, ``l2``, ``l1_confidence``, ``l2_confidence`` and
    ``tables/cell_types.csv`` (per l2 label: its l1, cells, share, samples, median
    confidence).
    """
    mdata = state.mdata
    annotate(mdata, use=tuple(m for m in ("rna", "prot") if m in mdata.mod))
    obs = mdata.obs
    table = (
        obs.groupby(["l1", "l2"], observed=True)
        .agg(
            n_cells=("l2", "size"),
            n_samples=("sample_id", "nunique"),
            median_confidence=("l2_confidence", "median"),
        )
        .reset_index()
    )
    table.insert(3, "share", table["n_cells"] / len(obs))
    table = table.sort_values(["l1", "n_cells"], ascending=[True, False], kind="stable")
    return [write_csv(table, state.out / "tables" / "cell_types.csv")]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Reading samples", _stage_ingest, changes_cohort=True, saves_cohort=True),
    Stage("summary", "Summarising samples", _stage_summary),
    Stage("qc", "Quality control", _stage_qc, changes_cohort=True),
    Stage("normalize", "Normalising RNA and protein", _stage_normalize, changes_cohort=True),
    Stage(
        "embed",
        "Embedding: PCA, Harmony, WNN, Leiden, UMAP",
        _stage_embed,
        changes_cohort=True,
        saves_cohort=True,
    ),
    Stage("annotate", "Annotating cell types", _stage_annotate, changes_cohort=True),
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(config: Config, samples: SampleSheet) -> dict[str, str]:
    """SHA-256 of the config, both tables and every sample's files (folders: each file)."""
    files: list[Path] = [config.path, config.samples]
    if config.clinical is not None:
        files.append(config.clinical)
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


class PeakMemory:
    """Context manager sampling the resident memory of this process and its children.

    ``peak_gb`` holds the largest sum seen (sampled every ``interval`` seconds, plus at
    entry and exit).
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_gb = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        self.peak_gb = max(self.peak_gb, total / 2**30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

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
        Passed to the per-sample readers: ``None`` (local threads), a ``distributed.Client``
        or a scheduler address.
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
    progress = progress or _Silent()
    samples, clinical = load_inputs(config)  # validates everything before writing anything
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
        import mudata

        state.mdata = mudata.read_h5mu(out / cohort_checkpoint)

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
    if stage.saves_cohort or (stage.changes_cohort and index == len(STAGES) - 1):
        rel = f"checkpoints/{name}.h5mu"
        write_h5mu(state.mdata, out / rel)
        entry.update(cohort=rel, cohort_sha256=sha256_file(out / rel))
    write_json(entry, out / "checkpoints" / f"{name}.json")


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


def summary_frame(record: dict[str, Any]) -> pd.DataFrame:
    """The per-stage timings of a ``run.json`` record as a table (for printing)."""
    return pd.DataFrame(record["stages"])

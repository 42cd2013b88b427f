"""Write a simulated cohort: Cell Ranger h5 files, tables, config and truth.

Every file is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.tenx import write_10x_h5
from sccohort.simulate.biology import load_genes
from sccohort.simulate.counts import SampleCounts, simulate_sample
from sccohort.simulate.design import (
    DESIGNS,
    SampleSpec,
    SimParams,
    check_n_donors,
    clinical_table,
    default_batches,
    effects_table,
    sample_specs,
)
from sccohort.simulate.prepost import (
    PREPOST_CONFIG,
    PREPOST_DONORS,
    prepost_clinical,
    prepost_visits,
    treated,
)
from sccohort.simulate.proteins import protein_panel
from sccohort.simulate.spatial import check_spatial, run_slide_job, slide_jobs, spatial_samples
from sccohort.simulate.stimulation import (
    STIM_CONFIG,
    STIM_DONORS,
    STIM_TIMEPOINTS,
    stim_clinical,
)
from sccohort.simulate.tissue import (
    KidneyJob,
    check_tissue,
    interactions_table,
    kidney_biology,
    kidney_cells,
    kidney_config,
    kidney_jobs,
    primary_timepoint,
    run_kidney_job,
)


class _WithinDonor(NamedTuple):
    """A design of several samples per donor: its donors, their samples and its config."""

    default_donors: int
    fewest_donors: int
    clinical: Callable[[int], pd.DataFrame]
    visits: Callable[[int], tuple[tuple[str, str], ...]]  # donor index -> (suffix, timepoint)
    config: str


_WITHIN_DONOR = {
    "stim": _WithinDonor(STIM_DONORS, 2, stim_clinical, lambda _: STIM_TIMEPOINTS, STIM_CONFIG),
    "prepost": _WithinDonor(PREPOST_DONORS, 3, prepost_clinical, prepost_visits, PREPOST_CONFIG),
}

CONFIG_TEMPLATE = """\
[inputs]
samples = "samples.csv"
clinical = "clinical.csv"

[run]
seed = {seed}
primary_timepoint = "baseline"

[contrasts.SSc_vs_HD]
variable = "group"
case = "SSc"
control = "HD"
covariates = ["age"]

[contrasts.SRC]
variable = "SRC"
case = "yes"
control = "no"
within = {{ group = "SSc" }}
covariates = ["age"]

[contrasts.ILD]
variable = "ILD"
case = "yes"
control = "no"
within = {{ group = "SSc" }}
covariates = ["age"]

[association]
groupings = ["ARA*SRC"]
"""

TRUTH_DOUBLET_NOTE = (
    "A doublet's l1, l2 and subset are those of its first cell; its second cell is of another l1."
)


def features_table() -> pd.DataFrame:
    """Features of every simulated matrix: genes, then antibodies.

    Returns
    -------
    DataFrame with ``id, name, feature_type, genome`` (n_genes + n_antibodies rows).
    """
    genes = load_genes()
    panel = protein_panel()
    return pd.DataFrame(
        {
            "id": np.concatenate([genes["gene_id"], panel["id"]]),
            "name": np.concatenate([genes["symbol"], panel["name"]]),
            "feature_type": ["Gene Expression"] * len(genes) + ["Antibody Capture"] * len(panel),
            "genome": "GRCh38",
        }
    )


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _atomic_csv(path: Path, df: pd.DataFrame) -> None:
    _atomic_text(path, df.to_csv(index=False, lineterminator="\n"))


def _write_sample_files(out: Path, sample_id: str, sc: SampleCounts) -> None:
    """Filtered (cells) and raw (cells + empty droplets, barcode order) h5 of one sample."""
    features = features_table()
    folder = out / sample_id
    folder.mkdir(parents=True, exist_ok=True)
    cells = sp.hstack([sc.rna, sp.csr_matrix(sc.adt)], format="csr")
    write_10x_h5(
        folder / "filtered_feature_bc_matrix.h5",
        cells,
        sc.barcodes,
        features,
        library_id=sample_id,
        compression_level=1,
    )
    empties = sp.hstack([sc.empty_rna, sp.csr_matrix(sc.empty_adt)], format="csr")
    barcodes = np.concatenate([sc.barcodes, sc.empty_barcodes])
    order = np.argsort(barcodes, kind="stable")
    raw = sp.vstack([cells, empties], format="csr")[order]
    write_10x_h5(
        folder / "raw_feature_bc_matrix.h5",
        raw,
        barcodes[order],
        features,
        library_id=sample_id,
        compression_level=1,
    )


def _run_sample(
    job: tuple[Path, SampleSpec, dict, str, SimParams, int, int, int, int] | KidneyJob,
) -> tuple[pd.DataFrame, ...]:
    if isinstance(job, KidneyJob):
        return run_kidney_job(job)
    out, spec, donor, design, params, n_cells, seed, donor_idx, batch_idx = job
    sc = simulate_sample(
        spec, pd.Series(donor), design, params, n_cells, seed, donor_idx, batch_idx
    )
    _write_sample_files(out, spec.sample_id, sc)
    comp = sc.composition.assign(sample_id=spec.sample_id, donor_id=spec.donor_id)
    return sc.truth, comp[["sample_id", "donor_id", "subset", "expected_share", "donor_share"]]


def _results(jobs: list, n_jobs: int) -> Iterator[tuple[pd.DataFrame, ...]]:
    if n_jobs <= 1:
        yield from map(_run_sample, jobs)
        return
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
        yield from pool.map(_run_sample, jobs)


def _id_ranges(clinical: pd.DataFrame) -> str:
    """Donor ids of a clinical table, listed or (beyond 30) as ranges per group."""
    ids = list(clinical["donor_id"])
    if len(ids) <= 30:
        return ", ".join(ids)
    counts = clinical["group"].value_counts()
    return ", ".join(f"{g}1..{g}{counts[g]}" for g in ("SSc", "HD"))


def _cohort_plan(
    design: str,
    cells_per_donor: int,
    donors: Sequence[str] | None,
    n_donors: int | None,
    params: dict[str, object],
) -> tuple[SimParams, pd.DataFrame, list[SampleSpec]]:
    """The checked parameters, clinical table and samples to simulate of `write_cohort`."""
    if design not in DESIGNS:
        raise InputError(
            f"unknown design {design!r}", key="design", hint=f"use one of {', '.join(DESIGNS)}"
        )
    if int(cells_per_donor) < 10:
        raise InputError("too few cells per donor", key="cells_per_donor", hint="use at least 10")
    within = _WITHIN_DONOR.get(design)
    if within is not None:
        n_donors = _design_donors(design, within, n_donors)
        params.setdefault("n_batches", max(1, n_donors // 4))
    elif n_donors is not None:
        n_donors = check_n_donors(n_donors)
        params.setdefault("n_batches", default_batches(n_donors))
    p = SimParams.from_kwargs(**params)
    if within is not None:
        clinical = within.clinical(n_donors)
        specs = _visit_specs(list(clinical["donor_id"]), within.visits, int(p.n_batches))
    else:
        clinical = clinical_table(n_donors)
        specs = sample_specs(int(p.n_batches), n_donors)
    donor_ids = list(clinical["donor_id"])
    if donors is not None:
        unknown = sorted(set(donors) - set(donor_ids))
        if unknown or not donors:
            raise InputError(
                f"unknown donors {unknown}" if unknown else "no donors selected",
                key="donors",
                hint=f"use donor ids of the design: {_id_ranges(clinical)}",
            )
        specs = [s for s in specs if s.donor_id in set(donors)]
    return p, clinical, specs


def _design_donors(design: str, within: _WithinDonor, n_donors: object) -> int:
    """The checked number of donors of a within-donor design (its default if ``None``)."""
    if n_donors is None:
        return within.default_donors
    fewest = within.fewest_donors
    if (
        isinstance(n_donors, bool)
        or not isinstance(n_donors, int | np.integer)
        or n_donors < fewest
    ):
        raise InputError(
            f"n_donors must be a whole number >= {fewest} for design '{design}', got {n_donors!r}",
            key="n_donors",
            hint=f"A within-donor comparison needs {fewest} donors or more",
        )
    return int(n_donors)


def _visit_specs(
    donors: list[str], visits: Callable[[int], tuple[tuple[str, str], ...]], n_batches: int
) -> list[SampleSpec]:
    """Every donor's samples (``<donor>_<suffix>``), all on the donor's lane."""
    specs: list[SampleSpec] = []
    for i, donor in enumerate(donors):
        for suffix, timepoint in visits(i):
            lane = f"L{i % n_batches + 1}"
            specs.append(SampleSpec(len(specs), f"{donor}_{suffix}", donor, timepoint, lane))
    return specs


def _sample_jobs(
    out: Path,
    specs: Sequence[SampleSpec],
    clinical: pd.DataFrame,
    design: str,
    p: SimParams,
    cells_per_donor: int,
    seed: int,
) -> list[tuple[Path, SampleSpec, dict, str, SimParams, int, int, int, int]]:
    """One `_run_sample` job per sample: its donor's clinical row, donor and lane index."""
    by_donor = clinical.set_index("donor_id")
    position = {d: i for i, d in enumerate(clinical["donor_id"])}
    return [
        (
            out,
            s,
            by_donor.loc[s.donor_id].to_dict() | {"donor_id": s.donor_id},
            design,
            p,
            cells_per_donor,
            seed,
            position[s.donor_id],
            int(s.batch[1:]) - 1,
        )
        for s in specs
    ]


def _write_truth_cells(
    cells_path: Path,
    jobs: list,
    n_jobs: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Run the jobs, streaming each sample's truth to ``cells_path``.

    Returns the samples' compositions and the trajectories of the kidney samples.
    """
    tmp = cells_path.with_name(cells_path.name + ".tmp")
    compositions, trajectories = [], []
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        for done, (truth, comp, *trajectory) in enumerate(_results(jobs, n_jobs), start=1):
            truth.to_csv(text, index=False, header=done == 1, lineterminator="\n")
            compositions.append(comp)
            trajectories += trajectory
            if progress is not None:
                progress(done, len(jobs))
        text.flush()
        text.detach()
    os.replace(tmp, cells_path)
    return compositions, trajectories


def _samples_table(specs: Sequence[SampleSpec], design: str) -> pd.DataFrame:
    """``samples.csv`` of the simulated samples: h5 paths, lane, timepoint (and treatment)."""
    table = pd.DataFrame(
        {
            "sample_id": [s.sample_id for s in specs],
            "donor_id": [s.donor_id for s in specs],
            "path": [f"{s.sample_id}/filtered_feature_bc_matrix.h5" for s in specs],
            "raw_path": [f"{s.sample_id}/raw_feature_bc_matrix.h5" for s in specs],
            "batch": [s.batch for s in specs],
            "timepoint": [s.timepoint for s in specs],
            "tissue": "blood",
            "format": "10x_h5",
        }
    )
    if design == "prepost":
        table["treated"] = table["timepoint"].map(treated)
    return table


def write_cohort(
    out_dir: str | Path,
    design: str = "paper",
    cells_per_donor: int = 2000,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    n_jobs: int = 1,
    donors: Sequence[str] | None = None,
    n_donors: int | None = None,
    tissue: str | None = None,
    spatial: str | None = None,
    cells_per_slide: int = 5000,
    **params: object,
) -> Path:
    """Simulate a CITE-seq cohort and write it as Cell Ranger outputs plus truth tables.

    Parameters
    ----------
    out_dir
        Output folder (created). Receives ``<sample_id>/filtered_feature_bc_matrix.h5``,
        ``<sample_id>/raw_feature_bc_matrix.h5``, ``samples.csv``, ``clinical.csv``,
        ``sccohort.toml`` and ``truth/{cells.csv.gz, effects.csv, donor_composition.csv}``.
        In ``truth/cells.csv.gz`` a doublet's l1, l2 and subset are those of its first cell
        (its second cell has another l1); ``donor_composition.csv`` gives, per sample and
        subset, the design's ``expected_share`` and the donor's realised ``donor_share``
        from which the sample's cells were drawn.
    design
        One of `DESIGNS`: ``"paper"`` (planted clinical effects), ``"null"`` (none),
        ``"stim"`` (healthy donors, a control and an interferon-stimulated sample each, the
        config comparing them: :mod:`sccohort.simulate.stimulation`) or ``"prepost"``
        (patients with 1 to 3 samples before and after a treatment that doubles CD14_EGR1:
        :mod:`sccohort.simulate.prepost`).
    cells_per_donor
        Cell barcodes per sample (the longitudinal donor SSc4 has three samples).
    seed
        Seed of all random draws; the same seed gives byte-identical files.
    progress
        Optional ``progress(done_samples, total_samples)`` callback.
    n_jobs
        Samples simulated in parallel (processes); memory grows with it.
    donors
        Simulate only these donors (all their samples); ``None`` = all. A donor's
        samples are identical whichever other donors are simulated.
    n_donors
        ``None``: the paper's 27 donors. Else a cohort of that many donors (at least
        `~sccohort.simulate.design.MIN_DONORS`) drawn in the paper's proportions (see
        `~sccohort.simulate.design.clinical_table`; ``n_donors + 2`` samples) with the
        same planted effects, truth files and config; unless ``n_batches`` is given, lanes
        scale with it (`~sccohort.simulate.design.default_batches`). Design ``stim``: 2
        donors by default, any number >= 2 (``2 * n_donors`` samples, a lane per 4 donors);
        ``prepost``: 6 by default, any number >= 3.
    tissue
        ``"kidney"``: also a kidney sample (``<donor>_kidney``, samples.csv ``tissue =
        kidney``, RNA only, half the cells) of every SSc donor, their
        cells in ``truth/cells.csv.gz`` and ``donor_composition.csv``, and
        ``truth/{trajectory.csv, trajectory_genes.csv, interactions.csv}``; the config
        gets ``primary_tissue = "blood"`` and a comment (:mod:`sccohort.simulate.tissue`).
        ``None``: blood only.
    spatial
        ``"cosmx"`` or ``"xenium"``: also a kidney slide (``<donor>_slide``, ``cells_per_slide``
        cells on a ~1,000-gene panel) of every SSc donor, written in both layouts
        (``<slide>/cosmx/``, ``<slide>/xenium/``), samples.csv naming the one asked for, and
        ``truth/spatial.csv`` (:mod:`sccohort.simulate.spatial`).
    cells_per_slide
        Cells per slide (``spatial``).
    **params
        Any field of `SimParams` (e.g. ``egr1_fold=5``, ``doublet_rate=0.08``).

    Returns
    -------
    Path
        The output folder.
    """
    check_tissue(tissue)
    check_spatial(spatial)
    p, clinical, specs = _cohort_plan(design, cells_per_donor, donors, n_donors, params)
    template = _WITHIN_DONOR[design].config if design in _WITHIN_DONOR else CONFIG_TEMPLATE
    config = template.format(seed=int(seed))
    out = Path(out_dir)
    jobs = _sample_jobs(out, specs, clinical, design, p, int(cells_per_donor), int(seed))
    kidney = []
    if tissue is not None:
        selected = {s.donor_id for s in specs}
        timepoint = primary_timepoint(config)
        kidney = kidney_jobs(
            out, clinical, design, selected, timepoint, p, kidney_cells(cells_per_donor), int(seed)
        )
    (out / "truth").mkdir(parents=True, exist_ok=True)
    compositions, trajectories = _write_truth_cells(
        out / "truth" / "cells.csv.gz", [*jobs, *kidney], n_jobs, progress
    )
    _atomic_csv(out / "truth" / "donor_composition.csv", pd.concat(compositions))
    _atomic_csv(out / "truth" / "effects.csv", effects_table(design, p))
    samples = _samples_table(specs, design)
    if tissue is not None:
        samples = pd.concat([samples, _kidney_outputs(out, design, kidney, trajectories)])
        config = kidney_config(config, len(kidney))
    if spatial is not None:
        selected = {s.donor_id for s in specs}
        slides = slide_jobs(out, clinical, design, selected, cells_per_slide, int(seed))
        truth = [run_slide_job(job) for job in slides]
        _atomic_csv(out / "truth" / "spatial.csv", pd.concat(truth, ignore_index=True))
        samples = pd.concat([samples, spatial_samples(slides, spatial, primary_timepoint(config))])
    _atomic_csv(out / "samples.csv", samples)
    _atomic_csv(out / "clinical.csv", clinical[clinical["donor_id"].isin(samples["donor_id"])])
    _atomic_text(out / "sccohort.toml", config)
    return out


def _kidney_outputs(
    out: Path, design: str, kidney: list[KidneyJob], trajectories: list[pd.DataFrame]
) -> pd.DataFrame:
    """Write the kidney truth tables; returns the kidney rows of ``samples.csv``."""
    truth = out / "truth"
    empty = pd.DataFrame(columns=["cell_id", "pseudotime", "state"])
    _atomic_csv(truth / "trajectory.csv", pd.concat(trajectories) if trajectories else empty)
    _atomic_csv(truth / "trajectory_genes.csv", kidney_biology().trajectory_genes)
    _atomic_csv(truth / "interactions.csv", interactions_table(design))
    return _samples_table([j.spec for j in kidney], design).assign(tissue="kidney")

"""The whole report in one call: summary, cohort, QC, cells, statistics, methods.

:func:`assemble_report` builds every section from the run folder, the cohort object, the
clinical table, the contrasts and ``run.json``, and writes ``OUT/report.html`` plus
``OUT/figures/``. A section whose inputs are missing or broken is replaced by a one-line
warning naming the problem (and a `ReportWarning` carries its traceback to ``run.json``),
so a partial run still gets a report.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ..cohort import ClinicalTable
from ..errors import SccohortWarning
from ..io.tables import TABLES, read_table, table_files
from ..stats.abundance import DEFAULT_METHOD, VALUES_METHOD
from ..stats.interactions import METHOD as INTERACTION_METHOD
from .build import Items, Note, Paragraph, Section, build_report
from .characterisation import characterisation_section
from .methods import methods_section
from .sections import (
    SMALL_GROUP,
    cell_types_section,
    clinical_frame,
    cohort_section,
    contrast_sizes,
    qc_section,
    umap_section,
)
from .spatial import spatial_section
from .stats_sections import (
    associated_summary,
    association_section,
    composition_section,
)
from .tissue import tissue_section

__all__ = ["TEST_DESCRIPTIONS", "ReportWarning", "assemble_report", "finished_record"]


class ReportWarning(SccohortWarning):
    """A part of the report could not be built; ``details`` holds the traceback."""


#: What each ``method`` value of the statistics tables means, for the methods section.
TEST_DESCRIPTIONS = {
    DEFAULT_METHOD: "default test of subset shares: linear model of the arcsine-square-root "
    "share on the contrast plus covariates, variances moderated across subsets (limma), "
    "permutation p-value (all relabellings of the donors, or Freedman-Lane with covariates), "
    "Benjamini-Hochberg within contrast x level; effect = log2 fold change of the share",
    VALUES_METHOD: "donor-level values (signature scores, trajectory progression): the "
    "default test's model and permutations on one value per donor; effect = difference of "
    "means",
    INTERACTION_METHOD: "per-donor ligand-receptor scores (linear scale): the default test's "
    "model and permutations on log2(score + pseudocount), BH within contrast x compartment; "
    "effect = log2 fold change of the score",
    "ks_bonferroni": "the study's test: two-sample Kolmogorov-Smirnov of shares, Bonferroni "
    "over the subsets of a level",
    "kruskal_wallis_bonferroni": "Kruskal-Wallis across the levels of a grouping, Bonferroni",
    "dunn_bonferroni": "Dunn's post-hoc pairs, Bonferroni",
    "dunn_holm": "Dunn's post-hoc pairs, Holm",
    "milo_nb_qlf": "neighbourhood differential abundance: negative binomial quasi-likelihood "
    "F-test per neighbourhood, spatial FDR (weighted BH)",
}


def _contrast_specs(config_or_designs: Any, run_json: Mapping[str, Any]) -> dict[str, Any]:
    """Contrast name -> design / Contrast / dict, from a Config, a mapping or run.json."""
    if config_or_designs is not None and hasattr(config_or_designs, "contrasts"):
        return dict(config_or_designs.contrasts)
    if isinstance(config_or_designs, Mapping):
        return dict(config_or_designs)
    return dict((run_json.get("config") or {}).get("contrasts") or {})


def _spec_dicts(contrasts: Mapping[str, Any]) -> dict[str, dict]:
    """Plain dict form of each contrast (for the cohort overview's table)."""
    out: dict[str, dict] = {}
    for name, item in contrasts.items():
        if isinstance(item, Mapping):
            out[name] = dict(item)
        elif hasattr(item, "to_dict"):
            out[name] = item.to_dict()
        elif hasattr(item, "contrast") and hasattr(item.contrast, "to_dict"):  # a design
            out[name] = item.contrast.to_dict()
    return out


def _safely(title: str, anchor: str, build: Callable[[], Section]) -> Section:
    try:
        return build()
    except Exception as exc:  # a report with a gap beats no report at the end of a run
        warnings.warn(
            ReportWarning(
                f"report section '{title}' could not be built: {type(exc).__name__}: {exc}",
                details="".join(traceback.format_exception(exc)),
            ),
            stacklevel=2,
        )
        return Section(
            title,
            anchor,
            [Note(f"This section could not be built: {type(exc).__name__}: {exc}", "warning")],
        )


def finished_record(run_json: Mapping[str, Any] | None) -> dict[str, Any]:
    """``run_json`` as the run's last stage sees it: status ``"finished"``, finished now.

    For the report written by the last stage of a run: every stage before it has finished,
    and the run ends when the report is written. ``"finished"`` is a `FinishTime`: the time
    it is first shown (the methods section, built last), so the report states the time it
    was finished; ``run.json`` says the same a moment later.
    """
    return {**dict(run_json or {}), "status": "finished", "finished": FinishTime()}


class FinishTime:
    """An ISO time (UTC, seconds) fixed when first turned into text."""

    def __init__(self) -> None:
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = datetime.now(UTC).isoformat(timespec="seconds")
        return self._text


def _summary(out: Path, mdata: Any, clinical: pd.DataFrame | None, alpha: float) -> Section:
    samples = read_table(out, "samples")
    obs = getattr(mdata, "obs", None)
    n_donors = (
        samples["donor_id"].nunique()
        if samples is not None and "donor_id" in samples
        else obs["donor_id"].nunique()
        if obs is not None and "donor_id" in obs
        else None
    )
    n_samples = len(samples) if samples is not None else None
    n_cells = None
    if obs is not None:
        n_cells = (
            int(obs["qc_pass"].fillna(False).astype(bool).sum()) if "qc_pass" in obs else len(obs)
        )
    parts = []
    if n_donors is not None:
        parts.append(f"{n_donors} donors")
    if n_samples is not None:
        parts.append(f"{n_samples} samples")
    if n_cells is not None:
        parts.append(f"{n_cells:,} cells after quality control")
    blocks: list[Any] = []
    if parts:
        text = "This run analysed " + ", ".join(parts) + "."
        if clinical is not None and "group" in clinical:
            counts = clinical["group"].value_counts()
            text += " Groups: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."
        blocks.append(Paragraph(text))
    blocks.extend(associated_summary(out, alpha=alpha))
    return Section("Summary", "summary", blocks)


def _tests_used(out: Path) -> list[str]:
    methods: dict[str, str] = {}
    sources = [(name, {}) for name in ("association", "neighbourhoods", "subgroups",
                                       "signature_tests", "prediction", "trajectory_tests",
                                       "interactions")]  # fmt: skip
    sources += [("de", {"contrast": contrast}) for contrast in table_files(out, "de")]
    for name, fields in sources:
        table = read_table(out, name, **fields)
        if table is not None and "method" in table:
            for method in pd.unique(table["method"].dropna().astype(str)):
                methods.setdefault(method, TABLES[name].file.replace("{contrast}", "<contrast>"))
    return [
        f"{method} (tables/{source})"
        + (f": {TEST_DESCRIPTIONS[method]}" if method in TEST_DESCRIPTIONS else "")
        for method, source in methods.items()
    ]


def _limitations(
    contrasts: Mapping[str, dict], clinical: pd.DataFrame | None, out: Path
) -> list[str]:
    notes: list[str] = []
    if clinical is None or not contrasts:
        return notes
    sizes = contrast_sizes(contrasts, out)
    for row in sizes.itertuples(index=False):
        for arm, n in (("case", row.n_case), ("control", row.n_control)):
            if pd.notna(n) and n < SMALL_GROUP:
                notes.append(
                    f"{row.contrast}: {int(n)} {arm} donor(s). With so few donors a test has "
                    "little power, effect estimates are wide and one donor can drive a result; "
                    "the permutation p-value cannot go below 1 / (number of distinct "
                    "arrangements)."
                )
    return notes


def assemble_report(
    out: str | Path,
    mdata: Any,
    clinical: ClinicalTable | pd.DataFrame | None,
    config_or_designs: Any,
    run_json: Mapping[str, Any],
    *,
    alpha: float = 0.05,
    max_subsets: int = 6,
    title: str = "sccohort report",
    final: bool = False,
) -> Path:
    """Build ``OUT/report.html`` (and ``OUT/figures/``) from a finished (or partial) run.

    Order: summary (cohort size, the associated-subsets table), cohort overview, quality
    control, UMAPs, cell types, composition, association, characterisation, tissue (when
    the run has tissue samples), methods.

    Parameters
    ----------
    out
        The run folder (``tables/*.csv`` inside); the report is written there.
    mdata
        The processed cohort (MuData with ``obs``, ``obsm["X_umap"]``, ``mod["rna"]``,
        ``mod["prot"]``), or ``None`` to leave out the figures that need cells.
    clinical
        The clinical table, or ``None``.
    config_or_designs
        A :class:`~sccohort.config.Config`, or contrast name -> ``ContrastDesign`` /
        ``Contrast`` / dict; ``None`` reads ``run_json["config"]["contrasts"]``.
    run_json
        The run record (``run.json``) for the methods section.
    alpha
        Significance threshold of the associated subsets.
    max_subsets
        Most subsets characterised.
    title
        Page title.
    final
        The report is the run's last stage, written once every other stage has finished:
        the header and the methods show the run as finished (`finished_record`) rather
        than as ``run_json`` says while the report is being written (``"running"``). A
        report that fails is not written at all, so it never claims a finished run.

    Returns
    -------
    Path
        ``OUT/report.html``.
    """
    out = Path(out)
    run_json = finished_record(run_json) if final else dict(run_json or {})
    contrasts = _contrast_specs(config_or_designs, run_json)
    specs = _spec_dicts(contrasts)
    frame = clinical_frame(clinical)
    run_cfg = (run_json.get("config") or {}).get("run") or {}
    timepoint = getattr(config_or_designs, "primary_timepoint", None) or run_cfg.get(
        "primary_timepoint"
    )
    tissue = getattr(config_or_designs, "primary_tissue", None) or run_cfg.get("primary_tissue")
    has_cells = mdata is not None and hasattr(mdata, "obsm")

    def methods() -> Section:
        section = methods_section(run_json)
        tests = _tests_used(out)
        extra: list[Any] = []
        if tests:
            extra.append(Paragraph("Statistical tests and multiple-testing corrections used:"))
            extra.append(Items(tests))
        extra.extend(Note(text, "warning") for text in _limitations(specs, frame, out))
        section.blocks[1:1] = extra
        return section

    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("Summary", "summary", lambda: _summary(out, mdata, frame, alpha)),
        ("Cohort overview", "cohort", lambda: cohort_section(out, clinical, contrasts=specs)),
        ("Quality control", "qc", lambda: qc_section(out)),
    ]
    if has_cells:
        builders.append(("Cells at a glance (UMAP)", "umap", lambda: umap_section(mdata)))
    builders += [
        ("Cell types", "cell-types", lambda: cell_types_section(out)),
        (
            "Composition",
            "composition",
            lambda: composition_section(
                out,
                mdata,
                clinical,
                primary_timepoint=timepoint,
                primary_tissue=tissue,
                alpha=alpha,
            ),  # fmt: skip
        ),
        (
            "Association with clinical contrasts",
            "association",
            lambda: association_section(out, alpha=alpha),
        ),  # fmt: skip
        (
            "Characterisation of associated subsets",
            "characterisation",
            lambda: characterisation_section(out, mdata, alpha=alpha, max_subsets=max_subsets),
        ),
        ("Tissue", "tissue", lambda: tissue_section(out, alpha=alpha)),
        ("Spatial niches", "spatial", lambda: spatial_section(out, alpha=alpha)),
        ("Methods", "methods", methods),
    ]
    meta: dict[str, Any] = {"title": title}
    if run_json.get("status"):
        meta["status"] = run_json["status"]
    if run_json.get("started"):
        meta["run started"] = run_json["started"]
    if run_json.get("finished"):
        meta["run finished"] = run_json["finished"]
    # built one at a time as build_report asks: earlier sections' figures render meanwhile
    sections = (_safely(t, a, build) for t, a, build in builders)
    return build_report(out, sections, meta)

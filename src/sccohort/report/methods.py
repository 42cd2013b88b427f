"""The report's methods section, generated from ``run.json``.

Prose for each analysis with its settings (`_PROSE`), then tables: the contrasts as declared,
every parameter as resolved, software versions, timings, the machine and the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from sccohort.errors import InputError
from sccohort.report.build import Items, Paragraph, Section, TableBlock

_PROSE = {
    "qc": "Quality control: {mode} thresholds ({nmads} MADs), at least {min_genes} genes, "
    "mitochondrial share between {mito_floor_pct}% and {mito_ceiling_pct}% "
    "({mito_ceiling_tissue_pct}% in tissue), red cells (haemoglobin > {hb_max_pct}%), "
    "platelets (> {platelet_max_pct}%) and doublets ({doublet_method}) removed.",
    "normalize": "RNA counts were scaled to {target_sum:g} per cell and log-transformed; "
    "protein counts normalised by {protein} (auto: dsb when raw droplets are given, else CLR).",
    "embedding": "{n_top_genes} highly variable genes, {n_pcs} principal components, Harmony "
    "on {harmony_key}, a weighted-nearest-neighbour graph of RNA and protein (one modality: "
    "its kNN graph; {n_neighbors} neighbours), Leiden clustering (resolution {resolution}) "
    "and UMAP.",
    "association": "Subset shares were tested per contrast by a moderated linear model on "
    "arcsine-square-root shares, each donor (or sample) weighted by the precision of its "
    "share (between-donor variance plus the sampling variance of its cell count), with "
    "p-values from {n_perm} relabellings of the donors (all of them when at most {max_exact}; "
    "Freedman-Lane with covariates). Contrasts on a column of the sample sheet with donors "
    "sampled on both sides were paired within donor (donor as a blocking factor, samples "
    "relabelled within donor; with fewer than 10 donors the moderated t); unbalanced "
    "repeated samples by a mixed model with a donor random intercept (REML, Satterthwaite's "
    "t; pseudobulk DE by voom weights and the same model, as dream), and ordered levels as "
    "a trend per step. Donors with fewer than {min_cells} cells after QC were left out; the "
    "contrasts table names each contrast's design. What each two-group contrast could "
    "detect was simulated: donors x subsets counts drawn from the between-donor variation of "
    "the cohort's own primary samples (per-subset Dirichlet-equivalent concentrations, "
    "squeezed towards their pooled value), the subset of median share planted at folds 1/3 "
    "to 6, each simulated cohort tested with the same test (50 cohorts per fold), the fold "
    "reaching 80% power interpolated on the log scale.",
}


_PROTEIN_EMBEDDING = (
    "Protein PCA ({n_pcs_prot} components), Harmony on {harmony_key}, a kNN graph "
    "({n_neighbors} neighbours), Leiden clustering (resolution {resolution}) and UMAP."
)


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if not value:
            return [(prefix, "(none)")]
        rows: list[tuple[str, str]] = []
        for key, sub in value.items():
            rows.extend(_flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return rows
    if isinstance(value, list | tuple):
        return [(prefix, ", ".join(map(str, value)) if value else "(none)")]
    return [(prefix, "" if value is None else str(value))]


def _describe(value: Any) -> str:
    """A config value as one line: ``{"group": "SSc"}`` -> ``group = SSc``."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} = {_describe(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(map(_describe, value))
    return "" if value is None else str(value)


def methods_section(run_json: Mapping[str, Any]) -> Section:
    """Methods generated from ``run.json``: tools and versions, parameters, seeds, timings.

    Parameters
    ----------
    run_json
        The record :func:`sccohort.pipeline.run_pipeline` writes (``config``, ``versions``,
        ``seeds``, ``stages``, ``machine``, ``command``, ``started``/``finished``); any other
        config table (e.g. statistics settings added by later stages) is listed too.

    Returns
    -------
    Section
        Anchor ``methods``.
    """
    if not isinstance(run_json, Mapping) or "config" not in run_json:
        raise InputError(
            "run.json has no 'config' record", key="config", hint="Pass the run's run.json"
        )
    config = run_json.get("config", {})
    versions = run_json.get("versions", {})
    blocks: list[Any] = []
    sc_version = versions.get("sccohort", "unknown")
    status = run_json.get("status", "unknown")
    blocks.append(
        Paragraph(
            f"Analysed with sccohort {sc_version} (Python {versions.get('python', '?')}); run "
            f"started {run_json.get('started', '?')}, finished {run_json.get('finished') or '-'}"
            f" (status: {status})."
        )
    )
    prose = _methods_prose(config, run_json.get("resolved") or {})
    if prose:
        blocks.append(Paragraph(" ".join(prose)))
    skipped = run_json.get("skipped") or []
    if skipped:
        blocks.append(Paragraph("Not run on these data:"))
        blocks.append(Items([f"{s['analysis']} ({s['stage']}): {s['reason']}" for s in skipped]))
    for extra in ("tests", "multiple_testing"):
        if extra in run_json:
            blocks.append(Items([f"{k}: {v}" for k, v in _flatten(extra, run_json[extra])]))
    seeds = run_json.get("seeds", {})
    if seeds:
        blocks.append(
            Paragraph(
                "Random seeds: " + ", ".join(f"{k} = {v}" for k, v in _flatten("", seeds)) + "."
            )
        )
    if run_json.get("command"):
        blocks.append(Paragraph("Command: " + " ".join(map(str, run_json["command"]))))
    blocks += _methods_tables(config, versions, run_json)
    return Section("Methods", "methods", blocks)


def _methods_prose(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> list[str]:
    """Sentences of the methods from each config section, "auto" settings as resolved."""
    prose = []
    for key, template in _PROSE.items():
        params = config.get(key)
        if isinstance(params, Mapping):
            params = {**params} | {
                name.split(".", 1)[1]: value
                for name, value in resolved.items()
                if name.startswith(f"{key}.")
            }
            if key == "embedding" and params.get("n_top_genes") == "auto":  # no RNA
                template = _PROTEIN_EMBEDDING
            try:
                prose.append(template.format(**params))
            except (KeyError, ValueError, IndexError):
                continue  # an older or newer config: the parameter table below lists it all
    return prose


def _methods_tables(
    config: Mapping[str, Any], versions: Mapping[str, Any], run_json: Mapping[str, Any]
) -> list[Any]:
    """The contrasts, parameters, versions, timings, machine and inputs of a run."""
    blocks: list[Any] = []
    contrasts = config.get("contrasts", {})
    if contrasts:
        rows = [
            {"contrast": name, **{key: _describe(value) for key, value in spec.items()}}
            for name, spec in contrasts.items()
        ]
        blocks.append(TableBlock(pd.DataFrame(rows), caption="Contrasts as declared"))
    params = [
        {"section": key, "parameter": name, "value": value}
        for key, val in config.items()
        if key not in ("contrasts", "config")
        for name, value in _flatten("", val)
    ]
    if params:
        blocks.append(
            TableBlock(
                pd.DataFrame(params),
                caption="Every parameter of the run (config as resolved)",
                max_rows=500,
            )  # fmt: skip
        )
    if versions:
        blocks.append(
            TableBlock(
                pd.DataFrame({"package": list(versions), "version": list(versions.values())}),
                caption="Software versions",
                max_rows=200,
            )
        )
    stages = run_json.get("stages", [])
    if stages:
        timing = pd.DataFrame(stages)
        total = float(pd.to_numeric(timing.get("wall_s"), errors="coerce").sum())
        blocks.append(
            TableBlock(
                timing,
                caption=f"Stage timings (total {total:,.1f} s; peak memory per stage in GB)",
            )
        )
    machine = run_json.get("machine")
    if machine:
        blocks.append(
            Paragraph("Machine: " + ", ".join(f"{k} {v}" for k, v in _flatten("", machine)) + ".")
        )
    n_inputs = len(run_json.get("inputs", {}))
    if n_inputs:
        blocks.append(
            Paragraph(
                f"SHA-256 checksums of the {n_inputs} input files are recorded in run.json "
                f"(fingerprint {str(run_json.get('fingerprint', ''))[:16]}...)."
            )
        )
    return blocks

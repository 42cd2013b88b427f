"""Settings that depend on the panel, checked against every count file before a run starts.

A whole transcriptome holds ~20,000 genes and a CITE-seq panel 10-200 antibodies; targeted
RNA panels hold 400-1,000 genes and cytometry-like panels a handful of antibodies. Settings
left at ``"auto"`` adapt to the panel in the stages that use them; a value the config sets
explicitly is honoured, so one that the panel cannot satisfy is an error here, naming the
sample and the key to change, before anything is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from sccohort.config import Config
from sccohort.errors import InputError
from sccohort.io.probe import SampleProbe
from sccohort.tl.hvg import hvg_count, qc_gene_mask

__all__ = ["check_panel"]


def check_panel(config: Config, probes: Mapping[str, SampleProbe]) -> None:
    """Raise when a sample's panel cannot satisfy a setting of the config.

    Parameters
    ----------
    config
        The run's configuration.
    probes
        ``sample_id -> SampleProbe`` of every sample (`sccohort.io.probe.probe_samples`).

    Raises
    ------
    InputError
        Samples that differ in which of RNA / protein they hold; ``embedding.n_neighbors``
        not below the cohort's cells; an explicit
        ``embedding.n_top_genes`` above the genes a panel can offer (mitochondrial, ribosomal
        and haemoglobin genes aside); an explicit ``qc.min_genes`` at or above a panel's
        genes; an explicit ``embedding.n_pcs_prot`` at or above a panel's antibodies.
    """
    _check_same_modalities(config, probes)
    cells = sum(p.n_cells for p in probes.values())
    if probes and config.embedding.n_neighbors >= cells:
        raise InputError(
            f"n_neighbors = {config.embedding.n_neighbors} but the samples hold {cells} cells "
            "in all (before QC)",
            file=config.path,
            key="embedding.n_neighbors",
            hint="Set it well below the number of cells (default 20)",
        )
    for sample, probe in probes.items():
        rna, prot = probe.modalities.get("rna"), probe.modalities.get("prot")
        if rna is not None:
            _check_rna(config, sample, rna.features)
        if prot is not None:
            n_pcs = config.embedding.n_pcs_prot
            if n_pcs and n_pcs >= prot.n_features:
                raise InputError(
                    f"n_pcs_prot = {n_pcs} but the panel has {prot.n_features} antibodies",
                    file=config.path,
                    sample=sample,
                    key="embedding.n_pcs_prot",
                    hint=f"Set it below {prot.n_features}, or to 0 (automatic)",
                )


def _check_rna(config: Config, sample: str, genes: tuple[str, ...]) -> None:
    n_top = config.embedding.n_top_genes
    eligible = int((~qc_gene_mask(genes, ("mito", "ribo", "hb"))).sum())
    if n_top != "auto" and hvg_count(n_top, genes) > eligible:
        raise InputError(
            f"n_top_genes = {n_top} but the panel has {eligible} genes to choose from "
            "(mitochondrial, ribosomal and haemoglobin genes aside)",
            file=config.path,
            sample=sample,
            key="embedding.n_top_genes",
            hint=f'Set it to at most {eligible}, or to "auto" (every gene of a smaller panel)',
        )
    min_genes = config.qc.min_genes
    if min_genes != "auto" and min_genes >= len(genes):
        raise InputError(
            f"min_genes = {min_genes} but the panel has {len(genes)} genes",
            file=config.path,
            sample=sample,
            key="qc.min_genes",
            hint='Set it well below the panel size, or to "auto" (scaled to the panel)',
        )


def _check_same_modalities(config: Config, probes: Mapping[str, SampleProbe]) -> None:
    """Every sample holds the modalities most samples hold; the odd one out is named."""
    kinds = {s: frozenset(p.modalities) & {"rna", "prot"} for s, p in probes.items()}
    if not kinds:
        return
    counts = Counter(kinds.values())
    reference = max(counts, key=lambda kind: (counts[kind], len(kind)))
    for sample, kind in kinds.items():
        if kind != reference:
            others = counts[reference]
            raise InputError(
                f"this sample holds {' + '.join(sorted(kind)) or 'no RNA or protein'} while "
                f"{others} other sample(s) hold {' + '.join(sorted(reference))}",
                file=config.samples,
                sample=sample,
                column="modality",
                hint="Every sample of a cohort needs the same modalities: supply the missing "
                "counts, leave the sample out, or set the modality column to read one",
            )

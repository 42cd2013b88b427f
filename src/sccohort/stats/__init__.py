"""Donor-level statistics: composition, association tests, DA, pseudobulk DE, enrichment, gating.

Every name in ``__all__`` is public API; each function takes tidy tables or AnnData and
returns tidy tables whose first columns are :data:`sccohort.io.CORE_COLUMNS`.
"""

from sccohort.cohort import Contrast, ContrastDesign
from sccohort.multitest import adjust_pvalues, spatial_fdr
from sccohort.stats.abundance import compare_abundance, compare_donor_values
from sccohort.stats.composition import composition, donor_counts, donor_shares
from sccohort.stats.deseq2 import deseq2_wald
from sccohort.stats.donor_variation import DonorVariation, fit_donor_variation, reference_variation
from sccohort.stats.enrichment import enrich_markers, ora, sets_covered
from sccohort.stats.gating import GatingOptions, gate_subsets, gating_strategy
from sccohort.stats.gating_result import Gate, GatingResult
from sccohort.stats.gsea import gsea
from sccohort.stats.influence import leave_one_donor_out
from sccohort.stats.interactions import compare_interactions
from sccohort.stats.longitudinal import expression_trajectory, paired_test, trajectories
from sccohort.stats.mixed_model import random_intercept, voom_weights
from sccohort.stats.neighbourhoods import neighbourhoods
from sccohort.stats.permutation import (
    attainable_significance,
    describe_attainable,
    precision_weights,
)
from sccohort.stats.power import (
    abundance_power,
    cohort_detectable_fold,
    detectable_fold,
    donors_needed,
)
from sccohort.stats.predict import PredictionResult, delong_ci, predict_phenotype, share_logits
from sccohort.stats.protein_markers import protein_markers
from sccohort.stats.pseudobulk import pseudobulk
from sccohort.stats.pseudobulk_de import filter_by_expr, pseudobulk_de, pseudobulk_de_all
from sccohort.stats.selection import associated_subsets, characterised_subsets
from sccohort.stats.signatures import donor_scores, score_cells, signature_sets
from sccohort.stats.tests import kruskal_dunn, ks_test, proportion_biplot

__all__ = [
    "Contrast",
    "ContrastDesign",
    "DonorVariation",
    "Gate",
    "GatingOptions",
    "GatingResult",
    "PredictionResult",
    "abundance_power",
    "adjust_pvalues",
    "associated_subsets",
    "attainable_significance",
    "characterised_subsets",
    "cohort_detectable_fold",
    "compare_abundance",
    "compare_donor_values",
    "compare_interactions",
    "composition",
    "delong_ci",
    "describe_attainable",
    "deseq2_wald",
    "detectable_fold",
    "donor_counts",
    "donor_scores",
    "donor_shares",
    "donors_needed",
    "enrich_markers",
    "expression_trajectory",
    "filter_by_expr",
    "fit_donor_variation",
    "gate_subsets",
    "gating_strategy",
    "gsea",
    "kruskal_dunn",
    "ks_test",
    "leave_one_donor_out",
    "neighbourhoods",
    "ora",
    "paired_test",
    "precision_weights",
    "predict_phenotype",
    "proportion_biplot",
    "protein_markers",
    "pseudobulk",
    "pseudobulk_de",
    "pseudobulk_de_all",
    "random_intercept",
    "reference_variation",
    "score_cells",
    "sets_covered",
    "share_logits",
    "signature_sets",
    "spatial_fdr",
    "trajectories",
    "voom_weights",
]

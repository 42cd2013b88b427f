"""Cohort-level cell work: embeddings, clusters, annotation, markers, tissue, trajectories.

Every name in ``__all__`` is public API (scanpy's conventions: ``use_rep``, ``groupby``,
``key_added``, ``seed``).
"""

from sccohort.tl.annotate import annotate, label_coverage, load_markers
from sccohort.tl.cell_graph import cell_graph
from sccohort.tl.clustering import leiden, leiden_membership
from sccohort.tl.embed import harmony, umap
from sccohort.tl.fate import fate_probabilities
from sccohort.tl.hvg import highly_variable_genes, hvg_count
from sccohort.tl.interactions import ligand_receptor, load_ligand_receptor
from sccohort.tl.knn import knn_exact, knn_ivf
from sccohort.tl.markers import rank_markers
from sccohort.tl.metrics import ari, ilisi, kbet_acceptance, lisi, silhouette
from sccohort.tl.niches import (
    neighbourhood_composition,
    neighbourhood_enrichment,
    niches,
    spatial_neighbors,
)
from sccohort.tl.pca import pca_prot, pca_rna, scaled_pca
from sccohort.tl.subsets import subsets
from sccohort.tl.tissue import annotate_tissue, integrate_lineages, tissue_markers
from sccohort.tl.trajectory import pseudotime
from sccohort.tl.trajectory_genes import trajectory_genes
from sccohort.tl.transfer import load_reference, transfer_labels
from sccohort.tl.wnn import WNNResult, wnn, wnn_graph

__all__ = [
    "WNNResult",
    "annotate",
    "annotate_tissue",
    "ari",
    "cell_graph",
    "fate_probabilities",
    "harmony",
    "highly_variable_genes",
    "hvg_count",
    "ilisi",
    "integrate_lineages",
    "kbet_acceptance",
    "knn_exact",
    "knn_ivf",
    "label_coverage",
    "leiden",
    "leiden_membership",
    "ligand_receptor",
    "lisi",
    "load_ligand_receptor",
    "load_markers",
    "load_reference",
    "neighbourhood_composition",
    "neighbourhood_enrichment",
    "niches",
    "pca_prot",
    "pca_rna",
    "pseudotime",
    "rank_markers",
    "scaled_pca",
    "silhouette",
    "spatial_neighbors",
    "subsets",
    "tissue_markers",
    "trajectory_genes",
    "transfer_labels",
    "umap",
    "wnn",
    "wnn_graph",
]

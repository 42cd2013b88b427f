"""The cohort's cell graph from whatever modalities it has: WNN with two, kNN with one.

RNA + protein cohorts get the WNN graph (:func:`sccohort.tl.wnn`); RNA-only and
protein-only cohorts get their one embedding's kNN graph, written under the same names, so
that clustering and the UMAP layout read one graph whatever the panel.
"""

from __future__ import annotations

from collections.abc import Mapping

import scanpy as sc
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.tl.wnn import wnn

__all__ = ["EXACT_KNN_CELLS", "cell_graph"]

#: Up to this many cells a one-modality graph uses the exact kNN search (scikit-learn):
#: pynndescent's first call compiles for over a minute on 2 cores, longer than the exact
#: search takes at that size.
EXACT_KNN_CELLS = 50_000


def cell_graph(
    adata: AnnData,
    reps: Mapping[str, str],
    *,
    n_neighbors: int = 20,
    seed: int = 0,
    key_added: str = "wnn",
) -> str:
    """The cells' neighbour graph from one embedding per modality, written into ``adata``.

    Parameters
    ----------
    adata
        Cells x anything, with ``obsm[reps[m]]`` (``n_cells x d``) for every modality ``m``.
    reps
        Modality name -> ``obsm`` key of its embedding (one or more modalities).
    n_neighbors
        Neighbours per cell.
    seed
        Seed of the WNN search (or of scanpy's neighbours).
    key_added
        As in :func:`sccohort.tl.wnn`: ``obsp[f"{key_added}_connectivities"]``,
        ``obsp[f"{key_added}_distances"]``, ``uns[key_added]`` and ``obs[f"{m}_weight"]``
        (1.0 with one modality); with two or more modalities also the SNN graph.

    Returns
    -------
    str
        The ``neighbors_key`` to cluster on: ``f"{key_added}_snn"`` with two or more
        modalities (Seurat's FindClusters on ``"wsnn"``, which is what agrees with Seurat:
        ``benchmarks/bench_wnn_seurat.py``), else ``key_added``.

    Examples
    --------
    >>> from anndata import AnnData
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.tl import cell_graph, leiden
    >>> mdata = toy_mudata(embedded=True)
    >>> graph = AnnData(obs=mdata.obs[[]], obsm={"rna": mdata["rna"].obsm["X_pca"]})
    >>> key = cell_graph(graph, {"rna": "rna"}, n_neighbors=15)
    >>> key, sorted(graph.obsp.keys())
    ('wnn', ['wnn_connectivities', 'wnn_distances'])
    >>> leiden(graph, neighbors_key=key, resolution=0.5)
    """
    reps = dict(reps)
    if not reps:
        raise InputError("no embedding given", key="reps", hint="Name one obsm key per modality")
    missing = [key for key in reps.values() if key not in adata.obsm]
    if missing:
        raise InputError(
            f"obsm has no '{missing[0]}'",
            key="reps",
            hint=f"Embeddings present: {', '.join(adata.obsm) or 'none'}",
        )
    if len(reps) > 1:
        wnn(adata, reps, n_neighbors=n_neighbors, seed=seed, key_added=key_added)
        return f"{key_added}_snn"
    ((modality, key),) = reps.items()
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep=key,
        key_added=key_added,
        random_state=seed,
        transformer="sklearn" if adata.n_obs <= EXACT_KNN_CELLS else None,
    )
    adata.obs[f"{modality}_weight"] = 1.0
    return key_added

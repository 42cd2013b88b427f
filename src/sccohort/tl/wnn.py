"""Weighted nearest neighbours (WNN) of Hao et al. 2021, with Seurat 4.3 defaults.

The algorithm follows the STAR Methods of Hao et al., Cell 2021 ("Weighted nearest neighbor
analysis") as Seurat 4.3 ``FindMultiModalNeighbors`` runs it:

1. L2-normalise each modality's embedding per cell.
2. Per modality, find each cell's ``n_neighbors`` nearest neighbours (the cell itself first).
3. Predict each cell from the mean of its neighbours (self excluded) found in the same modality
   ("within") and in each other modality ("cross"); distance of the cell to each prediction,
   minus the distance to its nearest other cell, clipped at 0.
4. Per-cell kernel width: mean distance to the ``n_neighbors`` farthest cells among those with
   the smallest non-zero Jaccard overlap of neighbour sets (Seurat's SNN width).
5. Score = exp(-within/width) / (exp(-cross/width) + cross_constant), clipped to [0, 200];
   modality weights = softmax of the scores over modalities.
6. Candidates = union of each modality's ``knn_range`` nearest neighbours (self excluded);
   affinity = sum over modalities of weight * exp(-(distance - nearest) / width); the
   ``n_neighbors`` candidates of highest affinity are the WNN neighbours, at distance
   sqrt((1 - affinity) / 2).
7. The shared-nearest-neighbour graph (Jaccard, pruned below ``prune_snn``) and a UMAP fuzzy
   connectivity graph are built from the WNN neighbours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from scipy import sparse

from sccohort.errors import InputError
from sccohort.tl.knn import knn_exact, knn_ivf
from sccohort.tl.wnn_kernels import _umap_connectivities, _wnn_steps

__all__ = ["WNNInputError", "WNNResult", "wnn", "wnn_graph"]

_EXACT_MAX_CELLS = 20_000


class WNNInputError(InputError, ValueError):
    """Bad embeddings given to WNN (also a ``ValueError``)."""


@dataclass(frozen=True)
class WNNResult:
    """Output of :func:`wnn_graph` for ``n`` cells and ``M`` modalities.

    Attributes
    ----------
    modalities
        Modality names, in the column order of ``weights`` and ``bandwidths``.
    weights
        ``(n, M)`` per-cell modality weights; each row sums to 1.
    knn_indices
        ``(n, k)`` WNN neighbours of each cell (itself excluded), highest affinity first.
    knn_distances
        ``(n, k)`` WNN distances ``sqrt((1 - affinity) / 2)``, ascending.
    connectivities
        ``(n, n)`` CSR, symmetric UMAP fuzzy-set weights of the WNN neighbours (scanpy's
        ``connectivities``: for Leiden and UMAP).
    distances
        ``(n, n)`` CSR, the WNN distances of each cell's ``k`` neighbours (scanpy's ``distances``).
    snn
        ``(n, n)`` CSR, Seurat's ``wsnn`` graph: Jaccard overlap of WNN neighbour sets, entries
        below ``prune_snn`` removed, diagonal 1.
    bandwidths
        ``(n, M)`` per-cell kernel widths of each modality.
    params
        The parameters used.

    Examples
    --------
    >>> from sccohort.tl import wnn_graph
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> result = wnn_graph({"a": x, "b": x[:, :3]}, n_neighbors=10)
    >>> result.modalities, result.snn.shape
    (('a', 'b'), (200, 200))
    """

    modalities: tuple[str, ...]
    weights: np.ndarray
    knn_indices: np.ndarray
    knn_distances: np.ndarray
    connectivities: sparse.csr_matrix
    distances: sparse.csr_matrix
    snn: sparse.csr_matrix
    bandwidths: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# nearest neighbours within one modality
# ---------------------------------------------------------------------------------------------


def _knn(
    x: np.ndarray, k: int, method: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(n, k)`` neighbours of each row and, for the IVF search, its cells grouped by list."""
    if method == "exact" or (method == "auto" and x.shape[0] <= _EXACT_MAX_CELLS):
        return knn_exact(x, k), None
    return knn_ivf(x, k, rng, return_order=True)


# ---------------------------------------------------------------------------------------------
# per-cell kernels (numba)
# ---------------------------------------------------------------------------------------------


def _distance_matrix(knn_indices: np.ndarray, knn_distances: np.ndarray) -> sparse.csr_matrix:
    n, k = knn_indices.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    mat = sparse.csr_matrix(
        (knn_distances.ravel().astype(np.float64), knn_indices.ravel(), indptr), shape=(n, n)
    )
    mat.sort_indices()
    return mat


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _check_embeddings(embeddings: Mapping[str, Any], n_neighbors: int) -> dict[str, np.ndarray]:
    if not isinstance(embeddings, Mapping) or len(embeddings) < 2:
        raise WNNInputError(
            "WNN needs embeddings of at least two modalities",
            hint="pass a dict such as {'rna': rna_pcs, 'prot': prot_pcs}",
        )
    out: dict[str, np.ndarray] = {}
    n_cells = None
    for name, emb in embeddings.items():
        arr = np.asarray(emb)
        if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.number):
            raise WNNInputError(
                f"the embedding must be a numeric cells x dimensions matrix, got shape "
                f"{arr.shape} of {arr.dtype}",
                key=str(name),
            )
        if n_cells is None:
            n_cells, first = arr.shape[0], name
        elif arr.shape[0] != n_cells:
            raise WNNInputError(
                f"the embedding has {arr.shape[0]} cells but '{first}' has {n_cells}",
                key=str(name),
                hint="give every modality the same cells in the same order",
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise WNNInputError(
                f"the embedding has {int(bad.sum())} NaN or infinite values (first in cell {row})",
                key=str(name),
                hint="remove those cells or recompute the embedding",
            )
        arr = arr.astype(np.float64)
        norms = np.linalg.norm(arr, axis=1)
        if (norms == 0).any():
            row = int(np.flatnonzero(norms == 0)[0])
            raise WNNInputError(
                f"{int((norms == 0).sum())} cells have an all-zero embedding (first: cell {row}), "
                "which cannot be L2-normalised",
                key=str(name),
                hint="remove cells without signal in this modality",
            )
        out[str(name)] = arr / norms[:, None]
    if n_cells <= n_neighbors:
        raise WNNInputError(
            f"WNN with n_neighbors={n_neighbors} needs more than {n_neighbors} cells, "
            f"got {n_cells}",
            hint="lower n_neighbors",
        )
    return out


def _modality_knn(
    normed: dict[str, np.ndarray], range_k: int, knn_method: str, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``range_k`` neighbours per modality and the first IVF search's cell order (or 0..n-1)."""
    knn_self = {}
    perm = None
    for m, x in normed.items():
        others, order = _knn(x.astype(np.float32), range_k, knn_method, rng)
        knn_self[m] = others
        perm = order if perm is None else perm
    if perm is None:
        perm = np.arange(next(iter(normed.values())).shape[0], dtype=np.int64)
    return knn_self, perm


def _renumber_knn(
    knn_self: dict[str, np.ndarray], perm: np.ndarray, inv: np.ndarray, range_k: int
) -> None:
    """Renumber each modality's neighbours to the order ``perm`` in place (int32, self first)."""
    n = perm.shape[0]
    inv32 = inv.astype(np.int32)
    for m in list(knn_self):  # int32 (half the memory), renumbered a block at a time
        others = knn_self[m]
        renumbered = np.empty((n, range_k + 1), dtype=np.int32)
        renumbered[:, 0] = np.arange(n, dtype=np.int32)
        for s in range(0, n, 65_536):
            renumbered[s : s + 65_536, 1:] = inv32[others[perm[s : s + 65_536]]]
        knn_self[m] = renumbered
        del others


def wnn_graph(
    embeddings: Mapping[str, np.ndarray],
    *,
    n_neighbors: int = 20,
    knn_range: int = 200,
    prune_snn: float = 1 / 15,
    cross_constant: float = 1e-4,
    sd_scale: float = 1.0,
    knn_method: str = "auto",
    seed: int = 0,
    n_jobs: int | None = None,
) -> WNNResult:
    """Weighted nearest-neighbour graph of several modalities (Hao et al. 2021; Seurat 4.3).

    Parameters
    ----------
    embeddings
        Modality name -> ``(n_cells, d_m)`` embedding (e.g. PCs), the same cells in the same
        order in every modality; at least two modalities.
    n_neighbors
        Neighbours per cell, in each modality and in the WNN graph (Seurat ``k.nn``).
    knn_range
        Nearest neighbours per modality whose union are the WNN candidates (``knn.range``).
    prune_snn
        SNN edges with a Jaccard overlap below this are removed (``prune.SNN``).
    cross_constant
        Added to the cross-modality kernel to avoid dividing by zero (``cross.contant.list``).
    sd_scale
        Scale of the kernel widths (``sd.scale``).
    knn_method
        ``"exact"`` (blocked brute force), ``"approximate"`` (k-means inverted lists, for
        many cells) or ``"auto"`` (exact up to 20,000 cells).
    seed
        Seed of the approximate search's k-means; the result is deterministic for a seed.
    n_jobs
        Threads for the per-cell work; default: all numba threads.

    Returns
    -------
    WNNResult
        Weights ``(n, M)``, WNN neighbours and distances ``(n, n_neighbors)``, and ``(n, n)``
        connectivity, distance and SNN graphs.

    Examples
    --------
    >>> from sccohort.tl import wnn_graph
    >>> x = np.random.default_rng(0).normal(size=(200, 5))
    >>> result = wnn_graph({"a": x, "b": x[:, :3]}, n_neighbors=10)
    >>> result.connectivities.shape, result.weights.shape
    ((200, 200), (200, 2))
    """
    if n_neighbors < 2:
        raise WNNInputError(f"n_neighbors must be at least 2, got {n_neighbors}")
    if knn_method not in {"auto", "exact", "approximate"}:
        raise WNNInputError(
            f"unknown knn_method '{knn_method}'", hint="use 'auto', 'exact' or 'approximate'"
        )
    if not 0 <= prune_snn < 1:
        raise WNNInputError(f"prune_snn must be in [0, 1), got {prune_snn}")
    normed = _check_embeddings(embeddings, n_neighbors)
    names = tuple(normed)
    n = next(iter(normed.values())).shape[0]
    rng = np.random.default_rng(seed)
    range_k = int(min(max(knn_range, n_neighbors), n - 1))

    old_threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_jobs or old_threads, os.cpu_count() or 1, old_threads)))
    try:
        knn_self, perm = _modality_knn(normed, range_k, knn_method, rng)
        # The per-cell steps below read the rows of neighbours: renumber the cells so that
        # neighbours lie close in memory (IVF list order). Every per-cell result is unchanged.
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n, dtype=np.int64)
        x_all = np.ascontiguousarray(np.hstack([normed[m] for m in names])[perm])
        bounds = np.cumsum([0] + [normed[m].shape[1] for m in names]).astype(np.int64)
        _renumber_knn(knn_self, perm, inv, range_k)
        weights, sigma, knn_idx, aff, snn = _wnn_steps(
            x_all, bounds, names, knn_self, n_neighbors, sd_scale, cross_constant, prune_snn
        )
        weights, sigma, aff = weights[inv], sigma[inv], aff[inv]
        knn_idx = perm[knn_idx[inv]]
        snn = snn[inv][:, inv].tocsr()
        snn.sort_indices()
        knn_dist = np.sqrt(np.clip((1.0 - aff) / 2.0, 0.0, 1.0))
    finally:
        numba.set_num_threads(old_threads)
    conn = _umap_connectivities(knn_idx, knn_dist)
    params = {
        "method": "wnn",
        "modalities": list(names),
        "n_neighbors": int(n_neighbors),
        "knn_range": int(knn_range),
        "prune_snn": float(prune_snn),
        "cross_constant": float(cross_constant),
        "sd_scale": float(sd_scale),
        "knn_method": knn_method,
        "seed": int(seed),
    }
    return WNNResult(
        modalities=names,
        weights=weights,
        knn_indices=knn_idx,
        knn_distances=knn_dist,
        connectivities=conn,
        distances=_distance_matrix(knn_idx, knn_dist),
        snn=snn,
        bandwidths=sigma,
        params=params,
    )


def _get_embedding(data: Any, modality: str, key: str) -> np.ndarray:
    """``obsm[key]`` of a MuData (global, or of ``mod[modality]``) or of an AnnData."""
    if key in data.obsm:
        return np.asarray(data.obsm[key])
    mods = getattr(data, "mod", None)
    if mods is not None and modality in mods and key in mods[modality].obsm:
        sub = mods[modality]
        if sub.n_obs != data.n_obs or not sub.obs_names.equals(data.obs_names):
            raise WNNInputError(
                f"modality '{modality}' holds {sub.n_obs} cells, not the {data.n_obs} cells of "
                "the MuData in the same order",
                key=f"mod['{modality}'].obsm['{key}']",
                hint="intersect the modalities first (mudata.pp.intersect_obs)",
            )
        return np.asarray(sub.obsm[key])
    raise WNNInputError(
        f"no embedding '{key}' for modality '{modality}'",
        key=f"obsm['{key}']",
        hint=f"compute it first (e.g. PCA) into obsm['{key}'] or mod['{modality}'].obsm",
    )


def wnn(
    data: Any,
    reps: Mapping[str, str] | None = None,
    *,
    n_dims: Mapping[str, int] | None = None,
    n_neighbors: int = 20,
    knn_range: int = 200,
    prune_snn: float = 1 / 15,
    cross_constant: float = 1e-4,
    knn_method: str = "auto",
    seed: int = 0,
    key_added: str = "wnn",
    copy: bool = False,
) -> Any:
    """WNN graph of a MuData/AnnData, written as scanpy ``neighbors`` writes its graph.

    Parameters
    ----------
    data
        MuData (embeddings in global ``obsm`` or in ``mod[name].obsm``) or AnnData.
    reps
        Modality name -> ``obsm`` key of its ``(n_cells, d)`` embedding; default
        ``{"rna": "X_pca", "prot": "X_pca_prot"}``.
    n_dims
        Modality name -> number of leading dimensions to use (default: all).
    n_neighbors, knn_range, prune_snn, cross_constant, knn_method, seed
        As in :func:`wnn_graph`.
    key_added
        Writes ``obsp[f"{key_added}_connectivities"]``, ``obsp[f"{key_added}_distances"]``,
        ``obsp[f"{key_added}_snn"]``, ``obsm[f"{key_added}_weights"]``, ``obs[f"{m}_weight"]``
        per modality, ``uns[key_added]`` (so ``sc.tl.leiden(..., neighbors_key=key_added)``
        and ``sc.tl.umap(..., neighbors_key=key_added)`` use it) and
        ``uns[f"{key_added}_snn"]`` (the SNN graph, as Seurat clusters on ``"wsnn"``).
    copy
        Work on and return a copy instead of writing into ``data``.

    Returns
    -------
    The copy if ``copy`` is true, else ``None``.

    Examples
    --------
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.tl import highly_variable_genes, pca_prot, pca_rna, wnn
    >>> mdata = toy_mudata()
    >>> highly_variable_genes(mdata["rna"], n_top_genes=500, batch_key=None)
    >>> pca_rna(mdata["rna"], n_comps=20)
    >>> pca_prot(mdata["prot"], n_comps=10)
    >>> wnn(mdata, {"rna": "X_pca", "prot": "X_pca_prot"}, n_neighbors=20, seed=0)
    >>> sorted(mdata.obsp.keys())
    ['wnn_connectivities', 'wnn_distances', 'wnn_snn']
    >>> bool(mdata.obs["rna_weight"].between(0, 1).all())
    True
    """
    reps = dict(reps or {"rna": "X_pca", "prot": "X_pca_prot"})
    data = data.copy() if copy else data
    embeddings = {}
    for modality, key in reps.items():
        emb = _get_embedding(data, modality, key)
        if n_dims and modality in n_dims:
            if n_dims[modality] > emb.shape[1]:
                raise WNNInputError(
                    f"n_dims asks for {n_dims[modality]} dimensions but the embedding has "
                    f"{emb.shape[1]}",
                    key=f"obsm['{key}']",
                )
            emb = emb[:, : n_dims[modality]]
        embeddings[modality] = emb
    res = wnn_graph(
        embeddings,
        n_neighbors=n_neighbors,
        knn_range=knn_range,
        prune_snn=prune_snn,
        cross_constant=cross_constant,
        knn_method=knn_method,
        seed=seed,
    )
    conn_key = f"{key_added}_connectivities"
    dist_key = f"{key_added}_distances"
    data.obsp[conn_key] = res.connectivities
    data.obsp[dist_key] = res.distances
    data.obsp[f"{key_added}_snn"] = res.snn
    data.obsm[f"{key_added}_weights"] = res.weights
    for r, modality in enumerate(res.modalities):
        data.obs[f"{modality}_weight"] = res.weights[:, r]
    params = dict(res.params)
    # scanpy's name for how connectivities were made (UMAP fuzzy union), so sc.tl.umap accepts it
    params.update(
        reps={k: str(v) for k, v in reps.items()}, metric="euclidean", method="umap", graph="wnn"
    )
    data.uns[key_added] = {
        "connectivities_key": conn_key,
        "distances_key": dist_key,
        "params": params,
    }
    # the shared-nearest-neighbour graph as a graph of its own: leiden(neighbors_key=...) on
    # it is Seurat's FindClusters on "wsnn"
    data.uns[f"{key_added}_snn"] = data.uns[key_added] | {"connectivities_key": f"{key_added}_snn"}
    return data if copy else None

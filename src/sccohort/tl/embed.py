"""Cohort embedding: Harmony on any embedding and the UMAP layout of a neighbour graph.

Functions follow scanpy's conventions: they take an AnnData, write named slots
(``key_added=``) and return None.

- `harmony`: Harmony (our implementation, :mod:`sccohort.tl.harmony_kernel`) on any
  embedding, seeded.
- `umap`: scanpy on a named neighbour graph; lays out a random subsample of very large
  cohorts and places the other cells from their neighbours.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.tl.clustering import _neighbors_entry
from sccohort.tl.hvg import highly_variable_genes, hvg_count, qc_gene_mask  # noqa: F401
from sccohort.tl.pca import pca_prot, pca_rna, scaled_pca  # noqa: F401

#: Above this many cells `umap` lays out a random subsample (see `umap`).
UMAP_MAX_CELLS = 100_000


def harmony(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    batch_key: str | Sequence[str] = "sample_id",
    key_added: str = "X_harmony",
    theta: float | Sequence[float] = 2.0,
    max_iter: int = 20,
    seed: int = 0,
    n_jobs: int = 0,
) -> None:
    """Harmony integration (Korsunsky et al. 2019) of an embedding across batches.

    Runs sccohort's own Harmony (:func:`sccohort.tl.harmony_kernel.run_harmony`, BSD like
    the package), with harmonypy 2.x's defaults: ``min(round(n_cells / 30), 100)`` clusters,
    ``sigma`` 0.1, ridge penalty estimated per cluster, 4 k-means rounds per iteration. It
    agrees with harmonypy 2.1 to within harmonypy's own seed-to-seed spread (kNN overlap,
    mixing and label purity: ``benchmarks/bench_harmony.py``), not to the bit. Harmony stops
    when its objective converges, so ``max_iter`` is an upper bound (R's default is 10; 20
    lets large cohorts converge).

    Parameters
    ----------
    adata
        Cells x anything, with ``obsm[use_rep]`` (``n_cells x n_dims``, finite).
    use_rep
        Embedding to integrate, e.g. ``"X_pca"`` or ``"X_pca_prot"``.
    batch_key
        ``obs`` column(s) with the batch of each cell (several: one batch variable each).
    key_added
        ``obsm`` key of the ``n_cells x n_dims`` float32 result.
    theta
        Diversity penalty (one value, or one per batch column).
    max_iter
        Maximum Harmony iterations.
    seed
        Random state of Harmony's k-means start and of its blocks of cells.
    n_jobs
        Unused since sccohort runs Harmony itself (kept for callers): it runs on one thread,
        which on a busy 2-core machine beat threads that wait for each other.

    Returns
    -------
    None. Writes ``obsm[key_added]`` and ``uns[key_added without "X_"]`` (parameters,
    ``n_iterations`` run and whether the objective ``converged``).

    Raises
    ------
    InputError
        ``obsm`` lacks ``use_rep``, ``obs`` lacks a batch column, the embedding has NaN or
        infinite values, or ``theta`` has neither one value nor one per batch column.

    Examples
    --------
    >>> from sccohort.tl import harmony, pca_prot
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> prot = mdata["prot"]
    >>> prot.obs["sample_id"] = mdata.obs["sample_id"].to_numpy()
    >>> pca_prot(prot, n_comps=10)
    >>> harmony(prot, use_rep="X_pca_prot", batch_key="sample_id", key_added="X_harmony_prot")
    >>> prot.obsm["X_harmony_prot"].shape
    (1200, 10)
    """
    from sccohort.tl.harmony_kernel import run_harmony

    if use_rep not in adata.obsm:
        raise InputError(
            f"obsm has no '{use_rep}'",
            key=use_rep,
            hint="compute the embedding first (pca_rna / pca_prot)",
        )
    keys = [batch_key] if isinstance(batch_key, str) else list(batch_key)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise InputError(
            f"obs has no batch column(s) {missing}",
            column=missing[0],
            hint=f"use one of {list(adata.obs.columns)}",
        )
    emb = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    bad = int((~np.isfinite(emb)).any(axis=1).sum()) if emb.ndim == 2 else 0
    if emb.ndim != 2 or bad:
        raise InputError(
            f"obsm['{use_rep}'] has {bad} cells with NaN or infinite values"
            if bad
            else f"obsm['{use_rep}'] is not a cells x dimensions matrix",
            key=use_rep,
            hint="recompute the embedding, or drop those cells first",
        )
    meta = pd.DataFrame({k: adata.obs[k].astype(str).to_numpy() for k in keys})
    if all(meta[k].nunique() < 2 for k in keys):
        warnings.warn(
            f"only one batch in {keys}: '{key_added}' is a copy of '{use_rep}'", stacklevel=2
        )
        adata.obsm[key_added] = emb.copy()
        return
    theta_arg = [float(theta)] * len(keys) if np.isscalar(theta) else [float(t) for t in theta]
    if len(theta_arg) != len(keys):
        raise InputError(
            f"theta has {len(theta_arg)} values for {len(keys)} batch columns",
            key="theta",
            hint="give one theta, or one per batch column",
        )
    res = run_harmony(
        emb, [meta[k].to_numpy() for k in keys], theta=theta_arg, max_iter_harmony=max_iter,
        seed=seed,
    )  # fmt: skip
    adata.obsm[key_added] = res.z_corr
    adata.uns[key_added.removeprefix("X_")] = {
        "use_rep": use_rep,
        "batch_key": keys,
        "theta": theta_arg,
        "max_iter": int(max_iter),
        "seed": int(seed),
        "n_iterations": int(res.n_iterations),
        "converged": bool(res.converged),
    }


def _induced(graph: sp.csr_matrix, idx: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(graph[idx][:, idx])


def _init_coords(embedding: np.ndarray) -> np.ndarray:
    """First two columns of an embedding, float32, as a UMAP starting layout."""
    return np.ascontiguousarray(np.asarray(embedding)[:, :2], dtype=np.float32)


def umap(
    adata: AnnData,
    *,
    neighbors_key: str | None = None,
    max_cells: int = UMAP_MAX_CELLS,
    key_added: str = "X_umap",
    min_dist: float = 0.5,
    init: str | None = None,
    seed: int = 0,
) -> None:
    """UMAP of a neighbour graph; large cohorts are laid out on a random subsample.

    Up to ``max_cells`` cells: ``sc.tl.umap`` on the graph. Above it, the layout is computed
    on ``max_cells`` randomly chosen cells (their induced subgraph, which keeps about
    ``max_cells / n_cells`` of each cell's edges: 43% for 230,000 cells and the default
    100,000), and every other cell is placed at the connectivity-weighted mean of its laid-out
    neighbours; cells whose neighbours are all unplaced are placed in a next round from the
    placed ones. Cells with no path to a laid-out cell get NaN (counted in
    ``uns[key]["n_unplaced"]``). Figures draw a random subsample anyway (the study showed
    30,000 cells per UMAP).

    Parameters
    ----------
    adata
        Cells x anything with the graph named by ``uns[neighbors_key]``.
    neighbors_key
        Graph to lay out (None: ``"neighbors"``).
    max_cells
        Largest number of cells laid out by UMAP itself.
    key_added
        ``obsm`` key of the ``n_cells x 2`` float32 coordinates.
    min_dist
        UMAP's minimum distance.
    init
        ``obsm`` key of an embedding whose first two columns start the layout (e.g. the
        Harmony PCs), or None for UMAP's spectral initialisation. PCA initialisation keeps
        the global structure as well as the spectral one (Kobak & Linderman 2021, Nat.
        Biotechnol.) and skips its eigendecomposition (about half the layout's time).
    seed
        Random seed of the subsample and of UMAP.

    Returns
    -------
    None. Writes ``obsm[key_added]`` and ``uns[key_added without "X_"]`` (parameters, number
    of cells laid out, placed and unplaced).

    Examples
    --------
    >>> from sccohort.tl import umap
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata(embedded=True)  # HVGs, PCs and the WNN graph
    >>> umap(mdata, neighbors_key="wnn", seed=0)
    >>> mdata.obsm["X_umap"].shape
    (1200, 2)
    """
    import scanpy as sc

    key, entry = _neighbors_entry(adata, neighbors_key)
    graph = sp.csr_matrix(adata.obsp[entry["connectivities_key"]])
    n = adata.n_obs
    info: dict = {"neighbors_key": key, "max_cells": int(max_cells), "seed": int(seed)}
    if init is not None and init not in adata.obsm:
        raise InputError(
            f"obsm has no embedding '{init}' to start UMAP from",
            key="init",
            hint=f"Embeddings: {', '.join(adata.obsm)}; or init=None (spectral)",
        )
    info["init"] = init or "spectral"
    rng = np.random.default_rng(seed)
    sub = np.arange(n) if n <= max_cells else np.sort(rng.choice(n, size=max_cells, replace=False))
    params = dict(entry.get("params", {}))
    rep = params.get("use_rep")
    if rep is not None and rep in adata.obsm:
        small = AnnData(obs=pd.DataFrame(index=adata.obs_names[sub]))
        small.obsm[rep] = np.asarray(adata.obsm[rep])[sub]
    else:
        # A graph without its representation at hand (WNN; a graph built from an embedding
        # held elsewhere): UMAP only uses the data to place disconnected components of the
        # spectral initialisation; zeros stand in.
        small = AnnData(X=np.zeros((sub.size, 1), dtype=np.float32))
        small.obs_names = adata.obs_names[sub]
        params |= {"use_rep": "X", "n_pcs": None}
    small.obsp["connectivities"] = graph if sub.size == n else _induced(graph, sub)
    small.uns["neighbors"] = {"connectivities_key": "connectivities", "params": params}
    init_pos = "spectral"
    if init is not None:
        small.obsm["_umap_init"] = _init_coords(np.asarray(adata.obsm[init])[sub])
        init_pos = "_umap_init"
    sc.tl.umap(small, min_dist=min_dist, random_state=seed, init_pos=init_pos)
    if sub.size == n:
        adata.obsm[key_added] = np.asarray(small.obsm["X_umap"], dtype=np.float32)
        adata.uns[key_added.removeprefix("X_")] = info | {
            "n_laid_out": n,
            "n_placed": 0,
            "n_unplaced": 0,
        }
        return
    coords = np.full((n, 2), np.nan)
    coords[sub] = small.obsm["X_umap"]
    placed = np.zeros(n, dtype=bool)
    placed[sub] = True
    n_placed = 0
    while not placed.all():
        w = graph[:, placed]
        weight = np.asarray(w.sum(axis=1)).ravel()
        new = ~placed & (weight > 0)
        if not new.any():
            break
        coords[new] = (w[new] @ coords[placed]) / weight[new, None]
        placed |= new
        n_placed += int(new.sum())
    n_unplaced = int((~placed).sum())
    if n_unplaced:
        warnings.warn(
            f"{n_unplaced} cells have no path to a laid-out cell: their UMAP is NaN",
            stacklevel=2,
        )
    adata.obsm[key_added] = coords.astype(np.float32)
    adata.uns[key_added.removeprefix("X_")] = info | {
        "n_laid_out": int(max_cells),
        "n_placed": n_placed,
        "n_unplaced": n_unplaced,
    }

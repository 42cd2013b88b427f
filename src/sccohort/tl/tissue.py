"""Tissue cells beside the blood: their cell types, and the lineages both share in one embedding.

`annotate_tissue` labels the cells of tissue samples (kidney, lung, skin; cells or nuclei)
with the shipped PBMC markers plus tissue markers (``resources/tissue_markers_rna.csv``:
epithelial types of kidney, lung and skin, endothelial, fibroblasts and pericytes, tissue
macrophages), on Leiden clusters of their own PCA as the blood's annotation does.

`integrate_lineages` puts the lineages blood and tissue share (the l1 labels found in both:
monocytes with the tissue macrophages, T and NK cells) in one embedding: PCA of the joint
highly variable genes, then Harmony with tissue and sample as batches; and each lineage in
its own one (its variable genes, Harmony with the tissue as batch), where its subsets stay
apart. Blood cells keep their subsets (at most ``max_per_subset`` drawn per subset, so a
blood cohort of a million cells costs as much as one of a few thousand); each tissue cell
either joins the blood subset most of its nearest blood neighbours in the lineage's
embedding carry, or, in a Leiden cluster of that embedding with almost no blood cells, is a
tissue state named by the subsets' rule: the l2 short name and the state's top distinctive
gene against the lineage's other tissue states (``Mac_THBS1``).
Tissue cells of lineages the blood lacks (epithelial, endothelial, stromal) are named by
their l2 label (``PT``, ``Endothelial``).
"""

from __future__ import annotations

import re
import warnings
from importlib import resources

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from sccohort.errors import InputError
from sccohort.pp.store import rna_rows

from .annotate import UNASSIGNED, annotate, load_markers
from .cell_graph import cell_graph
from .clustering import leiden
from .embed import harmony
from .hvg import highly_variable_genes, qc_gene_mask
from .markers import rank_markers
from .pca import pca_rna
from .subset_names import _plain_name, _short_name, _signature, _top_features

__all__ = ["annotate_tissue", "integrate_lineages", "tissue_markers"]

#: Tissue l2 labels whose subsets get a shorter name than the plain l2 (``Mac_THBS1``).
SHORT_NAMES = {"Macrophage": "Mac"}
#: A joint cluster whose share of blood cells is below this fraction of the blood's share
#: of all joint cells holds tissue states (cells the blood does not have).
TISSUE_ONLY = 0.1
#: Nearest blood neighbours of a tissue cell that vote for its blood subset.
TRANSFER_NEIGHBOURS = 15


def tissue_markers() -> dict[str, pd.DataFrame]:
    """The marker tables for tissue cells: shipped PBMC RNA markers plus tissue markers.

    Returns
    -------
    dict
        ``{"rna": table}`` in the format of `sccohort.tl.load_markers` (the immune rows of
        ``pbmc_markers_rna.csv``, then ``tissue_markers_rna.csv``).

    Examples
    --------
    >>> from sccohort.tl import tissue_markers
    >>> table = tissue_markers()["rna"]
    >>> sorted(set(table.loc[table["level"] == "l1", "label"]) - {"Mono", "DC", "B"})[:3]
    ['CD4 T', 'CD8 T', 'Endothelial']
    """
    ref = resources.files("sccohort.resources") / "tissue_markers_rna.csv"
    with resources.as_file(ref) as path:
        tissue = load_markers("rna", path)
    return {"rna": pd.concat([load_markers("rna"), tissue], ignore_index=True)}


def _n_hvg(n: int, var_names) -> int:
    """``n`` HVGs, or every gene a panel has that HVG selection does not exclude."""
    return int(min(n, np.count_nonzero(~qc_gene_mask(var_names, ("mito", "ribo", "hb")))))


def annotate_tissue(
    adata: ad.AnnData,
    *,
    batch_key: str = "sample_id",
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 20,
    resolution: float = 1.0,
    min_confidence: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Cell types of tissue cells from the shipped PBMC and tissue markers.

    Highly variable genes (per ``batch_key``), PCA, a kNN graph and Leiden clusters, then
    `sccohort.tl.annotate` with `tissue_markers`.

    Parameters
    ----------
    adata
        Tissue cells x genes (symbols), log-normalised ``.X``; ``obs[batch_key]``.
    batch_key
        ``obs`` column of the sample.
    n_top_genes, n_pcs, n_neighbors, resolution, min_confidence, seed
        Highly variable genes, principal components, neighbours of the graph, Leiden
        resolution, the annotation's confidence floor and the seed.

    Returns
    -------
    pandas.DataFrame
        The label coverage (`sccohort.tl.label_coverage`). Writes ``obs`` ``l1``, ``l2``,
        ``l1_confidence``, ``l2_confidence`` and ``leiden``, ``obsm["X_pca"]``.

    Examples
    --------
    >>> from sccohort.tl import annotate_tissue
    >>> from sccohort.datasets import toy_mudata
    >>> cells = toy_mudata(cells_per_donor=100).mod["rna"]
    >>> cells.obs["sample_id"] = toy_mudata(cells_per_donor=100).obs["sample_id"].to_numpy()
    >>> coverage = annotate_tissue(cells, n_top_genes=500, n_pcs=10)
    >>> truth = toy_mudata(cells_per_donor=100).obs["l1"].astype(str)
    >>> bool((cells.obs["l1"].astype(str) == truth.to_numpy()).mean() > 0.8)
    True
    """
    _check_genes(adata)
    highly_variable_genes(
        adata, n_top_genes=_n_hvg(n_top_genes, adata.var_names), batch_key=batch_key
    )
    pca_rna(adata, n_comps=min(n_pcs, adata.n_obs - 1, int(adata.var["highly_variable"].sum()) - 1))
    graph = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names))
    graph.obsm["rna_pca"] = adata.obsm["X_pca"]
    key = cell_graph(graph, {"rna": "rna_pca"}, n_neighbors=n_neighbors, seed=seed)
    leiden(graph, neighbors_key=key, resolution=resolution, seed=seed)
    with warnings.catch_warnings():  # mudata's notice of a future default, not ours
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = md.MuData({"rna": adata})
    wrapped.obs["leiden"] = graph.obs["leiden"].to_numpy()
    wrapped.obsp["wnn_connectivities"] = graph.obsp["wnn_connectivities"]
    coverage = annotate(
        wrapped, use=("rna",), min_confidence=min_confidence, markers=tissue_markers()
    )
    for column in ("leiden", "l1", "l2", "l1_confidence", "l2_confidence"):
        adata.obs[column] = wrapped.obs[column].to_numpy()
    return coverage


def _check_genes(adata: ad.AnnData) -> None:
    if adata.n_obs < 10:
        raise InputError(
            f"{adata.n_obs} tissue cells: too few to annotate",
            hint="tissue samples need at least 10 cells that pass QC",
        )


def integrate_lineages(
    blood: ad.AnnData,
    tissue: ad.AnnData,
    *,
    subset_key: str = "subset",
    tissue_key: str = "tissue",
    sample_key: str = "sample_id",
    max_per_subset: int = 500,
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 20,
    resolution: float = 1.0,
    seed: int = 0,
) -> ad.AnnData:
    """Blood and tissue cells of the shared lineages in one embedding, tissue cells named.

    Parameters
    ----------
    blood
        Blood RNA (cells x genes, log-normalised ``.X`` or the run's RNA store) with ``obs``
        ``l1``, ``l2``, ``subset_key``, ``sample_key``, ``tissue_key``.
    tissue
        Tissue RNA annotated by `annotate_tissue` (``obs`` ``l1``, ``l2``), with ``obs``
        ``sample_key`` and ``tissue_key``. Receives ``obs["subset"]`` for every cell.
    subset_key
        ``obs`` column of the blood subsets.
    tissue_key, sample_key
        ``obs`` columns of the tissue and the sample (Harmony's batches).
    max_per_subset
        Blood cells drawn per blood subset (all when fewer).
    n_top_genes, n_pcs, n_neighbors, resolution, seed
        Joint highly variable genes (per sample), PCs, neighbours, Leiden resolution, seed.

    Returns
    -------
    anndata.AnnData
        The joint cells (drawn blood cells, then the tissue cells of shared lineages) x the
        genes both have, log-normalised; ``obs`` ``source`` (``"blood"`` or the tissue),
        ``sample_key``, ``tissue_key``, ``l1``, ``l2``, ``subset``, ``state`` (True for a
        tissue state), ``transfer_confidence`` (share of blood neighbours that agree, NaN for
        blood cells and tissue states), ``cluster`` (``<l1>:<Leiden cluster>`` of the
        lineage); ``obsm`` ``X_pca``, ``X_harmony`` (all lineages) and ``X_lineage`` (each
        lineage's own Harmony embedding, `LINEAGE_DIMS` columns; compare cells of one lineage
        only); the joint kNN graph (``obsp`` ``wnn_connectivities``, ``wnn_distances``,
        ``uns["wnn"]``, for `sccohort.tl.umap` with ``neighbors_key="wnn"``);
        ``uns["integrate_lineages"]`` the lineages and parameters.

    Raises
    ------
    InputError
        When blood and tissue share no lineage or no gene.

    Examples
    --------
    >>> from sccohort.tl import integrate_lineages
    >>> from sccohort.datasets import toy_mudata
    >>> def cells(n, seed, tissue):
    ...     mdata = toy_mudata(cells_per_donor=n, seed=seed)
    ...     rna = mdata.mod["rna"]
    ...     for key in ("sample_id", "l1", "l2", "subset"):
    ...         rna.obs[key] = mdata.obs.loc[rna.obs_names, key].astype(str).to_numpy()
    ...     rna.obs["tissue"] = tissue
    ...     return rna
    >>> blood, tissue = cells(200, 0, "blood"), cells(60, 5, "kidney")
    >>> truth = tissue.obs["subset"].copy()
    >>> joint = integrate_lineages(blood, tissue, n_top_genes=500, n_pcs=10)
    >>> bool((tissue.obs["subset"] == truth).mean() > 0.5), sorted(joint.obs["source"].unique())
    (True, ['blood', 'kidney'])
    """
    shared = [
        lab
        for lab in pd.unique(blood.obs["l1"].astype(str))
        if lab != UNASSIGNED and lab in set(tissue.obs["l1"].astype(str))
    ]
    genes = blood.var_names.intersection(tissue.var_names, sort=False)
    if not shared or len(genes) < 10:
        raise InputError(
            f"blood and tissue share {len(shared)} lineages and {len(genes)} genes",
            hint="integration needs immune cells in the tissue samples and common gene names",
        )
    rng = np.random.default_rng(seed)
    b_rows = _drawn_rows(blood.obs, shared, subset_key, max_per_subset, rng)
    t_rows = np.flatnonzero(tissue.obs["l1"].astype(str).isin(shared).to_numpy())
    joint = _joint(blood, tissue, b_rows, t_rows, genes, subset_key, tissue_key, sample_key)
    highly_variable_genes(joint, n_top_genes=_n_hvg(n_top_genes, genes), batch_key=sample_key)
    n_hvg = int(joint.var["highly_variable"].sum())
    pca_rna(joint, n_comps=max(2, min(n_pcs, joint.n_obs - 1, n_hvg - 1)))
    harmony(joint, "X_pca", batch_key=[tissue_key, sample_key], key_added="X_harmony", seed=seed)
    graph = ad.AnnData(obs=pd.DataFrame(index=joint.obs_names))
    graph.obsm["rna_h"] = joint.obsm["X_harmony"]
    cell_graph(graph, {"rna": "rna_h"}, n_neighbors=n_neighbors, seed=seed)
    for name in ("wnn_connectivities", "wnn_distances"):
        joint.obsp[name] = graph.obsp[name]
    joint.uns["wnn"] = graph.uns["wnn"]
    _name_tissue_cells(joint, resolution, seed)
    tissue.obs["subset"] = [_plain_name(str(lab)) for lab in tissue.obs["l2"]]
    named = joint.obs.loc[joint.obs["source"] != "blood", "subset"]
    tissue.obs.loc[named.index, "subset"] = named.astype(str).to_numpy()
    joint.uns["integrate_lineages"] = {
        "lineages": shared,
        "max_per_subset": int(max_per_subset),
        "n_top_genes": n_hvg,
        "n_pcs": int(joint.obsm["X_pca"].shape[1]),
        "batches": [tissue_key, sample_key],
        "resolution": float(resolution),
        "seed": int(seed),
    }
    return joint


def _drawn_rows(
    obs: pd.DataFrame, shared: list[str], subset_key: str, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """Rows of blood cells of the shared lineages, at most ``limit`` per subset, sorted."""
    rows = []
    keep = obs["l1"].astype(str).isin(shared).to_numpy()
    subset = obs[subset_key].astype(str).to_numpy()
    for name in pd.unique(subset[keep]):
        found = np.flatnonzero(keep & (subset == name))
        rows.append(rng.choice(found, size=limit, replace=False) if len(found) > limit else found)
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=int)


def _joint(
    blood: ad.AnnData,
    tissue: ad.AnnData,
    b_rows: np.ndarray,
    t_rows: np.ndarray,
    genes: pd.Index,
    subset_key: str,
    tissue_key: str,
    sample_key: str,
) -> ad.AnnData:
    """One AnnData of the drawn blood rows and the tissue rows on ``genes``."""
    b_cols = blood.var_names.get_indexer(genes)
    t_cols = tissue.var_names.get_indexer(genes)
    xb = sp.csr_matrix(rna_rows(blood, b_rows))[:, b_cols]
    xt = sp.csr_matrix(tissue.X[t_rows])[:, t_cols]
    bo, to = blood.obs.iloc[b_rows], tissue.obs.iloc[t_rows]
    obs = pd.DataFrame(
        {
            "source": np.r_[np.full(len(bo), "blood", dtype=object), to[tissue_key].astype(str)],
            sample_key: np.r_[bo[sample_key].astype(str), to[sample_key].astype(str)],
            tissue_key: np.r_[bo[tissue_key].astype(str), to[tissue_key].astype(str)],
            "l1": np.r_[bo["l1"].astype(str), to["l1"].astype(str)],
            "l2": np.r_[bo["l2"].astype(str), to["l2"].astype(str)],
            "subset": np.r_[bo[subset_key].astype(str), np.full(len(to), "", dtype=object)],
        },
        index=bo.index.append(to.index),
    )
    for column in ("source", tissue_key, "l1", "l2"):
        obs[column] = obs[column].astype("category")
    joint = ad.AnnData(sp.vstack([xb, xt]).tocsr().astype(np.float32), obs=obs)
    joint.var_names = genes
    joint.uns["log1p"] = {"base": None}
    return joint


#: Dimensions of each lineage's own embedding (``obsm["X_lineage"]``).
LINEAGE_DIMS = 20


def _lineage_embedding(joint: ad.AnnData, rows: np.ndarray, seed: int) -> np.ndarray:
    """Harmony embedding (cells x `LINEAGE_DIMS`) of one lineage on its own variable genes.

    Subsets within a lineage differ in fewer genes than lineages do: the joint embedding
    of all lineages blurs them (in the simulated kidney, half the nuclei of CD8_TEM_T2ISG
    joined another CD8 subset), the lineage's own one keeps them apart.
    """
    out = np.zeros((len(rows), LINEAGE_DIMS), dtype=np.float32)
    sub = joint[rows].copy()
    if sub.n_obs < 30:
        width = min(LINEAGE_DIMS, joint.obsm["X_harmony"].shape[1])
        out[:, :width] = np.asarray(sub.obsm["X_harmony"])[:, :width]
        return out
    highly_variable_genes(sub, n_top_genes=_n_hvg(1000, sub.var_names), batch_key="source")
    n_hvg = int(sub.var["highly_variable"].sum())
    pca_rna(sub, n_comps=max(2, min(LINEAGE_DIMS, sub.n_obs - 1, n_hvg - 1)))
    # tissue (source) as the only batch: correcting each sample too pulls a continuum's
    # states, of a few cells per sample, together (simulated kidney: DPT's Spearman with
    # the planted pseudotime 0.87 with source + sample, 0.93 with source only)
    harmony(sub, "X_pca", batch_key="source", key_added="X_lineage", seed=seed)
    emb = np.asarray(sub.obsm["X_lineage"])
    out[:, : emb.shape[1]] = emb
    return out


def _lineage_clusters(emb: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    """Leiden clusters of one lineage's embedding."""
    graph = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(emb))]))
    graph.obsm["rna_l"] = emb
    key = cell_graph(graph, {"rna": "rna_l"}, n_neighbors=min(20, len(emb) - 1), seed=seed)
    leiden(graph, neighbors_key=key, resolution=resolution, seed=seed)
    return graph.obs["leiden"].astype(str).to_numpy()


def _name_tissue_cells(joint: ad.AnnData, resolution: float, seed: int) -> None:
    """Per shared lineage: its embedding, clusters, tissue states and transferred subsets.

    Writes ``obsm["X_lineage"]`` and ``obs`` ``cluster`` (``<l1>:<Leiden cluster>``),
    ``subset``, ``state`` and ``transfer_confidence``.
    """
    obs = joint.obs
    is_blood = (obs["source"] == "blood").to_numpy()
    l1 = obs["l1"].astype(str).to_numpy()
    subset = obs["subset"].astype(object).to_numpy()
    confidence = np.full(joint.n_obs, np.nan)
    in_state = np.zeros(joint.n_obs, dtype=bool)
    cluster = np.full(joint.n_obs, "", dtype=object)
    lineage_emb = np.zeros((joint.n_obs, LINEAGE_DIMS), dtype=np.float32)
    for lineage in pd.unique(l1[~is_blood]):
        rows = np.flatnonzero(l1 == lineage)
        emb = _lineage_embedding(joint, rows, seed)
        lineage_emb[rows] = emb
        ref = is_blood[rows]
        votes, agree = _transfer(emb[ref], subset[rows][ref], emb[~ref])
        subset[rows[~ref]], confidence[rows[~ref]] = votes, agree
        if len(rows) < 30 or not ref.any():
            continue
        found = _lineage_clusters(emb, resolution, seed)
        cluster[rows] = [f"{lineage}:{c}" for c in found]
        share = pd.Series(ref).groupby(found).mean()
        states = share.index[share < TISSUE_ONLY * ref.mean()]
        in_state[rows] = ~ref & np.isin(found, states)
    confidence[in_state] = np.nan
    names = _state_names(joint, cluster, in_state)
    subset[in_state] = [names[c] for c in cluster[in_state]]
    joint.obsm["X_lineage"] = lineage_emb
    obs["cluster"] = pd.Categorical(cluster.astype(str))
    obs["subset"] = pd.Categorical(subset)
    obs["state"] = in_state
    obs["transfer_confidence"] = confidence


def _transfer(
    reference: np.ndarray, labels: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each query cell's nearest reference cells and the share agreeing."""
    if len(query) == 0:
        return np.zeros(0, dtype=object), np.zeros(0)
    k = min(TRANSFER_NEIGHBOURS, len(reference))
    _, idx = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    codes, levels = pd.factorize(pd.Series(labels, dtype=object))
    counts = np.zeros((len(query), len(levels)))
    np.add.at(counts, (np.repeat(np.arange(len(query)), k), codes[idx].ravel()), 1.0)
    best = counts.argmax(axis=1)
    return np.asarray(levels, dtype=object)[best], counts.max(axis=1) / k


def _state_names(joint: ad.AnnData, cluster: np.ndarray, in_state: np.ndarray) -> dict[str, str]:
    """Cluster -> tissue-state name: l2 short name + top distinctive gene.

    As blood subsets are named against their siblings: a state is ranked against the other
    tissue states of its lineage, or, when it is the lineage's only one, against the
    lineage's other tissue cells.
    """
    names: dict[str, str] = {}
    obs = joint.obs
    l1 = obs["l1"].astype(str).to_numpy()
    state_clusters = pd.unique(cluster[in_state])
    in_tissue = (obs["source"] != "blood").to_numpy()
    for lineage in pd.unique(l1[in_state]):
        mine = [c for c in state_clusters if (l1[in_state & (cluster == c)] == lineage).any()]
        cells = (l1 == lineage) & in_tissue
        if len(mine) > 1:
            cells &= in_state
        group = np.where(in_state, cluster, "other").astype(object)
        sub = joint[cells].copy()
        sub.obs["group"] = pd.Categorical(group[cells])
        ranked = rank_markers(sub, "group", groups=[c for c in mine if c in set(group[cells])])
        used: set[str] = set(names.values())
        for c in sorted(mine, key=lambda c: -int((cluster == c).sum())):
            l2 = obs.loc[in_state & (cluster == c), "l2"].astype(str).value_counts().index[0]
            short = SHORT_NAMES.get(l2, _short_name(l2))
            top = _top_features(ranked, c, None, 10)["feature"].astype(str).tolist()
            label = _signature(top)
            candidates = [label] if label else []
            candidates += [re.sub(r"[^A-Za-z0-9]+", "", g) for g in top]
            name = next((f"{short}_{g}" for g in candidates if f"{short}_{g}" not in used), None)
            names[c] = name or f"{short}_{c}"
            used.add(names[c])
    return names

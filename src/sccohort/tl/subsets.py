"""Automatic subset discovery and naming within each lineage, as the study subclustered by hand.

Each lineage (a group of Azimuth l2 labels) is subclustered on its own: a k-nearest
neighbour graph of the lineage's cells in the Harmony-corrected RNA PCs (exact up to 70,000
cells, then an inverted-file search), Leiden at candidate resolutions, the highest resolution
whose clusterings stay stable across resamples (ARI between 80 % subsamples clustered with
other seeds), then clusters that are not transcriptionally distinct from their nearest sibling
are merged. Each cluster is named ``<l2 short name>_<top distinctive gene>`` against its
siblings of the same l2, or by a signature (``ISG``, ``T2ISG``, ``EGR1`` for the
immediate-early / NF-kB program) when its top genes are a known program; the main body of an
l2 (largest, nothing distinctive) keeps the plain l2 name. The graph uses RNA only: adding
the Harmony protein PCs did not find the planted subsets better and split naive /
central-memory T cells into spurious subsets.

Speed: resolutions are tried from the highest down (the first stable one is the answer);
per-cluster sums are computed once per lineage and added when clusters merge; markers are
ranked only for genes that can be markers, and the clusters alone in their l2 share one
ranking; lineages run in up to ``n_jobs`` forked processes. None of this changes a result:
the same seed gives the same subsets as an exhaustive, serial run.

Memory: a lineage reads its cells' RNA in place from the cohort matrix (shared with the
forked workers; or, with the RNA on disk, its own cells' rows from the store) and copies only
the cells x genes block a test needs, the genes of a marker ranking in blocks of at most
``_RANK_BLOCK_VALUES`` (:mod:`.subset_names`) stored values, so the stage's memory grows
with the largest lineage block, not with the cohort.

The graph and resolution are in :mod:`.lineage_graph`, the per-cluster sums and merges in
:mod:`.lineage_sums`, the names in :mod:`.subset_names`.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..pp.store import CompactRows, store_of
from .lineage_graph import _absorb_small, _graph_from_knn, _knn, _stable_resolution
from .lineage_sums import _LineageRNA, _merge_indistinct
from .subset_names import _describe_lineage, _Genes, _informative

__all__ = ["LINEAGES", "subsets"]

#: The lineages the study subclustered: name -> the l2 labels clustered together (with the
#: l1 name, which stands for l2 where a panel cannot tell a lineage's types apart).
LINEAGES: dict[str, tuple[str, ...]] = {
    "Mono/DC": ("CD14 Mono", "CD16 Mono", "cDC1", "cDC2", "pDC", "ASDC", "Mono", "DC"),
    "CD4 T": ("CD4 Naive", "CD4 TCM", "CD4 TEM", "CD4 CTL", "Treg", "CD4 T"),
    "CD8 T": ("CD8 Naive", "CD8 TCM", "CD8 TEM", "CD8 T"),
    "B": ("B naive", "B intermediate", "B memory", "Plasmablast", "B"),
    "NK": ("NK", "NK_CD56bright", "NK Proliferating"),
}
#: Candidate Leiden resolutions, low to high.
RESOLUTIONS = (0.2, 0.4, 0.7, 1.0, 1.5)


def _check(
    mdata,
    lineages: Mapping[str, Sequence[str]] | None,
    resolution: float | str,
    knn_method: str,
    use_rep: str,
    features: str,
    donor_key: str,
) -> None:
    if knn_method not in ("auto", "exact", "approximate"):
        raise InputError(
            f"unknown neighbour search {knn_method!r}",
            key="knn_method",
            hint='use "auto", "exact" or "approximate"',
        )
    if resolution != "auto" and (
        isinstance(resolution, str) or not np.isfinite(resolution) or resolution <= 0
    ):
        raise InputError(
            f"resolution {resolution!r} is not a positive number",
            key="resolution",
            hint='give a Leiden resolution such as 1.0, or "auto"',
        )
    for column in ("l1", "l2", donor_key):
        if column not in mdata.obs:
            raise InputError(
                f"the cohort object has no obs column '{column}'",
                column=column,
                hint="run the pipeline's annotate stage (sccohort.tl.annotate.annotate) first",
            )
    if use_rep not in mdata.obsm:
        raise InputError(
            f"the cohort object has no obsm['{use_rep}']",
            key="use_rep",
            hint="run the pipeline's embedding stage (sccohort.tl.harmony) first, or "
            f"name one of: {', '.join(mdata.obsm) or 'none'}",
        )
    if features not in ("rna", "prot"):
        raise InputError(
            f"unknown features {features!r}", key="features", hint='use "rna" or "prot"'
        )
    adata = mdata.mod.get(features)
    if adata is None or (adata.X is None and (features == "prot" or store_of(adata) is None)):
        raise InputError(
            f"the cohort object has no normalised values in mod['{features}'].X",
            key="features",
            hint="run the pipeline's normalise stage first",
        )
    if lineages is not None:
        seen: dict[str, str] = {}
        for name, labels in lineages.items():
            for label in labels:
                if label in seen:
                    raise InputError(
                        f"l2 label '{label}' is in lineages '{seen[label]}' and '{name}'",
                        key=label,
                        hint="give each l2 label to one lineage only",
                    )
                seen[label] = name


def subsets(
    mdata,
    *,
    lineages: Mapping[str, Sequence[str]] | None = None,
    use_rep: str = "X_harmony",
    features: str = "rna",
    resolution: float | str = "auto",
    min_cells: int = 50,
    n_neighbors: int = 15,
    knn_method: str = "auto",
    stability: float = 0.8,
    n_resamples: int = 2,
    min_distinct_genes: int | None = None,
    min_auroc: float = 0.7,
    min_logfc: float = 1.0,
    seed: int = 0,
    key_added: str = "subset",
    n_jobs: int = 2,
    donor_key: str = "donor_id",
) -> pd.DataFrame:
    """Subcluster each lineage, merge indistinct clusters and name the subsets.

    Parameters
    ----------
    mdata
        MuData (n_cells) with ``obs`` columns ``l1``, ``l2``, ``donor_id``,
        ``obsm[use_rep]`` (n_cells x n_pcs), ``mod["rna"].X`` log-normalised RNA
        (gene symbols) and/or ``mod["prot"].X`` normalised proteins
        (``var["alias"]``, ``var["isotype"]``).
    lineages
        Lineage name -> l2 labels subclustered together (default :data:`LINEAGES`); cells
        of other l2 labels keep their l2 as subset.
    use_rep
        ``obsm`` key of the embedding the lineages' kNN graphs are built on (the pipeline
        passes the one its embed stage recorded: ``X_harmony``, or ``X_harmony_prot`` for a
        protein-only cohort).
    features
        What tells clusters apart and names them: ``"rna"`` (genes; protein markers are
        listed beside them when ``mod["prot"]`` exists) or ``"prot"`` (antibodies, for
        protein-only cohorts: a cluster is distinct when ``min_distinct_genes`` antibodies
        differ by AUROC and by ``min_logfc`` in mean normalised value / ln 2, i.e. about a
        2-fold difference in CLR or dsb units).
    resolution
        Leiden resolution, or ``"auto"``: the highest of :data:`RESOLUTIONS` whose mean ARI
        between the full clustering and reclusterings of 80 % subsamples is >= ``stability``.
    min_cells
        Lineages with fewer cells are not subclustered, and clusters smaller than this are
        merged into their nearest sibling.
    n_neighbors
        Neighbours of each cell in the lineage's kNN graph.
    knn_method
        The kNN search: ``"exact"``, ``"approximate"`` (inverted file, :mod:`sccohort.tl.knn`)
        or ``"auto"``: exact up to :data:`~sccohort.tl.lineage_graph.EXACT_MAX_CELLS` cells
        in the lineage.
    stability
        ARI threshold of the automatic resolution.
    n_resamples
        Subsample reclusterings per candidate resolution.
    min_distinct_genes, min_auroc, min_logfc
        A cluster needs ``min_distinct_genes`` informative features with AUROC >
        ``min_auroc`` (or < 1 - ``min_auroc``) and |log2 fold change| > ``min_logfc`` against
        its nearest sibling, else the two merge. ``min_distinct_genes`` None: 3 genes, or 1
        antibody with ``features="prot"`` (a panel may tell naive from memory T cells by
        CD45RA alone).
    seed
        Random seed (same seed, same subsets).
    key_added
        ``mdata.obs`` column written (categorical subset names).
    n_jobs
        Lineages clustered at once, in forked worker processes where the platform has
        ``fork`` (the subsets do not depend on it).
    donor_key
        The ``obs`` column naming each cell's donor (the table's ``n_donors``).

    Returns
    -------
    pandas.DataFrame
        One row per subset: ``subset, l2, l1, lineage, n_cells, n_donors, resolution,
        stability`` (mean ARI of the lineage's clustering against 80 % subsamples),
        ``rna_markers`` (top 5 against its l2 siblings, or the rest of the lineage when it is
        the l2's only cluster; ";"-joined), ``protein_markers`` (top 3, isotypes excluded;
        top 5 and ``rna_markers`` empty with ``features="prot"``).
        Other cells (l2 outside every lineage) keep their l2 as subset, with empty markers.

    Examples
    --------
    >>> from sccohort.tl import highly_variable_genes, pca_rna, subsets
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> highly_variable_genes(mdata["rna"], n_top_genes=500, batch_key=None)
    >>> pca_rna(mdata["rna"], n_comps=20)
    >>> mdata.obsm["X_pca"] = mdata["rna"].obsm["X_pca"]
    >>> table = subsets(mdata, use_rep="X_pca", lineages={"Mono": ["CD14 Mono", "CD16 Mono"]})
    >>> table[table["lineage"] == "Mono"][["subset", "l2", "n_cells"]]
           subset         l2  n_cells
    16  CD14_Mono  CD14 Mono      207
    17  CD14_EGR1  CD14 Mono       50
    18  CD16_Mono  CD16 Mono       56
    """
    _check(mdata, lineages, resolution, knn_method, use_rep, features, donor_key)
    lineages = LINEAGES if lineages is None else lineages
    if min_distinct_genes is None:
        min_distinct_genes = 3 if features == "rna" else 1
    obs = mdata.obs
    if features == "rna":
        x_rna, lineage_rows, genes = _rna_features(mdata.mod["rna"], obs.index)
        prot = _proteins(mdata.mod.get("prot"), obs.index)
    else:
        x_rna, genes = _protein_features(mdata.mod["prot"], obs.index)
        lineage_rows = prot = None  # the antibodies are the features: ranked once, as genes
    l2 = obs["l2"].astype(str).to_numpy()
    shared = _Shared(
        x_rna=x_rna,
        lineage_rows=lineage_rows,
        genes=genes,
        prot=prot,
        l2=l2,
        emb=np.asarray(mdata.obsm[use_rep], dtype=np.float64),
        settings=_Settings(
            resolution=resolution,
            min_cells=min_cells,
            n_neighbors=n_neighbors,
            knn_method=knn_method,
            stability=stability,
            n_resamples=n_resamples,
            min_distinct_genes=min_distinct_genes,
            min_auroc=min_auroc,
            min_logfc=min_logfc,
            seed=seed,
        ),
    )
    tasks = [
        (lineage, np.flatnonzero(np.isin(l2, list(labels)))) for lineage, labels in lineages.items()
    ]
    tasks = [(lineage, rows) for lineage, rows in tasks if rows.size]
    results = _cluster_lineages(shared, tasks, n_jobs)

    names, table = _named_subsets(tasks, results, l2, lineages)
    if features == "prot":
        table["protein_markers"], table["rna_markers"] = table["rna_markers"], ""
    subset_col = pd.Series(names, index=obs.index, dtype=object)
    table = _describe_subsets(table, subset_col, obs, donor_key)
    mdata.obs[key_added] = pd.Categorical(subset_col, categories=table["subset"].tolist())
    return table


def _named_subsets(
    tasks: list[tuple[str, np.ndarray]],
    results: list,
    l2: np.ndarray,
    lineages: Mapping[str, Sequence[str]],
) -> tuple[np.ndarray, pd.DataFrame]:
    """Each cell's subset name and one row per subset (l2 outside the lineages kept as is).

    Names are unique: a repeated base name gets ``_2``, ``_3``, ...
    """
    names = np.array(l2, dtype=object)
    clusters = np.full(len(l2), -1, dtype=np.int64)  # global cluster id per cell
    in_lineage = np.isin(l2, [label for labels in lineages.values() for label in labels])
    others = pd.Series(l2[~in_lineage]).value_counts()
    used = set(others.index)  # subset names taken so far
    named: list[dict] = []
    for (lineage, rows), result in zip(tasks, results, strict=True):
        first = int(clusters.max()) + 1
        clusters[rows] = first + result.local
        for described in result.clusters:
            base = described["base"]
            name, k = base, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            named.append(
                {
                    "cluster": first + described["cluster"],
                    "subset": name,
                    "l2": described["l2"],
                    "lineage": lineage,
                    "resolution": result.resolution,
                    "stability": result.stability,
                    "rna_markers": described["rna_markers"],
                    "protein_markers": described["protein_markers"],
                }
            )

    table = pd.DataFrame(named, columns=_NAMED_COLUMNS)
    for cid, name in zip(table["cluster"], table["subset"], strict=True):
        names[clusters == cid] = name
    rest = pd.DataFrame(
        {
            "subset": others.index,
            "l2": others.index,
            "lineage": "",
            "resolution": np.nan,
            "stability": np.nan,
            "rna_markers": "",
            "protein_markers": "",
        }
    )
    table = pd.concat([table.drop(columns="cluster"), rest], ignore_index=True)
    return names, table


def _describe_subsets(
    table: pd.DataFrame, subset_col: pd.Series, obs: pd.DataFrame, donor_key: str
) -> pd.DataFrame:
    """The subsets table with l1, cells and donors, ordered by l1, l2 and size."""
    l1_of = obs.groupby(subset_col.to_numpy(), observed=True)["l1"].agg(
        lambda s: s.astype(str).value_counts().index[0]
    )
    counts = subset_col.value_counts()
    donors = obs[donor_key].groupby(subset_col.to_numpy(), observed=True).nunique()
    table["l1"] = table["subset"].map(l1_of)
    table["n_cells"] = table["subset"].map(counts).astype(int)
    table["n_donors"] = table["subset"].map(donors).astype(int)
    table = table.sort_values(["l1", "l2", "n_cells"], ascending=[True, True, False], kind="stable")
    columns = ["subset", "l2", "l1", "lineage", "n_cells", "n_donors", "resolution", "stability"]
    return table[[*columns, "rna_markers", "protein_markers"]].reset_index(drop=True)


def _rna_features(
    rna: ad.AnnData, cells: pd.Index
) -> tuple[sp.csr_matrix | None, Callable | None, _Genes]:
    """The cohort's log-normalised RNA in the order of ``cells``, or a reader of its rows.

    Returns the matrix (cells x genes, CSR, sorted indices) or None and a function giving a
    lineage's rows from the store (RNA on disk), and the genes' facts.
    """
    order = rna.obs_names.get_indexer(cells)
    if (order < 0).any():
        raise InputError(
            "some cells of the cohort object are missing from mod['rna']",
            key="rna",
            hint="subset the MuData as a whole (mdata[cells]) so every modality keeps the cells",
        )
    x_rna, lineage_rows = None, None
    if store_of(rna) is None:
        x_rna = sp.csr_matrix(rna.X, dtype=np.float32)
        if not np.array_equal(order, np.arange(x_rna.shape[0])):
            x_rna = x_rna[order]
        if not x_rna.has_sorted_indices:  # once here, not in each forked lineage worker
            x_rna = x_rna.sorted_indices()
    else:  # RNA on disk (log-normalised, so >= 0): each lineage reads its own cells
        lineage_rows = functools.partial(_rows_of, rna, order)
    genes = _Genes(
        var=pd.DataFrame(index=rna.var_names.astype(str)),
        uns={"log1p": rna.uns["log1p"]} if "log1p" in rna.uns else {},
        informative=_informative(rna.var_names.astype(str)),
        nonnegative=x_rna is None or x_rna.nnz == 0 or bool(x_rna.data.min() >= 0),
    )
    return x_rna, lineage_rows, genes


def _protein_features(prot: ad.AnnData, cells: pd.Index) -> tuple[sp.csr_matrix, _Genes]:
    """Normalised antibodies (cells x antibodies, CSR, isotypes left out) as the features.

    Named by their alias (``CD45RA``); compared by differences of their values.
    """
    found = _proteins(prot, cells)
    if found is None:
        raise InputError(
            "some cells of the cohort object are missing from mod['prot']",
            key="prot",
            hint="subset the MuData as a whole (mdata[cells]) so every modality keeps the cells",
        )
    values, _, alias = found
    genes = _Genes(
        var=pd.DataFrame(index=pd.Index(alias.to_numpy())),
        uns={},
        informative=np.ones(values.shape[1], dtype=bool),
        nonnegative=bool(values.min(initial=0.0) >= 0),
        linear=True,
    )
    return sp.csr_matrix(values).sorted_indices(), genes


def _proteins(prot, cells: pd.Index) -> tuple[np.ndarray, pd.DataFrame, pd.Series] | None:
    """Normalised proteins without isotypes, in the order of ``cells``.

    Values (cells x proteins, float32), ``var`` (str index) and display names (alias) by var
    name; None without a usable protein modality.
    """
    if prot is None or prot.X is None:
        return None
    porder = prot.obs_names.get_indexer(cells)
    if (porder < 0).any():
        return None
    var = prot.var
    keep = np.flatnonzero(
        ~var["isotype"].astype(bool).to_numpy() if "isotype" in var else np.ones(len(var), bool)
    )
    x = prot.X.toarray() if sp.issparse(prot.X) else np.asarray(prot.X)
    x = np.asarray(x[np.ix_(porder, keep)], dtype=np.float32)
    var = var.iloc[keep].copy()
    var.index = var.index.astype(str)
    alias = var["alias"] if "alias" in var else pd.Series(var.index)
    return x, var, pd.Series(alias.astype(str).to_numpy(), index=var.index)


_NAMED_COLUMNS = [
    "cluster", "subset", "l2", "lineage", "resolution", "stability", "rna_markers",
    "protein_markers",
]  # fmt: skip


@dataclass
class _Settings:
    """The clustering parameters of :func:`subsets`."""

    resolution: float | str
    min_cells: int
    n_neighbors: int
    knn_method: str
    stability: float
    n_resamples: int
    min_distinct_genes: int
    min_auroc: float
    min_logfc: float
    seed: int


def _rows_of(rna: ad.AnnData, order: np.ndarray, rows: np.ndarray) -> CompactRows:
    """Cells ``rows`` (``obs`` order; ``order`` maps them to ``rna``'s) x genes, from the store.

    Float32 values and int16 gene indices where the genes allow it: a lineage's copy of its
    cells' RNA (3 GB for the 281,000 CD4 T cells of a million-cell cohort) shrinks by a
    quarter.
    """
    return store_of(rna).compact_rows(order[rows])


@dataclass
class _Shared:
    """What every lineage's clustering reads, all in ``obs`` order.

    RNA (cells x genes, CSR; or None and ``lineage_rows(rows)``, those cells' RNA read from
    the store), gene facts, proteins, l2 labels, the embedding (cells x dims).
    """

    x_rna: sp.csr_matrix | None
    lineage_rows: Callable[[np.ndarray], CompactRows] | None
    genes: _Genes
    prot: tuple[np.ndarray, pd.DataFrame, pd.Series] | None
    l2: np.ndarray
    emb: np.ndarray
    settings: _Settings


@dataclass
class _Lineage:
    """A clustered lineage.

    Cluster 0..k-1 of each of its cells, the resolution and its stability, and the clusters
    described by :func:`_describe_lineage`.
    """

    local: np.ndarray
    resolution: float
    stability: float
    clusters: list[dict]


def _cluster_lineage(shared: _Shared, rows: np.ndarray, knn: np.ndarray | None) -> _Lineage:
    """Cluster, merge and describe the lineage of cells ``rows``.

    ``knn`` holds the cells' nearest neighbours (rows x k; None: too small to subcluster).
    """
    s = shared.settings
    if shared.x_rna is None:
        lineage = _LineageRNA(shared.lineage_rows(rows), np.arange(rows.size))
    else:
        lineage = _LineageRNA(shared.x_rna, rows)
    stats = None
    if knn is None:
        local = np.zeros(rows.size, dtype=np.int64)
        chosen = ari = float("nan")
    else:
        x = shared.emb[rows]
        g = _graph_from_knn(knn)
        if s.resolution == "auto":
            chosen, local, scores = _stable_resolution(
                g, RESOLUTIONS, s.n_resamples, s.stability, s.seed
            )
        else:
            chosen = float(s.resolution)
            local, scores = _stable_resolution(g, [chosen], s.n_resamples, 0.0, s.seed)[1:]
        ari = scores[chosen]
        local = _absorb_small(local, x, s.min_cells)
        local, stats = _merge_indistinct(
            lineage,
            shared.genes.informative,
            x,
            local,
            s.min_distinct_genes,
            s.min_auroc,
            s.min_logfc,
            shared.genes.linear,
        )
    # each cluster gets one parent l2: its majority
    lin_l2 = shared.l2[rows]
    parents = [
        pd.Series(lin_l2[local == c]).value_counts().index[0] for c in range(int(local.max()) + 1)
    ]
    prot = None if shared.prot is None else (shared.prot[0][rows], *shared.prot[1:])
    described = _describe_lineage(lineage, shared.genes, prot, local, stats, parents)
    return _Lineage(local, chosen, ari, described)


#: What forked lineage workers read (set by :func:`_cluster_lineages` around the fork).
_FORKED: _Shared | None = None


def _cluster_forked(rows: np.ndarray, knn: np.ndarray | None) -> _Lineage | None:
    """:func:`_cluster_lineage` in a forked worker.

    None on any error: the parent redoes the lineage, raising the error where it belongs.
    """
    try:
        return _cluster_lineage(_FORKED, rows, knn)
    except Exception:
        return None


def _cluster_lineages(
    shared: _Shared, tasks: list[tuple[str, np.ndarray]], n_jobs: int
) -> list[_Lineage]:
    """:func:`_cluster_lineage` of each ``(lineage, rows)``, up to ``n_jobs`` at once.

    The kNN searches run here (their OpenMP threads must not be used in a forked child);
    the rest runs in forked workers, largest lineage first, each sent its kNN indices as
    soon as they are found. Every step is deterministic, so the results do not depend on
    ``n_jobs``.
    """
    global _FORKED
    s = shared.settings

    def knn(rows: np.ndarray) -> np.ndarray | None:
        if rows.size < max(s.min_cells, 2 * s.n_neighbors):
            return None
        return _knn(shared.emb[rows], s.n_neighbors, s.knn_method, s.seed)

    results: list[_Lineage | None] = [None] * len(tasks)
    n_workers = min(n_jobs, len(tasks))
    can_fork = "fork" in mp.get_all_start_methods() and not mp.current_process().daemon
    if n_workers > 1 and can_fork:
        _FORKED = shared
        # no worker could start (OSError, BrokenProcessPool): every lineage is done below
        try:
            with (
                contextlib.suppress(OSError, BrokenProcessPool),
                ProcessPoolExecutor(n_workers, mp_context=mp.get_context("fork")) as pool,
            ):
                futures = {}
                for i in sorted(range(len(tasks)), key=lambda i: -tasks[i][1].size):
                    rows = tasks[i][1]
                    futures[i] = pool.submit(_cluster_forked, rows, knn(rows))
                for i, future in futures.items():
                    with contextlib.suppress(Exception):  # a lost worker: redone below
                        results[i] = future.result()
        finally:
            _FORKED = None
    return [
        result if result is not None else _cluster_lineage(shared, rows, knn(rows))
        for result, (_, rows) in zip(results, tasks, strict=True)
    ]

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
`_RANK_BLOCK_VALUES` stored values, so the stage's memory grows with the largest lineage
block, not with the cohort.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import anndata as ad
import igraph as ig
import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from ..errors import InputError
from ..pp.store import CompactRows, store_of
from .clustering import leiden_membership
from .knn import knn_ivf
from .markers import rank_markers

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

#: Interferon-stimulated (type I) genes: a cluster led by these is named ``..._ISG``.
ISG_GENES = frozenset(
    "ISG15 MX1 MX2 IFI6 IFI44 IFI44L IFIT1 IFIT2 IFIT3 IFIT5 RSAD2 HERC5 SIGLEC1 OAS1 OAS2 OAS3 "
    "OASL XAF1 IFI27 EPSTI1 LY6E ISG20 IFITM1 IFITM2 IFITM3 BST2 LAMP3 CMPK2 USP18".split()
)
#: Type II interferon (IFN-gamma induced) genes: ``..._T2ISG`` needs a core gene among them.
T2ISG_CORE = frozenset("GBP1 GBP2 GBP4 GBP5 CXCR3 STAT1 IRF1 CXCL9 CXCL10 IDO1 IFNG".split())
T2ISG_GENES = T2ISG_CORE | frozenset(
    "CCL5 COTL1 HLA-DRB1 HLA-DRA HLA-DPA1 HLA-DPB1 HLA-DQA1 HLA-DQB1 CD74 TAP1 PSMB9".split()
)
#: Immediate-early / NF-kB genes: a cluster led by these is named ``..._EGR1`` as in the study.
EGR1_GENES = frozenset(
    "EGR1 EGR2 EGR3 FOS FOSB JUN JUNB IER2 IER3 NFKBIA NFKBIZ TNFAIP3 DUSP1 KLF6 PPP1R15A "
    "NR4A1 NR4A2 ATF3 IL1B CCR1 SGK1 CXCL8 ZFP36".split()
)
_UNINFORMATIVE = re.compile(
    r"^(RP[LS]\d|RPLP|RPSA|MT-|MTRNR|HB[ABDEGMQZ]\d?$|MALAT1$|NEAT1$|XIST$|LINC|"
    r"AC\d{6}|AL\d{6}|AP\d{6}|ENSG)"
)
_N_TOP_RNA = 5
_N_TOP_PROT = 3
_MIN_PCT = 0.1  # markers are expressed in at least this fraction of the cluster
_SIGNATURE_TOP = 5  # top genes inspected for a known program
_MAIN_BODY_AUROC = 0.75  # a largest cluster whose best gene is below this is the main body


def _short_name(l2: str) -> str:
    """``CD14 Mono`` -> ``CD14``, ``CD8 TEM`` -> ``CD8_TEM``, ``B naive`` -> ``B_naive``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", l2.replace(" Mono", "")).strip("_")


def _plain_name(l2: str) -> str:
    """The main body's name: ``CD14 Mono`` -> ``CD14_Mono``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", l2).strip("_")


#: Lineages up to this many cells get the exact kNN graph under ``neighbours = "auto"``.
EXACT_MAX_CELLS = 70_000
#: Lists the inverted-file search probes per query list (recall 0.99 at 66,000 cells).
IVF_PROBES = 64


def _knn(x: np.ndarray, n_neighbors: int, method: str, seed: int) -> np.ndarray:
    """The nearest neighbours (cells x k indices, self excluded) of ``x`` (cells x dims).

    Euclidean; exact (brute force) or, for ``"approximate"`` and for ``"auto"`` above
    :data:`EXACT_MAX_CELLS` cells, the inverted-file search of :mod:`sccohort.tl.knn`
    (recall of the exact neighbours in ``benchmarks/results/subset_knn.csv``).
    """
    k = min(n_neighbors, x.shape[0] - 1)
    if method == "approximate" or (method == "auto" and x.shape[0] > EXACT_MAX_CELLS):
        rng = np.random.default_rng(seed)
        return knn_ivf(x, k, rng, n_probe=IVF_PROBES, metric="euclidean").astype(np.int64)
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    return nn.kneighbors(x, return_distance=False)[:, 1:]


def _graph_from_knn(idx: np.ndarray) -> ig.Graph:
    """Undirected, unweighted graph of kNN indices ``idx`` (cells x k): union of the edges."""
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    a = sp.coo_matrix((np.ones(rows.size), (rows, idx.ravel())), shape=(n, n))
    a = sp.triu((a + a.T).tocsr(), k=1).tocoo()
    return ig.Graph(n=n, edges=list(zip(a.row.tolist(), a.col.tolist(), strict=True)))


def _leiden(g: ig.Graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden membership of ``g`` (`leiden_membership`, ``"er"``), deterministic for ``seed``."""
    return leiden_membership(
        g, resolution=resolution, objective="er", generator=random.Random(seed)
    )


def _stable_resolution(
    g: ig.Graph, resolutions: Sequence[float], n_resamples: int, threshold: float, seed: int
) -> tuple[float, np.ndarray, dict[float, float]]:
    """Highest resolution whose mean ARI against 80 % subsample reclusterings is >= threshold.

    Returns the last of ``resolutions`` (low to high) that passes, else the first, its Leiden
    labels and the mean ARIs of the resolutions tried.

    Resolutions are tried from the last: each clustering depends only on the graph, the
    resolution and the seed, so the first that passes is the answer and the others need not
    be clustered; a resolution stops as soon as its remaining resamples cannot reach the
    threshold (the first resolution, chosen when none passes, is always scored in full).
    """
    rng = np.random.default_rng(seed)
    n = g.vcount()
    subsamples = [np.sort(rng.choice(n, int(0.8 * n), replace=False)) for _ in range(n_resamples)]
    subgraphs = [g.induced_subgraph(s.tolist()) for s in subsamples]
    scores: dict[float, float] = {}
    for j in range(len(resolutions) - 1, -1, -1):
        r = resolutions[j]
        full = _leiden(g, r, seed)
        aris: list[float] = []
        for i, (s, sg) in enumerate(zip(subsamples, subgraphs, strict=True)):
            aris.append(adjusted_rand_score(full[s], _leiden(sg, r, seed + 1 + i)))
            best_mean = (sum(aris) + n_resamples - len(aris)) / n_resamples
            if j > 0 and best_mean < threshold - 1e-9:
                break
        if len(aris) < n_resamples:
            continue
        scores[r] = float(np.mean(aris))
        if j == 0 or scores[r] >= threshold:
            return r, full, scores
    raise ValueError("no resolutions given")


@dataclass
class _Sums:
    """Additive per-cluster statistics: value sums, nonzero counts (k x genes), sizes (k)."""

    total: np.ndarray
    nonzero: np.ndarray
    size: np.ndarray

    def mean_pct(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.size[i], 1.0)
        return self.total[i] / n, self.nonzero[i] / n

    def merge(self, keep: int, drop: int) -> None:
        for a in (self.total, self.nonzero, self.size):
            a[keep] += a[drop]
            a[drop] = 0


@functools.lru_cache(maxsize=200_000)
def _is_informative(name: str) -> bool:
    return _UNINFORMATIVE.match(name) is None


def _informative(features: Sequence) -> np.ndarray:
    """Whether each feature name is informative (not ribosomal, mitochondrial, lncRNA, ...)."""
    return np.fromiter((_is_informative(str(f)) for f in features), dtype=bool, count=len(features))


@numba.njit(cache=True, nogil=True)
def _sums_kernel(indptr, indices, data, rows, labels, k, n_genes):  # pragma: no cover - numba
    """Per-cluster value sums and nonzero counts (k x genes, float64) of CSR rows ``rows``.

    Each sum adds its cells' values in the order of ``rows``, as the sparse product
    ``indicator @ x[rows]`` does, so the sums are bit for bit those of that product.
    """
    total = np.zeros((k, n_genes))
    nonzero = np.zeros((k, n_genes))
    for i in range(rows.shape[0]):
        r = rows[i]
        c = labels[i]
        for j in range(indptr[r], indptr[r + 1]):
            v = data[j]
            total[c, indices[j]] += np.float64(v)
            if v != 0:
                nonzero[c, indices[j]] += 1.0
    return total, nonzero


@numba.njit(cache=True, nogil=True)
def _take_kernel(indptr, indices, data, rows, position, lo, hi, out_ptr):  # pragma: no cover
    """CSC row indices and values of CSR rows ``rows`` x the mapped columns, nonzeros only.

    ``position[g]`` is column ``g``'s place in the result, or -1 to leave it out; every
    mapped column lies in ``[lo, hi]``, and each row's column indices are sorted, so a row is
    read from its first column >= ``lo`` (binary search) up to ``hi``. Result row ``i`` is
    ``rows[i]``; ``out_ptr`` the result's column pointers (its nonzero counts). Raises if the
    counts do not match the values found.
    """
    fill = out_ptr[:-1].copy()
    out_rows = np.empty(out_ptr[-1], dtype=np.int32)
    out_data = np.empty(out_ptr[-1], dtype=data.dtype)
    for i in range(rows.shape[0]):
        r = rows[i]
        j = indptr[r] + np.searchsorted(indices[indptr[r] : indptr[r + 1]], lo)
        while j < indptr[r + 1] and indices[j] <= hi:
            c = position[indices[j]]
            if c >= 0 and data[j] != 0:
                p = fill[c]
                if p >= out_ptr[c + 1]:
                    raise ValueError("more nonzero values than counted")
                out_rows[p] = i
                out_data[p] = data[j]
                fill[c] = p + 1
            j += 1
    for c in range(fill.shape[0]):
        if fill[c] != out_ptr[c + 1]:
            raise ValueError("fewer nonzero values than counted")
    return out_rows, out_data


@dataclass
class _LineageRNA:
    """A lineage's cells ``rows`` (ascending) of the cohort's RNA (cells x genes, CSR).

    ``x`` is a scipy matrix or the store's `CompactRows`. The cohort matrix is read in
    place: a lineage never holds a copy of its cells' whole rows, only the cells x genes
    blocks a test needs (`take`). In a forked worker the cohort matrix is the parent's
    memory, shared. With the RNA on disk, ``x`` holds just the lineage's rows.
    """

    x: sp.csr_matrix | CompactRows
    rows: np.ndarray

    def __post_init__(self) -> None:
        if not self.x.has_sorted_indices:  # `take` reads each row from a column on
            self.x = self.x.sorted_indices()

    @property
    def n_genes(self) -> int:
        return int(self.x.shape[1])

    def sums(self, labels: np.ndarray, k: int) -> _Sums:
        """Per-cluster sums, nonzero counts (k x genes) and sizes (k) of clusters ``labels``."""
        x = self.x
        total, nonzero = _sums_kernel(
            x.indptr, x.indices, x.data, self.rows.astype(np.int64), labels.astype(np.int64),
            k, x.shape[1],
        )  # fmt: skip
        return _Sums(total, nonzero, np.bincount(labels, minlength=k).astype(np.float64))

    def take(self, cells: np.ndarray, genes: np.ndarray, counts: np.ndarray) -> sp.csc_matrix:
        """Lineage cells ``cells`` (local positions) x ``genes`` (column positions), CSC.

        ``counts`` (genes): nonzero values of each gene among these cells, as `_Sums`
        counts them. Equals ``x[rows][cells][:, genes]`` stored by column with sorted row
        indices, less stored zeros (which every statistic here reads as zeros anyway).
        """
        x = self.x
        position = np.full(x.shape[1], -1, dtype=np.int64)
        position[genes] = np.arange(genes.size)
        ptr = np.zeros(genes.size + 1, dtype=np.int64)
        np.cumsum(np.rint(counts).astype(np.int64), out=ptr[1:])
        lo, hi = (int(genes.min()), int(genes.max())) if genes.size else (0, -1)
        idx, data = _take_kernel(
            x.indptr, x.indices, x.data, self.rows[cells].astype(np.int64), position, lo, hi, ptr
        )
        return sp.csc_matrix((data, idx, ptr), shape=(cells.size, genes.size))


def _log2fc(mean_a: np.ndarray, mean_b: np.ndarray, linear: bool) -> np.ndarray:
    """log2 fold change of mean log1p values, or (``linear``) of mean CLR / dsb values."""
    if linear:
        return (mean_a - mean_b) / np.log(2.0)
    return np.log2((np.expm1(mean_a) + 1e-9) / (np.expm1(mean_b) + 1e-9))


def _distinct_genes(
    x: _LineageRNA,
    columns: np.ndarray,
    labels: np.ndarray,
    stats: _Sums,
    a: int,
    b: int,
    min_auroc: float,
    min_lfc: float,
    linear: bool = False,
) -> int:
    """Informative genes up in either cluster against the other: AUROC and log2 FC above.

    ``x`` is the lineage's RNA; ``columns`` every informative gene expressed in more than 40 %
    of some cluster (the candidates); ``stats`` the clusters' sums over all genes. Only
    genes whose fold change passes and whose fraction of expressing cells permits the AUROC
    (> 0.4 in the higher cluster) are tested with :func:`rank_markers`. ``linear``: values
    are CLR / dsb antibodies, whose fold change is the difference of means / ln 2.
    """
    (mean_a, pct_a), (mean_b, pct_b) = stats.mean_pct(a), stats.mean_pct(b)
    mean_a, pct_a, mean_b, pct_b = mean_a[columns], pct_a[columns], mean_b[columns], pct_b[columns]
    lfc = _log2fc(mean_a, mean_b, linear)
    cand = ((lfc > min_lfc) & (pct_a > 0.4)) | ((lfc < -min_lfc) & (pct_b > 0.4))
    cols = np.flatnonzero(cand)
    if cols.size == 0:
        return 0
    rows = np.flatnonzero((labels == a) | (labels == b))
    sub = ad.AnnData(
        x.take(rows, columns[cols], stats.nonzero[[a, b]].sum(axis=0)[columns[cols]]),
        var=pd.DataFrame(index=np.arange(cols.size).astype(str)),
    )
    sub.obs["g"] = pd.Categorical(np.where(labels[rows] == a, "a", "b"))
    res = rank_markers(sub, "g", groups=["a"], reference="b")
    if linear:  # rank_markers' fold change reads the values as log1p
        res["logfoldchange"] = lfc[cols][res["feature"].astype(np.int64).to_numpy()]
    up = (res["auroc"] > min_auroc) & (res["logfoldchange"] > min_lfc)
    down = (res["auroc"] < 1 - min_auroc) & (res["logfoldchange"] < -min_lfc)
    return int((up | down).sum())


def _merge_indistinct(
    x: _LineageRNA,
    informative: np.ndarray,
    emb: np.ndarray,
    labels: np.ndarray,
    min_genes: int,
    min_auroc: float,
    min_lfc: float,
    linear: bool = False,
) -> tuple[np.ndarray, _Sums]:
    """Merge each cluster with its nearest sibling (centroid distance) until all are distinct.

    ``x`` the lineage's log-normalised RNA, ``informative`` (genes) mask, ``emb`` (cells x
    dims), ``labels`` 0..k-1. Returns the
    merged labels 0..m-1 and their statistics (m rows): the per-cluster sums are computed
    once and merged by addition.
    """
    labels = labels.copy()
    tested: dict[tuple[int, int], int] = {}
    stats = x.sums(labels, int(labels.max()) + 1)
    # merged clusters express a gene in a fraction of cells at most that of their best part,
    # so every future candidate gene is among these
    columns = np.flatnonzero(
        informative & (stats.nonzero / np.maximum(stats.size, 1.0)[:, None] > 0.4).any(axis=0)
    )
    while True:
        ids = np.unique(labels)
        if ids.size < 2:
            break
        cent = np.stack([emb[labels == i].mean(axis=0) for i in ids])
        d = ((cent[:, None, :] - cent[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        worst = None
        for i, c in enumerate(ids):
            pair = tuple(sorted((int(c), int(ids[np.argmin(d[i])]))))
            if pair not in tested:
                tested[pair] = _distinct_genes(
                    x, columns, labels, stats, *pair, min_auroc, min_lfc, linear
                )
            if tested[pair] < min_genes and (worst is None or tested[pair] < tested[worst]):
                worst = pair
        if worst is None:
            break
        labels[labels == worst[1]] = worst[0]
        stats.merge(*worst)
        tested = {p: v for p, v in tested.items() if worst[0] not in p and worst[1] not in p}
    ids, labels = np.unique(labels, return_inverse=True)
    merged = _Sums(stats.total[ids], stats.nonzero[ids], stats.size[ids])
    return labels.astype(np.int64), merged


def _top_features(res: pd.DataFrame, group: str, names: pd.Series | None, n: int) -> pd.DataFrame:
    """The ``n`` best up-regulated informative features of ``group`` by AUROC."""
    r = res[(res["group"] == group) & (res["logfoldchange"] > 0) & (res["auroc"] > 0.5)]
    r = r[_informative(r["feature"])]
    r = r.sort_values(["auroc", "statistic"], ascending=False, kind="stable").head(n)
    if names is not None:
        r = r.assign(feature=names.reindex(r["feature"]).to_numpy())
    return r


def _signature(genes: Sequence[str]) -> str | None:
    """``T2ISG`` / ``ISG`` / ``EGR1`` when the top genes are that program, else None."""
    top = list(genes)[:_SIGNATURE_TOP]
    if sum(g in T2ISG_GENES for g in top) >= 2 and any(g in T2ISG_CORE for g in top):
        return "T2ISG"
    if sum(g in ISG_GENES for g in top) >= 2:
        return "ISG"
    if sum(g in EGR1_GENES for g in top) >= 3:
        return "EGR1"
    return None


def _gene_label(gene: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", gene)


def _check(
    mdata,
    lineages: Mapping[str, Sequence[str]] | None,
    resolution: float | str,
    neighbours: str,
    use_rep: str,
    features: str,
) -> None:
    if neighbours not in ("auto", "exact", "approximate"):
        raise InputError(
            f"unknown neighbour search {neighbours!r}",
            key="neighbours",
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
    for column in ("l1", "l2", "donor_id"):
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
    neighbours: str = "auto",
    stability: float = 0.8,
    n_resamples: int = 2,
    min_distinct_genes: int | None = None,
    min_auroc: float = 0.7,
    min_logfc: float = 1.0,
    seed: int = 0,
    key_added: str = "subset",
    n_jobs: int = 2,
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
    neighbours
        Its search: ``"exact"``, ``"approximate"`` (inverted file, :mod:`sccohort.tl.knn`) or
        ``"auto"``: exact up to :data:`EXACT_MAX_CELLS` cells in the lineage.
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
    _check(mdata, lineages, resolution, neighbours, use_rep, features)
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
            neighbours=neighbours,
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
    table = _describe_subsets(table, subset_col, obs)
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
    table: pd.DataFrame, subset_col: pd.Series, obs: pd.DataFrame
) -> pd.DataFrame:
    """The subsets table with l1, cells and donors, ordered by l1, l2 and size."""
    l1_of = obs.groupby(subset_col.to_numpy(), observed=True)["l1"].agg(
        lambda s: s.astype(str).value_counts().index[0]
    )
    counts = subset_col.value_counts()
    donors = obs["donor_id"].groupby(subset_col.to_numpy(), observed=True).nunique()
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


def _absorb_small(labels: np.ndarray, x: np.ndarray, min_cells: int) -> np.ndarray:
    """Give clusters under ``min_cells`` to the nearest larger cluster (centroids); relabel 0..k."""
    labels = labels.copy()
    ids, sizes = np.unique(labels, return_counts=True)
    big = ids[sizes >= min_cells]
    if big.size == 0:
        return np.zeros_like(labels)
    cent = np.stack([x[labels == i].mean(axis=0) for i in big])
    for i in ids[sizes < min_cells]:
        c = x[labels == i].mean(axis=0)
        labels[labels == i] = big[np.argmin(((cent - c) ** 2).sum(-1))]
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


@dataclass
class _Genes:
    """The features of a run: genes, or antibodies for a protein-only cohort.

    ``var`` (gene symbols or antibody names as index), ``uns`` (``log1p`` base),
    ``informative`` (features) mask, whether all values are >= 0, and ``linear``: values
    are compared by their difference (CLR / dsb), not as log1p of expression.
    """

    var: pd.DataFrame
    uns: dict
    informative: np.ndarray
    nonnegative: bool
    linear: bool = False


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
#: Stored values of the genes one :func:`rank_markers` call of `_rank_rna` ranks: the block's
#: copy (8 bytes a value) and the ranking's sort keys (16) stay near 200 MB at any cohort size.
_RANK_BLOCK_VALUES = 8_000_000
_EMPTY_RANKS = pd.DataFrame(columns=["group", "feature", "auroc", "statistic", "logfoldchange"])


def _gene_blocks(cols: np.ndarray, values: np.ndarray, limit: int) -> list[np.ndarray]:
    """``cols`` cut into consecutive blocks of at most ``limit`` stored ``values`` (or one gene)."""
    blocks, start, held = [], 0, 0
    for i, n in enumerate(values.tolist()):
        if held + n > limit and i > start:
            blocks.append(cols[start:i])
            start, held = i, 0
        held += n
    blocks.append(cols[start:])
    return blocks


def _rank_rna(
    x: _LineageRNA,
    genes: _Genes,
    local: np.ndarray,
    stats: _Sums,
    tested: list[int],
    reference: list[int],
) -> pd.DataFrame:
    """:func:`rank_markers` of clusters ``tested`` against the rest of ``reference`` (local ids).

    Only informative genes that can be a marker of a tested cluster are ranked: expressed in
    >= 10 % of its cells, with a mean (up to rounding) at least that of the rest. Each gene's
    statistics do not depend on the others, so the markers equal those of ranking all genes.
    Genes are ranked in blocks of at most `_RANK_BLOCK_VALUES` stored values (the cells x
    genes copy of one block at a time); the rows come back in :func:`rank_markers` order
    (group, then statistic descending, ties in gene order), without ``padj``.
    """
    pct = stats.nonzero / np.maximum(stats.size, 1.0)[:, None]
    keep = np.zeros(x.n_genes, dtype=bool)
    for c in tested:
        ok = pct[c] >= _MIN_PCT
        if genes.nonnegative:
            rest = [r for r in reference if r != c]
            mean_in = stats.total[c] / stats.size[c]
            mean_out = stats.total[rest].sum(axis=0) / stats.size[rest].sum()
            ok &= mean_in * (1 + 1e-6) >= mean_out
        keep |= ok
    cols = np.flatnonzero(keep & genes.informative)
    rows = np.flatnonzero(np.isin(local, reference))
    labels = pd.Categorical(local[rows].astype(str))
    nonzero = stats.nonzero[reference].sum(axis=0)
    frames = []
    for block in _gene_blocks(cols, nonzero[cols], _RANK_BLOCK_VALUES):
        # genes named by their column, so that the blocks merge in column order
        sub = ad.AnnData(
            x.take(rows, block, nonzero[block]),
            var=pd.DataFrame(index=block.astype(str)),
            uns=genes.uns,
        )
        sub.obs["c"] = labels
        frames.append(
            rank_markers(sub, "c", groups=[str(c) for c in tested], min_fraction=_MIN_PCT, n_jobs=1)
        )
    res = pd.concat(frames, ignore_index=True).drop(columns="padj")
    column = res["feature"].astype(np.int64).to_numpy()
    if genes.linear:  # rank_markers' fold change reads the values as log1p
        group = res["group"].astype(str).astype(np.int64).to_numpy()
        rest_total = stats.total[reference].sum(axis=0)
        rest_size = stats.size[reference].sum()
        mean_in = stats.total[group, column] / stats.size[group]
        mean_out = (rest_total[column] - stats.total[group, column]) / (
            rest_size - stats.size[group]
        )
        res["logfoldchange"] = _log2fc(mean_in, mean_out, True)
    order = np.lexsort((column, -res["statistic"].to_numpy(), res["group"].cat.codes.to_numpy()))
    res = res.iloc[order].reset_index(drop=True)
    res["feature"] = genes.var.index.to_numpy()[column[order]]
    return res


def _rank_prot(
    prot: tuple[np.ndarray, pd.DataFrame, pd.Series],
    local: np.ndarray,
    tested: list[int],
    reference: list[int],
) -> pd.DataFrame:
    """:func:`rank_markers` of the proteins of clusters ``tested`` against ``reference``."""
    rows = np.flatnonzero(np.isin(local, reference))
    values = prot[0] if rows.size == local.size else prot[0][rows]
    psub = ad.AnnData(values, var=prot[1])
    psub.obs["c"] = pd.Categorical(local[rows].astype(str))
    pres = rank_markers(psub, "c", groups=[str(c) for c in tested])
    return pres[pres["pct_in"] >= _MIN_PCT]


def _describe_lineage(
    x: _LineageRNA,
    genes: _Genes,
    prot: tuple[np.ndarray, pd.DataFrame, pd.Series] | None,
    local: np.ndarray,
    stats: _Sums | None,
    parents: list[str],
) -> list[dict]:
    """Markers against l2 siblings (or the lineage when alone) and a base name per cluster.

    ``x`` the lineage's log-normalised RNA, ``prot`` the
    lineage's proteins, ``local`` cluster 0..k-1 of each cell, ``stats`` their sums (None
    when k is 1), ``parents`` their l2. Clusters alone in their l2 are ranked together
    against the whole lineage. Returns, in naming order, ``cluster, l2, base, rna_markers,
    protein_markers``; names are made unique by the caller.
    """
    k = len(parents)
    by_parent: dict[str, list[int]] = {}
    for c, parent in enumerate(parents):
        by_parent.setdefault(parent, []).append(c)
    sizes = np.bincount(local, minlength=k)
    everyone = list(range(k))
    singles = [cids[0] for cids in by_parent.values() if len(cids) == 1]
    res_single = pres_single = None
    if k > 1 and singles:
        res_single = _rank_rna(x, genes, local, stats, singles, everyone)
        if prot is not None:
            pres_single = _rank_prot(prot, local, singles, everyone)
    out = []
    for parent, cids in by_parent.items():
        if len(cids) > 1:
            res = _rank_rna(x, genes, local, stats, cids, cids)
            pres = None if prot is None else _rank_prot(prot, local, cids, cids)
        elif k > 1:
            res, pres = res_single, pres_single
        else:
            res, pres = _EMPTY_RANKS, None
        largest = max(cids, key=lambda c: (sizes[c], -c))
        for c in sorted(cids, key=lambda c: (-sizes[c], c)):
            top = _top_features(res, str(c), None, _N_TOP_RNA) if len(res) else res
            genes_top = top["feature"].astype(str).tolist()
            best = float(top["auroc"].iloc[0]) if len(top) else 0.5
            if len(cids) == 1 or (c == largest and best < _MAIN_BODY_AUROC):
                base = _plain_name(parent)
            else:
                label = _signature(genes_top) or (
                    _gene_label(genes_top[0]) if genes_top else "other"
                )
                base = f"{_short_name(parent)}_{label}"
            ptop = (
                _top_features(pres, str(c), prot[2], _N_TOP_PROT)["feature"].tolist()
                if pres is not None
                else []
            )
            out.append(
                {
                    "cluster": c,
                    "l2": parent,
                    "base": base,
                    "rna_markers": ";".join(genes_top),
                    "protein_markers": ";".join(ptop),
                }
            )
    return out


@dataclass
class _Settings:
    """The clustering parameters of :func:`subsets`."""

    resolution: float | str
    min_cells: int
    n_neighbors: int
    neighbours: str
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
        return _knn(shared.emb[rows], s.n_neighbors, s.neighbours, s.seed)

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

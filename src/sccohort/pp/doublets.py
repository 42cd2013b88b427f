"""Doublet scores of one sample: scrublet-style simulated doublets in RNA + protein space.

Method ``"cite"`` (default) follows scrublet (Wolock et al. 2019) but embeds cells with both
modalities: it sums the raw counts of random pairs of observed cells (RNA *and* antibodies),
embeds observed and simulated droplets together (log-normalised highly variable genes ->
PCA, plus antibody CLR -> PCA, each block scaled to unit total variance), and scores each
observed cell by the share of simulated doublets among its nearest neighbours. Cells whose
share exceeds a threshold set by Otsu's method on the simulated doublets' own shares (the
valley between homotypic and heterotypic simulated doublets, as scrublet does) are called
doublets. Two lineages' surface markers (CD3 with CD14 or CD19 ...) make heterotypic
doublets stand out more in protein space than in RNA space; a protein-only sample is
embedded by its antibodies alone. Method ``"scrublet"`` is
scanpy's `scanpy.pp.scrublet` on RNA only, with the same Otsu threshold.

Neighbours are exact up to `EXACT_MAX_DROPLETS` droplets (observed + simulated) and come
from an inverted file (k-means lists, the 16 lists nearest each list searched) above it
(``knn_method="auto"``): on large samples the approximate neighbour shares agree with the
exact ones almost call for call (``tests/test_qc.py`` checks the agreement) at a fraction
of the search time.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numba
import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd, svd_flip
from threadpoolctl import threadpool_limits

METHODS = ("cite", "scrublet", "none")
KNN_METHODS = ("auto", "exact", "approximate")
#: With ``knn_method="auto"``, more droplets (observed + simulated) than this use the
#: approximate (inverted file) neighbour search.
EXACT_MAX_DROPLETS = 20_000
#: Lists the inverted file searches for the queries of each list.
N_PROBE = 16
#: Fewer cells than this and doublet calling is skipped (scores NaN, nobody called).
MIN_CELLS_DOUBLETS = 100


@dataclass(frozen=True)
class DoubletResult:
    """Doublet evidence of one sample's cells.

    Attributes
    ----------
    score
        (n_cells,) share of simulated doublets among each cell's neighbours (``"cite"``)
        or scrublet's score (``"scrublet"``); NaN when calling was skipped.
    called
        (n_cells,) bool, the cells called doublets.
    threshold
        Score threshold used (NaN when skipped).
    method
        The method that ran, or ``"none"`` when skipped.
    note
        Why calling was skipped or degraded (empty when it ran as asked).

    Examples
    --------
    >>> from sccohort.pp import call_doublets
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> one = mdata[mdata.obs["sample_id"] == "SSc1"]
    >>> result = call_doublets(one["rna"].layers["counts"], None, method="none")
    >>> result.method, bool(result.called.any())
    ('none', False)
    """

    score: np.ndarray
    called: np.ndarray
    threshold: float
    method: str
    note: str = ""


#: Floor of the automatic cap on doublet calls (share of a sample's cells).
MIN_MAX_RATE = 0.06


def _skipped(n: int, note: str) -> DoubletResult:
    return DoubletResult(np.full(n, np.nan), np.zeros(n, bool), float("nan"), "none", note)


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of a 1-D sample (the cut maximising between-class variance).

    Parameters
    ----------
    values
        (n,) finite values.
    bins
        Histogram bins.

    Returns
    -------
    The threshold (a bin edge); the midpoint of the range when all values are equal.
    """
    values = np.asarray(values, dtype=float)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    w = hist.astype(float) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(w)
    m0 = np.cumsum(w * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _standardise(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``clip((x - mu) / sd, -10, 10)`` in place (``x`` float32, ``sd`` without zeros)."""
    np.subtract(x, mu, out=x)
    np.divide(x, sd, out=x)
    return np.clip(x, -10.0, 10.0, out=x)


def _block(obs: np.ndarray, sim: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    """PCA of the observed droplets, applied to both; scaled to unit total variance.

    ``obs`` and ``sim`` are standardised in place (by the observed droplets' means and SDs).
    The PCA is scikit-learn's ``PCA(svd_solver="randomized")`` written out: the same
    `randomized_svd` call, sign convention and projection, without the input copies and the
    total-variance pass that ``PCA.fit`` adds.
    """
    mu = obs.mean(axis=0)
    sd = obs.std(axis=0)
    sd[sd == 0] = 1.0
    zo = _standardise(obs, mu, sd)
    zs = _standardise(sim, mu, sd)
    n, p = zo.shape
    n_comps = max(1, min(n_comps, p - 1 if p > 1 else 1, n - 1))
    mean = zo.mean(axis=0)
    u, s, vt = randomized_svd(
        zo - mean,
        n_comps,
        n_oversamples=10,
        n_iter="auto",
        power_iteration_normalizer="auto",
        flip_sign=False,
        random_state=np.random.RandomState(seed),
    )
    _, vt = svd_flip(u, vt, u_based_decision=False)
    explained = (s**2) / (n - 1)
    scale = np.sqrt(max(float(explained.sum()), 1e-12))
    offset = mean.reshape(1, -1) @ vt.T
    proj_obs = zo @ vt.T
    proj_obs -= offset
    proj_sim = zs @ vt.T
    proj_sim -= offset
    return np.vstack([proj_obs, proj_sim]) / scale


def highly_variable(norm: sp.csr_matrix, n_top: int) -> np.ndarray:
    """Indices of the most variable genes (Seurat v2 dispersion, z-scored in 20 mean bins).

    Parameters
    ----------
    norm
        (n_cells, n_genes) depth-normalised counts (not log).
    n_top
        Number of genes to return (fewer if fewer genes are expressed).

    Returns
    -------
    Sorted gene indices.
    """
    norm = sp.csr_matrix(norm)
    if not norm.has_canonical_format:
        norm = norm.copy()
        norm.sum_duplicates()
    n = norm.shape[0]
    mean = np.asarray(norm.sum(axis=0)).ravel() / n
    squared = sp.csr_matrix((norm.data * norm.data, norm.indices, norm.indptr), shape=norm.shape)
    sq = np.asarray(squared.sum(axis=0)).ravel() / n
    var = np.maximum(sq - mean**2, 0.0) * n / max(n - 1, 1)
    expressed = np.flatnonzero(mean > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(np.maximum(var[expressed], 1e-12) / mean[expressed])
    logmean = np.log1p(mean[expressed])
    edges = np.linspace(logmean.min(), logmean.max() + 1e-9, 21)
    bins = np.digitize(logmean, edges)
    z = np.zeros(expressed.size)
    for b in np.unique(bins):
        sel = bins == b
        sd = disp[sel].std(ddof=1) if sel.sum() > 1 else 0.0
        z[sel] = (disp[sel] - disp[sel].mean()) / sd if sd > 0 else 0.0
    top = expressed[np.argsort(-z, kind="stable")[: min(n_top, expressed.size)]]
    return np.sort(top)


def _scale_rows(mat: sp.csr_matrix, factors: np.ndarray) -> sp.csr_matrix:
    """``diag(factors) @ mat`` for a canonical CSR matrix (same dtype as ``mat``)."""
    data = mat.data * np.repeat(factors.astype(mat.dtype), np.diff(mat.indptr))
    return sp.csr_matrix((data, mat.indices, mat.indptr), shape=mat.shape)


def _rna_features(
    counts: sp.csr_matrix, pairs: tuple[np.ndarray, np.ndarray], n_hvg: int
) -> tuple[np.ndarray, np.ndarray]:
    """Log-normalised highly variable genes of observed (n, g) and simulated (m, g) droplets.

    ``log1p`` runs on the non-zero values only.
    """
    if not counts.has_canonical_format:
        counts = counts.copy()
        counts.sum_duplicates()
    totals = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    size = (1e4 / np.maximum(totals, 1.0)).astype(np.float32)
    hvg = highly_variable(_scale_rows(counts, size), n_hvg)
    sub = counts[:, hvg]
    i, j = pairs
    sim_size = (1e4 / np.maximum(totals[i] + totals[j], 1.0)).astype(np.float32)
    parents = sp.csr_matrix(
        (
            np.ones(2 * i.size, sub.dtype),
            np.column_stack([i, j]).ravel(),
            np.arange(0, 2 * i.size + 1, 2),
        ),
        shape=(i.size, sub.shape[0]),
    )
    sim = _scale_rows(parents @ sub, sim_size)  # summed counts of each pair (i != j)
    np.log1p(sim.data, out=sim.data)
    obs = _scale_rows(sub, size)
    np.log1p(obs.data, out=obs.data)
    return obs.toarray(), sim.toarray()


def _neighbour_share(
    emb: np.ndarray,
    n_obs: int,
    queries: np.ndarray,
    k: int,
    chunk: int = 1024,
    sq: np.ndarray | None = None,
) -> np.ndarray:
    """Share of simulated droplets among each query's ``k`` nearest neighbours.

    Rows ``>= n_obs`` of ``emb`` are simulated; distances are exact Euclidean (float32, up
    to each query's own squared norm) and a query is not its own neighbour. `_knn_share`
    counts them; a query whose ``k``-th distance is tied falls back to ``np.argpartition``
    (which picks among the tied droplets). ``sq``: the rows' squared norms, if known.
    """
    if sq is None:
        sq = np.einsum("ij,ij->i", emb, emb)
    out = np.empty(queries.size)
    tied = np.zeros(queries.size, bool)
    for start in range(0, queries.size, chunk):
        q = queries[start : start + chunk]
        prod = emb[q] @ emb.T
        block = slice(start, start + q.size)
        _knn_share(prod, sq, q, n_obs, k, out[block], tied[block])
        for row in np.flatnonzero(tied[block]):
            d = sq - 2.0 * prod[row]
            d[q[row]] = np.inf
            nearest = np.argpartition(d, k - 1)[:k]
            out[start + row] = (nearest >= n_obs).mean()
    return out


def _kmeans(x: np.ndarray, n_lists: int, rng: np.random.Generator) -> np.ndarray:
    """(n_lists, d) Euclidean k-means centroids (Lloyd, 8 rounds) of a sample of ``x``."""
    sample = x[rng.choice(x.shape[0], size=min(x.shape[0], 40 * n_lists), replace=False)]
    cent = sample[rng.choice(sample.shape[0], size=n_lists, replace=False)].copy()
    for _ in range(8):
        label = _nearest_centroid(sample, cent)
        sums = np.zeros_like(cent)
        np.add.at(sums, label, sample)
        counts = np.bincount(label, minlength=n_lists)
        filled = counts > 0  # an emptied list keeps its centroid
        cent[filled] = sums[filled] / counts[filled, None].astype(cent.dtype)
    return cent


def _centroid_distances(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """(n, L) squared distances of the rows of ``x`` to the centroids, less each row's norm."""
    return np.einsum("ij,ij->i", cent, cent)[None, :] - 2.0 * (x @ cent.T)


def _nearest_centroid(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (Euclidean)."""
    return np.argmin(_centroid_distances(x, cent), axis=1)


def _neighbour_share_ivf(
    emb: np.ndarray, n_obs: int, queries: np.ndarray, k: int, seed: int, n_probe: int = N_PROBE
) -> np.ndarray:
    """`_neighbour_share` over an inverted file: approximate, and faster on many droplets.

    Droplets are grouped into ``sqrt(n)`` k-means lists; the queries of one list are compared
    with the droplets of the ``n_probe`` lists whose centroids lie nearest its centroid (more
    while those hold fewer than ``4 (k + 1)`` droplets), with the exact kernel
    (`_knn_share`) on that candidate set.
    """
    n = emb.shape[0]
    n_lists = int(np.clip(round(np.sqrt(n)), 2, 1024))
    cent = _kmeans(emb, n_lists, np.random.default_rng(seed))
    label = np.concatenate([_nearest_centroid(emb[s : s + 8192], cent) for s in range(0, n, 8192)])
    members = np.argsort(label, kind="stable")
    starts = np.searchsorted(label[members], np.arange(n_lists + 1))
    sizes = np.diff(starts)
    near = np.argsort(_centroid_distances(cent, cent), axis=1, kind="stable")
    sq = np.einsum("ij,ij->i", emb, emb)
    query_label = label[queries]
    out = np.empty(queries.size)
    for c in np.unique(query_label):
        lists = np.concatenate([[c], near[c][near[c] != c]])  # its own list first
        enough = int(np.searchsorted(np.cumsum(sizes[lists]), 4 * (k + 1))) + 1
        cand = np.sort(
            np.concatenate(
                [members[starts[j] : starts[j + 1]] for j in lists[: max(n_probe, enough)]]
            )
        )
        rows = np.flatnonzero(query_label == c)
        q = queries[rows]
        out[rows] = _neighbour_share(
            emb[cand], int(np.searchsorted(cand, n_obs)), np.searchsorted(cand, q), k, sq=sq[cand]
        )
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _knn_share(prod, sq, queries, n_obs, k, out, tied):  # noqa: ANN001, ANN202
    """Share of droplets ``>= n_obs`` among the ``k`` nearest of each query row.

    ``d[r, j] = sq[j] - 2 prod[r, j]`` (float32, as numpy computes it); the query itself is
    left out. One pass keeps the ``k`` smallest distances in a max-heap; a second counts the
    droplets at or below the ``k``-th. Sets ``tied[r]`` (``out[r]`` then unset) when more
    than ``k`` droplets lie there (or fewer than ``k`` other droplets exist).
    """
    n = prod.shape[1]
    heap = np.empty(k, np.float32)
    two = np.float32(2.0)
    for r in range(prod.shape[0]):
        q = queries[r]
        if n - 1 < k:
            tied[r] = True
            continue
        size = 0
        j = 0
        while size < k:
            if j != q:
                _heap_push(heap, size, sq[j] - two * prod[r, j])
                size += 1
            j += 1
        for jj in range(j, n):
            d = sq[jj] - two * prod[r, jj]
            if d < heap[0] and jj != q:
                _heap_replace_top(heap, k, d)
        kth = heap[0]
        near_obs = 0
        for jj in range(n_obs):
            near_obs += sq[jj] - two * prod[r, jj] <= kth
        near_sim = 0
        for jj in range(n_obs, n):
            near_sim += sq[jj] - two * prod[r, jj] <= kth
        if sq[q] - two * prod[r, q] <= kth:  # the query itself is no neighbour
            if q < n_obs:
                near_obs -= 1
            else:
                near_sim -= 1
        if near_obs + near_sim == k:
            out[r] = near_sim / k
            tied[r] = False
        else:
            tied[r] = True


@numba.njit(cache=True, nogil=True)
def _heap_push(heap, size, value):  # noqa: ANN001, ANN202
    """Add ``value`` to the max-heap ``heap[:size]``."""
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if heap[parent] >= value:
            break
        heap[pos] = heap[parent]
        pos = parent
    heap[pos] = value


@numba.njit(cache=True, nogil=True)
def _heap_replace_top(heap, size, value):  # noqa: ANN001, ANN202
    """Replace the largest value of the max-heap ``heap[:size]`` by ``value``."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= value:
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = value


def _clr(x: np.ndarray) -> np.ndarray:
    logx = np.log1p(x)
    return logx - logx.mean(axis=1, keepdims=True)


def _cite_scores(
    rna: sp.csr_matrix | None,
    prot: np.ndarray | None,
    *,
    sim_ratio: float,
    n_hvg: int,
    n_pcs_rna: int,
    n_pcs_prot: int,
    library_weight: float,
    seed: int,
    knn_method: str = "auto",
    max_sim_queries: int = 3000,
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of simulated neighbours of observed (n,) and simulated (m,) droplets.

    ``rna`` None: protein only (``prot`` then needs at least 2 antibodies).
    """
    n = (rna if rna is not None else prot).shape[0]
    rng = np.random.default_rng(seed)
    m = int(round(sim_ratio * n))
    i = rng.integers(0, n, m)
    j = (i + rng.integers(1, n, m)) % n  # never a cell with itself
    blocks = []
    if rna is not None:
        obs, sim = _rna_features(rna, (i, j), n_hvg)
        blocks.append(_block(obs, sim, n_pcs_rna, seed))
    if prot is not None and prot.shape[1] >= 2:
        blocks.append(_block(_clr(prot), _clr(prot[i] + prot[j]), n_pcs_prot, seed))
    if library_weight > 0:
        libs = [] if rna is None else [np.asarray(rna.sum(axis=1)).ravel()]
        if prot is not None:
            libs.append(prot.sum(axis=1))
        lib_obs = np.log1p(np.column_stack(libs))
        lib_sim = np.log1p(np.column_stack([x[i] + x[j] for x in libs]))
        mu, sd = lib_obs.mean(axis=0), lib_obs.std(axis=0)
        sd[sd == 0] = 1.0
        z = np.vstack([_standardise(lib_obs, mu, sd), _standardise(lib_sim, mu, sd)])
        blocks.append(library_weight * z / np.sqrt(z.shape[1]))
    emb = np.hstack(blocks).astype(np.float32)
    k = max(5, int(round(np.sqrt(n))))
    sim_queries = n + np.sort(rng.choice(m, size=min(m, max_sim_queries), replace=False))
    queries = np.concatenate([np.arange(n), sim_queries])
    if knn_method == "approximate" or (knn_method == "auto" and emb.shape[0] > EXACT_MAX_DROPLETS):
        share = _neighbour_share_ivf(emb, n, queries, k, seed)
    else:
        share = _neighbour_share(emb, n, queries, k)
    return share[:n], share[n:]


def call_doublets(
    rna_counts: sp.spmatrix | None,
    prot_counts: np.ndarray | sp.spmatrix | None = None,
    *,
    method: str = "cite",
    sim_ratio: float = 2.0,
    n_hvg: int = 2000,
    n_pcs_rna: int = 30,
    n_pcs_prot: int = 15,
    library_weight: float = 0.0,
    min_cells: int = MIN_CELLS_DOUBLETS,
    max_rate: float | None = None,
    knn_method: str = "auto",
    seed: int = 0,
) -> DoubletResult:
    """Score and call doublets among one sample's cells.

    Parameters
    ----------
    rna_counts
        (n_cells, n_genes) raw RNA counts of one sample, or None for a protein-only sample
        (method ``"cite"`` then simulates doublets in antibody space alone).
    prot_counts
        (n_cells, n_antibodies) raw antibody counts (isotype controls and all-zero columns
        already removed) or None; method ``"cite"`` then uses RNA only.
    method
        ``"cite"`` (RNA + protein simulated doublets), ``"scrublet"`` (scanpy, RNA only)
        or ``"none"`` (no calling: scores NaN).
    sim_ratio
        Simulated doublets per observed cell.
    n_hvg, n_pcs_rna, n_pcs_prot
        Highly variable genes and principal components of each modality.
    library_weight
        Weight of a third block, the standardised log RNA and antibody library sizes
        (doublets hold two cells' molecules); 0 leaves it out. On the simulated paper
        cohort a weight of 0.5 or 1 did not improve precision or recall, hence 0.
    min_cells
        Fewer cells than this: calling is skipped (scores NaN, nobody called, ``note`` says
        why); the caller warns.
    max_rate
        Most doublets called, as a share of the sample's cells. ``None``: twice the 10x
        Genomics multiplet rate (about 0.8 % per 1,000 cells recovered), at least
        ``MIN_MAX_RATE``; Otsu's threshold on the simulated doublets alone over-calls on small
        real samples (16 % of the 500 real ECCITE cells), so the threshold is raised to the
        score quantile that keeps calls under this cap.
    knn_method
        ``"exact"``, ``"approximate"`` (inverted file) or ``"auto"`` (approximate above
        `EXACT_MAX_DROPLETS` droplets); method ``"cite"`` only.
    seed
        Seed of the doublet simulation and PCA (same inputs + seed -> same result).

    Returns
    -------
    DoubletResult

    Examples
    --------
    >>> from sccohort.pp import call_doublets
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> one = mdata[mdata.obs["sample_id"] == "SSc1"]
    >>> result = call_doublets(one["rna"].layers["counts"], one["prot"].layers["counts"], seed=0)
    >>> result.method, result.score.shape, int(result.called.sum())
    ('cite', (300,), 13)
    """
    if method not in METHODS:
        raise ValueError(f"unknown doublet method {method!r}; use one of {METHODS}")
    if knn_method not in KNN_METHODS:
        raise ValueError(f"unknown neighbour search {knn_method!r}; use one of {KNN_METHODS}")
    if rna_counts is None and prot_counts is None:
        raise ValueError("call_doublets needs RNA or antibody counts")
    rna = None if rna_counts is None else sp.csr_matrix(rna_counts, dtype=np.float32)
    n = (rna_counts if rna_counts is not None else prot_counts).shape[0]
    if method == "none":
        return _skipped(n, "doublet calling switched off")
    if n < min_cells:
        return _skipped(n, f"{n} cells, fewer than the {min_cells} doublet calling needs")
    if rna is None and (method == "scrublet" or prot_counts.shape[1] < 2):
        why = "scrublet needs RNA" if method == "scrublet" else "fewer than 2 antibodies"
        return _skipped(n, f"protein-only sample: {why}")
    if method == "scrublet":
        import scanpy as sc  # imported here: per-sample workers need it only for this method

        adata = ad.AnnData(rna)
        sc.pp.scrublet(
            adata,
            sim_doublet_ratio=sim_ratio,
            random_state=seed,
            threshold=1.0,
            n_prin_comps=n_pcs_rna,
            verbose=False,
        )
        score = adata.obs["doublet_score"].to_numpy(dtype=float)
        sim_score = np.asarray(adata.uns["scrublet"]["doublet_scores_sim"], dtype=float)
    else:
        prot = None
        if prot_counts is not None:
            prot = (
                prot_counts.toarray() if sp.issparse(prot_counts) else np.asarray(prot_counts)
            ).astype(np.float32)
        with threadpool_limits(1):
            score, sim_score = _cite_scores(
                rna,
                prot,
                sim_ratio=sim_ratio,
                n_hvg=n_hvg,
                n_pcs_rna=n_pcs_rna,
                n_pcs_prot=n_pcs_prot,
                library_weight=library_weight,
                seed=seed,
                knn_method=knn_method,
            )
    threshold = otsu_threshold(sim_score)
    cap = expected_max_rate(n) if max_rate is None else max_rate
    if np.mean(score > threshold) > cap:
        threshold = float(np.quantile(score, 1.0 - cap))
    return DoubletResult(score, score > threshold, threshold, method)


def expected_max_rate(n_cells: int) -> float:
    """Cap on the share of doublet calls: twice 10x's rate (0.8 % per 1,000 cells), >= 6 %."""
    return max(MIN_MAX_RATE, 2 * 0.008 * n_cells / 1000)

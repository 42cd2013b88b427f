"""Harmony batch integration (Korsunsky et al. 2019, Nat. Methods 16:1289), our own code.

Written from the paper and the reference implementations' published behaviour (R harmony
1.x / "harmony2" and harmonypy 2.x, whose defaults it keeps), so that sccohort needs no GPL
package at run time. One Harmony iteration:

1. Clustering on the L2-normalised embedding ``Z_cos``: distances ``2 (1 - Y Z_cos)`` to
   the unit-length centroids ``Y`` (``n_clusters x d``), soft assignments ``R = softmax(-dist
   / sigma)`` (entropy regularisation ``sigma``), then ``max_iter_kmeans`` rounds that
   revisit the cells in random blocks of ``block_size`` of them, each block reassigned with
   the diversity penalty ``theta_b (log(2 E + 1) - log(O + E + 1))`` of each of its batches
   (``O``: the clusters' observed batch counts, ``E``: those expected from the batch shares,
   both without the block). The window-of-3 objective test (``epsilon_cluster``) ends the
   rounds early.
2. Mixture-of-experts correction: per cluster a ridge regression of the original embedding
   on the batches, weighted by ``R`` (intercept not penalised; ``lamb`` per batch, or
   ``alpha`` times the expected counts ``E`` when ``lamb`` is None), on the batches with a
   share above ``batch_prop_cutoff`` of their cells in the cluster; each cell moves by the
   batch terms of its batches weighted by its ``R``. The intercepts become the new ``Y``.

Iterations stop when the objective (k-means error + ``sigma`` x entropy + ``sigma theta`` x
cross-entropy, x 2000 / n) falls by less than ``epsilon_harmony`` (relative). The first
centroids come from scikit-learn's k-means on ``Z_cos`` (random cells, 10 Lloyd iterations,
seeded). R harmony 0.1 and harmonypy 0.0.x differ in three places: they move ``Y`` to the
R-weighted mean of ``Z_cos`` in every k-means round, penalise with ``((E + 1) / (O + 1))**
theta`` and default to ``lamb`` 1 and 20 rounds; ``lamb=1, max_iter_kmeans=20`` gives their
settings here, not their centroid and penalty updates.

The random streams are not harmonypy's (nor R's), so results agree with theirs to a
measured tolerance, not to the bit (``benchmarks/bench_harmony.py``: kNN overlap with
harmonypy 2.1 as high as harmonypy's with itself between two seeds). Cells are processed
sorted by their combination of batches, on one thread, every sum in a fixed order: a seed
gives the same result on every run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from sccohort.tl import harmony_numba as kern

#: Objective window of the k-means rounds' convergence test (R harmony's ``window_size``).
WINDOW = 3
#: Lloyd iterations of the initial k-means.
KMEANS_ITER = 10


@dataclass
class HarmonyResult:
    """What `run_harmony` returns.

    Attributes
    ----------
    z_corr
        Corrected embedding, ``n_cells x d`` float32, rows in the input's order.
    centroids
        Unit-length cluster centroids ``Y``, ``n_clusters x d``.
    objective_harmony
        Objective after the initial clustering and after each iteration's clustering.
    objective_kmeans
        Objective after every k-means round.
    kmeans_rounds
        k-means rounds per iteration.
    n_iterations
        Harmony iterations run.
    converged
        Whether the objective converged within ``max_iter_harmony`` iterations.
    """

    z_corr: np.ndarray
    centroids: np.ndarray
    objective_harmony: list[float] = field(default_factory=list)
    objective_kmeans: list[float] = field(default_factory=list)
    kmeans_rounds: list[int] = field(default_factory=list)
    n_iterations: int = 0
    converged: bool = False


# --------------------------------------------------------------------------------------------
# the algorithm


@dataclass
class _Design:
    """Batches of the cells, sorted by their combination of batches (one per variable)."""

    codes: np.ndarray  # n x n_vars int64, batch indices numbered across variables
    order: np.ndarray  # input row of each sorted cell
    starts: np.ndarray  # first cell of each combination, and n
    combos: np.ndarray  # n_combos x n_vars batch indices
    n_levels: list[int]  # batches per variable
    counts: np.ndarray  # cells per batch


def _design(batches: Sequence[np.ndarray], n: int) -> _Design:
    codes, n_levels, offset = [], [], 0
    for labels in batches:
        values = pd.Series(np.asarray(labels).reshape(-1))
        if values.size != n:
            raise ValueError(f"a batch variable has {values.size} labels for {n} cells")
        if values.isna().any():
            raise ValueError("a batch variable has missing labels")
        code, uniques = pd.factorize(values, sort=True)
        codes.append(code.astype(np.int64) + offset)
        n_levels.append(len(uniques))
        offset += len(uniques)
    stacked = np.stack(codes, axis=1)
    order = np.lexsort(stacked.T[::-1])
    stacked = np.ascontiguousarray(stacked[order])
    change = np.flatnonzero((np.diff(stacked, axis=0) != 0).any(axis=1)) + 1
    starts = np.concatenate([[0], change, [n]]).astype(np.int64)
    counts = np.bincount(stacked.ravel(), minlength=offset).astype(np.float64)
    return _Design(stacked, order, starts, stacked[starts[:-1]], n_levels, counts)


def _per_batch(value: float | Sequence[float], n_levels: list[int], name: str) -> np.ndarray:
    """One value per batch from one number, one per variable or one per batch."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if arr.size == 1:
        return np.repeat(arr, sum(n_levels))
    if arr.size == len(n_levels):
        return np.repeat(arr, n_levels)
    if arr.size == sum(n_levels):
        return arr
    raise ValueError(
        f"{name} needs one value, one per batch variable ({len(n_levels)}) or one per batch "
        f"({sum(n_levels)}); got {arr.size}"
    )


def _positive(lamb: np.ndarray) -> np.ndarray:
    if not (np.isfinite(lamb).all() and (lamb > 0).all()):
        raise ValueError("lamb must be positive (0 leaves intercept and batches confounded)")
    return lamb


def _kmeans_centroids(z_cos: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Unit-length k-means centroids (``k x d``) of the normalised cells.

    scikit-learn's k-means from ``k`` random cells, `KMEANS_ITER` Lloyd iterations: the start
    of R harmony 1.x and harmonypy 2.x. (k-means++, harmonypy 0.0.x's start, spreads the
    centroids to outlying cells: on the Kotliarov cohort its objective stayed 5-8 above
    harmonypy 2.1's; from random cells ours falls in harmonypy's range, seed to seed.)
    """
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct cells than clusters
        km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=KMEANS_ITER, random_state=seed)
        y = km.fit(z_cos).cluster_centers_.astype(np.float32)
    return _unit_rows(y)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0).astype(x.dtype)


def _cross_entropy(o: np.ndarray, e: np.ndarray, theta: np.ndarray, sigma: np.ndarray) -> float:
    """``sum_{b,k} theta_b sigma_k O log((O + E + 1) / (2 E + 1))``."""
    ratio = np.log((o + e + 1.0) / (2.0 * e + 1.0))
    return float(((theta[:, None] * o * ratio) * sigma[None, :]).sum())


@dataclass
class _State:
    """Arrays one run updates (sorted cells as rows)."""

    z_orig: np.ndarray
    z_corr: np.ndarray
    y: np.ndarray
    dist: np.ndarray
    r: np.ndarray
    o: np.ndarray = field(default_factory=lambda: np.zeros(0))
    e: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _start_clusters(st: _State, des: _Design, sigma: np.ndarray, pr_b: np.ndarray) -> tuple:
    """Assign cells without the diversity penalty and count O and E; returns (error, entropy)."""
    np.matmul(_unit_rows(st.z_corr), st.y.T, out=st.dist)
    error, entropy = kern.assign_plain(st.dist, st.r, sigma.astype(np.float32))
    seg = kern.segment_sums(st.r, des.starts)
    st.o = np.zeros((des.counts.size, st.r.shape[1]))
    for c in range(des.combos.shape[1]):
        np.add.at(st.o, des.combos[:, c], seg)
    st.e = pr_b[:, None] * seg.sum(axis=0)[None, :]
    return error, entropy


def _kept_batches(o_k: np.ndarray, des: _Design, cutoff: float) -> np.ndarray:
    """Batches a cluster corrects: share above ``cutoff``, in a variable with 2+ of them."""
    share = o_k / np.maximum(des.counts, 1.0)
    keep = share > cutoff
    bounds = np.cumsum([0, *des.n_levels])
    for v in range(len(des.n_levels)):
        part = keep[bounds[v] : bounds[v + 1]]
        if part.sum() < 2:
            part[:] = False
    return np.flatnonzero(keep)


def _ridge_correct(st: _State, des: _Design, lamb: np.ndarray | None, alpha: float,
                   cutoff: float) -> None:  # fmt: skip
    """Mixture-of-experts correction: new ``z_corr`` and centroids ``y`` from the ridge fits."""
    n_combo = des.starts.size - 1
    k_clusters, d = st.y.shape
    seg = kern.segment_sums(st.r, des.starts)  # n_combo x K
    zr = np.empty((n_combo, d, k_clusters))  # R-weighted coordinate sums per combination
    for g in range(n_combo):
        sl = slice(des.starts[g], des.starts[g + 1])
        zr[g] = st.z_orig[sl].T @ st.r[sl]
    shift = np.zeros((n_combo, k_clusters, d))  # per combination: cluster k's batch terms
    y = st.y.astype(np.float64)
    for k in range(k_clusters):
        keep = _kept_batches(st.o[:, k], des, cutoff)
        if keep.size == 0:
            continue
        member = np.isin(des.combos, keep)  # n_combo x n_vars
        design = np.zeros((n_combo, keep.size + 1))
        design[:, 0] = member.any(axis=1)
        column = np.zeros(des.counts.size, dtype=np.int64)
        column[keep] = np.arange(1, keep.size + 1)
        rows, cols = np.nonzero(member)
        design[rows, column[des.combos[rows, cols]]] = 1.0
        penalty = alpha * st.e[keep, k] if lamb is None else lamb[keep]
        cov = design.T @ (seg[:, k, None] * design)
        cov[np.arange(1, keep.size + 1), np.arange(1, keep.size + 1)] += penalty
        rhs = design.T @ zr[:, :, k]
        try:
            w = np.linalg.solve(cov, rhs)  # (1 + n_keep) x d
        except np.linalg.LinAlgError:  # a cluster with no weight left: least squares
            w = np.linalg.lstsq(cov, rhs, rcond=None)[0]
        y[k] = w[0]
        shift[:, k, :] = design[:, 1:] @ w[1:]
    for g in range(n_combo):
        sl = slice(des.starts[g], des.starts[g + 1])
        np.subtract(st.z_orig[sl], st.r[sl] @ shift[g].astype(np.float32), out=st.z_corr[sl])
    st.y = _unit_rows(y).astype(np.float32)


def _blocks(n: int, block_size: float) -> tuple[int, int]:
    """(number of blocks, cells per block) of a k-means round; the last takes the rest."""
    return max(1, math.ceil(1.0 / block_size - 1e-9)), max(1, int(n * block_size))


def _block_order(rng: np.random.Generator, n: int, blocks: tuple[int, int]) -> np.ndarray:
    """A random order of the cells, sorted within each block (faster, and the same blocks)."""
    order = rng.permutation(n).astype(np.int64)
    n_blocks, per_block = blocks
    for b in range(n_blocks):
        order[b * per_block : n if b == n_blocks - 1 else (b + 1) * per_block].sort()
    return order


def _converged(old: float, new: float, eps: float) -> bool:
    if not (math.isfinite(old) and math.isfinite(new)):
        return False
    if old == 0.0:
        return new == 0.0
    delta = (old - new) / abs(old)
    return 0.0 <= delta < eps


def _kmeans_converged(objective: list[float], eps: float) -> bool:
    if len(objective) <= WINDOW + 1:
        return False
    old = sum(objective[-2 - i] for i in range(WINDOW))
    new = sum(objective[-1 - i] for i in range(WINDOW))
    return abs(old - new) < eps * abs(old)


@dataclass
class _Params:
    """Per-run settings, expanded to one value per cluster / batch."""

    sigma: np.ndarray  # per cluster
    theta: np.ndarray  # per batch
    lamb: np.ndarray | None  # per batch, or None to estimate
    pr_b: np.ndarray  # share of the cells in each batch
    blocks: tuple[int, int]
    max_iter_kmeans: int
    epsilon_cluster: float


def _cluster(st: _State, des: _Design, prm: _Params, rng: np.random.Generator,
             res: HarmonyResult) -> None:  # fmt: skip
    """Step 1 of an iteration: soft k-means rounds with the diversity penalty."""
    n = st.r.shape[0]
    scale = 2000.0 / n
    error, entropy = _start_clusters(st, des, prm.sigma, prm.pr_b)
    if not res.objective_harmony:  # the initial clustering's objective
        cross = _cross_entropy(st.o, st.e, prm.theta, prm.sigma)
        res.objective_kmeans.append((error + entropy + cross) * scale)
        res.objective_harmony.append(res.objective_kmeans[-1])
    rounds = 0
    for i in range(prm.max_iter_kmeans):
        order = _block_order(rng, n, prm.blocks)
        error, entropy = kern.update_round(
            order, prm.blocks, st.dist, st.r, des.codes, prm.sigma.astype(np.float32),
            prm.theta, prm.pr_b, st.o, st.e,
        )  # fmt: skip
        cross = _cross_entropy(st.o, st.e, prm.theta, prm.sigma)
        res.objective_kmeans.append((error + entropy + cross) * scale)
        rounds = i + 1
        if i > WINDOW and _kmeans_converged(res.objective_kmeans, prm.epsilon_cluster):
            break
    res.kmeans_rounds.append(rounds)
    res.objective_harmony.append(res.objective_kmeans[-1])


def run_harmony(
    embedding: np.ndarray,
    batches: Sequence[np.ndarray],
    *,
    theta: float | Sequence[float] = 2.0,
    sigma: float | Sequence[float] = 0.1,
    lamb: float | Sequence[float] | None = None,
    alpha: float = 0.2,
    n_clusters: int | None = None,
    tau: float = 0.0,
    block_size: float = 0.05,
    max_iter_harmony: int = 10,
    max_iter_kmeans: int = 4,
    epsilon_cluster: float = 1e-3,
    epsilon_harmony: float = 1e-2,
    batch_prop_cutoff: float = 1e-5,
    seed: int = 0,
) -> HarmonyResult:
    """Harmony integration of ``embedding`` (``n_cells x d``) across one or more batch variables.

    Defaults are harmonypy 2.x's (R harmony2's): ``n_clusters = min(round(n / 30), 100)``,
    ``sigma`` 0.1, ``theta`` 2, ``lamb`` estimated (``alpha`` 0.2), ``tau`` 0, ``block_size``
    0.05, 4 k-means rounds per iteration, ``epsilon_cluster`` 1e-3, ``epsilon_harmony`` 1e-2,
    ``batch_prop_cutoff`` 1e-5. Runs on one thread (BLAS and scikit-learn included): on a
    busy 2-core machine threads that wait for each other at every small product cost 10-20x.

    Parameters
    ----------
    embedding
        ``n_cells x d`` coordinates (e.g. PCs), finite.
    batches
        One label array ``(n_cells,)`` per batch variable.
    theta
        Diversity penalty: one number, one per variable or one per batch (each variable's
        levels in sorted order, variable after variable).
    sigma
        Soft-clustering width: one number or one per cluster.
    lamb
        Ridge penalty of the batch terms (given as ``theta``); None: ``alpha`` x the
        cluster's expected number of cells of the batch.
    alpha
        Scale of the estimated ``lamb``.
    n_clusters
        Clusters (None: ``min(round(n_cells / 30), 100)``, at least 1).
    tau
        Overclustering protection: ``theta`` shrinks for batches with few cells per cluster.
    block_size
        Share of cells reassigned together in a k-means round.
    max_iter_harmony, max_iter_kmeans
        Most Harmony iterations, and k-means rounds per iteration.
    epsilon_cluster, epsilon_harmony
        Relative objective changes that stop the k-means rounds and the iterations.
    batch_prop_cutoff
        Smallest share of a batch's cells in a cluster for the cluster to correct it.
    seed
        Seeds the k-means start and the block order.

    Returns
    -------
    A `HarmonyResult`; ``z_corr`` is ``n_cells x d`` float32.

    Raises
    ------
    ValueError
        A non-finite embedding, missing batch labels, parameters of the wrong length, a
        ``lamb`` not positive or a ``block_size`` outside (0, 1].
    """
    z = np.asarray(embedding, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] < 2 or not np.isfinite(z).all():
        raise ValueError("the embedding must be a finite n_cells x d matrix, 2 cells or more")
    if not 0 < block_size <= 1:
        raise ValueError(f"block_size must be in (0, 1], got {block_size}")
    n = z.shape[0]
    des = _design(batches, n)
    k = min(n, int(n_clusters) if n_clusters else max(1, min(round(n / 30.0), 100)))
    th = _per_batch(theta, des.n_levels, "theta")
    if tau > 0:
        th = th * (1.0 - np.exp(-((des.counts / (k * tau)) ** 2)))
    prm = _Params(
        sigma=np.broadcast_to(np.asarray(sigma, dtype=np.float64), (k,)).copy(),
        theta=th,
        lamb=None if lamb is None else _positive(_per_batch(lamb, des.n_levels, "lamb")),
        pr_b=des.counts / n,
        blocks=_blocks(n, block_size),
        max_iter_kmeans=max_iter_kmeans,
        epsilon_cluster=epsilon_cluster,
    )
    z_sorted = np.ascontiguousarray(z[des.order])
    with threadpool_limits(1):
        y = _kmeans_centroids(_unit_rows(z_sorted), k, seed)
        st = _State(z_sorted, z_sorted.copy(), y, np.empty((n, k), np.float32),
                    np.empty((n, k), np.float32))  # fmt: skip
        res = HarmonyResult(z_corr=z, centroids=y)
        rng = np.random.default_rng(seed)
        for it in range(1, max_iter_harmony + 1):
            _cluster(st, des, prm, rng, res)
            _ridge_correct(st, des, prm.lamb, alpha, batch_prop_cutoff)
            res.n_iterations = it
            if _converged(res.objective_harmony[-2], res.objective_harmony[-1], epsilon_harmony):
                res.converged = True
                break
    res.z_corr = np.empty_like(st.z_corr)
    res.z_corr[des.order] = st.z_corr
    res.centroids = st.y
    return res

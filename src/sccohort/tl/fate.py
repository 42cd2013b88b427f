"""Fate probabilities along a pseudotime: terminal states and absorption probabilities.

`fate_probabilities` turns an undirected kNN graph into a Markov chain that moves forward in
pseudotime (CellRank 2's pseudotime kernel, soft scheme: an edge to a cell ``d`` earlier in
pseudotime keeps the weight ``2 / (1 + exp(b d))^(1 / nu)``, ``b = 10``, ``nu = 0.5``, at most
half its own; edges forward keep theirs), finds its terminal states and solves for each cell
the probability of being absorbed in each of them (Lange et al. 2022; the linear system
``(I - Q) X = R`` of the transient cells, Q the transitions among them, R into the terminal
states' cells).

Terminal-state rule (deterministic, no threshold on pseudotime): coarse-grain the chain to
the groups (``C[g, h]`` = transition mass from g's cells into h's cells); a candidate group is
terminal when it sends no net flow to another group: for every group h that takes at least
``tolerance`` of g's exchange with the others, ``C[g, h] - C[h, g]`` is at most ``tolerance``
of their exchange ``C[g, h] + C[h, g]``. On one continuum that is its last group; on a
branching lineage, the end of each branch. When no candidate qualifies, the
candidate with the highest median pseudotime is the one terminal state.

Why by hand: CellRank 2 (BSD-3) computes the same absorption probabilities, but needs scvelo,
pygpcca, pygam and their pins; the chain and the solve are a few sparse operations (scipy's
SuperLU) on the graph scanpy already builds. GPCCA macrostates (CellRank's terminal-state
search) are replaced by the net-flow rule above on the given groups (Leiden clusters or
states), which a user can override with ``terminal_states``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InputError
from .trajectory import _checked_rep

__all__ = ["fate_probabilities"]

_REP = "X_rep"


def _directed(conn: sp.csr_matrix, pt: np.ndarray, b: float, nu: float) -> sp.csr_matrix:
    """Row-stochastic transitions: edges back in pseudotime down-weighted (CellRank, soft)."""
    conn = sp.csr_matrix(conn, dtype=np.float64)
    rows = np.repeat(np.arange(conn.shape[0]), np.diff(conn.indptr))
    d = pt[conn.indices] - pt[rows]
    weight = np.where(d >= 0, 1.0, 2.0 / (1.0 + np.exp(-b * d)) ** (1.0 / nu))
    t = sp.csr_matrix((conn.data * weight, conn.indices, conn.indptr), shape=conn.shape)
    sums = np.asarray(t.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.diags(1.0 / sums) @ t


def _terminal(
    t: sp.csr_matrix, codes: np.ndarray, names: list[str], candidates: list[str],
    median: pd.Series, tolerance: float,
) -> list[str]:  # fmt: skip
    """Candidate groups that send no net flow to another group (module docstring)."""
    onehot = sp.csr_matrix((np.ones(codes.size), (np.arange(codes.size), codes)))
    flow = (onehot.T @ t @ onehot).toarray()
    np.fill_diagonal(flow, 0.0)
    pair = flow + flow.T
    sends = (flow - flow.T > tolerance * pair) & (pair >= tolerance * pair.sum(axis=1)[:, None])
    sinks = [names[g] for g in range(len(names)) if names[g] in candidates and not sends[g].any()]
    if not sinks:
        sinks = [max(candidates, key=lambda name: (median[name], name))]
    return sorted(sinks, key=lambda name: (median[name], name))


def _absorption(t: sp.csr_matrix, absorbing: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Cells x k absorption probabilities; ``target`` = terminal index of absorbing cells."""
    from scipy.sparse.linalg import splu

    n = t.shape[0]
    probs = np.zeros((n, k))
    probs[np.flatnonzero(absorbing), target] = 1.0
    trans = np.flatnonzero(~absorbing)
    if trans.size:
        q = t[trans][:, trans]
        into = sp.csr_matrix(
            (np.ones(target.size), (np.flatnonzero(absorbing), target)), shape=(n, k)
        )
        r = (t[trans] @ into).toarray()
        system = (sp.identity(trans.size, format="csc") - q).tocsc()
        probs[trans] = splu(system).solve(r)
    probs = np.clip(probs, 0.0, None)
    total = probs.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-12, probs / total, np.nan)


def _checked_inputs(adata: AnnData, groupby: str, pseudotime_key: str) -> tuple:
    for column, what in ((groupby, "groups"), (pseudotime_key, "pseudotime")):
        if column not in adata.obs.columns:
            raise InputError(
                f"obs has no column {column!r} with the cells' {what}",
                column=column,
                hint="run sccohort.tl.pseudotime first" if what == "pseudotime" else
                f"use one of the obs columns: {', '.join(map(str, adata.obs.columns))}",
            )  # fmt: skip
    pt = adata.obs[pseudotime_key].to_numpy(dtype=float)
    if not np.isfinite(pt).all():
        raise InputError(
            f"obs[{pseudotime_key!r}] has missing or infinite values",
            column=pseudotime_key,
            hint="keep only the cells the pseudotime reached",
        )
    return adata.obs[groupby].astype(str).to_numpy(), pt


def fate_probabilities(
    adata: AnnData,
    groupby: str,
    *,
    terminal_states: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    pseudotime_key: str = "pseudotime",
    use_rep: str = "X_pca",
    n_neighbors: int = 15,
    tolerance: float = 0.05,
    key_added: str = "fate",
    seed: int = 0,
) -> pd.DataFrame:
    """Terminal states of a pseudotime and each cell's probability of reaching each of them.

    Parameters
    ----------
    adata
        Cells of one lineage with a pseudotime (`sccohort.tl.pseudotime`) and an embedding.
    groupby
        ``obs`` column of states (clusters, subsets).
    terminal_states
        The terminal states (groups of ``groupby``); None finds them (module docstring).
    candidates
        Groups that may be terminal when they are found (default: every group).
    pseudotime_key
        ``obs`` column of the pseudotime (finite for every cell).
    use_rep, n_neighbors
        Embedding and neighbours of the kNN graph (Gaussian kernel, as `pseudotime`), built
        on a private copy: the user's own graph is left as it is.
    tolerance
        Net flow a terminal state may send to another group, as a share of their exchange.
    key_added
        ``obsm[key_added]``: DataFrame cells x terminal states of absorption probabilities
        (rows sum to 1; NaN for cells that cannot reach any); ``uns[key_added]``: the
        terminal states and the parameters.
    seed
        Random state of the neighbour search.

    Returns
    -------
    pandas.DataFrame
        One row per group and terminal state: ``group, n_cells, median_pseudotime,
        is_terminal, terminal_state, mean_probability`` (the group's mean fate probability).

    Raises
    ------
    InputError
        A missing column or embedding, a pseudotime that is not finite, or terminal states /
        candidates that are not groups.

    Examples
    --------
    >>> from anndata import AnnData
    >>> from sccohort.tl import fate_probabilities
    >>> rng = np.random.default_rng(0)
    >>> t = rng.uniform(0, 1, 600)  # a stem, then two branches that part at t = 0.4
    >>> arm = np.where(np.arange(600) % 2 == 0, 1.0, -1.0) * np.clip(t - 0.4, 0, None)
    >>> xy = np.c_[t, arm] + rng.normal(0, 0.01, (600, 2))
    >>> state = np.where(t < 0.4, "stem", np.where(t < 0.8, "mid", "end"))
    >>> state = np.where(t >= 0.8, np.where(arm > 0, "endA", "endB"), state)
    >>> obs = pd.DataFrame({"state": state, "pseudotime": t}, index=[f"c{i}" for i in range(600)])
    >>> adata = AnnData(obs=obs)
    >>> adata.obsm["X_pca"] = xy
    >>> table = fate_probabilities(adata, "state", n_neighbors=10)
    >>> adata.uns["fate"]["terminal_states"]
    ['endA', 'endB']
    >>> fate = adata.obsm["fate"]
    >>> bool((fate.loc[(arm > 0.2), "endA"] > 0.9).all())
    True
    """
    import scanpy as sc

    groups, pt = _checked_inputs(adata, groupby, pseudotime_key)
    rep = _checked_rep(adata, use_rep, n_neighbors)
    names = sorted(set(groups))
    for given, what in ((terminal_states, "terminal_states"), (candidates, "candidates")):
        unknown = sorted(set(map(str, given or ())) - set(names))
        if unknown:
            raise InputError(
                f"{what} {', '.join(unknown)} are not groups of obs[{groupby!r}]",
                key=what,
                hint=f"choose among: {', '.join(names[:20])}",
            )
    work = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()), obsm={_REP: rep})
    sc.pp.neighbors(work, n_neighbors=n_neighbors, use_rep=_REP, method="gauss", random_state=seed)
    t = _directed(work.obsp["connectivities"], pt, b=10.0, nu=0.5)
    codes = pd.Categorical(groups, categories=names).codes.astype(int)
    median = pd.Series(pt).groupby(groups).median()
    if terminal_states:
        terminal = sorted(map(str, terminal_states), key=lambda name: (median[name], name))
    else:
        pool = [str(c) for c in candidates] if candidates else names
        terminal = _terminal(t, codes, names, pool, median, tolerance)
    index = {name: i for i, name in enumerate(terminal)}
    target = pd.Series(groups).map(index)
    absorbing = target.notna().to_numpy()
    probs = _absorption(t, absorbing, target[absorbing].to_numpy(dtype=int), len(terminal))
    adata.obsm[key_added] = pd.DataFrame(probs, index=adata.obs_names, columns=terminal)
    adata.uns[key_added] = {
        "terminal_states": terminal,
        "params": {"groupby": groupby, "pseudotime_key": pseudotime_key, "use_rep": use_rep,
                   "n_neighbors": n_neighbors, "tolerance": tolerance, "seed": seed},
    }  # fmt: skip
    return _group_table(groups, pt, probs, terminal)


def _group_table(groups, pt, probs, terminal) -> pd.DataFrame:
    frame = pd.DataFrame(probs, columns=terminal).assign(group=groups, t=pt)
    per = frame.groupby("group").agg(n_cells=("t", "size"), median_pseudotime=("t", "median"))
    means = frame.groupby("group")[terminal].mean()
    long = means.stack(future_stack=True).rename("mean_probability").reset_index()
    long.columns = ["group", "terminal_state", "mean_probability"]
    table = per.reset_index().merge(long, on="group")
    table.insert(3, "is_terminal", table["group"].isin(terminal))
    return table.sort_values(["median_pseudotime", "group", "terminal_state"]).reset_index(
        drop=True
    )

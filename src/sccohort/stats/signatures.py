"""Per-cell gene-signature scores and their donor-level means.

:func:`score_cells` scores many gene sets in one sparse matrix product. Two methods:

- ``"score_genes"`` (default): Seurat's ``AddModuleScore`` as in ``scanpy.tl.score_genes``
  (Satija et al. 2015): the mean log-normalised expression of the set's genes minus the mean of
  control genes drawn, per expression bin of the set's genes, from genes of similar average
  expression (25 bins, 50 controls per bin). Same binning and control rules as scanpy 1.11;
  controls are drawn with ``numpy.random.default_rng(seed)``, so single scores differ from
  scanpy's by the random draw only (identical where a bin holds at most ``ctrl_size`` genes).
- ``"mean_z"``: the mean over the set's genes of each gene's z-score across all cells; genes
  without variance are left out.

Written here rather than calling ``scanpy.tl.score_genes`` per set: scanpy scores one set per
call, recomputes every gene's mean on each call and writes into ``adata.obs``; here the gene
means are computed once and all sets are scored by one product ``X @ W`` (``X`` stays sparse).

:func:`donor_scores` averages the cell scores per donor x subset, the unit of the donor-level
tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InputError
from ..io.genesets import hallmark
from ..pp.store import rna_blocks, rna_columns, store_of

__all__ = ["SIGNATURES", "signature_sets", "score_cells", "donor_scores"]

#: Default signatures (MSigDB Hallmark names) with a short label each.
SIGNATURES: dict[str, str] = {
    "HALLMARK_TNFA_SIGNALING_VIA_NFKB": "NF-kB / TNF-alpha",
    "HALLMARK_INTERFERON_GAMMA_RESPONSE": "IFN-gamma response",
    "HALLMARK_INTERFERON_ALPHA_RESPONSE": "IFN-alpha response",
}


def signature_sets(names: Sequence[str] = tuple(SIGNATURES)) -> dict[str, list[str]]:
    """Shipped Hallmark sets by name (default: NF-kB / TNF-alpha, IFN-gamma, IFN-alpha).

    Parameters
    ----------
    names
        Hallmark set names, e.g. ``"HALLMARK_TNFA_SIGNALING_VIA_NFKB"``.

    Returns
    -------
    dict
        ``{name: [gene, ...]}`` in the order of ``names``.

    Examples
    --------
    >>> from sccohort.stats import signature_sets
    >>> list(signature_sets())[:2]
    ['HALLMARK_TNFA_SIGNALING_VIA_NFKB', 'HALLMARK_INTERFERON_GAMMA_RESPONSE']
    """
    sets = hallmark()
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise InputError(
            f"not a Hallmark gene set: {', '.join(unknown)}",
            hint="Names look like HALLMARK_TNFA_SIGNALING_VIA_NFKB; see io.genesets.hallmark().",
        )
    return {n: sets[n] for n in names}


def _matrix(adata: AnnData, layer: str | None) -> sp.csr_matrix | np.ndarray:
    if layer is None:
        x = adata.X
    elif layer in adata.layers:
        x = adata.layers[layer]
    else:
        raise InputError(
            f"no layer {layer!r}",
            key=layer,
            hint=f"Layers present: {', '.join(adata.layers.keys()) or 'none'}; None uses .X.",
        )
    if x is None:
        raise InputError("the AnnData has no expression matrix (.X is None)")
    if sp.issparse(x):
        return sp.csr_matrix(x)
    return np.asarray(x)


def _column_moments(
    x: sp.csr_matrix | np.ndarray, variance: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and (``variance``, else None) population variance of each column, ``(n_genes,)``."""
    n = x.shape[0]
    if sp.issparse(x):
        mean = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / n
        if not variance:
            return mean, None
        sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel() / n
    else:
        mean = x.mean(axis=0, dtype=np.float64)
        if not variance:
            return mean, None
        sq = (x.astype(np.float64) ** 2).mean(axis=0)
    return mean, np.maximum(sq - mean**2, 0.0)


#: Stored values per block of cells of the scoring product: each block's values are
#: converted to float64 for it, so blocks bound that copy (a cell's scores do not depend on
#: the blocks).
_SCORE_BLOCK_VALUES = 4_000_000


def _product(x: sp.csr_matrix | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``x @ weights`` (cells x sets, float64); a sparse ``x`` over blocks of its rows."""
    if not sp.issparse(x):
        return np.asarray(x @ weights, dtype=np.float64)
    n = x.shape[0]
    out = np.empty((n, weights.shape[1]), dtype=np.float64)
    indptr = x.indptr
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(indptr, indptr[lo] + _SCORE_BLOCK_VALUES, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        a, b = indptr[lo], indptr[hi]
        block = sp.csr_matrix(  # views of the rows' values, not a copy
            (x.data[a:b], x.indices[a:b], indptr[lo : hi + 1] - a), shape=(hi - lo, x.shape[1])
        )
        out[lo:hi] = np.asarray(block @ weights, dtype=np.float64)
        lo = hi
    return out


def _control_genes(
    members: np.ndarray,
    cut: np.ndarray,
    ctrl_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of control genes: ``ctrl_size`` per bin of the members, members excluded."""
    is_member = np.zeros(cut.shape[0], dtype=bool)
    is_member[members] = True
    chosen = []
    for b in np.unique(cut[members]):
        pool = np.flatnonzero(cut == b)
        if ctrl_size < pool.size:
            pool = rng.choice(pool, ctrl_size, replace=False)
        chosen.append(pool[~is_member[pool]])
    return np.unique(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def score_cells(
    adata: AnnData,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    method: str = "score_genes",
    layer: str | None = None,
    ctrl_size: int = 50,
    n_bins: int = 25,
    min_genes: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every cell for every gene set.

    Parameters
    ----------
    adata
        Cells x genes, ``.X`` (or ``layers[layer]``) log-normalised expression, sparse or
        dense; shape ``(n_cells, n_genes)``, var_names gene symbols (e.g. ``mdata.mod["rna"]``).
    gene_sets
        ``{set name: [gene, ...]}``; genes absent from ``adata`` are ignored.
    method
        ``"score_genes"`` (control-gene corrected mean, as scanpy) or ``"mean_z"`` (mean
        z-score); see the module docstring.
    layer
        Layer to use instead of ``.X``.
    ctrl_size, n_bins
        Controls per expression bin and number of bins (``"score_genes"``).
    min_genes
        Sets with fewer genes present (with variance, for ``"mean_z"``) raise an error.
    seed
        Seed of the control-gene draw; each set's draw depends only on ``seed`` and its genes.

    Returns
    -------
    pandas.DataFrame
        Scores, shape ``(n_cells, n_sets)``, index ``adata.obs_names``, columns the set
        names.

    Examples
    --------
    >>> from sccohort.stats import score_cells
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> scores = score_cells(mdata["rna"], {"IFN": ["ISG15", "IFI6", "MX1", "IFIT1", "IFIT3"]})
    >>> scores.shape, scores.columns.tolist()
    ((1200, 1), ['IFN'])
    """
    if method not in ("score_genes", "mean_z"):
        raise InputError(f"unknown method {method!r}", hint="Use 'score_genes' or 'mean_z'.")
    if not isinstance(gene_sets, Mapping) or not gene_sets:
        raise InputError("no gene sets given", hint="Pass {name: [genes]}, e.g. signature_sets().")
    on_disk = layer is None and store_of(adata) is not None
    x = None if on_disk else _matrix(adata, layer)
    genes = pd.Index(adata.var_names.astype(str))
    if genes.has_duplicates:
        raise InputError(
            "duplicated gene names in var_names",
            hint="Make them unique first (adata.var_names_make_unique()).",
        )
    # by blocks of genes (.X in memory or the store on disk: the same blocks, the same sums)
    blocks = rna_blocks(adata) if layer is None else ((0, 0, x),)
    moments = [_column_moments(b, variance=method == "mean_z") for _, _, b in blocks]
    mean = np.concatenate([m for m, _ in moments])
    var = None if method != "mean_z" else np.concatenate([v for _, v in moments])
    n_genes = len(genes)
    if method == "score_genes":
        finite = np.isfinite(mean)
        n_items = max(int(np.round(finite.sum() / (n_bins - 1))), 1)
        ranks = pd.Series(mean[finite]).rank(method="min").to_numpy()
        cut = np.full(n_genes, -1, dtype=np.int64)
        cut[finite] = (ranks // n_items).astype(np.int64)
    weights = np.zeros((n_genes, len(gene_sets)))
    for s, (name, members) in enumerate(gene_sets.items()):
        idx = genes.get_indexer(pd.Index(list(dict.fromkeys(map(str, members)))))
        idx = np.unique(idx[idx >= 0])
        if method == "mean_z":
            idx = idx[var[idx] > 0]
        if idx.size < min_genes:
            raise InputError(
                f"gene set {name!r} has {idx.size} gene(s) in the data (at least {min_genes} "
                "needed)",
                key=str(name),
                hint="Check the gene identifiers (symbols?) or drop the set.",
            )
        if method == "mean_z":
            weights[idx, s] = 1.0 / (idx.size * np.sqrt(var[idx]))
            continue
        rng = np.random.default_rng([int(seed), *idx.tolist()])
        ctrl = _control_genes(idx, cut, ctrl_size, rng)
        if ctrl.size == 0:
            raise InputError(
                f"no control genes for gene set {name!r}",
                key=str(name),
                hint="The data hold too few genes for control bins; use method='mean_z'.",
            )
        weights[idx, s] += 1.0 / idx.size
        weights[ctrl, s] -= 1.0 / ctrl.size
    used = np.flatnonzero(np.any(weights != 0, axis=1))  # only these genes' columns are read
    part = rna_columns(adata, used) if x is None else x[:, used]
    scores = _product(sp.csr_matrix(part) if sp.issparse(part) else part, weights[used])
    if method == "mean_z":
        scores -= mean @ weights  # (x - mean) / sd averaged over the set
    return pd.DataFrame(scores, index=adata.obs_names.copy(), columns=list(map(str, gene_sets)))


def donor_scores(
    scores: pd.DataFrame,
    obs: pd.DataFrame,
    by: Sequence[str] | None = None,
    *,
    samples: Sequence[str] | None = None,
    min_cells: int = 5,
    sample_key: str = "sample_id",
    donor_key: str = "donor_id",
) -> pd.DataFrame:
    """Mean cell score per donor x subset (or any grouping) for donor-level comparisons.

    Parameters
    ----------
    scores
        Cells x sets, from :func:`score_cells`; index cell ids.
    obs
        Cell metadata indexed by cell id (e.g. ``mdata.obs``) with the ``by`` columns and,
        when ``samples`` is given or a donor has several samples, the ``sample_key`` column.
    by
        Grouping columns of ``obs``; the first is the unit (a donor, or a sample). Default
        ``(donor_key, "subset")``.
    samples
        Sample ids to keep (e.g. ``SampleSheet.primary_samples(...).index``). Required when
        ``by`` groups by donor and a donor has cells from more than one sample, so that time
        points are never pooled silently.
    min_cells
        Groups with fewer cells are left out.
    sample_key, donor_key
        The ``obs`` columns naming each cell's sample and donor.

    Returns
    -------
    pandas.DataFrame
        Long table, one row per group x set: the ``by`` columns, ``set``, ``score`` (mean),
        ``sd`` (of the cells' scores), ``n_cells``; sorted by the ``by`` columns then set.

    Examples
    --------
    >>> from sccohort.stats import donor_scores, score_cells
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> scores = score_cells(mdata["rna"], {"IFN": ["ISG15", "IFI6", "MX1", "IFIT1", "IFIT3"]})
    >>> table = donor_scores(scores, mdata.obs, by=("donor_id", "l1"))
    >>> table.columns.tolist()
    ['donor_id', 'l1', 'set', 'score', 'sd', 'n_cells']
    """
    by = [donor_key, "subset"] if by is None else list(by)
    if not by:
        raise InputError("no grouping columns given", hint="E.g. by=('donor_id', 'subset').")
    missing = [c for c in by if c not in obs.columns]
    if missing:
        raise InputError(
            f"obs lacks the grouping column(s) {', '.join(missing)}",
            column=missing[0],
            hint=f"Columns present: {', '.join(map(str, obs.columns))}.",
        )
    absent = scores.index.difference(obs.index)
    if len(absent):
        raise InputError(
            f"{len(absent)} scored cells are not in obs (e.g. {', '.join(absent[:3])})",
            hint="Pass the obs of the object the scores came from.",
        )
    meta = obs.loc[scores.index]
    keep = np.ones(len(meta), dtype=bool)
    if samples is not None or donor_key in by:
        if sample_key not in meta.columns:
            if samples is not None:
                raise InputError(
                    f"samples were given but obs has no column '{sample_key}' (sample_key)",
                    column=sample_key,
                )
        elif samples is not None:
            unknown = pd.Index(samples).difference(meta[sample_key].unique())
            if len(unknown):
                raise InputError(
                    f"sample(s) without scored cells: {', '.join(map(str, unknown))}",
                    sample=str(unknown[0]),
                )
            keep = meta[sample_key].isin(list(samples)).to_numpy()
        elif donor_key in by and sample_key not in by:
            per_donor = meta.groupby(donor_key, observed=True)[sample_key].nunique()
            multi = per_donor.index[per_donor > 1]
            if len(multi):
                raise InputError(
                    f"donor(s) with cells from several samples: {', '.join(map(str, multi))}",
                    column=donor_key,
                    hint="Pass samples= (one per donor, e.g. SampleSheet.primary_samples(..."
                    ").index) or group by sample.",
                )
    meta = meta.loc[keep, by]
    values = scores.loc[keep]
    keys = [meta[c].astype(str).to_numpy() for c in by]
    grouped = values.groupby(keys, sort=True)
    n_cells = grouped.size()
    mean = grouped.mean()
    sd = grouped.std(ddof=1)
    mean.index.names = by
    sd.index.names = by
    n_cells.index.names = by
    out = (
        mean.stack()
        .rename("score")
        .to_frame()
        .join(sd.stack().rename("sd"))
        .rename_axis([*by, "set"])
        .reset_index()
    )
    out = out.merge(n_cells.rename("n_cells").reset_index(), on=by)
    out = out[out["n_cells"] >= min_cells]
    return out.sort_values([*by, "set"], kind="stable").reset_index(drop=True)

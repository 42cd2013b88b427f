"""Fast one-vs-rest marker ranking: scanpy's Wilcoxon statistics from shared sparse ranks.

Every feature is ranked once over all cells and the rank sums of all groups come out of that
one ranking. Zeros of a sparse column share one tied rank, so only the stored values are
sorted: a column with ``m`` stored values costs ``O(m log m)`` instead of
``O(n_cells log n_cells)``. For a block of columns the stored values are scattered by column
as 64-bit keys (order-preserving value bits | group code) and each column is radix-sorted on
its value bits; one pass over the sorted keys then yields, per group and column, the rank
sum, the number of nonzero cells and the value sum, plus the tie term of the column. Blocks
run on ``n_jobs`` threads (the numba kernels release the GIL) and bound the memory to two
keys per stored value of a block.

The statistics equal ``scanpy.tl.rank_genes_groups(method="wilcoxon", use_raw=False,
pts=True, corr_method="benjamini-hochberg")`` (scanpy 1.11.5) with or without
``tie_correct``: the z-score, its two-sided normal p-value, Benjamini-Hochberg adjusted
p-values within each group, scanpy's log fold change ``log2((expm1(mean_in) + 1e-9) /
(expm1(mean_out) + 1e-9))`` of the means of the (log1p) values (honouring
``uns["log1p"]["base"]``), and the fractions of nonzero cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from sccohort.multitest import adjust_pvalues
from sccohort.tl.rank_kernels import _group_stats

from ..errors import InputError
from ..pp.store import rna_blocks, store_of

__all__ = ["rank_markers"]

_MAX_GROUPS = 65_535  # group codes use 16 bits of a key; the last code marks "no group"

COLUMNS = [
    "group",
    "feature",
    "statistic",
    "auroc",
    "logfoldchange",
    "pct_in",
    "pct_out",
    "pvalue",
    "padj",
    "mean_in",
    "mean_out",
]


def _as_sparse(x: np.ndarray | sp.spmatrix) -> sp.csr_matrix | sp.csc_matrix:
    """CSR or CSC view of ``x`` (dense input converted), with sorted indices for CSR."""
    if isinstance(x, np.ndarray):
        return sp.csc_matrix(x)
    if not sp.issparse(x):
        x = np.asarray(x)
        return sp.csc_matrix(x)
    if x.format not in ("csr", "csc"):
        x = x.tocsr()
    if x.format == "csr" and not x.has_sorted_indices:
        x = x.copy()
        x.sort_indices()
    return x


def _wilcoxon(
    rank_sum: np.ndarray, n_in: int, n_out: int, tie_term: np.ndarray, tie_correct: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-score (scanpy's), two-sided p-value and AUROC from one group's rank sums."""
    n = n_in + n_out
    coef = 1.0
    if tie_correct:
        coef = 1.0 - tie_term / (float(n) ** 3 - n) if n >= 2 else np.ones_like(tie_term)
    with np.errstate(divide="ignore", invalid="ignore"):
        std = np.sqrt(coef * n_in * n_out * (n + 1) / 12.0)
        z = (rank_sum - n_in * (n + 1) / 2.0) / std
    z[np.isnan(z)] = 0.0
    pval = 2 * stats.distributions.norm.sf(np.abs(z))
    auroc = (rank_sum - n_in * (n_in + 1) / 2.0) / (float(n_in) * n_out)
    return z, pval, auroc


def _check_inputs(
    adata: AnnData, groupby: str, layer: str | None, groups: Sequence[str] | None, reference: str
) -> tuple[pd.Categorical, list[str]]:
    if groupby not in adata.obs.columns:
        raise InputError(
            f"obs has no column {groupby!r} to group cells by",
            column=groupby,
            hint=f"use one of the obs columns: {', '.join(map(str, adata.obs.columns))}",
        )
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"there is no layer {layer!r}",
            key=layer,
            hint=f"use layer=None for .X or one of: {', '.join(adata.layers.keys())}",
        )
    labels = pd.Categorical(adata.obs[groupby].astype("category"))
    categories = [str(c) for c in labels.categories]
    labels = labels.rename_categories(categories)
    if groups is None:
        selected = categories
    else:
        if isinstance(groups, str):
            groups = [groups]
        selected = [str(g) for g in groups]
        missing = [g for g in selected if g not in categories]
        if missing:
            raise InputError(
                f"groups {', '.join(map(repr, missing))} do not occur in obs[{groupby!r}]",
                column=groupby,
                hint=f"choose among: {', '.join(categories)}",
            )
    if reference != "rest":
        if reference not in categories:
            raise InputError(
                f"reference group {reference!r} does not occur in obs[{groupby!r}]",
                column=groupby,
                hint=f"use reference='rest' or one of: {', '.join(categories)}",
            )
        selected = [g for g in selected if g != reference]
        if not selected:
            raise InputError(
                "no group left to compare with the reference",
                column=groupby,
                hint="pass groups other than the reference",
            )
    if len(selected) > _MAX_GROUPS - 1:
        raise InputError(
            f"obs[{groupby!r}] has {len(selected)} groups; at most {_MAX_GROUPS - 1} are supported",
            column=groupby,
        )
    counts = pd.Series(labels).value_counts()
    for g in selected + ([] if reference == "rest" else [reference]):
        if counts.get(g, 0) < 2:
            raise InputError(
                f"group {g!r} of obs[{groupby!r}] has {counts.get(g, 0)} cell(s); "
                "a Wilcoxon test needs at least 2",
                column=groupby,
                hint=f"drop or merge group {g!r}, or pass groups= without it",
            )
    return labels, selected


def rank_markers(
    adata: AnnData,
    groupby: str,
    *,
    layer: str | None = None,
    groups: Sequence[str] | None = None,
    reference: str = "rest",
    tie_correct: bool = False,
    min_fraction: float = 0.0,
    chunk_genes: int | None = None,
    n_jobs: int = 2,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Rank every feature for every group with scanpy's Wilcoxon rank-sum statistics.

    Parameters
    ----------
    adata
        Cells x features; ``.X`` (or ``layers[layer]``) holds log-normalised RNA (sparse or
        dense) or normalised protein values, shape ``(n_cells, n_features)``.
    groupby
        Column of ``adata.obs`` with the group (cluster / cell type) of each cell; cells with
        a missing label count in every "rest".
    layer
        Layer to use instead of ``.X``.
    groups
        Groups to test (default: all categories).
    reference
        ``"rest"`` (each group against all other cells) or a group name, which then is the
        only comparison group, as in scanpy.
    tie_correct
        Apply the tie correction to the z-score's variance (scanpy's ``tie_correct``).
    min_fraction
        Drop rows whose ``pct_in`` is below this; p-values are adjusted over all features
        before the filter.
    chunk_genes
        Features per block (default: about eight million stored values per block).
    n_jobs
        Threads working on blocks.
    key_added
        When given, ``adata.uns[key_added]`` also receives ``{"params": ..., "table": ...}``
        (as ``sc.tl.rank_genes_groups`` stores its results).

    Returns
    -------
    pandas.DataFrame
        One row per group x feature with columns ``group, feature, statistic`` (z-score),
        ``auroc`` (probability a cell of the group exceeds one of the rest, ties 1/2),
        ``logfoldchange``, ``pct_in``, ``pct_out`` (fraction of nonzero cells), ``pvalue``,
        ``padj`` (Benjamini-Hochberg within the group), ``mean_in``, ``mean_out``; sorted by
        group (category order) then statistic descending.

    Examples
    --------
    >>> from sccohort.tl import rank_markers
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> rna = mdata["rna"]
    >>> rna.obs["l1"] = mdata.obs["l1"].to_numpy()
    >>> rank_markers(rna, "l1", groups=["Mono"]).head(3)["feature"].tolist()
    ['MNDA', 'FCN1', 'LYZ']
    """
    labels, selected = _check_inputs(adata, groupby, layer, groups, reference)
    store = store_of(adata) if layer is None else None
    if store is not None and reference != "rest":
        raise InputError(
            "markers against a reference group need the RNA in memory",
            key="reference",
            hint='rank against "rest", or set [run] rna_on_disk = "never"',
        )
    x = None if store is not None else _as_sparse(adata.X if layer is None else adata.layers[layer])
    names = np.asarray(adata.var_names.astype(str))
    log1p = adata.uns.get("log1p", {})
    base = log1p.get("base") if isinstance(log1p, Mapping) else None

    def expm1(v: np.ndarray) -> np.ndarray:
        return np.expm1(v * np.log(base)) if base is not None else np.expm1(v)

    if reference == "rest":
        res, sizes = _rest_stats(adata, x, labels, selected, chunk_genes, n_jobs)
        frames = _rest_frames(res, sizes, adata.n_obs, selected, names, tie_correct, expm1)
    else:
        frames = _reference_frames(
            x, labels, selected, reference, names, chunk_genes, n_jobs, tie_correct, expm1
        )
    out = pd.concat(frames, ignore_index=True)
    out["group"] = pd.Categorical(out["group"], categories=selected)
    if min_fraction > 0:
        out = out[out["pct_in"] >= min_fraction].reset_index(drop=True)
    out = out[COLUMNS]
    if key_added is not None:
        params = {
            "groupby": groupby,
            "method": "wilcoxon",
            "layer": layer,
            "groups": groups,
            "reference": reference,
            "tie_correct": tie_correct,
            "min_fraction": min_fraction,
        }
        adata.uns[key_added] = {"params": params, "table": out}
    return out


def _rest_stats(
    adata: AnnData,
    x: sp.csr_matrix | sp.csc_matrix | None,
    labels: pd.Categorical,
    selected: list[str],
    chunk_genes: int | None,
    n_jobs: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Group statistics of each selected group and the rest (last code), with group sizes."""
    # category code -> position among the selected groups; other and missing -> last
    n_codes = len(selected) + 1
    lut = np.full(len(labels.categories) + 1, len(selected), dtype=np.int64)
    lut[[list(labels.categories).index(g) for g in selected]] = np.arange(len(selected))
    codes = lut[np.asarray(labels.codes, dtype=np.int64)]
    if x is not None:
        res = _group_stats(x, codes, n_codes, chunk_genes, n_jobs)
    else:  # gene blocks from disk: each gene's statistics do not depend on the others
        parts = [
            _group_stats(block, codes, n_codes, chunk_genes, n_jobs)
            for _, _, block in rna_blocks(adata)
        ]
        res = {key: np.concatenate([p[key] for p in parts], axis=-1) for key in parts[0]}
    return res, np.bincount(codes, minlength=n_codes)


def _rest_frames(
    res: dict[str, np.ndarray],
    sizes: np.ndarray,
    n_cells: int,
    selected: list[str],
    names: np.ndarray,
    tie_correct: bool,
    expm1,
) -> list[pd.DataFrame]:
    """One ranked table per selected group against all other cells."""
    total_nnz = res["nnz"].sum(axis=0)
    total_sum = res["value_sum"].sum(axis=0)
    frames = []
    for i, g in enumerate(selected):
        n_in, n_out = int(sizes[i]), n_cells - int(sizes[i])
        frames.append(
            _group_frame(
                g,
                names,
                res["rank_sum"][i],
                res["tie_term"],
                n_in,
                n_out,
                res["nnz"][i],
                total_nnz - res["nnz"][i],
                res["value_sum"][i],
                total_sum - res["value_sum"][i],
                tie_correct,
                expm1,
            )
        )
    return frames


def _reference_frames(
    x: sp.csr_matrix | sp.csc_matrix,
    labels: pd.Categorical,
    selected: list[str],
    reference: str,
    names: np.ndarray,
    chunk_genes: int | None,
    n_jobs: int,
    tie_correct: bool,
    expm1,
) -> list[pd.DataFrame]:
    """One ranked table per selected group against the reference group's cells."""
    label_str = np.asarray(labels.astype(object))
    frames = []
    for g in selected:
        rows = np.flatnonzero((label_str == g) | (label_str == reference))
        codes = (label_str[rows] == reference).astype(np.int64)
        res = _group_stats(_as_sparse(x[rows]), codes, 2, chunk_genes, n_jobs)
        sizes = np.bincount(codes, minlength=2)
        frames.append(
            _group_frame(
                g,
                names,
                res["rank_sum"][0],
                res["tie_term"],
                int(sizes[0]),
                int(sizes[1]),
                res["nnz"][0],
                res["nnz"][1],
                res["value_sum"][0],
                res["value_sum"][1],
                tie_correct,
                expm1,
            )
        )
    return frames


def _group_frame(
    group: str,
    names: np.ndarray,
    rank_sum: np.ndarray,
    tie_term: np.ndarray,
    n_in: int,
    n_out: int,
    nnz_in: np.ndarray,
    nnz_out: np.ndarray,
    sum_in: np.ndarray,
    sum_out: np.ndarray,
    tie_correct: bool,
    expm1,
) -> pd.DataFrame:
    z, pval, auroc = _wilcoxon(rank_sum, n_in, n_out, tie_term, tie_correct)
    mean_in = sum_in / n_in
    mean_out = sum_out / n_out
    lfc = np.log2((expm1(mean_in) + 1e-9) / (expm1(mean_out) + 1e-9))
    order = np.argsort(-z, kind="stable")
    return pd.DataFrame(
        {
            "group": group,
            "feature": names[order],
            "statistic": z[order],
            "auroc": auroc[order],
            "logfoldchange": lfc[order],
            "pct_in": (nnz_in / n_in)[order],
            "pct_out": (nnz_out / n_out)[order],
            "pvalue": pval[order],
            "padj": adjust_pvalues(pval)[order],
            "mean_in": mean_in[order],
            "mean_out": mean_out[order],
        }
    )

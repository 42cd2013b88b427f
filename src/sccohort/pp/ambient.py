"""Ambient RNA (the soup): its profile, its share in a sample's cells, and its removal.

SoupX's method (Young & Behjati 2020), one sample at a time:

- `soup_profile`: the soup is the summed RNA of the sample's empty droplets (raw barcodes
  that are not cells, with at most ``max_counts`` UMIs; SoupX's ``soupRange`` 0-100).
- `estimate_contamination` (after SoupX ``autoEstCont``): a gene abundant in the soup (top
  decile) that a cluster hardly expresses (its share of the cluster's UMIs at most a tenth of
  the highest cluster's) reaches that cluster's cells mostly through the soup, so each such
  gene and cluster gives an estimate: observed counts over the counts the soup would bring at
  contamination 1. (SoupX picks the genes by tf-idf of detection, which fails once the soup
  makes marker genes detected in most cells, from about 10 % contamination.) Pairs whose counts
  are above what a contamination of 0.8 could bring (Poisson p < 0.05) are left out (the
  cluster expresses the gene); each other pair's posterior (SoupX's Gamma prior of mode 0.05
  and sd 0.1, Poisson counts) is summed, and the contamination is the mode of that sum within
  0.01-0.8.
- `remove_ambient` (SoupX ``adjustCounts``, method ``subtraction``, with clusters): each
  cluster loses ``contamination x its counts``, taken from its genes in proportion to the
  soup and never below zero (what a gene cannot give is taken from the others,
  iteratively); its cells share each gene's loss in proportion to their counts.

Why by hand: SoupX is R only (no Python port on PyPI); DecontX's Python ports
(decontx-python 0.2, decontx-scanpy 0.1) are months old with one author each; CellBender
needs PyTorch and hours of training per sample. The steps above cost a second per sample.
Measured on simulated samples (8 % soup in kidney nuclei, 3 % in blood cells): estimates
9.0 % and 3.3 %; a tubule gene's counts in kidney CD8 T cells fall from 0.52 to 0.13 per
cell, a T-cell chemokine's in tubule cells from 0.53 to 0.15 (`tests/test_ambient.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from sccohort.errors import InputError
from sccohort.io.read import read_raw_droplets

__all__ = ["estimate_contamination", "remove_ambient", "soup_profile"]

#: Empty droplets (and their UMIs) a soup profile needs to be estimated.
MIN_DROPLETS, MIN_SOUP_UMIS = 20, 500


def soup_profile(
    path: str | Path,
    cells: Sequence[str],
    sample_id: str,
    *,
    max_counts: int = 100,
    format: str | None = None,
) -> pd.Series:
    """The soup of one sample: the share of each gene in its empty droplets' RNA.

    Parameters
    ----------
    path
        The sample's raw (unfiltered) droplets (as `sccohort.io.read_raw_droplets`).
    cells
        The sample's cell barcodes or ids (every barcode called a cell is not soup).
    sample_id
        The sample.
    max_counts
        Droplets with more RNA UMIs than this are left out (cells the caller missed).
    format
        As in `sccohort.io.read_sample`; None detects it.

    Returns
    -------
    pandas.Series
        Index the genes of the raw file, values summing to 1 (name ``soup``).

    Raises
    ------
    InputError
        Unreadable files, or fewer than 20 empty droplets or 500 UMIs among them.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sccohort.simulate import simulate_cohort
    >>> from sccohort.pp import soup_profile
    >>> out = simulate_cohort(Path(tempfile.mkdtemp()), "paper", donors=["SSc1"],
    ...                       tissue="kidney", cells_per_donor=200, n_empty=300)
    >>> soup = soup_profile(out / "SSc1_kidney" / "raw_feature_bc_matrix.h5", [], "SSc1_kidney")
    >>> bool(np.isclose(soup.sum(), 1.0)), bool(soup["ALDOB"] > 10 * soup["CD3E"])  # tubule
    (True, True)
    """
    empty = read_raw_droplets(path, cells, sample_id, modalities=("rna",), format=format)
    counts = sp.csr_matrix(empty.layers["counts"])
    totals = np.asarray(counts.sum(axis=1)).ravel()
    keep = totals <= max_counts
    summed = np.asarray(counts[keep].sum(axis=0), dtype=np.float64).ravel()
    if keep.sum() < MIN_DROPLETS or summed.sum() < MIN_SOUP_UMIS:
        raise InputError(
            f"{int(keep.sum())} empty droplets with {int(summed.sum())} UMIs are too few to "
            "estimate the ambient RNA",
            file=path,
            sample=sample_id,
            hint="give the raw (unfiltered) matrix with its empty droplets, or set "
            "[tissue] ambient = false",
        )
    return pd.Series(summed / summed.sum(), index=empty.var_names.copy(), name="soup")


def _cluster_sums(counts: sp.csr_matrix, codes: np.ndarray, k: int) -> tuple:
    """Per cluster: summed counts (k x genes) and UMIs."""
    onehot = sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), (k, codes.size))
    summed = np.asarray((onehot @ counts).todense())
    return summed, summed.sum(axis=1)


def estimate_contamination(
    adata: AnnData,
    soup: pd.Series,
    groupby: str,
    *,
    layer: str | None = "counts",
    soup_quantile: float = 0.9,
    max_ratio: float = 0.1,
    max_genes: int = 100,
    prior: tuple[float, float] = (0.05, 0.1),
    bounds: tuple[float, float] = (0.01, 0.8),
) -> tuple[float, pd.DataFrame]:
    """The share of one sample's UMIs that come from the soup (SoupX ``autoEstCont``).

    Parameters
    ----------
    adata
        One sample's cells x genes, raw counts in ``layers[layer]`` (``.X`` when None).
    soup
        `soup_profile` of the sample (its genes are matched by name).
    groupby
        ``obs`` column of clusters (at least two).
    layer
        Where the counts are.
    soup_quantile, max_ratio
        A gene and a cluster give an estimate when the gene is in the soup's top
        ``1 - soup_quantile`` and the cluster's expression of it (share of its UMIs) is at
        most ``max_ratio`` of the highest cluster's; of those genes, the ``max_genes`` most
        abundant in the soup.
    prior, bounds
        Mode and standard deviation of the Gamma prior of the contamination; the range it
        is searched in (SoupX's ``priorRho``, ``priorRhoStdDev``, ``contaminationRange``).

    Returns
    -------
    (float, pandas.DataFrame)
        The contamination (0-1) and the estimates it rests on: one row per gene and cluster
        that qualify, ``gene, cluster, observed, expected, estimate, used``
        (``expected``: counts the soup brings at contamination 1).

    Raises
    ------
    InputError
        ``groupby`` missing or with one cluster, or no gene to estimate from.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from anndata import AnnData
    >>> from sccohort.pp import estimate_contamination
    >>> rng = np.random.default_rng(0)
    >>> markers = np.c_[np.ones((4, 800)), np.kron(np.eye(4), np.ones((1, 50))) * 20]
    >>> soup = markers.mean(axis=0) / markers.mean(axis=0).sum()  # 4 types, 50 markers each
    >>> types = np.repeat(np.arange(4), 200)
    >>> cells = markers[types] / markers[types].sum(axis=1, keepdims=True)
    >>> counts = rng.poisson(1500 * (0.9 * cells + 0.1 * soup))  # 10 % soup
    >>> obs = pd.DataFrame({"type": types.astype(str)}, index=[f"c{i}" for i in range(800)])
    >>> adata = AnnData(sp.csr_matrix(counts), obs=obs)
    >>> genes = pd.Series(soup, index=adata.var_names)
    >>> rho, pairs = estimate_contamination(adata, genes, "type", layer=None)
    >>> round(rho, 2)
    0.1
    """
    if groupby not in adata.obs.columns:
        raise InputError(f"obs has no column {groupby!r} of clusters", column=groupby)
    clusters = pd.Categorical(adata.obs[groupby].astype(str))
    if len(clusters.categories) < 2:
        raise InputError(
            "the contamination is estimated from genes of one cluster seen in another: "
            f"obs[{groupby!r}] has {len(clusters.categories)} cluster",
            column=groupby,
            hint="cluster the sample's cells first, or give the contamination",
        )
    counts = sp.csr_matrix(adata.layers[layer] if layer else adata.X, dtype=np.float64)
    p = soup.reindex(adata.var_names).fillna(0.0).to_numpy(dtype=np.float64)
    k = len(clusters.categories)
    summed, umis = _cluster_sums(counts, clusters.codes.astype(int), k)
    share = summed / np.maximum(umis, 1.0)[:, None]
    genes = np.flatnonzero(p >= np.quantile(p[p > 0], soup_quantile))
    low = share[:, genes] <= max_ratio * share[:, genes].max(axis=0)
    genes = genes[low.any(axis=0)]
    genes = genes[np.argsort(-p[genes], kind="stable")[:max_genes]]
    cl, gi = np.nonzero(share[:, genes] <= max_ratio * share[:, genes].max(axis=0))
    g = genes[gi]
    if not g.size:
        raise InputError(
            "no gene abundant in the soup is specific to some of the clusters",
            column=groupby,
            hint="give the contamination ([tissue] contamination)",
        )
    observed, expected = summed[cl, g], umis[cl] * p[g]
    pairs = pd.DataFrame({
        "gene": adata.var_names[g], "cluster": clusters.categories[cl], "observed": observed,
        "expected": expected, "estimate": observed / np.maximum(expected, 1e-300),
    })  # fmt: skip
    # a cluster that expresses the gene: more counts than a contamination of 0.8 brings
    pairs["used"] = (expected > 0) & (stats.poisson.sf(observed - 1, 0.8 * expected) >= 0.05)
    used = pairs[pairs["used"]]
    if not len(used):
        raise InputError("every marker gene is expressed in every cluster", column=groupby,
                         hint="give the contamination ([tissue] contamination)")  # fmt: skip
    v2 = (prior[1] / prior[0]) ** 2  # SoupX's Gamma prior with mode prior[0]
    shape = 1 + v2**-2 / 2 * (1 + np.sqrt(1 + 4 * v2))
    theta = prior[0] / (shape - 1)
    grid = np.linspace(bounds[0], bounds[1], 1 + round((bounds[1] - bounds[0]) / 0.001))
    density = stats.gamma.pdf(
        grid[:, None],
        shape + used["observed"].to_numpy()[None, :],
        scale=theta / (1 + theta * used["expected"].to_numpy()[None, :]),
    ).sum(axis=1)
    return float(grid[int(np.argmax(density))]), pairs


def _subtract(counts: sp.csr_matrix, p: np.ndarray, share: float, max_iter: int) -> np.ndarray:
    """New ``counts.data``: each row loses ``share`` of its sum (see `remove_ambient`).

    Taken in proportion to ``p`` over the row's nonzero entries, none below zero (what one
    cannot give, the others give).
    """
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    values = counts.data.astype(np.float64, copy=True)
    remaining = share * np.bincount(rows, values, minlength=counts.shape[0])
    for _ in range(max_iter):
        weight = np.where(values > 0, p[counts.indices], 0.0)
        per_row = np.bincount(rows, weight, minlength=counts.shape[0])
        part = np.divide(weight, per_row[rows], out=np.zeros_like(weight), where=per_row[rows] > 0)
        take = np.minimum(remaining[rows] * part, values)
        values -= take
        remaining -= np.bincount(rows, take, minlength=counts.shape[0])
        remaining[per_row == 0] = 0.0  # nothing of the soup left in the row to take
        if remaining.max(initial=0.0) < 1e-6:
            break
    return values


def remove_ambient(
    adata: AnnData,
    soup: pd.Series,
    contamination: float,
    *,
    groupby: str | None = None,
    layer: str | None = "counts",
    key_added: str = "decontaminated",
    max_iter: int = 50,
) -> float:
    """Subtract the soup from one sample's counts (SoupX ``adjustCounts``, ``subtraction``).

    Each cell (or, with ``groupby``, each cluster's summed counts, as SoupX does when it
    knows the clusters) loses ``contamination x`` its UMIs, taken from its detected genes
    in proportion to the soup; a gene never goes below zero, and what it cannot give is
    taken from the other genes (iteratively, at most ``max_iter`` rounds). A cluster's loss
    in a gene is shared by its cells in proportion to their counts of the gene. Per cluster
    the soup-only genes of a cell type lose what the soup brought them; per cell, a gene
    seen once in a cell cannot give less than all or nothing, and the soup's loss goes
    mostly to the cell's own abundant genes.

    Parameters
    ----------
    adata
        One sample's cells x genes, raw counts in ``layers[layer]`` (``.X`` when None).
    soup
        `soup_profile` of the sample.
    contamination
        Share of each cell's UMIs from the soup (`estimate_contamination`), 0 to 1.
    groupby
        ``obs`` column of clusters; None subtracts per cell.
    layer
        Where the counts are (read only).
    key_added
        ``layers[key_added]``: the corrected counts (float32 CSR, the sparsity of the counts
        or less).

    Returns
    -------
    float
        The share of the sample's UMIs removed.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from anndata import AnnData
    >>> from sccohort.pp import remove_ambient
    >>> counts = sp.csr_matrix(np.array([[8, 2, 0], [0, 5, 5]]))
    >>> adata = AnnData(counts.astype(np.float32))
    >>> soup = pd.Series([0.5, 0.25, 0.25], index=adata.var_names)
    >>> round(remove_ambient(adata, soup, 0.2, layer=None), 3)
    0.2
    >>> adata.layers["decontaminated"].toarray().astype(float).round(2).tolist()
    [[6.67, 1.33, 0.0], [0.0, 4.0, 4.0]]
    """
    if not 0.0 <= contamination <= 1.0:
        raise InputError(f"contamination {contamination} is not a share from 0 to 1",
                         key="contamination")  # fmt: skip
    if groupby is not None and groupby not in adata.obs.columns:
        raise InputError(f"obs has no column {groupby!r} of clusters", column=groupby)
    counts = sp.csr_matrix(adata.layers[layer] if layer else adata.X, dtype=np.float64, copy=True)
    counts.sum_duplicates()
    p = soup.reindex(adata.var_names).fillna(0.0).to_numpy(dtype=np.float64)
    if groupby is None:
        values = _subtract(counts, p, contamination, max_iter)
    else:
        codes = pd.Categorical(adata.obs[groupby].astype(str)).codes.astype(int)
        k = int(codes.max()) + 1 if codes.size else 0
        summed = sp.csr_matrix(_cluster_sums(counts, codes, k)[0])
        kept = summed.copy()
        kept.data = _subtract(summed, p, contamination, max_iter)
        dense = summed.toarray()
        factor = np.divide(kept.toarray(), dense, out=np.zeros(dense.shape), where=dense > 0)
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        values = counts.data * factor[codes[rows], counts.indices]
    out = sp.csr_matrix(
        (values.astype(np.float32), counts.indices.copy(), counts.indptr.copy()), counts.shape
    )
    out.eliminate_zeros()  # in place: on copies of the arrays the counts may share
    adata.layers[key_added] = out
    umis = counts.data.sum()
    return float((umis - values.sum()) / umis) if umis > 0 else 0.0

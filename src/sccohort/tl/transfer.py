"""Label transfer from a user-supplied labelled reference by neighbours in a shared embedding.

The reference (h5ad, or h5mu whose ``mod["rna"]`` is used) brings cells with labels, e.g.
an Azimuth-annotated PBMC atlas or an earlier cohort annotated by hand. Both datasets are
log-normalised the same way on the genes they share (10,000 counts per cell + log1p, from
raw counts; a reference without raw counts must hold log-normalised values in ``.X``), the
reference's highly variable genes are scaled with the reference's means and standard
deviations, and its PCA is fitted on the reference alone; the query is projected into that
space (as ``scanpy.tl.ingest`` and Seurat's reference mapping do, so the reference's
structure defines the axes). Harmony then aligns the two datasets (and the query's samples)
in the projected space, and every query cell takes the label with the largest kernel-weighted
vote among its ``n_neighbors`` nearest reference cells (Gaussian kernel whose width is the
distance to the farthest of them). The vote share of the winning label is the confidence;
below ``min_confidence`` the cell is ``unassigned``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from ..errors import InputError
from ..pp.store import store_of
from .annotate import UNASSIGNED
from .embed import harmony
from .pca import scaled_pca

__all__ = ["load_reference", "transfer_labels"]

#: Counts per cell after normalisation (as the query's ``normalize.target_sum`` default).
TARGET_SUM = 1e4
#: Rows densified at a time when projecting.
BLOCK_CELLS = 20_000


def load_reference(path: str | Path, keys: Sequence[str]) -> ad.AnnData:
    """Read a labelled reference: an ``.h5ad`` file, or the RNA of an ``.h5mu`` file.

    Parameters
    ----------
    path
        The reference file.
    keys
        ``obs`` columns with the labels to transfer; each must exist.

    Returns
    -------
    AnnData
        ``n_ref_cells x n_genes`` with ``obs[keys]`` (from the MuData's global ``obs``
        when the RNA modality lacks them).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sccohort.tl import load_reference
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> healthy = (mdata.obs["donor_id"] == "HD1").to_numpy()
    >>> query, reference = mdata["rna"][~healthy].copy(), mdata["rna"][healthy].copy()
    >>> reference.obs["l1"] = mdata.obs["l1"].astype(str).to_numpy()[healthy]
    >>> query.obs["sample_id"] = mdata.obs["sample_id"].to_numpy()[~healthy]
    >>> reference.obs["sample_id"] = "HD1"
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "reference.h5ad"
    >>> reference.write_h5ad(path)
    >>> load_reference(path, ["l1"]).shape
    (300, 19409)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "reference file not found",
            file=path,
            key="annotation.reference",
            hint="Give the path of an .h5ad or .h5mu file with labelled cells",
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".h5ad":
            reference = ad.read_h5ad(path)
        elif suffix == ".h5mu":
            import mudata as md

            mdata = md.read_h5mu(path)
            if "rna" not in mdata.mod:
                raise InputError(
                    f"the reference has no 'rna' modality (it has {', '.join(mdata.mod)})",
                    file=path,
                    key="annotation.reference",
                    hint="Label transfer uses the reference's RNA",
                )
            reference = mdata.mod["rna"]
            for key in keys:
                if key not in reference.obs and key in mdata.obs:
                    reference.obs[key] = mdata.obs.loc[reference.obs_names, key].to_numpy()
        else:
            raise InputError(
                f"unsupported reference format '{path.suffix}'",
                file=path,
                key="annotation.reference",
                hint="Use an .h5ad or .h5mu file",
            )
    except OSError as err:
        raise InputError(
            f"cannot read the reference: {err}", file=path, key="annotation.reference"
        ) from None
    missing = [k for k in keys if k not in reference.obs.columns]
    if missing:
        raise InputError(
            f"the reference has no label column(s) {', '.join(missing)}",
            file=path,
            key="annotation.reference_keys",
            hint="Its obs columns: " + ", ".join(map(str, reference.obs.columns)),
        )
    return reference


def _raw_counts(adata: ad.AnnData) -> sp.csr_matrix | None:
    """Raw counts (``layers["counts"]``, or an integer-valued ``.X``), else None."""
    if "counts" in adata.layers:
        return sp.csr_matrix(adata.layers["counts"])
    if adata.X is None:
        return None
    x = sp.csr_matrix(adata.X)
    sample = x.data[:1_000_000]
    if sample.size and np.all(sample >= 0) and np.all(sample == np.round(sample)):
        return x
    return None


def _log_normalised(adata: ad.AnnData, genes: pd.Index, what: str) -> sp.csr_matrix:
    """``n_cells x len(genes)`` log1p of counts per 10,000 (library size over all genes)."""
    columns = adata.var_names.get_indexer(genes)
    store = store_of(adata)
    if store is not None:  # the cohort's RNA on disk: these genes' counts, all-gene totals
        library, part = store.totals, store.columns(columns, counts=True)
    else:
        counts = _raw_counts(adata)
        if counts is None:
            if adata.X is None:
                raise InputError(
                    f"the {what} has neither raw counts nor expression values",
                    hint="Store raw counts in layers['counts'] or .X",
                )
            x = sp.csr_matrix(adata.X)[:, columns].astype(np.float32)
            if x.nnz and float(x.data.max()) > 30:
                raise InputError(
                    f"the {what}'s .X is neither raw counts (not integers) nor log-normalised "
                    f"(maximum {float(x.data.max()):.3g})",
                    hint="Store raw counts in layers['counts']",
                )
            return x
        library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
        part = counts[:, columns]
    scale = np.divide(TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)
    x = sp.diags(scale) @ part.astype(np.float64)
    x = sp.csr_matrix(x, dtype=np.float32)
    np.log1p(x.data, out=x.data)
    return x


def _project(
    x: sp.csr_matrix, mean: np.ndarray, std: np.ndarray, loadings: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """Scores of rows of ``x`` in a PCA fitted on scaled, clipped (10 SD) reference values."""
    out = np.empty((x.shape[0], loadings.shape[1]), dtype=np.float32)
    for s in range(0, x.shape[0], BLOCK_CELLS):
        z = (x[s : s + BLOCK_CELLS].toarray().astype(np.float64) - mean) / std
        np.clip(z, -10.0, 10.0, out=z)
        out[s : s + BLOCK_CELLS] = z @ loadings - offset
    return out


def _vote(
    labels: np.ndarray, index: np.ndarray, distance: np.ndarray, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-weighted majority label of each row's neighbours and its vote share."""
    width = np.maximum(distance[:, -1:], 1e-8)
    weight = np.exp(-((distance / width) ** 2))
    codes, uniques = pd.factorize(labels)
    votes = np.zeros((index.shape[0], len(uniques)))
    rows = np.repeat(np.arange(index.shape[0]), index.shape[1])
    np.add.at(votes, (rows, codes[index].ravel()), weight.ravel())
    votes /= votes.sum(axis=1, keepdims=True)
    best = votes.argmax(axis=1)
    confidence = votes[np.arange(len(best)), best]
    chosen = np.asarray(uniques, dtype=object)[best]
    chosen[confidence < min_confidence] = UNASSIGNED
    return chosen, confidence


def _align(
    ref_emb: np.ndarray,
    query_emb: np.ndarray,
    query: ad.AnnData,
    batch_key: str | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and query embeddings aligned by Harmony (reference one batch, query by batch)."""
    n_ref = ref_emb.shape[0]
    query_batch = (
        query.obs[batch_key].astype(str).to_numpy()
        if batch_key is not None
        else np.full(query.n_obs, "cohort")
    )
    both = ad.AnnData(
        obs=pd.DataFrame(
            {"batch": np.concatenate([np.full(n_ref, "reference"), query_batch])},
            index=[f"r{i}" for i in range(n_ref)] + [f"q{i}" for i in range(query.n_obs)],
        )
    )
    both.obsm["X_proj"] = np.vstack([ref_emb, query_emb])
    harmony(both, use_rep="X_proj", batch_key="batch", key_added="X_aligned", seed=seed)
    return both.obsm["X_aligned"][:n_ref], both.obsm["X_aligned"][n_ref:]


def _summary(
    query: ad.AnnData, key: str, chosen: np.ndarray, confidence: np.ndarray
) -> pd.DataFrame:
    """Per transferred label of one key: cells, share, median confidence, agreement."""
    frame = pd.DataFrame({"label": chosen, "confidence": confidence})
    if key in query.obs.columns:
        frame["agree"] = chosen == query.obs[key].astype(str).to_numpy()
    summary = frame.groupby("label", sort=True).agg(
        n_cells=("label", "size"), median_confidence=("confidence", "median")
    )
    if "agree" in frame:
        summary["agreement"] = frame.groupby("label", sort=True)["agree"].mean()
    summary.insert(1, "share", summary["n_cells"] / query.n_obs)
    return summary.reset_index().assign(key=key)


def transfer_labels(
    query: ad.AnnData,
    reference: ad.AnnData,
    *,
    keys: Sequence[str] = ("l1", "l2"),
    batch_key: str | None = "sample_id",
    n_top_genes: int = 2000,
    n_comps: int = 30,
    n_neighbors: int = 20,
    integrate: bool = True,
    min_confidence: float = 0.5,
    key_prefix: str = "ref_",
    max_reference_cells: int = 100_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Label query cells from a labelled reference by nearest neighbours.

    Parameters
    ----------
    query
        RNA of the cohort, ``n_cells x n_genes`` with raw counts in ``layers["counts"]``
        (gene symbols as ``var_names``) and ``obs[batch_key]``.
    reference
        Labelled RNA, ``n_ref x n_genes'`` (see `load_reference`), with ``obs[keys]``.
    keys
        Reference ``obs`` columns to transfer (each voted on separately).
    batch_key
        Query ``obs`` column whose levels Harmony aligns with each other and with the
        reference; None: the query is one batch.
    n_top_genes, n_comps
        Reference HVGs (Seurat flavour, among the shared genes) and PCA components.
    n_neighbors
        Reference neighbours that vote for each query cell.
    integrate
        Align reference and query with Harmony before the neighbour search.
    min_confidence
        Cells whose winning label has a smaller vote share are ``"unassigned"``.
    key_prefix
        Prefix of the written ``obs`` columns.
    max_reference_cells
        Larger references are subsampled at random (seeded) to this many cells.
    seed
        Random state (subsampling, Harmony).

    Returns
    -------
    pandas.DataFrame
        One row per key and transferred label: ``key, label, n_cells, share,
        median_confidence`` and, when the query already has ``obs[key]``, ``agreement`` (share
        of those cells whose existing label is the same). Writes
        ``query.obs[key_prefix + key]`` (categorical) and ``key_prefix + key +
        "_confidence"`` (float in [0, 1]).

    Examples
    --------
    >>> from sccohort.tl import transfer_labels
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> healthy = (mdata.obs["donor_id"] == "HD1").to_numpy()
    >>> query, reference = mdata["rna"][~healthy].copy(), mdata["rna"][healthy].copy()
    >>> reference.obs["l1"] = mdata.obs["l1"].astype(str).to_numpy()[healthy]
    >>> query.obs["sample_id"] = mdata.obs["sample_id"].to_numpy()[~healthy]
    >>> reference.obs["sample_id"] = "HD1"
    >>> summary = transfer_labels(query, reference, keys=("l1",), n_top_genes=500, n_comps=20)
    >>> truth = mdata.obs["l1"].astype(str).to_numpy()[~healthy]
    >>> bool((query.obs["ref_l1"].astype(str) == truth).mean() > 0.7)
    True
    """
    shared = query.var_names.intersection(reference.var_names, sort=False)
    if len(shared) < max(50, n_comps + 1):
        raise InputError(
            f"the reference shares only {len(shared)} genes with the cohort",
            key="annotation.reference",
            hint="Both must use gene symbols as names (e.g. CD3E, LYZ) of the same species",
        )
    for key in keys:
        labels = reference.obs[key]
        if labels.isna().all():
            raise InputError(
                f"reference label column '{key}' is empty", key="annotation.reference_keys"
            )
    rng = np.random.default_rng(seed)
    if reference.n_obs > max_reference_cells:
        keep = np.sort(rng.choice(reference.n_obs, max_reference_cells, replace=False))
        reference = reference[keep]
    labelled = ~reference.obs[list(keys)].isna().any(axis=1).to_numpy()
    reference = reference[labelled]

    ref_x = _log_normalised(reference, shared, "reference")
    hvg = ad.AnnData(ref_x, var=pd.DataFrame(index=shared))
    sc.pp.highly_variable_genes(hvg, n_top_genes=min(n_top_genes, len(shared)), flavor="seurat")
    genes = np.flatnonzero(hvg.var["highly_variable"].to_numpy())
    ref_x = ref_x[:, genes]
    query_x = _log_normalised(query, shared[genes], "cohort")

    n_comps = min(n_comps, len(genes) - 1, reference.n_obs - 1)
    _, loadings, _, _ = scaled_pca(ref_x, n_comps)
    mean = np.asarray(ref_x.mean(axis=0), dtype=np.float64).ravel()
    var = np.asarray(ref_x.power(2).mean(axis=0), dtype=np.float64).ravel() - mean**2
    std = np.sqrt(np.maximum(var * reference.n_obs / max(reference.n_obs - 1, 1), 0.0))
    std[std == 0] = 1.0
    offset = _project(ref_x, mean, std, loadings, np.zeros(n_comps)).mean(axis=0)
    ref_emb = _project(ref_x, mean, std, loadings, offset)
    query_emb = _project(query_x, mean, std, loadings, offset)

    if integrate:
        ref_emb, query_emb = _align(ref_emb, query_emb, query, batch_key, seed)

    k = min(n_neighbors, reference.n_obs)
    distance, index = NearestNeighbors(n_neighbors=k).fit(ref_emb).kneighbors(query_emb)
    rows = []
    for key in keys:
        chosen, confidence = _vote(
            reference.obs[key].astype(str).to_numpy(), index, distance, min_confidence
        )
        column = f"{key_prefix}{key}"
        query.obs[column] = pd.Categorical(chosen)
        query.obs[f"{column}_confidence"] = confidence.astype(np.float32)
        rows.append(_summary(query, key, chosen, confidence))
    table = pd.concat(rows, ignore_index=True)
    return table[["key", *[c for c in table.columns if c != "key"]]]

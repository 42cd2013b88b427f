"""AnnData (``.h5ad``) and MuData (``.h5mu``) inputs, split into sccohort modalities.

Counts are taken from ``layers["counts"]`` when present, else ``.X``, else ``.raw.X``; the
first of these that holds non-negative integers is used (normalised values are refused).

- h5ad: ``var["feature_types"]`` (as scanpy's ``read_10x_h5`` writes it) splits the features
  into ``rna`` / ``prot`` / ``hto``; without it, ``.X`` is RNA and proteins may sit in
  ``obsm["protein_expression"]`` (scvi-tools style: a DataFrame, or an array with names in
  ``uns["protein_names"]``). An object whose features are not genes (at most 1,000 features,
  fewer than half of them known human gene symbols, e.g. ``CD3_PROT``) is read as
  protein-only: ``{"prot": ...}`` with no ``rna``.
- h5mu: modalities named ``rna``/``RNA``/``gex``, ``prot``/``ADT``/``adt``/``protein``/
  ``cite``, ``hto``/``HTO``/``hashtag`` (case-insensitive); others are ignored with a warning.
"""

from __future__ import annotations

import gzip
import warnings
from functools import cache
from importlib import resources
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import (
    FEATURE_TYPE_TO_MODALITY,
    gene_var,
    hto_var,
    protein_var,
    strip_genome_prefix,
)

MODALITY_ALIASES = {
    "rna": "rna",
    "gex": "rna",
    "gene expression": "rna",
    "gene_expression": "rna",
    "prot": "prot",
    "adt": "prot",
    "protein": "prot",
    "proteins": "prot",
    "cite": "prot",
    "antibody capture": "prot",
    "hto": "hto",
    "hashtag": "hto",
    "multiplexing capture": "hto",
}

_HINT = "Store raw integer counts in layers['counts'] (or .X) of every modality"


@cache
def _human_symbols() -> frozenset[str]:
    ref = resources.files("sccohort.resources").joinpath("genes_human.tsv.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as fh:
        table = pd.read_csv(fh, sep="\t", usecols=["symbol"])
    return frozenset(table["symbol"].str.upper())


def looks_like_proteins(names: list[str]) -> bool:
    """Whether feature names are an antibody panel rather than genes (see module doc)."""
    if len(names) == 0 or len(names) > 1000:
        return False
    symbols = _human_symbols()
    known = sum(strip_genome_prefix(n).upper() in symbols for n in names)
    return known < 0.5 * len(names)


def _is_counts(matrix) -> bool:
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if data.size == 0:
        return True
    if np.issubdtype(data.dtype, np.integer):
        return bool((data >= 0).all())
    return bool(np.isfinite(data).all() and (data >= 0).all() and (data == np.round(data)).all())


def _counts_of(adata: ad.AnnData, file: Path, where: str) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """The raw counts (CSR) and the matching var table of one AnnData."""
    candidates = []
    if "counts" in adata.layers:
        candidates.append((adata.layers["counts"], adata.var))
    candidates.append((adata.X, adata.var))
    if adata.raw is not None:
        candidates.append((adata.raw.X, adata.raw.var))
    for matrix, var in candidates:
        if matrix is not None and _is_counts(matrix):
            return sp.csr_matrix(matrix), var
    raise InputError(
        f"{where} holds no raw integer counts (layers['counts'], .X and .raw are "
        "normalised or missing)",
        file=file,
        hint=_HINT,
    )


def _build(modality: str, counts: sp.csr_matrix, var: pd.DataFrame, obs: pd.DataFrame):
    names = [str(v) for v in var.index]
    if modality == "rna":
        ids = var["gene_ids"].astype(str).tolist() if "gene_ids" in var else None
        new_var = gene_var(names, ids)
    elif modality == "prot":
        new_var = protein_var(names)
    else:
        new_var = hto_var(names)
    return ad.AnnData(X=counts, obs=obs.copy(), var=new_var)


def _safe_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Source cell annotations, index as strings (kept in each modality's ``obs``)."""
    out = obs.copy()
    out.index = out.index.astype(str)
    return out


def read_h5ad_modalities(path: str | Path) -> dict[str, ad.AnnData]:
    """Read an ``.h5ad`` into sccohort modalities.

    Parameters
    ----------
    path
        The h5ad file (cells x features).

    Returns
    -------
    ``{modality: AnnData}`` (``rna``, ``prot``, ``hto`` as found; ``prot`` alone for a
    protein-only object), cells x features, raw counts (CSR) in ``.X``, source barcodes as
    ``obs_names`` and source ``obs`` columns kept.
    """
    path = Path(path)
    adata = _read_anndata_file(path, ad.read_h5ad, "AnnData (.h5ad)")
    obs = _safe_obs(adata.obs)
    counts, var = _counts_of(adata, path, ".X")
    mods: dict[str, ad.AnnData] = {}
    if "feature_types" in var:
        types = var["feature_types"].astype(str).to_numpy()
        for feature_type, modality in FEATURE_TYPE_TO_MODALITY.items():
            idx = np.flatnonzero(types == feature_type)
            if idx.size:
                mods[modality] = _build(modality, counts[:, idx].tocsr(), var.iloc[idx], obs)
        if not mods:
            raise InputError(
                f"var['feature_types'] has none of {', '.join(FEATURE_TYPE_TO_MODALITY)}",
                file=path,
                column="feature_types",
                hint="Use Cell Ranger's feature type names",
            )
    elif looks_like_proteins([str(v) for v in var.index]):
        mods["prot"] = _build("prot", counts, var, obs)
    else:
        mods["rna"] = _build("rna", counts, var, obs)
    if "protein_expression" in adata.obsm and "prot" not in mods:
        mods["prot"] = _obsm_proteins(adata, path, obs)
    return mods


def _obsm_proteins(adata: ad.AnnData, path: Path, obs: pd.DataFrame) -> ad.AnnData:
    values = adata.obsm["protein_expression"]
    if isinstance(values, pd.DataFrame):
        names = [str(c) for c in values.columns]
        matrix = values.to_numpy()
    else:
        matrix = values
        if "protein_names" not in adata.uns:
            raise InputError(
                "obsm['protein_expression'] is an array but uns['protein_names'] is missing",
                file=path,
                key="protein_expression",
                hint="Store the proteins as a DataFrame, or their names in uns['protein_names']",
            )
        names = [str(n) for n in adata.uns["protein_names"]]
    if not _is_counts(matrix):
        raise InputError(
            "obsm['protein_expression'] holds no raw integer counts",
            file=path,
            key="protein_expression",
            hint=_HINT,
        )
    counts = sp.csr_matrix(matrix)
    if counts.shape[1] != len(names):
        raise InputError(
            f"obsm['protein_expression'] has {counts.shape[1]} columns for {len(names)} names",
            file=path,
            key="protein_expression",
        )
    return _build("prot", counts, pd.DataFrame(index=pd.Index(names)), obs)


def read_h5mu_modalities(path: str | Path) -> dict[str, ad.AnnData]:
    """Read an ``.h5mu`` into sccohort modalities.

    Parameters
    ----------
    path
        The h5mu file.

    Returns
    -------
    ``{modality: AnnData}`` as in `read_h5ad_modalities`; each modality keeps its own cells
    (`sccohort.io.read` keeps those present in every modality).
    """
    path = Path(path)
    with md.set_options(pull_on_update=False):
        mdata = _read_anndata_file(path, md.read_h5mu, "MuData (.h5mu)")
    mods: dict[str, ad.AnnData] = {}
    ignored = []
    for name, adata in mdata.mod.items():
        modality = MODALITY_ALIASES.get(name.lower())
        if modality is None:
            ignored.append(name)
            continue
        if modality in mods:
            raise InputError(
                f"two modalities map to '{modality}'",
                file=path,
                key=name,
                hint="Keep one modality per kind (rna, prot, hto)",
            )
        counts, var = _counts_of(adata, path, f"modality '{name}'")
        mods[modality] = _build(modality, counts, var, _safe_obs(adata.obs))
    if ignored:
        warnings.warn(
            f"{path}: ignoring modalities {', '.join(map(repr, ignored))} "
            "(sccohort reads rna, prot, hto)",
            stacklevel=2,
        )
    if not mods:
        raise InputError(
            f"no rna, prot or hto modality among {', '.join(mdata.mod) or 'none'}",
            file=path,
            hint="Name the modalities rna / prot (or ADT) / hto",
        )
    return mods


def _read_anndata_file(path: Path, reader, kind: str):
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    try:
        return reader(path)
    except Exception as err:  # anndata/mudata/h5py raise many types on a bad file
        raise InputError(
            f"not a readable {kind} file ({type(err).__name__}: {err})",
            file=path,
            hint=f"Write it with {'anndata' if 'h5ad' in kind else 'mudata'} and copy it again",
        ) from err

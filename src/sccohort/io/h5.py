"""AnnData (``.h5ad``) and MuData (``.h5mu``) inputs, split into sccohort modalities.

Counts are taken from ``layers["counts"]`` when present, else ``.X``, else ``.raw.X``; the
first of these that holds non-negative integers is used (normalised values are refused).

- h5ad: ``var["feature_types"]`` (as scanpy's ``read_10x_h5`` writes it) splits the features
  into ``rna`` / ``prot`` / ``hto``; without it, the matrix is one modality, decided by the
  rule of `sccohort.io.features` (Ensembl ids or at least 50 % known human gene symbols:
  ``rna``; else at most 1,000 features: ``prot``, e.g. ``CD3_PROT``; else ``rna``) or by
  the sample sheet's ``modality`` column. Proteins may also sit in
  ``obsm["protein_expression"]`` (scvi-tools style: a DataFrame, or an array with names in
  ``uns["protein_names"]``); they are read when the matrix holds no proteins.
- h5mu: modalities named ``rna``/``RNA``/``gex``, ``prot``/``ADT``/``adt``/``protein``/
  ``cite``, ``hto``/``HTO``/``hashtag`` (case-insensitive); others are ignored with a warning.

With the sample sheet's ``modality`` set, a file that declares its features (feature types,
h5mu modality names) must have that modality, and only it is read. Every modality returned
carries the decision in ``uns["modality_rule"]``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import (
    FEATURE_TYPE_TO_MODALITY,
    ModalityPlan,
    modality_var,
    plan_from_names,
    plan_from_types,
    select_declared,
    set_rule,
)
from sccohort.io.verify import check_regular_file

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


#: How an h5ad declares its feature types, for the decision text.
FEATURE_TYPES_SOURCE = "var['feature_types']"
#: Where scvi-tools style proteins sit in an h5ad.
OBSM_PROTEINS = "protein_expression"


def looks_like_proteins(names: list[str]) -> bool:
    """Whether a single matrix's features are an antibody panel (the rule of the module doc).

    Ensembl gene ids are never taken for antibodies.
    """
    return "prot" in plan_from_names([str(n) for n in names]).columns


def plan_h5ad(
    names: Sequence[str],
    feature_types: Sequence[str] | None,
    obsm_proteins: bool,
    modality: str | None = None,
    *,
    file: Any = None,
) -> tuple[ModalityPlan, bool]:
    """Which features of an h5ad's count matrix go to which modality.

    Parameters
    ----------
    names
        ``var_names`` of the counts' var table.
    feature_types
        ``var["feature_types"]``, or None when absent.
    obsm_proteins
        Whether ``obsm["protein_expression"]`` exists.
    modality
        The sample sheet's ``modality`` (None: the feature types or the rule decide).
    file
        The file, for errors.

    Returns
    -------
    The plan of the matrix's columns (its ``rule`` names the proteins of ``obsm`` too), and
    whether ``obsm["protein_expression"]`` is read as ``prot``.

    Raises
    ------
    InputError
        ``feature_types`` holds no Cell Ranger type; ``modality`` names a modality that the
        feature types do not declare.
    """
    if feature_types is None:
        plan = plan_from_names(names, modality)
        if not obsm_proteins or "prot" in plan.columns:
            return plan, False
        return ModalityPlan(plan.columns, f"{plan.rule}; prot: obsm['{OBSM_PROTEINS}']"), True
    types = [str(t) for t in feature_types]
    if not set(types) & set(FEATURE_TYPE_TO_MODALITY):
        raise InputError(
            f"var['feature_types'] has none of {', '.join(FEATURE_TYPE_TO_MODALITY)}",
            file=file,
            column="feature_types",
            hint="Use Cell Ranger's feature type names",
        )
    declared: dict[str, np.ndarray | None] = dict(
        plan_from_types(types, FEATURE_TYPES_SOURCE, file=file).columns
    )
    source = FEATURE_TYPES_SOURCE
    if obsm_proteins and "prot" not in declared:
        declared["prot"] = None  # read from obsm, not from the matrix
        source += f" and obsm['{OBSM_PROTEINS}']"
    kept, rule = select_declared(declared, source, modality, file=file)
    columns = {m: idx for m, idx in kept.items() if idx is not None}
    return ModalityPlan(columns, rule), len(columns) < len(kept)


def h5mu_modalities(
    names: Sequence[str], modality: str | None = None, *, file: Any = None
) -> tuple[dict[str, str], str, list[str]]:
    """Which modalities of an h5mu are read.

    Parameters
    ----------
    names
        The h5mu's modality names, in order.
    modality, file
        As in `plan_h5ad`.

    Returns
    -------
    ``{sccohort modality: h5mu modality name}``, the decision text, and the names ignored.

    Raises
    ------
    InputError
        Two names map to one modality; none is known; ``modality`` is not among them.
    """
    found: dict[str, str] = {}
    ignored = []
    for name in names:
        known = MODALITY_ALIASES.get(str(name).lower())
        if known is None:
            ignored.append(str(name))
            continue
        if known in found:
            raise InputError(
                f"two modalities map to '{known}'",
                file=file,
                key=str(name),
                hint="Keep one modality per kind (rna, prot, hto)",
            )
        found[known] = str(name)
    if not found:
        raise InputError(
            f"no rna, prot or hto modality among {', '.join(map(str, names)) or 'none'}",
            file=file,
            hint="Name the modalities rna / prot (or ADT) / hto",
        )
    kept, rule = select_declared(found, "h5mu modality names", modality, file=file)
    return kept, rule, ignored


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
    ids = None
    if modality == "rna" and "gene_ids" in var:
        ids = var["gene_ids"].astype(str).tolist()
    return ad.AnnData(X=counts, obs=obs.copy(), var=modality_var(modality, names, ids))


def _columns(counts: sp.csr_matrix, idx: np.ndarray) -> sp.csr_matrix:
    if idx.size == counts.shape[1] and np.array_equal(idx, np.arange(idx.size)):
        return counts
    return counts[:, idx].tocsr()


def _safe_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Source cell annotations, index as strings (kept in each modality's ``obs``)."""
    out = obs.copy()
    out.index = out.index.astype(str)
    return out


_MUDATA_OPTIONS = threading.RLock()


@contextlib.contextmanager
def mudata_options(**options: Any) -> Iterator[None]:
    """``mudata.set_options`` for the block, held by one thread at a time.

    mudata's options are global: per-sample tasks on threads that set and restore them
    each on its own would leave them changed for the rest of the run.
    """
    with _MUDATA_OPTIONS, md.set_options(**options):
        yield


def read_h5ad_modalities(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read an ``.h5ad`` into sccohort modalities.

    Parameters
    ----------
    path
        The h5ad file (cells x features).
    modality
        The sample sheet's ``modality`` (``rna``/``prot``): what a matrix without
        ``var["feature_types"]`` holds, or the one feature type to read; None: the feature
        types or the rule decide (see the module doc).

    Returns
    -------
    ``{modality: AnnData}`` (``rna``, ``prot``, ``hto`` as found; ``prot`` alone for a
    protein-only object), cells x features, raw counts (CSR) in ``.X``, source barcodes as
    ``obs_names``, source ``obs`` columns kept and the decision in ``uns["modality_rule"]``.
    """
    path = Path(path)
    adata = _read_anndata_file(path, ad.read_h5ad, "AnnData (.h5ad)")
    obs = _safe_obs(adata.obs)
    counts, var = _counts_of(adata, path, ".X")
    types = var["feature_types"].astype(str).tolist() if "feature_types" in var else None
    plan, obsm = plan_h5ad(
        [str(v) for v in var.index], types, OBSM_PROTEINS in adata.obsm, modality, file=path
    )
    mods = {
        m: _build(m, _columns(counts, idx), var.iloc[idx], obs) for m, idx in plan.columns.items()
    }
    if obsm:
        mods["prot"] = _obsm_proteins(adata, path, obs)
    set_rule(mods, plan.rule)
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


def read_h5mu_modalities(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read an ``.h5mu`` into sccohort modalities.

    Parameters
    ----------
    path
        The h5mu file.
    modality
        The sample sheet's ``modality``: the one modality to read (None: all).

    Returns
    -------
    ``{modality: AnnData}`` as in `read_h5ad_modalities`; each modality keeps its own cells
    (`sccohort.io.read` keeps those present in every modality).
    """
    path = Path(path)
    with mudata_options(pull_on_update=False):
        mdata = _read_anndata_file(path, md.read_h5mu, "MuData (.h5mu)")
    kept, rule, ignored = h5mu_modalities(list(mdata.mod), modality, file=path)
    if ignored:
        warnings.warn(
            f"{path}: ignoring modalities {', '.join(map(repr, ignored))} "
            "(sccohort reads rna, prot, hto)",
            stacklevel=2,
        )
    mods: dict[str, ad.AnnData] = {}
    for known, name in kept.items():
        adata = mdata.mod[name]
        counts, var = _counts_of(adata, path, f"modality '{name}'")
        mods[known] = _build(known, counts, var, _safe_obs(adata.obs))
    set_rule(mods, rule)
    return mods


def _read_anndata_file(path: Path, reader, kind: str):
    check_regular_file(path)  # a named pipe would block h5py: refused unopened
    try:
        return reader(path)
    except Exception as err:  # anndata/mudata/h5py raise many types on a bad file
        raise InputError(
            f"not a readable {kind} file ({type(err).__name__}: {err})",
            file=path,
            hint=f"Write it with {'anndata' if 'h5ad' in kind else 'mudata'} and copy it again",
        ) from err

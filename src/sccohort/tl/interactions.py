"""Ligand-receptor interactions between groups of cells, scored CellPhoneDB-style.

`ligand_receptor` scores every (source group, target group, ligand, receptor) combination as
the mean expression of the ligand in the source cells times the mean expression of the
receptor in the target cells (log-normalised values, as CellPhoneDB's means; Efremova et al.
2020, Nat Protoc), with the fraction of cells expressing each, a specificity p-value from
permutations of the group labels across cells (CellPhoneDB's statistical method) and the
rank of the interaction among those of its source-target pair. A multi-subunit ligand or
receptor (``ITGAL_ITGB2``) is expressed at the minimum of its subunits' means (its fraction:
the minimum of theirs), as in CellPhoneDB.

Computation: only the resource's genes are taken from the (sparse) expression matrix; the
group means of every gene come from one product of a sparse group-indicator matrix with
those columns, and a batch of permutations is one product of a stacked indicator matrix, so
all pairs and all source-target combinations are scored at once per batch.

Why our own: LIANA+ (which implements this and other methods) is GPL-3.0 and cannot be a
run-time dependency; CellPhoneDB's own package and database bring their own licence terms.
The shipped resource (``resources/ligand_receptor.csv``, see
``resources/LIGAND_RECEPTOR_NOTE.md``) is curated by the project; any table with ``ligand``
and ``receptor`` columns can replace it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InputError

__all__ = ["ligand_receptor", "load_ligand_receptor"]

RESOURCE_FILE = "ligand_receptor.csv"
#: Separator of the subunits of a multi-subunit ligand or receptor.
SUBUNIT_SEP = "_"
_KEYS = ["source", "target", "ligand", "receptor"]
_COLUMNS = [
    *_KEYS,
    "ligand_mean",
    "receptor_mean",
    "ligand_fraction",
    "receptor_fraction",
    "score",
    "specificity_pvalue",
    "rank",
    "n_source",
    "n_target",
    "expressed",
]
#: Largest number of scores (permutations x groups x groups x pairs) held at once.
_BATCH_ELEMENTS = 4_000_000


def load_ligand_receptor(path: str | Path | None = None) -> pd.DataFrame:
    """The shipped ligand-receptor pairs, or a user's table of pairs, checked.

    Parameters
    ----------
    path
        A CSV file with (at least) the columns ``ligand`` and ``receptor`` (HGNC symbols;
        subunits of a complex joined by ``_``). ``None``: the project's curated table
        (``resources/ligand_receptor.csv``: ``ligand, receptor, family, evidence``; its origin
        in ``resources/LIGAND_RECEPTOR_NOTE.md``).

    Returns
    -------
    DataFrame
        One row per distinct (ligand, receptor) pair, the file's columns, symbols stripped.

    Raises
    ------
    InputError
        The table lacks a ``ligand`` or ``receptor`` column, or has no pair.

    Examples
    --------
    >>> from sccohort.tl import load_ligand_receptor
    >>> pairs = load_ligand_receptor()
    >>> pairs.columns.tolist()
    ['ligand', 'receptor', 'family', 'evidence']
    >>> pairs.query("ligand == 'ICAM1'")["receptor"].tolist()
    ['ITGAL_ITGB2', 'ITGAM_ITGB2', 'ITGAX_ITGB2']
    """
    if path is None:
        ref = resources.files("sccohort.resources") / RESOURCE_FILE
        with resources.as_file(ref) as file:
            table = pd.read_csv(file, dtype=str, keep_default_na=False)
        return _checked_resource(table, RESOURCE_FILE)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return _checked_resource(table, str(path))


def _checked_resource(table: pd.DataFrame, where: str | None = None) -> pd.DataFrame:
    """``table`` with stripped ``ligand`` / ``receptor`` strings, one row per pair."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(
            f"the resource must be a DataFrame or a CSV path, not {type(table).__name__}",
            key="resource",
        )
    missing = [c for c in ("ligand", "receptor") if c not in table.columns]
    if missing:
        raise InputError(
            f"the ligand-receptor resource has no column(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, table.columns)) or 'none'})",
            file=where,
            key=None if where else "resource",
            hint="a resource needs one row per pair with columns 'ligand' and 'receptor' "
            "(HGNC symbols, subunits of a complex joined by '_')",
        )
    out = table.copy()
    for col in ("ligand", "receptor"):
        out[col] = out[col].fillna("").astype(str).str.strip()
    out = out[(out["ligand"] != "") & (out["receptor"] != "")]
    out = out.drop_duplicates(["ligand", "receptor"]).reset_index(drop=True)
    if out.empty:
        raise InputError("the ligand-receptor resource has no pair", file=where, key="resource")
    return out


@dataclass(frozen=True)
class _Entities:
    """The resource's pairs whose genes are all in the data, as indices.

    ``var_idx``: columns of the data used (G); ``ligand`` / ``receptor``: (n_entities, S)
    indices into those G columns, one row per distinct molecule, padded by repeating a
    subunit; ``pair_ligand`` / ``pair_receptor``: (P,) rows of those; ``pairs``: the P
    (ligand, receptor) names.
    """

    var_idx: np.ndarray
    ligand: np.ndarray
    receptor: np.ndarray
    pair_ligand: np.ndarray
    pair_receptor: np.ndarray
    pairs: pd.DataFrame


def _entities(table: pd.DataFrame, var_names: pd.Index) -> _Entities:
    """Index the pairs of ``table`` whose every subunit is a gene of ``var_names``."""
    position = {str(g): i for i, g in enumerate(var_names)}
    names = pd.unique(table[["ligand", "receptor"]].to_numpy().ravel())
    parts = {name: name.split(SUBUNIT_SEP) for name in names}
    genes = sorted({g for sub in parts.values() for g in sub})
    found = [g for g in genes if g in position]
    complete = {name for name, sub in parts.items() if all(g in position for g in sub)}
    keep = table["ligand"].isin(complete) & table["receptor"].isin(complete)
    if not keep.any():
        example = ", ".join(genes[:5])
        raise InputError(
            f"no ligand-receptor pair of the resource has all its genes in the data: "
            f"{len(found)} of its {len(genes)} genes found (e.g. {example})",
            key="resource",
            hint="var_names must be gene symbols (HGNC, e.g. CCL5); map Ensembl ids to "
            "symbols first, or pass a resource written in the data's gene names",
        )
    pairs = table.loc[keep, ["ligand", "receptor"]].reset_index(drop=True)
    used = sorted({g for n in complete for g in parts[n]}, key=lambda g: position[g])
    column = {g: i for i, g in enumerate(used)}
    width = max(len(parts[n]) for n in complete)

    def indexed(names: list[str]) -> np.ndarray:
        rows = [[column[g] for g in parts[n]] for n in names]
        return np.array([r + [r[0]] * (width - len(r)) for r in rows], dtype=np.int64)

    ligands, receptors = list(pd.unique(pairs["ligand"])), list(pd.unique(pairs["receptor"]))
    return _Entities(
        var_idx=np.array([position[g] for g in used], dtype=np.int64),
        ligand=indexed(ligands),
        receptor=indexed(receptors),
        pair_ligand=pd.Index(ligands).get_indexer(pairs["ligand"]),
        pair_receptor=pd.Index(receptors).get_indexer(pairs["receptor"]),
        pairs=pairs,
    )


def _expression(
    adata: AnnData, layer: str | None, columns: np.ndarray, scale: str
) -> sp.csr_matrix:
    """The chosen columns of ``.X`` (or a layer) as float64 CSR, ``expm1`` for "linear"."""
    if scale not in ("log", "linear"):
        raise InputError(
            f"unknown scale {scale!r}", key="scale", hint="use 'log' (default) or 'linear'"
        )
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"adata has no layer {layer!r}",
            key="layer",
            hint=f"use None (adata.X) or one of: {', '.join(adata.layers.keys()) or 'none'}",
        )
    x = adata.X if layer is None else adata.layers[layer]
    if sp.issparse(x):
        sub = sp.csr_matrix(x[:, columns], dtype=np.float64)
    else:
        sub = sp.csr_matrix(np.asarray(x[:, columns], dtype=np.float64))
    if scale == "linear":
        sub.data = np.expm1(sub.data)
    return sub


def _indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Groups x cells 0/1 matrix of ``codes`` (one row of codes), or stacked for 2-d codes."""
    codes = np.atleast_2d(codes)
    n_batch, n_cells = codes.shape
    rows = (codes + n_groups * np.arange(n_batch)[:, None]).ravel()
    cols = np.tile(np.arange(n_cells), n_batch)
    data = np.ones(rows.size)
    return sp.csr_matrix((data, (rows, cols)), shape=(n_batch * n_groups, n_cells))


def _molecule(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per molecule: the minimum over its subunits of ``values`` (..., G) -> (..., n_mol)."""
    return values[..., idx].min(axis=-1)


def _pair_scores(means: np.ndarray, ent: _Entities) -> np.ndarray:
    """Scores (..., source, target, pair) from gene means (..., groups, G)."""
    lig = _molecule(means, ent.ligand)[..., ent.pair_ligand]
    rec = _molecule(means, ent.receptor)[..., ent.pair_receptor]
    return lig[..., :, None, :] * rec[..., None, :, :]


def _permutation_pvalues(
    x: sp.csr_matrix,
    codes: np.ndarray,
    sizes: np.ndarray,
    ent: _Entities,
    observed: np.ndarray,
    n_perm: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(1 + #permutations with score >= observed) / (1 + n_perm)``, (source, target, pair)."""
    k = sizes.size
    if n_perm == 0:
        return np.full(observed.shape, np.nan)
    batch = max(1, min(n_perm, _BATCH_ELEMENTS // max(1, observed.size)))
    exceed = np.zeros(observed.shape, dtype=np.int64)
    done = 0
    while done < n_perm:
        b = min(batch, n_perm - done)
        perm = rng.permuted(np.broadcast_to(codes, (b, codes.size)), axis=1)
        sums = (_indicator(perm, k) @ x).toarray().reshape(b, k, -1)
        scores = _pair_scores(sums / sizes[None, :, None], ent)
        exceed += (scores >= observed[None]).sum(axis=0)
        done += b
    return (1.0 + exceed) / (1.0 + n_perm)


def _score_cells(
    x: sp.csr_matrix,
    labels: pd.Series,
    ent: _Entities,
    min_cells: int,
    min_fraction: float,
    n_perm: int,
    rng: np.random.Generator,
    involving: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The rows of one set of cells (all cells, or one sample's), without ranks."""
    counts = labels.value_counts()
    groups = sorted(str(g) for g in counts.index[counts >= min_cells])
    if not groups:
        return pd.DataFrame(columns=[c for c in _COLUMNS if c != "rank"])
    keep = labels.isin(groups).to_numpy()
    codes = pd.Categorical(labels[keep], categories=groups).codes.astype(np.int64)
    x = x[keep]
    k = len(groups)
    sizes = np.bincount(codes, minlength=k).astype(float)
    ind = _indicator(codes, k)
    means = (ind @ x).toarray() / sizes[:, None]
    detected = x.copy()
    detected.data = (detected.data != 0).astype(np.float64)
    fractions = (ind @ detected).toarray() / sizes[:, None]
    score = _pair_scores(means, ent)
    pvalue = _permutation_pvalues(x, codes, sizes, ent, score, n_perm, rng)
    n_pairs = len(ent.pairs)
    src, tgt, pair = np.meshgrid(np.arange(k), np.arange(k), np.arange(n_pairs), indexing="ij")
    src, tgt, pair = src.ravel(), tgt.ravel(), pair.ravel()
    flat = np.arange(src.size)
    if involving is not None:
        wanted = np.isin(np.array(groups, dtype=object), list(involving))
        flat = np.flatnonzero(wanted[src] | wanted[tgt])
        src, tgt, pair = src[flat], tgt[flat], pair[flat]
    lig_mean = _molecule(means, ent.ligand)[src, ent.pair_ligand[pair]]
    rec_mean = _molecule(means, ent.receptor)[tgt, ent.pair_receptor[pair]]
    lig_frac = _molecule(fractions, ent.ligand)[src, ent.pair_ligand[pair]]
    rec_frac = _molecule(fractions, ent.receptor)[tgt, ent.pair_receptor[pair]]
    names = np.array(groups, dtype=object)
    out = pd.DataFrame(
        {
            "source": names[src],
            "target": names[tgt],
            "ligand": ent.pairs["ligand"].to_numpy()[pair],
            "receptor": ent.pairs["receptor"].to_numpy()[pair],
            "ligand_mean": lig_mean,
            "receptor_mean": rec_mean,
            "ligand_fraction": lig_frac,
            "receptor_fraction": rec_frac,
            "score": score.ravel()[flat],
            "specificity_pvalue": pvalue.ravel()[flat],
            "n_source": sizes[src].astype(int),
            "n_target": sizes[tgt].astype(int),
        }
    )
    out["expressed"] = (
        (lig_frac >= min_fraction) & (rec_frac >= min_fraction) & (out["score"].to_numpy() > 0)
    )
    return out


def _checked_obs(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise InputError(
            f"obs has no column {key!r} ({what})",
            column=key,
            hint=f"use one of the obs columns: {', '.join(map(str, adata.obs.columns))}",
        )
    values = adata.obs[key]
    known = values.notna().to_numpy()
    out = pd.Series(None, index=adata.obs_names, dtype=object)
    out[known] = values[known].astype(str).to_numpy()
    return out


def ligand_receptor(
    adata: AnnData,
    groupby: str,
    *,
    resource: pd.DataFrame | str | Path | None = None,
    layer: str | None = None,
    min_cells: int = 10,
    min_fraction: float = 0.1,
    n_perm: int = 1000,
    seed: int = 0,
    sample_key: str | None = None,
    scale: Literal["log", "linear"] = "log",
    involving: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score every ligand-receptor pair between every two groups of cells (CellPhoneDB-style).

    For a source group ``s``, a target group ``t`` and a pair (``L``, ``R``): ``score =
    mean(L in s) * mean(R in t)``, means of the log-normalised expression over all cells of
    the group (zeros included). A complex (``ITGAL_ITGB2``) takes the minimum of its
    subunits' means and of their fractions of expressing cells. ``specificity_pvalue``: the
    group labels are permuted across the cells ``n_perm`` times (within each sample when
    ``sample_key`` is given), and ``p = (1 + #permutations whose score >= the observed) /
    (1 + n_perm)``: small when the pair is specific to these two groups rather than high
    everywhere. ``expressed``: the ligand is detected in at least ``min_fraction`` of the
    source cells, the receptor in at least ``min_fraction`` of the target cells (and the score
    is above 0); ``rank``: 1 for the highest score among the expressed pairs of the same
    source and target (ties share the smaller rank), NaN for pairs not expressed.

    Parameters
    ----------
    adata
        Cells x genes, ``var_names`` gene symbols; ``.X`` (or ``layer``) log-normalised
        expression, sparse or dense. Only the resource's genes are read.
    groupby
        Column of ``obs`` with the cell groups (cell type, subset); cells with a missing
        label are left out.
    resource
        A DataFrame or CSV path with columns ``ligand`` and ``receptor`` (others ignored;
        subunits of a complex joined by ``_``); ``None``: the shipped curated table
        (:func:`load_ligand_receptor`). Pairs with a gene absent from the data are dropped.
    layer
        Layer with the log-normalised values; ``None``: ``adata.X``.
    min_cells
        Groups with fewer cells (in a sample, with ``sample_key``) are left out.
    min_fraction
        Smallest fraction of expressing cells of the ligand (source) and receptor (target)
        for ``expressed``.
    n_perm
        Label permutations for ``specificity_pvalue`` (0: no p-values, NaN).
    seed
        Seed of the permutations.
    sample_key
        Column of ``obs`` with the sample: every sample is scored on its own cells, the
        sample is the first column of the result (named ``sample_key``), and ranks are
        within the sample. Per-sample scores are what :func:`sccohort.stats.compare_interactions`
        compares between donors.
    scale
        ``"log"`` (default): means of the values as given (log-normalised, as CellPhoneDB's
        and LIANA's means), for ranking pairs within a dataset. ``"linear"``: means of
        ``expm1`` of the values (normalised counts, e.g. counts per 10,000), for comparing
        per-sample scores between donors: a fold change of a ligand is then the same fold
        change of the score, where the mean of logs compresses it (on the simulated kidney,
        4 vs 4 and 9 vs 9 donors, a ligand raised 3-fold gives a 1.1-1.6-fold score on the
        log scale, 2.6-3.7-fold on the linear one). ``expressed`` and the fractions do not
        depend on it.
    involving
        Keep only the rows whose source or target is one of these groups (e.g. the subsets a
        contrast found); ``None``: every pair of groups. Permutations still relabel all cells,
        so the p-values are those of the full table.

    Returns
    -------
    DataFrame
        One row per (sample,) source, target, ligand, receptor with ``ligand_mean,
        receptor_mean, ligand_fraction, receptor_fraction, score, specificity_pvalue, rank``
        and ``n_source``, ``n_target`` (cells), ``expressed``. Autocrine rows (source =
        target) are included.

    Raises
    ------
    InputError
        ``groupby`` or ``sample_key`` not in ``obs``; a missing layer; an unknown ``scale``; a
        resource without ``ligand`` / ``receptor`` columns; no pair with all its genes in the
        data (the message says how many of the resource's genes were found).

    Examples
    --------
    >>> import anndata as ad
    >>> from sccohort.tl import ligand_receptor
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(0.5, size=(60, 4)).astype(float)
    >>> counts[:30, 0] += rng.poisson(6, 30)  # CCL5 in the T cells
    >>> counts[30:, 1] += rng.poisson(4, 30)  # CCR5 in the macrophages
    >>> obs = pd.DataFrame({"cell_type": ["T"] * 30 + ["Mac"] * 30})
    >>> obs.index = obs.index.astype(str)
    >>> adata = ad.AnnData(np.log1p(counts), obs=obs)
    >>> adata.var_names = ["CCL5", "CCR5", "CD47", "THBS1"]
    >>> res = ligand_receptor(adata, "cell_type", n_perm=200)
    >>> cols = ["ligand", "receptor", "score", "specificity_pvalue", "rank"]
    >>> res.query("source == 'T' and target == 'Mac'")[cols].round(3)
      ligand receptor  score  specificity_pvalue  rank
    4   CCL5     CCR5  3.455               0.005   1.0
    5  THBS1     CD47  0.208               0.124   2.0
    """
    labels = _checked_obs(adata, groupby, "the cell groups")
    samples = None if sample_key is None else _checked_obs(adata, sample_key, "the samples")
    table = load_ligand_receptor() if resource is None else _resource_table(resource)
    ent = _entities(table, adata.var_names)
    x = _expression(adata, layer, ent.var_idx, scale)
    if samples is None:
        rng = np.random.default_rng(seed)
        cells = np.flatnonzero(labels.notna().to_numpy())
        out = _score_cells(
            x[cells], labels.iloc[cells], ent, min_cells, min_fraction, n_perm, rng, involving
        )
        order = ["source", "target"]
    else:
        parts = []
        for i, sample in enumerate(sorted(samples.dropna().unique())):
            cells = np.flatnonzero((samples == sample).to_numpy() & labels.notna().to_numpy())
            rng = np.random.default_rng([seed, i])
            part = _score_cells(
                x[cells], labels.iloc[cells], ent, min_cells, min_fraction, n_perm, rng, involving
            )
            parts.append(part.assign(**{sample_key: sample}))
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_COLUMNS)
        order = [sample_key, "source", "target"]
    scored = out["score"].where(out["expressed"].astype(bool))
    out["rank"] = scored.groupby([out[c] for c in order]).rank(ascending=False, method="min")
    first = [] if sample_key is None else [sample_key]
    return out[first + _COLUMNS].reset_index(drop=True)


def _resource_table(resource: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(resource, str | Path):
        return load_ligand_receptor(resource)
    return _checked_resource(resource)

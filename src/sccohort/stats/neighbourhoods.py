"""Neighbourhood differential abundance in the manner of Milo (Dann et al., 2022).

Cells are subsampled per sample, a kNN graph is built on an embedding, neighbourhoods are
sampled on it with Milo's refinement, cells are counted per sample in each neighbourhood and a
negative-binomial GLM with the contrast's design is fitted to each neighbourhood with edgeR's
quasi-likelihood pipeline (:mod:`sccohort.stats.nb_ql`, our implementation of edgeR 3.40's,
equal to R edgeR in ``benchmarks/bench_nb_ql.py``). P-values are corrected with Milo's spatial
FDR (weighted BH).

Choices (measured in ``benchmarks/bench_milo.py`` and ``tests/test_neighbourhoods.py``):

- kNN: exact Euclidean (scikit-learn) on the first ``d`` dimensions; each cell's ``k`` nearest
  other cells; the graph is their symmetric union (as miloR's igraph graph).
- Refinement as miloR's ``refinement_scheme="reduced_dim"``: a random ``prop`` of the cells is
  drawn, each is moved to the cell nearest the median position of its ``k`` nearest
  neighbours, duplicates collapse. A neighbourhood is its index cell plus its graph neighbours.
- Library sizes and normalisation as miloR's default: library size = the sample's column sum of
  the neighbourhood counts, TMM factors (``normalisation="tmm"``); ``"total"`` uses the number of
  (subsampled) cells of the sample with no TMM factors instead.
- edgeR (3.x, legacy) quasi-likelihood: trended NB dispersion, ``glmQLFit(robust=TRUE)``,
  ``glmQLFTest`` on the design's tested column, as miloR's ``testNhoods``.
- Spatial FDR: weighted BH with weights 1 / (distance of the index cell to its k-th nearest
  neighbour), miloR's default ``fdr.weighting="k-distance"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import sparse, stats
from sklearn.neighbors import NearestNeighbors

from sccohort.cohort import ContrastDesign
from sccohort.cohort.keys import cell_columns
from sccohort.errors import InputError
from sccohort.multitest import spatial_fdr
from sccohort.stats.nb_ql import ql_ftest, tmm_factors

METHOD = "milo_nb_qlf"


@dataclass(frozen=True)
class NhoodParams:
    """Parameters of neighbourhood construction.

    Attributes
    ----------
    k
        Neighbours per cell in the kNN graph (and for refinement and the spatial-FDR weight).
    d
        Leading embedding dimensions used (all of them if the embedding has fewer).
    prop
        Fraction of the (subsampled) cells drawn as candidate index cells.
    cells_per_sample
        At most this many cells per sample are kept (random subsample).
    """

    k: int
    d: int
    prop: float
    cells_per_sample: int


#: Named presets. ``"study"``: the study's miloR run on PBMC (1,000 cells per sample, k = 5,
#: d = 30, prop = 0.5); ``"study_lineage"``: its runs within one lineage (prop = 0.2);
#: ``"default"``: the Milo authors' advice (k = 30, prop = 0.1), whose neighbourhoods hold
#: ~30-60 cells, so that counts per sample are not mostly 0/1 as with k = 5.
PRESETS: dict[str, NhoodParams] = {
    "study": NhoodParams(k=5, d=30, prop=0.5, cells_per_sample=1000),
    "study_lineage": NhoodParams(k=5, d=30, prop=0.2, cells_per_sample=1000),
    "default": NhoodParams(k=30, d=30, prop=0.1, cells_per_sample=1000),
}


def neighbourhoods(
    embedding: np.ndarray,
    obs: pd.DataFrame,
    design: ContrastDesign,
    *,
    samples: Sequence[str],
    preset: str = "default",
    k: int | None = None,
    d: int | None = None,
    prop: float | None = None,
    cells_per_sample: int | None = None,
    label: str = "subset",
    normalisation: str = "tmm",
    seed: int = 0,
    sample_key: str = "sample_id",
    donor_key: str = "donor_id",
) -> pd.DataFrame:
    """Test every Milo neighbourhood for differential abundance in one contrast.

    Parameters
    ----------
    embedding
        Cells x dims (e.g. ``obsm["X_harmony"]``), rows in the order of ``obs``.
    obs
        Cells (same length as ``embedding``) with columns ``sample_key``, ``donor_key`` and
        ``label``; its index gives the neighbourhood ids (the index cell's id).
    design
        The contrast's donor-level design (intercept, tested term, covariates).
    samples
        One sample per donor of the design (e.g. the primary samples). Samples of donors outside
        the design and cells of samples not listed are ignored. A paired sample-level design
        (``design.unit == "sample"``) counts its own samples (``design.units``, with the donor
        columns in the GLM) and ignores this; a mixed design is refused (the NB GLM has no
        random effect).
    preset
        Name in :data:`PRESETS`; ``k``, ``d``, ``prop``, ``cells_per_sample`` override it.
    k, d, prop, cells_per_sample
        See :class:`NhoodParams`.
    label
        ``obs`` column whose majority value names each neighbourhood (``subset`` column).
    normalisation
        ``"tmm"`` (miloR's default) or ``"total"`` (see the module notes).
    seed
        Seed of the subsampling and of the index-cell draw.
    sample_key, donor_key
        The ``obs`` columns naming each cell's sample and donor.

    Returns
    -------
    pandas.DataFrame
        One row per neighbourhood: ``contrast, level`` (= ``label``), ``subset`` (majority
        label), ``effect`` (log2 fold change, per unit if continuous), ``ci_low, ci_high`` (95%,
        from the QL F statistic: se = |effect| / sqrt(F), t quantile on the QL total df),
        ``pvalue`` (QL F-test), ``padj`` (spatial FDR), ``method``, ``n_case, n_control``,
        ``nhood`` (index cell id), ``n_cells``, ``label_fraction``, ``kth_distance``,
        ``logcpm``; sorted by ``pvalue``.

    Examples
    --------
    >>> from sccohort.io import ClinicalTable
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.stats import Contrast, neighbourhoods
    >>> mdata = toy_mudata()
    >>> donors = pd.Index(["SSc1", "SSc19", "SSc2", "HD1"], name="donor_id")
    >>> clinical = ClinicalTable(pd.DataFrame({"SRC": ["yes", "yes", "no", "no"]}, index=donors),
    ...                          {"SRC": "binary"})
    >>> design = Contrast("SRC", "SRC", case="yes").design(clinical)
    >>> embedding = np.asarray(mdata["prot"].X)[:, :20]  # CLR values as an embedding
    >>> result = neighbourhoods(embedding, mdata.obs, design, samples=list(donors), seed=0)
    >>> result.columns.tolist()[:4], len(result) > 10
    (['contrast', 'level', 'subset', 'effect'], True)
    """
    params = _resolve_params(
        preset, normalisation, k=k, d=d, prop=prop, cells_per_sample=cells_per_sample
    )
    name = design.contrast.name
    _check_groups(design)
    embedding = np.asarray(embedding, dtype=float)
    obs = cell_columns(
        obs,
        {"sample_id": sample_key, "donor_id": donor_key, "label": label},
        hint="Pass the cohort's obs (each cell's sample, donor and label)",
    )
    sample_of_donor = _check_inputs(embedding, obs, design, samples)

    rng = np.random.default_rng(seed)
    cell_sample = obs["sample_id"].astype(str).to_numpy()
    wanted = list(sample_of_donor.values())
    keep = _subsample(cell_sample, wanted, params.cells_per_sample, rng)
    n_dims = min(params.d, embedding.shape[1])
    x = embedding[keep, :n_dims]
    if params.k >= len(keep):
        raise InputError(
            f"contrast '{name}': k = {params.k} neighbours but only {len(keep)} cells",
            key="neighbourhoods.k",
            hint="Lower k or include more cells.",
        )

    knn_index, knn_dist, nn = _knn(x, params.k)
    index_cells = _refined_index_cells(x, knn_index, nn, params.prop, rng)
    members = _membership(knn_index, index_cells)  # kept cells x nhoods, 0/1

    counts, n_cells_per_sample = _sample_counts(members, cell_sample[keep], wanted)

    donors = list(sample_of_donor.keys())
    matrix = design.matrix.loc[donors]
    coef = list(matrix.columns).index(design.term)
    fit = _ql_test(counts, matrix.to_numpy(dtype=float), coef, n_cells_per_sample, normalisation)

    kth = knn_dist[index_cells, -1]
    padj = spatial_fdr(fit["pvalue"], np.where(kth > 0, 1.0 / np.maximum(kth, 1e-300), 0.0))

    labels = obs["label"].astype(str).to_numpy()[keep]
    majority, fraction = _majority(members, labels)
    out = pd.DataFrame(
        {
            "contrast": name,
            "level": label,
            "subset": majority,
            "effect": fit["logfc"],
            "ci_low": fit["ci_low"],
            "ci_high": fit["ci_high"],
            "pvalue": fit["pvalue"],
            "padj": padj,
            "method": METHOD,
            "n_case": design.n_case,
            "n_control": design.n_control,
            "nhood": obs.index.to_numpy()[keep][index_cells].astype(str),
            "n_cells": np.asarray(members.sum(axis=0)).ravel().astype(int),
            "label_fraction": fraction,
            "kth_distance": kth,
            "logcpm": fit["logcpm"],
        }
    )
    return out.sort_values(["pvalue", "nhood"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Inputs


def _resolve_params(
    preset: str, normalisation: str, **overrides: float | int | None
) -> NhoodParams:
    """The preset's parameters with the given overrides, every value checked."""
    if normalisation not in ("tmm", "total"):
        raise InputError(
            f"unknown normalisation '{normalisation}'",
            key="neighbourhoods.normalisation",
            hint="Use 'tmm' (miloR's default) or 'total'.",
        )
    if preset not in PRESETS:
        raise InputError(
            f"unknown neighbourhood preset '{preset}'",
            key="neighbourhoods.preset",
            hint="Use one of: " + ", ".join(PRESETS),
        )
    params = replace(PRESETS[preset], **{n: v for n, v in overrides.items() if v is not None})
    if params.k < 2 or params.d < 1 or params.cells_per_sample < 1:
        raise InputError(
            f"invalid neighbourhood parameters k={params.k}, d={params.d}, "
            f"cells_per_sample={params.cells_per_sample}",
            key="neighbourhoods",
            hint="Use k >= 2, d >= 1 and cells_per_sample >= 1.",
        )
    if not 0 < params.prop <= 1:
        raise InputError(
            f"prop = {params.prop} is not in (0, 1]",
            key="neighbourhoods.prop",
            hint="prop is the fraction of cells drawn as index cells, e.g. 0.1.",
        )
    return params


def _check_groups(design: ContrastDesign) -> None:
    name = design.contrast.name
    if design.is_continuous:
        if design.n_case < 3:
            raise InputError(
                f"contrast '{name}' has {design.n_case} donors with a value",
                key=f"contrasts.{name}",
                hint="A continuous variable needs at least 3 donors.",
            )
    elif design.n_case < 2 or design.n_control < 2:
        raise InputError(
            f"contrast '{name}' has {design.n_case} case and {design.n_control} control donors",
            key=f"contrasts.{name}",
            hint="Each group needs at least 2 donors.",
        )


def _check_inputs(
    embedding: np.ndarray,
    obs: pd.DataFrame,
    design: ContrastDesign,
    samples: Sequence[str],
) -> dict[str, str]:
    """Validate the inputs; return unit -> sample for the design's units (design order)."""
    name = design.contrast.name
    if design.mixed:
        raise InputError(
            f"contrast '{name}': unbalanced repeated samples need a donor random effect, "
            "which the neighbourhood NB GLM does not have",
            key=f"contrasts.{name}.paired",
            hint="Set paired = true for the paired design (donors sampled on one side leave it)",
        )
    if embedding.ndim != 2 or embedding.shape[0] != len(obs):
        raise InputError(
            f"the embedding has shape {embedding.shape} but there are {len(obs)} cells",
            hint="Pass an embedding with one row per cell of obs, in the same order.",
        )
    if not np.isfinite(embedding).all():
        raise InputError(
            "the embedding has missing or infinite values",
            hint="Recompute the embedding (e.g. X_harmony) without NaN.",
        )
    cell_sample = obs["sample_id"].astype(str)
    if design.unit == "sample":
        samples = list(design.units)
    first = ~cell_sample.duplicated().to_numpy()
    donor_of_sample = pd.Series(
        obs["donor_id"].astype(str).to_numpy()[first], index=cell_sample.to_numpy()[first]
    )
    present = set(cell_sample)
    sample_of_donor: dict[str, str] = {}
    for sample in map(str, samples):
        if sample not in present:
            raise InputError(
                f"contrast '{name}': sample '{sample}' has no cells",
                sample=sample,
                column="sample_id",
                hint="Every listed sample needs cells that passed QC; drop the sample or its "
                "donor from the contrast.",
            )
        donor = donor_of_sample[sample] if design.unit == "donor" else sample
        if donor not in design.units:
            continue
        if donor in sample_of_donor:
            raise InputError(
                f"contrast '{name}': donor '{donor}' has two samples "
                f"('{sample_of_donor[donor]}', '{sample}')",
                sample=sample,
                hint="Pass one sample per donor (e.g. the primary timepoint).",
            )
        sample_of_donor[donor] = sample
    missing = [str(x) for x in design.units if str(x) not in sample_of_donor]
    if missing:
        raise InputError(
            f"contrast '{name}': no sample with cells for donor(s) {', '.join(missing)}",
            column="donor_id",
            hint="List one sample with cells per donor of the design.",
        )
    return {str(unit): sample_of_donor[str(unit)] for unit in design.units}


def _subsample(
    cell_sample: np.ndarray, wanted: list[str], cap: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted positions of at most ``cap`` random cells of each wanted sample."""
    keep = []
    for sample in wanted:
        idx = np.flatnonzero(cell_sample == sample)
        if len(idx) > cap:
            idx = rng.choice(idx, size=cap, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep))


# ---------------------------------------------------------------------------------------
# Graph and neighbourhoods


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, NearestNeighbors]:
    """Exact k nearest other cells: indices and distances (n x k, ascending)."""
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    dist, idx = nn.kneighbors(x)
    n = len(x)
    # drop the cell itself (wherever ties put it), else the farthest of the k + 1
    is_self = idx == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    mask = np.ones_like(idx, dtype=bool)
    mask[np.arange(n), drop] = False
    return idx[mask].reshape(n, k), dist[mask].reshape(n, k), nn


def _refined_index_cells(
    x: np.ndarray,
    knn_index: np.ndarray,
    nn: NearestNeighbors,
    prop: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Refined sampling as miloR: random cells moved to the cell nearest their nbrs' median."""
    n = len(x)
    n_draw = max(1, int(round(n * prop)))
    drawn = np.sort(rng.choice(n, size=n_draw, replace=False))
    medians = np.median(x[knn_index[drawn]], axis=1)  # n_draw x dims
    nearest = nn.kneighbors(medians, n_neighbors=1, return_distance=False)[:, 0]
    return np.unique(nearest)


def _sample_counts(
    members: sparse.csc_matrix, kept_samples: np.ndarray, wanted: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Cells per neighbourhood x sample (``wanted`` order) and kept cells per sample (float)."""
    n = len(kept_samples)
    codes = pd.Categorical(kept_samples, categories=wanted).codes
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, len(wanted)))
    counts = np.asarray((members.T @ onehot).todense())  # nhoods x samples
    return counts, np.bincount(codes, minlength=len(wanted)).astype(float)


def _membership(knn_index: np.ndarray, index_cells: np.ndarray) -> sparse.csc_matrix:
    """Cells x neighbourhoods 0/1: each index cell and its neighbours in the symmetric graph."""
    n, k = knn_index.shape
    rows = np.repeat(np.arange(n), k)
    adj = sparse.csr_matrix((np.ones(n * k), (rows, knn_index.ravel())), shape=(n, n))
    adj = ((adj + adj.T + sparse.identity(n, format="csr")) > 0).astype(float)
    return sparse.csc_matrix(adj[:, index_cells])


def _majority(members: sparse.csc_matrix, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each neighbourhood and its fraction of the neighbourhood's cells."""
    levels, codes = np.unique(labels, return_inverse=True)
    onehot = sparse.csr_matrix(
        (np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(levels))
    )
    tab = np.asarray((members.T @ onehot).todense())  # nhoods x levels
    best = tab.argmax(axis=1)
    return levels[best], tab[np.arange(len(best)), best] / tab.sum(axis=1)


# ---------------------------------------------------------------------------------------
# Negative-binomial GLM (edgeR's quasi-likelihood F-test, sccohort.stats.nb_ql)


def _ql_test(
    counts: np.ndarray,
    design: np.ndarray,
    coef: int,
    n_cells: np.ndarray,
    normalisation: str,
) -> dict[str, np.ndarray]:
    """Run edgeR's QL F-test of one coefficient on every row of ``counts`` (nhoods x samples)."""
    counts = counts.astype(float)
    if normalisation == "tmm":
        lib = counts.sum(axis=0)
        res = ql_ftest(counts, design, coef, lib_size=lib, norm_factors=tmm_factors(counts, lib))
    else:
        res = ql_ftest(counts, design, coef, lib_size=n_cells)
    logfc, f = res["logfc"], res["f"]
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(f > 0, np.abs(logfc) / np.sqrt(f), np.nan)
    half = stats.t.ppf(0.975, res["df_total"]) * se
    return {
        "logfc": logfc,
        "pvalue": res["pvalue"],
        "ci_low": logfc - half,
        "ci_high": logfc + half,
        "logcpm": res["logcpm"],
    }

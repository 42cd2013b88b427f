"""Per-donor trajectories across timepoints: subset shares and gene expression.

The study followed one SRC patient before, at and after renal-crisis onset (EGR1 in
monocytes rose at onset and fell after treatment). Here:

- `timepoint_order` puts the timepoints in time order from the sample sheet: each donor's
  samples are taken to be listed in time order, and the per-donor orders are merged (ties:
  first appearance in the sheet); an explicit order overrides it;
- `trajectories` gives per-donor subset shares across timepoints (donors with >= 2);
- `paired_test` compares two timepoints with a Wilcoxon signed-rank test on per-donor
  differences where >= 2 donors have both, and otherwise returns the rows untested with a note;
- `expression_trajectory` gives mean log-normalised expression and the fraction of expressing
  cells of chosen genes in chosen cells, per sample, for donors with >= 2 timepoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from sccohort.multitest import adjust_pvalues

from ..cohort import DEFAULT_TISSUE, SampleSheet
from ..errors import InputError
from ..pp.store import rna_columns
from .composition import level_rows

__all__ = ["expression_trajectory", "paired_test", "timepoint_order", "trajectories"]

_MIN_DONORS = 2


def timepoint_order(samples: pd.DataFrame, order: Sequence[str] | None = None) -> list[str]:
    """Timepoints in time order, merged from each donor's order of samples.

    Parameters
    ----------
    samples
        Sample table in file order with ``donor_id`` and ``timepoint`` columns.
    order
        Explicit order; must contain every timepoint of ``samples``.

    Returns
    -------
    list of str
        Every timepoint once.
    """
    seen = [str(t) for t in pd.unique(samples["timepoint"].astype(str))]
    if order is not None:
        order = [str(t) for t in order]
        missing = [t for t in seen if t not in order]
        if missing:
            raise InputError(
                f"timepoint(s) {', '.join(missing)} missing from the given order",
                key="order",
                hint="List every timepoint of the sample sheet: " + ", ".join(seen),
            )
        return list(dict.fromkeys(order))
    after: dict[str, set[str]] = {t: set() for t in seen}
    for _, rows in samples.groupby("donor_id", sort=False):
        seq = list(dict.fromkeys(rows["timepoint"].astype(str)))
        for earlier, later in zip(seq, seq[1:], strict=False):
            after[earlier].add(later)
    n_before = {t: 0 for t in seen}
    for t in seen:
        for later in after[t]:
            n_before[later] += 1
    result: list[str] = []
    ready = [t for t in seen if n_before[t] == 0]
    while ready:
        t = min(ready, key=seen.index)
        ready.remove(t)
        result.append(t)
        for later in sorted(after[t], key=seen.index):
            n_before[later] -= 1
            if n_before[later] == 0:
                ready.append(later)
    if len(result) < len(seen):
        stuck = [t for t in seen if t not in result]
        raise InputError(
            "donors list their samples in conflicting timepoint orders: " + ", ".join(stuck),
            column="timepoint",
            hint="List each donor's samples in time order in the sample sheet, or pass "
            "order=[...] explicitly",
        )
    return result


def _sheet_table(sample_sheet: pd.DataFrame | SampleSheet) -> pd.DataFrame:
    table = sample_sheet.table if isinstance(sample_sheet, SampleSheet) else sample_sheet
    table = table.copy()
    if "sample_id" in table.columns:
        table = table.set_index("sample_id")
    missing = [c for c in ("donor_id", "timepoint") if c not in table.columns]
    if missing:
        raise InputError(
            f"sample table lacks column(s) {', '.join(missing)}",
            column=missing[0],
            hint="Pass SampleSheet.table (index sample_id)",
        )
    if "tissue" not in table.columns:
        table["tissue"] = DEFAULT_TISSUE
    table.index = table.index.astype(str)
    table.index.name = "sample_id"
    return table.astype({"donor_id": str, "timepoint": str, "tissue": str})


def _longitudinal_samples(
    sheet: pd.DataFrame, tissue: str | None, order: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """Samples of donors with >= 2 timepoints (in sheet order) and the timepoint order."""
    tp_order = timepoint_order(sheet, order)
    rows = sheet if tissue is None else sheet[sheet["tissue"] == tissue]
    dup = rows.duplicated(["donor_id", "timepoint"], keep=False)
    if dup.any():
        first = rows[dup].iloc[0]
        raise InputError(
            f"donor '{first['donor_id']}' has several samples at timepoint "
            f"'{first['timepoint']}'" + (" (different tissues)" if tissue is None else ""),
            sample=str(rows[dup].index[1]),
            column="timepoint",
            hint="Choose one tissue (tissue='blood') or give the samples distinct timepoints",
        )
    n_tp = rows.groupby("donor_id")["timepoint"].transform("nunique")
    return rows[n_tp >= 2], tp_order


def trajectories(
    composition_table: pd.DataFrame,
    sample_sheet_table: pd.DataFrame | SampleSheet,
    level: str,
    subsets: Sequence[str] | None = None,
    *,
    tissue: str | None = DEFAULT_TISSUE,
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-donor shares of subsets across timepoints, for donors with >= 2 timepoints.

    Parameters
    ----------
    composition_table
        Long table from `sccohort.stats.composition.composition`.
    sample_sheet_table
        ``SampleSheet.table`` (index ``sample_id``; ``donor_id, timepoint, tissue``), or the
        ``SampleSheet``; each donor's samples listed in time order (see `timepoint_order`).
    level
        A level of the composition table (e.g. ``"subset_in_l1"``).
    subsets
        Labels to keep (``None``: all of the level).
    tissue
        Only samples of this tissue (``None``: all; a donor may then not have two samples
        at one timepoint).
    order
        Explicit timepoint order (overrides the sheet's).

    Returns
    -------
    pandas.DataFrame
        Columns ``donor_id, subset, timepoint, timepoint_order`` (0-based position in the
        timepoint order), ``sample_id, level, parent, share, count, total``; ordered by donor (sheet
        order), subset (table order), time. Empty (same columns) when no donor has two
        timepoints.

    Examples
    --------
    >>> from sccohort.stats import trajectories
    >>> sheet = pd.DataFrame({"sample_id": ["A_pre", "A_post", "B_pre", "B_post"],
    ...                       "donor_id": ["A", "A", "B", "B"], "timepoint": ["pre", "post"] * 2})
    >>> comp = pd.DataFrame({"sample_id": sheet["sample_id"].repeat(2).to_numpy(),
    ...                      "subset": ["X", "Y"] * 4, "count": [10, 90, 5, 95, 20, 80, 8, 92]})
    >>> comp = comp.merge(sheet, on="sample_id").assign(tissue="blood", level="subset",
    ...                                                  parent="all", total=100)
    >>> comp["share"] = comp["count"] / comp["total"]
    >>> traj = trajectories(comp, sheet, "subset", ["X"], order=["pre", "post"])
    >>> traj[["donor_id", "timepoint", "share"]]
      donor_id timepoint  share
    0        A       pre   0.10
    1        A      post   0.05
    2        B       pre   0.20
    3        B      post   0.08
    """
    rows = level_rows(composition_table, level)
    all_subsets = [str(s) for s in pd.unique(rows["subset"])]
    if subsets is not None:
        subsets = [str(s) for s in subsets]
        unknown = [s for s in subsets if s not in all_subsets]
        if unknown:
            raise InputError(
                f"subset(s) {', '.join(unknown)} not at level '{level}'",
                key="subsets",
                hint="Labels at this level: " + ", ".join(all_subsets),
            )
    else:
        subsets = all_subsets
    sheet, tp_order = _longitudinal_samples(_sheet_table(sample_sheet_table), tissue, order)
    cols = ["donor_id", "subset", "timepoint", "timepoint_order", "sample_id", "level", "parent"]
    cols += ["share", "count", "total"]
    rows = rows[rows["sample_id"].astype(str).isin(sheet.index) & rows["subset"].isin(subsets)]
    out = rows.drop(columns=["donor_id", "timepoint", "tissue"]).merge(
        sheet[["donor_id", "timepoint"]], left_on="sample_id", right_index=True
    )
    out["timepoint_order"] = out["timepoint"].map({t: i for i, t in enumerate(tp_order)})
    donor_rank = {d: i for i, d in enumerate(pd.unique(sheet["donor_id"]))}
    subset_rank = {s: i for i, s in enumerate(subsets)}
    out = out.assign(
        _d=out["donor_id"].map(donor_rank), _s=out["subset"].map(subset_rank)
    ).sort_values(["_d", "_s", "timepoint_order"], kind="stable")
    out = out[cols].reset_index(drop=True)
    return out.astype({"timepoint_order": int})


def _pseudo_share(traj: pd.DataFrame) -> float:
    """Half a cell of the median sample, ``0.5 / median(total)``.

    Without totals: half the smallest positive share.
    """
    if "total" in traj.columns and (traj["total"] > 0).any():
        return 0.5 / float(traj.loc[traj["total"] > 0, "total"].median())
    positive = traj["share"][traj["share"] > 0]
    return 0.5 * float(positive.min()) if len(positive) else 1.0


def paired_test(
    traj: pd.DataFrame,
    first: str,
    second: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Compare two timepoints per subset: Wilcoxon signed-rank test on per-donor differences.

    Parameters
    ----------
    traj
        Output of `trajectories`.
    first, second
        The earlier and later timepoint; the effect is ``second`` relative to ``first``.
    n_boot, seed, ci
        Donor bootstrap of the effect's confidence interval (donors resampled with
        replacement, both timepoints together).

    Returns
    -------
    pandas.DataFrame
        One row per subset: core columns (``contrast = "<second> vs <first>"``, ``effect`` =
        log2 ratio of the donors' mean shares second / first, with a pseudo-share of half
        a cell, ``0.5 / median(total)`` (without ``total``: half the smallest positive
        share); ``ci_low`` / ``ci_high``: percentile interval of the
        donor bootstrap (NaN below 2 donors); ``pvalue`` from
        ``scipy.stats.wilcoxon`` on share differences (exact for small n; 1.0 when every
        difference is 0); ``padj`` Bonferroni over the subsets tested; ``method =
        "wilcoxon_signed_rank"``; ``n_case`` = ``n_control`` = donors with both timepoints),
        plus ``mean_first``, ``mean_second``, ``median_diff`` and ``note`` (why a row is not
        tested: fewer than 2 donors have both timepoints).

    Examples
    --------
    >>> from sccohort.stats import paired_test, trajectories
    >>> sheet = pd.DataFrame({"sample_id": ["A_pre", "A_post", "B_pre", "B_post"],
    ...                       "donor_id": ["A", "A", "B", "B"], "timepoint": ["pre", "post"] * 2})
    >>> comp = pd.DataFrame({"sample_id": sheet["sample_id"].repeat(2).to_numpy(),
    ...                      "subset": ["X", "Y"] * 4, "count": [10, 90, 5, 95, 20, 80, 8, 92]})
    >>> comp = comp.merge(sheet, on="sample_id").assign(tissue="blood", level="subset",
    ...                                                  parent="all", total=100)
    >>> comp["share"] = comp["count"] / comp["total"]
    >>> traj = trajectories(comp, sheet, "subset", ["X"], order=["pre", "post"])
    >>> paired_test(traj, "pre", "post", seed=0)[["subset", "pvalue"]]
      subset  pvalue
    0      X     0.5
    """
    _check_paired(traj, first, second)
    level = str(traj["level"].iloc[0]) if "level" in traj.columns and len(traj) else ""
    wide = traj.pivot_table(
        index=["subset", "donor_id"], columns="timepoint", values="share", sort=False
    )[[first, second]]
    if int(n_boot) < 1 or not 0 < ci < 1:
        raise InputError(
            f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}", key="n_boot"
        )
    rng = np.random.default_rng(seed)
    c = _pseudo_share(traj)
    rows = []
    for subset in pd.unique(traj["subset"]):
        pair = wide.loc[subset].dropna()
        a, b = pair[first].to_numpy(), pair[second].to_numpy()
        n = len(pair)
        diff = b - a
        p, low, high, note = _paired_wilcoxon(a, b, c, int(n_boot), ci, rng)
        mean_a = float(a.mean()) if n else np.nan
        mean_b = float(b.mean()) if n else np.nan
        rows.append(
            {
                "contrast": f"{second} vs {first}",
                "level": level,
                "subset": subset,
                "effect": float(np.log2((mean_b + c) / (mean_a + c))) if n else np.nan,
                "ci_low": low,
                "ci_high": high,
                "pvalue": p,
                "padj": np.nan,
                "method": "wilcoxon_signed_rank",
                "n_case": n,
                "n_control": n,
                "mean_first": mean_a,
                "mean_second": mean_b,
                "median_diff": float(np.median(diff)) if n else np.nan,
                "note": note,
            }
        )
    out = pd.DataFrame(rows)
    p = out["pvalue"].to_numpy(dtype=float)
    out["padj"] = adjust_pvalues(p, "bonferroni")
    return out


def _check_paired(traj: pd.DataFrame, first: str, second: str) -> None:
    """Check that ``traj`` is a trajectory table holding two distinct timepoints."""
    need = ["donor_id", "subset", "timepoint", "share"]
    missing = [c for c in need if c not in traj.columns]
    if missing:
        raise InputError(
            f"not a trajectory table: no column(s) {', '.join(missing)}",
            column=missing[0],
            hint="Build it with sccohort.stats.longitudinal.trajectories(...)",
        )
    timepoints = set(traj["timepoint"].astype(str))
    for key, tp in (("first", first), ("second", second)):
        if tp not in timepoints:
            raise InputError(
                f"timepoint '{tp}' is not in the trajectories",
                key=key,
                hint="Timepoints present: " + ", ".join(sorted(timepoints)),
            )
    if first == second:
        raise InputError("first and second are the same timepoint", key="second")


def _paired_wilcoxon(
    a: np.ndarray, b: np.ndarray, c: float, n_boot: int, ci: float, rng: np.random.Generator
) -> tuple[float, float, float, str]:
    """Wilcoxon p-value, bootstrap CI of the log2 mean ratio b / a, and why not tested."""
    n = len(a)
    note = ""
    p = np.nan
    low = high = np.nan
    if n < _MIN_DONORS:
        note = f"a paired test needs >= {_MIN_DONORS} donors with both timepoints; {n} here"
    else:
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
        boot = np.log2((w @ b + c) / (w @ a + c))
        low, high = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
        if np.all(b - a == 0):
            p = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exact p with ties/zeros: normal approx
                p = float(stats.wilcoxon(b, a, alternative="two-sided").pvalue)
    return p, low, high, note


def _cell_mask(obs: pd.DataFrame, cells: Any) -> np.ndarray:
    if cells is None:
        return np.ones(len(obs), dtype=bool)
    if isinstance(cells, Mapping):
        mask = np.ones(len(obs), dtype=bool)
        for col, wanted in cells.items():
            if col not in obs.columns:
                raise InputError(
                    f"no cell annotation column '{col}'",
                    column=str(col),
                    hint="Columns: " + ", ".join(map(str, obs.columns)),
                )
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            mask &= obs[col].astype(str).isin([str(v) for v in values]).to_numpy()
        return mask
    mask = np.asarray(cells)
    if mask.dtype != bool or mask.shape != (len(obs),):
        raise InputError(
            f"cells must be a boolean mask of length {len(obs)} or a mapping like {{'l1': 'Mono'}}",
            key="cells",
        )
    return mask


def expression_trajectory(
    mdata: Any,
    genes: Sequence[str],
    cells: np.ndarray | pd.Series | Mapping[str, str | Sequence[str]] | None = None,
    *,
    modality: str = "rna",
    tissue: str | None = DEFAULT_TISSUE,
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean expression and fraction of expressing cells per sample, for donors followed over time.

    Parameters
    ----------
    mdata
        The cohort ``MuData`` (``mod[modality].X`` log-normalised) or an ``AnnData``; its
        ``obs`` has ``sample_id, donor_id, timepoint`` (and ``tissue``, ``qc_pass``: only
        passing cells count). Samples are taken in their order in ``obs`` (categories of
        ``sample_id`` if categorical), each donor's in time order (see `timepoint_order`).
    genes
        Gene symbols (``var_names`` of the modality).
    cells
        Which cells: a boolean mask over ``obs`` (n_cells,), a mapping column -> label(s)
        such as ``{"l1": "Mono"}``, or ``None`` for all cells.
    modality
        Modality of a MuData to read.
    tissue
        Only cells of this tissue (``None``: all).
    order
        Explicit timepoint order.

    Returns
    -------
    pandas.DataFrame
        Columns ``donor_id, sample_id, timepoint, timepoint_order, gene, mean`` (mean of
        ``.X`` over the chosen cells), ``frac`` (fraction with ``.X > 0``), ``n_cells``; one
        row per sample x gene of donors with >= 2 timepoints, ordered by donor, gene, time.
        Samples without chosen cells get ``mean``/``frac`` NaN and ``n_cells`` 0.

    Examples
    --------
    >>> from sccohort.stats import expression_trajectory
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> visit = np.where(np.arange(mdata.n_obs) % 2 == 0, "pre", "post")  # two visits a donor
    >>> mdata.obs["timepoint"], mdata.obs["tissue"] = visit, "blood"
    >>> mdata.obs["sample_id"] = mdata.obs["donor_id"].astype(str) + "_" + visit
    >>> table = expression_trajectory(mdata, ["LYZ"], {"l1": "Mono"}, order=["pre", "post"])
    >>> len(table), table["donor_id"].nunique()
    (8, 4)
    """
    adata, obs = _cell_table(mdata, modality)
    genes = _checked_genes(genes, adata, modality)
    mask = _cell_mask(obs, cells)
    if "qc_pass" in obs.columns:
        mask &= obs["qc_pass"].fillna(False).astype(bool).to_numpy()
    ids = obs["sample_id"]
    chosen, tp_order = _longitudinal_samples(_obs_sample_sheet(obs), tissue, order)
    columns = ["donor_id", "sample_id", "timepoint", "timepoint_order", "gene", "mean"]
    columns += ["frac", "n_cells"]
    if chosen.empty:
        return pd.DataFrame(columns=columns)

    codes = pd.Categorical(ids.astype(str), categories=list(chosen.index)).codes
    keep = mask & (codes >= 0)
    gidx = adata.var_names.get_indexer(genes)
    if adata.X is None:  # RNA on disk: these genes' columns, then the cells
        x = rna_columns(adata, gidx)[np.flatnonzero(keep)]
    else:
        x = adata.X[np.flatnonzero(keep)][:, gidx]
    x = x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))
    n_cells, mean, frac = _sample_means(x, codes[keep], len(chosen))
    n_samples = len(chosen)
    tp_rank = {t: i for i, t in enumerate(tp_order)}
    out = pd.DataFrame(
        {
            "donor_id": np.repeat(chosen["donor_id"].to_numpy(), len(genes)),
            "sample_id": np.repeat(chosen.index.to_numpy(), len(genes)),
            "timepoint": np.repeat(chosen["timepoint"].to_numpy(), len(genes)),
            "timepoint_order": np.repeat(chosen["timepoint"].map(tp_rank).to_numpy(), len(genes)),
            "gene": np.tile(genes, n_samples),
            "mean": mean.ravel(),
            "frac": frac.ravel(),
            "n_cells": np.repeat(n_cells.astype(int), len(genes)),
        }
    )
    donor_rank = {d: i for i, d in enumerate(pd.unique(chosen["donor_id"]))}
    gene_rank = {g: i for i, g in enumerate(genes)}
    out = out.assign(_d=out["donor_id"].map(donor_rank), _g=out["gene"].map(gene_rank)).sort_values(
        ["_d", "_g", "timepoint_order"], kind="stable"
    )
    return out[columns].reset_index(drop=True)


def _cell_table(mdata: Any, modality: str) -> tuple[Any, pd.DataFrame]:
    """The modality's AnnData and the cell table aligned to it, checked for sample columns."""
    adata = mdata.mod[modality] if hasattr(mdata, "mod") else mdata
    obs = mdata.obs
    if len(obs) != adata.n_obs or not obs.index.equals(adata.obs_names):
        obs = obs.reindex(adata.obs_names)
    need = [c for c in ("sample_id", "donor_id", "timepoint") if c not in obs.columns]
    if need:
        raise InputError(
            f"cell table lacks column(s) {', '.join(need)}",
            column=need[0],
            hint="Read the cohort with sccohort.io.read_cohort",
        )
    return adata, obs


def _checked_genes(genes: Sequence[str], adata: Any, modality: str) -> list[str]:
    """The genes as strings, each checked to be a ``var_name`` of the modality."""
    genes = [str(g) for g in genes]
    unknown = [g for g in genes if g not in adata.var_names]
    if unknown or not genes:
        raise InputError(
            f"gene(s) {', '.join(unknown)} not in modality '{modality}'"
            if unknown
            else "no gene given",
            key="genes",
            hint="Use var_names (gene symbols) of the RNA modality",
        )
    return genes


def _obs_sample_sheet(obs: pd.DataFrame) -> pd.DataFrame:
    """Donor, timepoint and tissue per sample of the cell table, samples in ``obs`` order."""
    ids = obs["sample_id"]
    sample_ids = (
        [str(c) for c in ids.cat.categories if (ids == c).any()]
        if isinstance(ids.dtype, pd.CategoricalDtype)
        else [str(s) for s in pd.unique(ids.astype(str))]
    )
    meta = (
        obs.assign(sample_id=ids.astype(str))
        .drop_duplicates("sample_id")
        .set_index("sample_id")
        .loc[sample_ids]
    )
    return pd.DataFrame(
        {
            "donor_id": meta["donor_id"].astype(str),
            "timepoint": meta["timepoint"].astype(str),
            "tissue": meta["tissue"].astype(str) if "tissue" in meta else DEFAULT_TISSUE,
        },
        index=pd.Index(sample_ids, name="sample_id"),
    )


def _sample_means(
    x: sp.csr_matrix, codes: np.ndarray, n_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells per sample, and per sample x gene the mean of ``x`` and the fraction above 0."""
    n = len(codes)
    member = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_samples, n))
    n_cells = np.asarray(member.sum(axis=1)).ravel()
    sums = np.asarray((member @ x).todense())
    positive = x.copy()
    positive.data = (positive.data > 0).astype(float)
    n_pos = np.asarray((member @ positive).todense())
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_cells[:, None] > 0, sums / n_cells[:, None], np.nan)
        frac = np.where(n_cells[:, None] > 0, n_pos / n_cells[:, None], np.nan)
    return n_cells, mean, frac

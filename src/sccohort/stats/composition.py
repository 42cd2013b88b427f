"""Per-sample cell counts and shares at every annotation level, and donor x subset matrices.

`composition` turns per-cell labels into one long table (one row per sample, level, parent
and label, zeros included); `donor_counts` / `donor_shares` cut it into the donor x subset
matrices that the donor-level tests take.

Levels in the long table (``level`` column):

- ``"<col>"`` for each annotation column (``l1``, ``l2``, ``subset``): the label's share of
  all the sample's labelled cells (``parent == "all"``);
- ``"<col>_in_l1"`` for each column other than ``l1`` (when ``l1`` is among the levels): the
  label's share of its parent l1 lineage, as the study reported CD14_EGR1 as a share of all
  monocytes. The parent of a label is the majority l1 of its cells in the whole cohort
  (ties: the first l1 in label order). The total of a parent is the sum of the counts of the
  labels assigned to it, so the shares within a parent sum to 1; where labels nest in l1
  (every cell of a label has the label's parent l1) it equals the sample's l1 count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..cohort import DEFAULT_TIMEPOINT, DEFAULT_TISSUE
from ..cohort.keys import cell_columns
from ..errors import InputError

__all__ = ["COLUMNS", "composition", "donor_counts", "donor_shares", "label_order"]

#: Columns of the long composition table, in order.
COLUMNS = (
    "sample_id",
    "donor_id",
    "timepoint",
    "tissue",
    "level",
    "parent",
    "subset",
    "count",
    "total",
    "share",
)
_PARENT_LEVEL = "l1"
#: Composition levels on which a subset is called associated with a contrast, preferred first.
SUBSET_LEVELS = ("subset", "subset_in_l1")


def label_order(values: pd.Series) -> list[str]:
    """Order of the labels of one column: categories (those used) if categorical, else sorted.

    Parameters
    ----------
    values
        Labels (n,); missing values are ignored.

    Returns
    -------
    list of str
    """
    present = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        used = set(present.astype(str))
        return [str(c) for c in values.cat.categories if str(c) in used]
    return sorted(set(present.astype(str)))


def _sample_order(obs: pd.DataFrame) -> list[str]:
    ids = obs["sample_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return label_order(ids)
    return [str(s) for s in pd.unique(ids.dropna().astype(str))]


def _sample_meta(obs: pd.DataFrame, samples: list[str]) -> pd.DataFrame:
    """One row per sample: donor_id, timepoint, tissue (checked to be constant per sample)."""
    frame = pd.DataFrame({"sample_id": obs["sample_id"].astype(str).to_numpy()})
    defaults = {"timepoint": DEFAULT_TIMEPOINT, "tissue": DEFAULT_TISSUE}
    for col in ("donor_id", "timepoint", "tissue"):
        if col in obs.columns:
            frame[col] = obs[col].astype(str).to_numpy()
        else:
            frame[col] = defaults[col]
    meta = frame.drop_duplicates()
    repeated = meta["sample_id"].duplicated(keep=False)
    if repeated.any():
        bad = meta[repeated]
        sample = str(bad["sample_id"].iloc[0])
        rows = bad[bad["sample_id"] == sample]
        col = next(c for c in ("donor_id", "timepoint", "tissue") if rows[c].nunique() > 1)
        raise InputError(
            f"cells of one sample have several values of '{col}': "
            + ", ".join(sorted(rows[col].unique())),
            column=col,
            sample=sample,
            hint="Each sample belongs to one donor, timepoint and tissue; fix obs or the "
            "sample sheet",
        )
    return meta.set_index("sample_id").loc[samples]


def _counts(codes_sample: np.ndarray, labels: pd.Series, order: list[str], n: int) -> np.ndarray:
    """Samples x labels count matrix (cells with a missing label are left out)."""
    label_codes = pd.Categorical(labels.astype("object"), categories=order).codes
    keep = (label_codes >= 0) & (codes_sample >= 0)
    flat = codes_sample[keep].astype(np.int64) * len(order) + label_codes[keep]
    return np.bincount(flat, minlength=n * len(order)).reshape(n, len(order))


def _parents(cells: pd.DataFrame, col: str, order: list[str], l1_order: list[str]) -> list[str]:
    """Majority l1 of each label of ``col`` over all cells (ties: first l1 in order)."""
    table = pd.crosstab(
        pd.Categorical(cells[col].astype("object"), categories=order),
        pd.Categorical(cells[_PARENT_LEVEL].astype("object"), categories=l1_order),
        dropna=False,
    )
    table = table.reindex(index=order, columns=l1_order, fill_value=0)
    values = table.to_numpy()
    missing = [order[i] for i in np.flatnonzero(values.sum(axis=1) == 0)]
    if missing:
        raise InputError(
            f"no cell of {col} label(s) {', '.join(missing)} has an l1 label",
            column=_PARENT_LEVEL,
            hint="Annotate l1 for every cell, or leave 'l1' out of the levels",
        )
    return [l1_order[i] for i in values.argmax(axis=1)]


def _block(
    meta: pd.DataFrame,
    level: str,
    parents: list[str],
    labels: list[str],
    counts: np.ndarray,
    totals: np.ndarray,
) -> pd.DataFrame:
    n_samples, n_labels = counts.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    rep = np.repeat(np.arange(n_samples), n_labels)
    return pd.DataFrame(
        {
            "sample_id": meta.index.to_numpy()[rep],
            "donor_id": meta["donor_id"].to_numpy()[rep],
            "timepoint": meta["timepoint"].to_numpy()[rep],
            "tissue": meta["tissue"].to_numpy()[rep],
            "level": level,
            "parent": np.tile(np.asarray(parents, dtype=object), n_samples),
            "subset": np.tile(np.asarray(labels, dtype=object), n_samples),
            "count": counts.ravel().astype(np.int64),
            "total": totals.ravel().astype(np.int64),
            "share": share.ravel(),
        }
    )


def composition(
    obs: pd.DataFrame,
    levels: Sequence[str] = ("l1", "l2", "subset"),
    *,
    sample_key: str = "sample_id",
    donor_key: str = "donor_id",
) -> pd.DataFrame:
    """Counts and shares of every label per sample, at every level and within parent lineages.

    Parameters
    ----------
    obs
        Per-cell table (n_cells rows) with the ``sample_key`` and ``donor_key`` columns, one
        column per entry of ``levels`` and optionally ``timepoint``, ``tissue`` (missing: the
        sample sheet's defaults ``baseline`` / ``blood``) and ``qc_pass`` (when present only
        passing cells are counted; every sample still gets its rows). Cells with a missing
        label are left out of that level.
    levels
        Annotation columns, coarse to fine. When ``"l1"`` is among them every other column
        also gets a ``"<col>_in_l1"`` level (share of the parent l1 lineage).
    sample_key, donor_key
        The ``obs`` columns naming each cell's sample and donor.

    Returns
    -------
    pandas.DataFrame
        Columns `COLUMNS`: ``sample_id, donor_id, timepoint, tissue, level, parent`` (``"all"``
        or the parent l1), ``subset`` (the label), ``count``, ``total`` (labelled cells of
        the sample in the parent), ``share = count / total`` (NaN where ``total`` is 0). One
        row per sample x level x label, zeros included; ordered by level (each column, then
        its ``_in_l1`` level), sample (categories or first appearance in ``obs``), then
        parent and label (categories if categorical, else sorted).

    Examples
    --------
    >>> from sccohort.stats import composition
    >>> obs = pd.DataFrame({
    ...     "sample_id": ["S1", "S1", "S1", "S2", "S2"],
    ...     "donor_id": ["D1", "D1", "D1", "D2", "D2"],
    ...     "l1": ["Mono", "Mono", "B", "Mono", "B"],
    ...     "l2": ["CD14 Mono", "CD14 Mono", "B naive", "CD14 Mono", "B naive"],
    ... })
    >>> comp = composition(obs, levels=("l1", "l2"))
    >>> comp[comp["level"] == "l1"][["sample_id", "subset", "count", "total", "share"]]
      sample_id subset  count  total     share
    0        S1      B      1      3  0.333333
    1        S1   Mono      2      3  0.666667
    2        S2      B      1      2  0.500000
    3        S2   Mono      1      2  0.500000
    """
    levels = list(dict.fromkeys(levels))
    if not levels:
        raise InputError("no annotation level given", key="levels", hint="e.g. ('l1', 'subset')")
    obs = cell_columns(
        obs,
        {"sample_id": sample_key, "donor_id": donor_key, **{c: c for c in levels}},
        optional=("timepoint", "tissue", "qc_pass"),
        hint="Run annotation first (l1, l2, subset) or choose levels among the columns",
    )
    samples = _sample_order(obs)
    meta = _sample_meta(obs, samples)
    cells = obs
    if "qc_pass" in obs.columns:
        cells = obs[obs["qc_pass"].fillna(False).astype(bool).to_numpy()]
    sample_codes = pd.Categorical(cells["sample_id"].astype(str), categories=samples).codes
    n = len(samples)

    with_parent = _PARENT_LEVEL in levels
    l1_order = label_order(cells[_PARENT_LEVEL]) if with_parent else []
    blocks = []
    for col in levels:
        order = label_order(cells[col])
        counts = _counts(sample_codes, cells[col], order, n)
        totals = np.repeat(counts.sum(axis=1, keepdims=True), len(order), axis=1)
        blocks.append(_block(meta, col, ["all"] * len(order), order, counts, totals))
        if not with_parent or col == _PARENT_LEVEL or not order:
            continue
        parents = _parents(cells, col, order, l1_order)
        # labels grouped by parent (l1 order), label order within a parent
        rank = {p: i for i, p in enumerate(l1_order)}
        perm = sorted(range(len(order)), key=lambda i: (rank[parents[i]], i))
        p_codes = np.array([rank[parents[i]] for i in perm])
        sub = counts[:, perm]
        per_parent = np.zeros((n, len(l1_order)), dtype=np.int64)
        np.add.at(per_parent.T, p_codes, sub.T)
        totals = per_parent[:, p_codes]
        blocks.append(
            _block(
                meta,
                f"{col}_in_l1",
                [parents[i] for i in perm],
                [order[i] for i in perm],
                sub,
                totals,
            )
        )
    return pd.concat(blocks, ignore_index=True)[list(COLUMNS)]


def level_rows(table: pd.DataFrame, level: str) -> pd.DataFrame:
    """The rows of one level of a composition table (checked: the table and the level exist)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"not a composition table: no column(s) {', '.join(missing)}",
            column=missing[0],
            hint="Build it with sccohort.stats.composition.composition(obs)",
        )
    rows = table[table["level"] == level]
    if rows.empty:
        raise InputError(
            f"no rows at level '{level}'",
            column="level",
            hint="Levels in the table: " + ", ".join(map(str, pd.unique(table["level"]))),
        )
    return rows


def donor_counts(
    table: pd.DataFrame, level: str, samples: Sequence[str], *, unit: str = "donor"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Donor x subset counts and totals of one level, one sample per donor (or per sample).

    Parameters
    ----------
    table
        Long composition table from `composition`.
    level
        A value of its ``level`` column, e.g. ``"subset"`` or ``"subset_in_l1"``.
    samples
        The samples to use (e.g. ``SampleSheet.primary_samples().index``), at most one per
        donor unless ``unit="sample"``.
    unit
        ``"donor"`` (rows indexed by ``donor_id``) or ``"sample"`` (by ``sample_id``, any
        number of samples per donor: the rows of a sample-level design).

    Returns
    -------
    counts : pandas.DataFrame
        Donors (or samples) x subsets (index in the order of ``samples``, columns ``subset``
        in table order), integer cell counts.
    totals : pandas.DataFrame
        Same shape: the denominator of each count (cells of the donor's sample in the
        subset's parent). Always a DataFrame, also for levels whose parent is ``"all"``
        (then every column is the same), so ``counts / totals`` are the shares.

    Examples
    --------
    >>> from sccohort.stats import composition, donor_counts
    >>> obs = pd.DataFrame({
    ...     "sample_id": ["S1", "S1", "S1", "S2", "S2"],
    ...     "donor_id": ["D1", "D1", "D1", "D2", "D2"],
    ...     "l1": ["Mono", "Mono", "B", "Mono", "B"],
    ...     "l2": ["CD14 Mono", "CD14 Mono", "B naive", "CD14 Mono", "B naive"],
    ... })
    >>> counts, totals = donor_counts(composition(obs, ("l1",)), "l1", ["S1", "S2"])
    >>> counts
    subset    B  Mono
    donor_id
    D1        1     2
    D2        1     1
    """
    rows = level_rows(table, level)
    samples = [str(s) for s in samples]
    if not samples:
        raise InputError("no samples given", key="samples", hint="Pass at least one sample id")
    dup = pd.Index(samples)[pd.Index(samples).duplicated()]
    if len(dup):
        raise InputError("sample listed twice", sample=dup[0], hint="List each sample once")
    known = set(rows["sample_id"].astype(str))
    unknown = [s for s in samples if s not in known]
    if unknown:
        raise InputError(
            f"{len(unknown)} sample(s) are not in the composition table",
            sample=unknown[0],
            hint="Use sample ids of the annotated cohort (obs 'sample_id')",
        )
    rows = rows[rows["sample_id"].astype(str).isin(samples)]
    donor_of = rows.drop_duplicates("sample_id").set_index("sample_id")["donor_id"].astype(str)
    donors = donor_of.loc[samples]
    twice = donors[donors.duplicated(keep=False)] if unit == "donor" else donors.iloc[:0]
    if len(twice):
        donor = twice.iloc[0]
        pair = list(twice[twice == donor].index)
        raise InputError(
            f"samples {', '.join(pair)} belong to the same donor '{donor}'",
            sample=pair[1],
            hint="Donor-level tests take one sample per donor: pick one timepoint/tissue, "
            "e.g. SampleSheet.primary_samples()",
        )
    subsets = list(pd.unique(rows["subset"]))
    out = []
    for value in ("count", "total"):
        wide = rows.pivot(index="sample_id", columns="subset", values=value)
        wide = wide.loc[samples, subsets].astype(np.int64)
        if unit == "donor":
            wide.index = pd.Index(donors.to_numpy(), name="donor_id")
        else:
            wide.index = pd.Index(list(samples), name="sample_id")
        wide.columns = pd.Index(subsets, name="subset")
        out.append(wide)
    return out[0], out[1]


def donor_shares(table: pd.DataFrame, level: str, samples: Sequence[str]) -> pd.DataFrame:
    """Donor x subset shares (``counts / totals`` of `donor_counts`; NaN where total is 0).

    Parameters
    ----------
    table, level, samples
        As for `donor_counts`.

    Returns
    -------
    pandas.DataFrame
        Donors x subsets, floats in [0, 1].

    Examples
    --------
    >>> from sccohort.stats import composition, donor_shares
    >>> obs = pd.DataFrame({
    ...     "sample_id": ["S1", "S1", "S1", "S2", "S2"],
    ...     "donor_id": ["D1", "D1", "D1", "D2", "D2"],
    ...     "l1": ["Mono", "Mono", "B", "Mono", "B"],
    ...     "l2": ["CD14 Mono", "CD14 Mono", "B naive", "CD14 Mono", "B naive"],
    ... })
    >>> donor_shares(composition(obs, ("l1",)), "l1", ["S1", "S2"]).round(3)
    subset        B   Mono
    donor_id
    D1        0.333  0.667
    D2        0.500  0.500
    """
    counts, totals = donor_counts(table, level, samples)
    return (counts / totals.where(totals > 0)).astype(float)

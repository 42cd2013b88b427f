"""Donor-level comparison of ligand-receptor interaction scores between clinical groups.

`compare_interactions` takes the per-sample scores of
:func:`sccohort.tl.ligand_receptor` (``sample_key=...``), puts each interaction's
``log2(score + pseudocount)`` in a donors x interactions table and tests it with the
donor-level default test on per-donor values (:func:`~sccohort.stats.compare_donor_values`:
the design's linear model, variances moderated across the interactions, permutation
p-values), used as it is: a difference of means of log2 scores is the log2 fold change of
the (geometric mean) score, case over control, so no adapter is needed. Only interactions
expressed in at least ``min_donors`` donors are tested (a filter blind to the groups, like
edgeR's ``filterByExpr``), which keeps pairs of undetected genes out of the multiple-testing
burden.

With few donors the permutation p-value has a floor (4 vs 4 donors: 70 relabellings, two
of which give the observed |t|, so ``p >= 0.0286``), and Benjamini-Hochberg over many
interactions cannot go below ``floor * m / k`` (``k`` interactions at the floor among ``m``
tested); :func:`~sccohort.stats.attainable_significance` says so before a run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from sccohort.cohort import ContrastDesign
from sccohort.errors import InputError
from sccohort.io.tables import CORE_COLUMNS
from sccohort.stats.abundance import compare_donor_values

__all__ = ["compare_interactions"]

#: Added to every score before the log2 (log-normalised means multiply to scores of ~0.02
#: and up for pairs detected in 10 % of the cells of both groups).
SCORE_PSEUDOCOUNT = 0.01
#: ``method`` of the rows: the default donor-level test on log2 scores.
METHOD = "perm_lm_log2score"
_KEYS = ["source", "target", "ligand", "receptor"]
_EXTRA = ["statistic", "scheme", "n_perm", "mean_case", "mean_control", "n_expressed", "note"]


def _sample_column(per_sample: pd.DataFrame) -> str:
    """The sample column of a per-sample table: its first column (before ``source``)."""
    missing = [c for c in [*_KEYS, "score", "expressed"] if c not in per_sample.columns]
    if missing:
        raise InputError(
            f"the per-sample interactions lack column(s) {', '.join(missing)}",
            key="per_sample",
            hint="pass the table of sccohort.tl.ligand_receptor(adata, groupby, sample_key=...)",
        )
    first = str(per_sample.columns[0])
    if first in _KEYS:
        raise InputError(
            "the interactions are not per sample (the first column is 'source')",
            key="per_sample",
            hint="score them with sccohort.tl.ligand_receptor(..., sample_key='sample_id')",
        )
    return first


def _units(samples: pd.Series, design: ContrastDesign, mapping: Mapping | None) -> pd.Series:
    """The design unit (donor, or sample for a sample design) of every row's sample."""
    if design.unit == "sample" or mapping is None:
        units = samples.astype(str)
    else:
        lookup = pd.Series(mapping) if not isinstance(mapping, pd.Series) else mapping
        lookup = lookup.astype(str)
        lookup.index = lookup.index.astype(str)
        units = samples.astype(str).map(lookup)
        unknown = sorted(set(samples[units.isna()].astype(str)))
        if unknown:
            raise InputError(
                f"sample(s) {', '.join(unknown[:5])} have no donor in sample_to_donor",
                key="sample_to_donor",
                hint="map every sample of the table to its donor_id",
            )
    lacking = [u for u in design.units if u not in set(units)]
    if lacking:
        hint = "pass sample_to_donor (sample_id -> donor_id)" if mapping is None else None
        raise InputError(
            f"{design.unit}(s) {', '.join(map(str, lacking))} of contrast "
            f"'{design.contrast.name}' have no interaction scores",
            key="per_sample",
            hint=hint or "score a sample of every donor of the design, or restrict the contrast",
        )
    return units


def compare_interactions(
    per_sample: pd.DataFrame,
    design: ContrastDesign,
    *,
    sample_to_donor: Mapping[str, str] | pd.Series | None = None,
    min_donors: int = 3,
    pseudocount: float = SCORE_PSEUDOCOUNT,
    n_perm: int = 10_000,
    max_exact: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Test every interaction's per-donor score between the contrast's groups.

    Per donor and interaction the value is ``log2(score + pseudocount)`` (a donor with several
    samples: the mean over them; a sample whose source or target group had too few cells has
    no row, so the donor has no value and leaves that interaction's test). The values are
    tested with :func:`~sccohort.stats.compare_donor_values` (the design's linear model,
    moderated variances, exact or Freedman-Lane permutations), whose difference of means is
    the log2 fold change of the score, case over control. An interaction is tested when it is
    ``expressed`` (ligand and receptor above ``min_fraction`` in
    :func:`~sccohort.tl.ligand_receptor`) in at least ``min_donors`` donors of the design,
    whatever their group; the others are left out of the table and of the BH correction.

    Parameters
    ----------
    per_sample
        The table of :func:`sccohort.tl.ligand_receptor` with ``sample_key``: first column
        the sample, then ``source, target, ligand, receptor, ..., score, ..., expressed``.
    design
        The contrast's design (:meth:`sccohort.cohort.Contrast.design`).
    sample_to_donor
        Sample -> donor id (dict or Series), e.g. from the sample sheet; ``None``: the
        samples are named by their donors. Ignored for a design on samples.
    min_donors
        Donors in which an interaction must be expressed to be tested.
    pseudocount
        Added to the scores before the log2.
    n_perm, max_exact, seed
        As for :func:`~sccohort.stats.compare_abundance`.

    Returns
    -------
    DataFrame
        One row per tested interaction: ``contrast, level`` (``"interaction"``), ``subset``
        (``"source>target:ligand>receptor"``), ``effect`` (log2 fold change of the score, with
        its moderated-t 95% CI ``ci_low``, ``ci_high``), ``pvalue`` (permutation), ``padj`` (BH
        over the tested interactions), ``method`` (``perm_lm_log2score``), ``n_case,
        n_control`` (donors with a value), then ``source, target, ligand, receptor,
        statistic, scheme, n_perm, mean_case, mean_control`` (means of the log2 scores),
        ``n_expressed`` (donors where it is expressed) and ``note``; sorted by p-value.

    Raises
    ------
    InputError
        A table without the per-sample columns; a donor of the design without scores; a
        sample missing from ``sample_to_donor``; ``min_donors`` below 1.

    Examples
    --------
    >>> from sccohort.stats import compare_interactions
    >>> from sccohort.datasets import toy
    >>> design = toy().design  # SRC yes (D1-D4) vs no (D5-D8)
    >>> raised = (design.group == "case").to_numpy()
    >>> per_sample = pd.DataFrame({
    ...     "sample_id": design.units, "source": "T", "target": "Mac", "ligand": "CCL5",
    ...     "receptor": "CCR5", "score": np.where(raised, 4.0, 1.0) + np.arange(8) / 10,
    ...     "expressed": True,
    ... })
    >>> res = compare_interactions(per_sample, design)
    >>> res[["subset", "effect", "pvalue", "n_case", "n_control"]].round(3)
                subset  effect  pvalue  n_case  n_control
    0  T>Mac:CCL5>CCR5   1.418   0.029       4          4
    """
    if int(min_donors) < 1:
        raise InputError(f"min_donors must be >= 1 (got {min_donors})", key="min_donors")
    sample_col = _sample_column(per_sample)
    units = _units(per_sample[sample_col], design, sample_to_donor)
    in_design = units.isin(set(design.units)).to_numpy()
    rows = per_sample.loc[in_design, [*_KEYS, "score", "expressed"]].copy()
    rows["unit"] = units[in_design].to_numpy()
    rows["subset"] = (
        rows["source"].astype(str) + ">" + rows["target"].astype(str) + ":"
        + rows["ligand"].astype(str) + ">" + rows["receptor"].astype(str)
    )  # fmt: skip
    rows["value"] = np.log2(rows["score"].astype(float) + pseudocount)
    rows["expressed"] = rows["expressed"].astype(bool)
    n_expressed = rows.groupby(["subset", "unit"])["expressed"].any().groupby("subset").sum()
    tested = n_expressed.index[n_expressed >= int(min_donors)]
    rows = rows[rows["subset"].isin(tested)]
    values = rows.pivot_table(index="unit", columns="subset", values="value", aggfunc="mean")
    values = values.reindex(index=design.units, columns=list(tested))
    result = compare_donor_values(
        values, design, level="interaction", n_perm=n_perm, max_exact=max_exact, seed=seed
    )
    result["method"] = METHOD
    result["subset"] = result["subset"].astype(object)
    keys = rows.drop_duplicates("subset").set_index("subset")[_KEYS]
    result = result.join(keys, on="subset")
    result["n_expressed"] = n_expressed.reindex(result["subset"]).to_numpy().astype(int)
    result = result[[*CORE_COLUMNS, *_KEYS, *_EXTRA]]
    return result.sort_values(["pvalue", "subset"], kind="stable").reset_index(drop=True)

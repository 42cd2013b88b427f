"""Unbalanced repeated samples: the mixed-model design, its composition and pseudobulk tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sccohort.cohort import Contrast, SampleSheet
from sccohort.stats import attainable_significance, compare_abundance, pseudobulk_de
from sccohort.stats.mixed_model import random_intercept
from sccohort.stats.permutation import precision_weights

#: Samples per donor, donor by donor in turn: (pre, post) counts; some donors have one side.
SHAPES = ((1, 1), (1, 2), (1, 0), (2, 1), (0, 1), (1, 1))
CONTRAST = Contrast("treated", "treated", case="yes", control="no")


def sheet(n_donors: int, shapes=SHAPES) -> SampleSheet:
    """Donors D0.. with the pre / post sample numbers of ``shapes`` in turn."""
    rows = []
    for d in range(n_donors):
        n_pre, n_post = shapes[d % len(shapes)]
        rows += [(f"D{d}_pre{k}", f"D{d}", f"pre{k}", "no") for k in range(n_pre)]
        rows += [(f"D{d}_post{k}", f"D{d}", f"post{k}", "yes") for k in range(n_post)]
    table = pd.DataFrame(rows, columns=["sample_id", "donor_id", "timepoint", "treated"])
    table = table.set_index("sample_id").assign(tissue="blood")
    return SampleSheet(table, None, pd.Series(range(2, len(table) + 2), index=table.index))


def counts_of(design, rng, fold: float = 1.0, n_subsets: int = 30, cells: int = 2000):
    """Samples x subsets counts: donor log-normal shares (SD 0.46), sample noise (SD 0.1),
    subset 0 (3 %) multiplied by ``fold`` in treated samples."""
    base = np.full(n_subsets, 0.97 / (n_subsets - 1))
    base[0] = 0.03
    donors = design.donor_of.loc[design.units]
    donor_effect = {d: np.exp(rng.normal(0, 0.46, n_subsets)) for d in donors.unique()}
    rows = []
    for unit, donor in donors.items():
        share = base * donor_effect[donor] * np.exp(rng.normal(0, 0.1, n_subsets))
        share[0] *= fold if design.group[unit] == "case" else 1.0
        rows.append(rng.multinomial(cells, share / share.sum()))
    counts = pd.DataFrame(rows, index=design.units, columns=[f"S{i}" for i in range(n_subsets)])
    return counts, pd.DataFrame(cells, index=counts.index, columns=counts.columns)


def test_the_shape_of_the_samples_chooses_the_design() -> None:
    mixed = CONTRAST.design(None, samples=sheet(6))
    assert mixed.mixed and not mixed.paired and mixed.blocks is None
    assert list(mixed.matrix.columns) == ["intercept", "treated[yes]"]  # no donor columns
    assert len(mixed.units) == 12 and not mixed.dropped  # every sample stays
    assert "mixed model (6 donors, 4 on both sides)" in mixed.describe()
    assert list(mixed.donor_codes[:5]) == [0, 0, 1, 1, 1]
    paired = CONTRAST.design(None, samples=sheet(4, ((1, 1),)))
    assert paired.paired and not paired.mixed
    forced = Contrast("t", "treated", case="yes", control="no", paired=True)
    forced = forced.design(None, samples=sheet(6))
    assert forced.paired and set(forced.dropped) == {"D2_pre0", "D4_post0"}
    single = CONTRAST.design(None, samples=sheet(6, ((1, 0), (0, 1))))
    assert not single.paired and not single.mixed  # one sample per donor: unpaired
    reach = attainable_significance(mixed)
    assert reach["scheme"] == "mixed-model" and reach["reachable"]


def test_mixed_composition_test_is_the_weighted_random_intercept_model() -> None:
    design = CONTRAST.design(None, samples=sheet(12))
    counts, totals = counts_of(design, np.random.default_rng(0), fold=2.0)
    result = compare_abundance(counts, totals, design, level="subset")
    assert (result["scheme"] == "mixed-model").all() and (result["n_perm"] == 0).all()
    c, t = counts.to_numpy(float), totals.to_numpy(float)
    y = np.arcsin(np.sqrt(c / t))
    x = design.matrix.to_numpy()
    w = precision_weights(y, 1 / (4 * t), x[:, :1])
    direct = random_intercept(y, x, design.donor_codes, 1, weights=w)
    assert np.allclose(result["statistic"], direct["statistic"])
    assert np.allclose(result["pvalue"], direct["pvalue"])
    assert result.loc[0, "padj"] < 0.05 and result.loc[0, "effect"] > 0.5


def test_mixed_composition_null_is_calibrated_and_beats_dropping_donors() -> None:
    rng = np.random.default_rng(1)
    design = CONTRAST.design(None, samples=sheet(12))
    forced = Contrast("treated", "treated", case="yes", control="no", paired=True)
    paired = forced.design(None, samples=sheet(12))
    null, found_mixed, found_paired = [], [], []
    for _ in range(60):
        counts, totals = counts_of(design, rng)
        null += list(compare_abundance(counts, totals, design, level="s")["pvalue"] < 0.05)
        counts, totals = counts_of(design, rng, fold=1.6)
        found_mixed.append(compare_abundance(counts, totals, design, level="s")["pvalue"][0])
        kept = counts.loc[paired.units], totals.loc[paired.units]
        found_paired.append(compare_abundance(*kept, paired, level="s")["pvalue"][0])
    assert 0.03 <= np.mean(null) <= 0.07, np.mean(null)
    assert np.mean(np.array(found_mixed) < 0.05) >= np.mean(np.array(found_paired) < 0.05)


def test_mixed_pseudobulk_is_dream_and_finds_a_planted_gene() -> None:
    rng = np.random.default_rng(2)
    design = CONTRAST.design(None, samples=sheet(12))
    mean = rng.gamma(1.5, 60.0, 400)
    donors = design.donor_of.loc[design.units]
    donor_effect = {d: np.exp(rng.normal(0, 0.3, 400)) for d in donors.unique()}
    rows = []
    for unit, donor in donors.items():
        mu = mean * donor_effect[donor]
        mu[0] *= 4 if design.group[unit] == "case" else 1
        rows.append(rng.negative_binomial(20, 20 / (20 + mu)))
    counts = pd.DataFrame(rows, index=design.units, columns=[f"G{i}" for i in range(400)])
    de = pseudobulk_de(counts, design, group="Mono")
    assert de["method"].str.startswith("pseudobulk dream").all()
    assert de.iloc[0]["gene"] == "G0" and de.iloc[0]["padj"] < 0.01
    null = de[de["gene"] != "G0"]["pvalue"]
    assert 0.01 <= (null < 0.05).mean() <= 0.09


def test_a_mixed_design_needs_donors_on_each_side() -> None:
    design = CONTRAST.design(None, samples=sheet(6))
    counts, _ = counts_of(design, np.random.default_rng(3), n_subsets=50)
    with pytest.raises(Exception, match="donors per side"):
        pseudobulk_de(counts, design, group="Mono", min_donors=6)


def three_visits(n_donors: int, missing_every: int = 0) -> SampleSheet:
    """Donors with samples at weeks 0, 4 and 12 (every ``missing_every``-th donor lacks week 4)."""
    rows = []
    for d in range(n_donors):
        for week in ("w0", "w4", "w12"):
            if week == "w4" and missing_every and d % missing_every == 0:
                continue
            rows.append((f"D{d}_{week}", f"D{d}", week, week))
    table = pd.DataFrame(rows, columns=["sample_id", "donor_id", "timepoint", "visit"])
    table = table.set_index("sample_id").assign(tissue="blood")
    return SampleSheet(table, None, pd.Series(range(2, len(table) + 2), index=table.index))


TREND = Contrast("weeks", "visit", order=["w0", "w4", "w12"])


def test_ordered_timepoints_are_a_within_donor_trend() -> None:
    design = TREND.design(None, samples=three_visits(6))
    assert design.paired and design.is_continuous and design.term == "visit"
    assert list(design.group[:3]) == [0.0, 1.0, 2.0]
    assert "visit per step of w0 < w4 < w12 (n=18), paired within donor (6 donors)" in (
        design.describe()
    )
    rng = np.random.default_rng(4)
    counts, totals = counts_of(design, rng, n_subsets=20)
    steps = design.group.to_numpy()
    counts["S0"] = [rng.binomial(2000, 0.03 * 1.5**s) for s in steps]  # x1.5 per step
    result = compare_abundance(counts, totals, design, level="subset")
    assert result.loc[0, "padj"] < 0.05
    assert 0.3 < result.loc[0, "effect"] < 0.9  # log2(1.5) = 0.58 per step
    unbalanced = TREND.design(None, samples=three_visits(6, missing_every=2))
    assert unbalanced.paired  # every donor still has 2 or more of the levels
    with pytest.raises(Exception, match="3 or more distinct levels"):
        Contrast("weeks", "visit", order=["w0", "w12"]).design(None, samples=three_visits(3))

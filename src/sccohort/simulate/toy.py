"""A toy cohort for the docstring examples: 8 donors, 2 subsets, one binary contrast.

``toy()`` gives donor-level inputs of the statistics functions (counts, totals, a clinical
table and a contrast's design) in a few milliseconds; for cells, simulate a cohort with
`sccohort.simulate.write_cohort`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sccohort.cohort import ClinicalTable, Contrast, ContrastDesign

__all__ = ["Toy", "toy"]


@dataclass(frozen=True)
class Toy:
    """The toy cohort (see `toy`)."""

    clinical: ClinicalTable
    design: ContrastDesign
    counts: pd.DataFrame
    totals: pd.DataFrame


def toy() -> Toy:
    """8 donors (D1-D4 with SRC, D5-D8 without), cells of 2 subsets out of 1,000 each.

    ``Mono_A`` is about 2.5 times as common in the SRC donors; ``T_B`` is not.

    Returns
    -------
    Toy
        ``clinical`` (variable ``SRC``, binary), ``design`` (SRC yes vs no), ``counts`` and
        ``totals`` (donors x subsets).

    Examples
    --------
    >>> from sccohort.simulate import toy
    >>> data = toy()
    >>> data.design.describe()
    'SRC: SRC yes (n=4) vs no (n=4)'
    >>> data.counts.loc["D1"].tolist(), int(data.totals.loc["D1", "Mono_A"])
    ([80, 200], 1000)
    """
    donors = pd.Index([f"D{i}" for i in range(1, 9)], name="donor_id")
    table = pd.DataFrame({"SRC": ["yes"] * 4 + ["no"] * 4}, index=donors)
    clinical = ClinicalTable(table, {"SRC": "binary"})
    design = Contrast("SRC", "SRC", case="yes", control="no").design(clinical)
    counts = pd.DataFrame(
        {
            "Mono_A": [80, 90, 75, 85, 30, 35, 40, 28],
            "T_B": [200, 210, 190, 205, 198, 202, 207, 195],
        },
        index=donors,
    )
    return Toy(clinical, design, counts, pd.DataFrame(1000, index=donors, columns=counts.columns))

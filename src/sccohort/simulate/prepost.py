"""Design ``prepost``: patients sampled before and after a treatment, unevenly, with a shift.

Every donor has a ``pre`` sample; donors 1, 4, 7, ... also a ``post1`` sample, donors 2, 5,
8, ... a ``post1`` and a ``post2`` sample, and donors 3, 6, 9, ... nothing after ``pre``: the
shapes of a real trial (paired samples, donors with three samples, donors with one). The
samples after treatment (samples.csv column ``treated = yes``) have CD14_EGR1's share
multiplied by ``SimParams.prepost_fold`` (2 by default); nothing else changes. The written
config compares ``treated`` yes vs no, which the pipeline pairs within donor.
"""

from __future__ import annotations

import pandas as pd

#: Donors of a ``prepost`` cohort unless ``n_donors`` says otherwise.
PREPOST_DONORS = 6
#: The subset whose share the treatment changes.
PREPOST_SUBSET = "CD14_EGR1"

PREPOST_CONFIG = """\
[inputs]
samples = "samples.csv"
clinical = "clinical.csv"

[run]
seed = {seed}
primary_timepoint = "pre"

[contrasts.treated]
variable = "treated"
case = "yes"
control = "no"
"""

_AGES = (58, 49, 66, 71, 44, 62, 53, 69, 60)


def prepost_clinical(n_donors: int) -> pd.DataFrame:
    """Patients ``P1..Pn``: ``donor_id, group, age, sex``."""
    rows = [(f"P{i + 1}", "SSc", _AGES[i % len(_AGES)], "FM"[i % 2]) for i in range(n_donors)]
    return pd.DataFrame(rows, columns=["donor_id", "group", "age", "sex"])


#: (sample id suffix, timepoint) of a donor's samples, donor by donor in turn.
_VISITS = (
    (("pre", "pre"), ("post1", "post1")),
    (("pre", "pre"), ("post1", "post1"), ("post2", "post2")),
    (("pre", "pre"),),
)


def prepost_visits(index: int) -> tuple[tuple[str, str], ...]:
    """(sample id suffix, timepoint) of the samples of the donor at 0-based ``index``."""
    return _VISITS[index % len(_VISITS)]


def treated(timepoint: str) -> str:
    """samples.csv's ``treated`` of a sample at ``timepoint``: ``yes`` after treatment."""
    return "no" if timepoint == "pre" else "yes"


def prepost_effects(fold: float, base_share: float) -> list[tuple]:
    """The row of ``truth/effects.csv`` of the planted shift."""
    return [
        ("composition", PREPOST_SUBSET, "treated", "yes", "no", "", float(fold), base_share,
         "", "", "")
    ]  # fmt: skip

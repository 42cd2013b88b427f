"""Design ``stim``: each donor's PBMC split into a control and an interferon-stimulated sample.

As in a control vs IFN-beta experiment (Kang et al. 2018): healthy donors, two samples each
(timepoint ``ctrl`` and ``stim``) run on the donor's lane, no composition change, and in the
stimulated sample the type I interferon response (the genes of Hallmark
INTERFERON_ALPHA_RESPONSE and the simulator's ISGs) raised in every cell, more in monocytes
and dendritic cells. The written config compares ``timepoint`` stim vs ctrl, which the
pipeline pairs within donor.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from sccohort.io.genesets import hallmark

#: The two samples of every donor: (sample id suffix, timepoint).
STIM_TIMEPOINTS = (("ctrl", "ctrl"), ("stim", "stim"))
#: Donors of a ``stim`` cohort unless ``n_donors`` says otherwise.
STIM_DONORS = 2
#: The stimulated genes beyond Hallmark INTERFERON_ALPHA_RESPONSE (the simulator's ISGs).
_EXTRA_ISGS = (
    "ISG15 MX1 MX2 IFI6 IFI44 IFI44L IFIT1 IFIT2 IFIT3 IFIT5 RSAD2 HERC5 OAS1 OAS2 OAS3 OASL "
    "XAF1 EPSTI1 LY6E ISG20 IFITM1 IFITM3 BST2 CMPK2 USP18 SIGLEC1"
).split()
#: The classic ISGs rise this many times more than the rest of the response (as in IFN-beta
#: stimulated PBMC, where ISG15, IFI6, MX1 and the IFITs lead).
CORE_FACTOR = 3.0
#: Extra factor (a power of the gene's fold) of the response in monocytes and DCs.
MYELOID_POWER = 1.5
#: Seed of the per-gene folds (fixed: the response does not depend on the cohort seed).
_FOLD_SEED = 2018

STIM_CONFIG = """\
[inputs]
samples = "samples.csv"
clinical = "clinical.csv"

[run]
seed = {seed}
primary_timepoint = "ctrl"

[contrasts.stim]
variable = "timepoint"
case = "stim"
control = "ctrl"
"""

_AGES = (64, 62, 70, 67, 59, 84)


def stim_clinical(n_donors: int) -> pd.DataFrame:
    """Healthy donors ``HD1..HDn``: ``donor_id, group, age, sex``."""
    rows = [(f"HD{i + 1}", "HD", _AGES[i % len(_AGES)], "MF"[i % 2]) for i in range(n_donors)]
    return pd.DataFrame(rows, columns=["donor_id", "group", "age", "sex"])


@cache
def ifn_genes() -> tuple[str, ...]:
    """The stimulated genes: Hallmark INTERFERON_ALPHA_RESPONSE, then the other ISGs."""
    genes = list(hallmark()["HALLMARK_INTERFERON_ALPHA_RESPONSE"])
    return tuple(dict.fromkeys([*genes, *_EXTRA_ISGS]))


def ifn_folds(symbols: list[str], fold: float) -> np.ndarray:
    """Per-gene folds: log-normal around ``fold`` (geometric SD 1.5), the ISGs `CORE_FACTOR`x."""
    rng = np.random.default_rng(_FOLD_SEED)
    folds = np.exp(np.log(fold) + rng.normal(0.0, np.log(1.5), len(symbols)))
    return folds * np.where(np.isin(symbols, _EXTRA_ISGS), CORE_FACTOR, 1.0)


def stim_effects(fold: float) -> list[tuple]:
    """Rows of ``truth/effects.csv`` for the response (one per stimulated gene)."""
    genes = ifn_genes()
    folds = ifn_folds(list(genes), fold)
    return [
        ("expression_stimulation", "", "timepoint", "stim", "ctrl", "", float(f), np.nan,
         "", "", gene)
        for gene, f in zip(genes, folds, strict=True)
    ]  # fmt: skip

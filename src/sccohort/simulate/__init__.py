"""The cohort simulator: a stand-in for the reference study's CITE-seq cohort.

``simulate_cohort(out_dir, design="paper", cells_per_donor=2000, seed=0, **params)``
writes per-sample Cell Ranger h5 files (filtered and raw), a sample sheet, a clinical
table, a ready ``sccohort.toml`` and truth tables (cell labels and artefacts, planted
effects, planted compositions). See `SimParams` for the parameters. The paper's 27
donors by default; ``n_donors=N`` draws a cohort of N donors in the same proportions.
"""

from sccohort.simulate.biology import EGR1_PROGRAM, L1_LEVELS, T2ISG_PROGRAM, subset_table
from sccohort.simulate.design import DESIGNS, SimParams, clinical_table
from sccohort.simulate.proteins import protein_panel
from sccohort.simulate.writers import TRUTH_DOUBLET_NOTE, features_table, write_cohort

#: Alias of `write_cohort`, the name the command-line interface calls.
simulate_cohort = write_cohort

__all__ = [
    "DESIGNS",
    "EGR1_PROGRAM",
    "L1_LEVELS",
    "T2ISG_PROGRAM",
    "TRUTH_DOUBLET_NOTE",
    "SimParams",
    "clinical_table",
    "features_table",
    "protein_panel",
    "simulate_cohort",
    "subset_table",
    "write_cohort",
]

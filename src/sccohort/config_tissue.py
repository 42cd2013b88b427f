"""``[tissue]``: the analyses of tissue samples beside the blood (a section of the config).

Registered with :func:`~sccohort.config_checks.config_section` when :mod:`sccohort.config`
imports this module; kept apart so that each config module stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

from sccohort.config_checks import PROBABILITY, at_least, between, config_section, setting

#: Most label permutations of the interactions' specificity p-values.
MAX_INTERACTION_PERM = 100_000


@config_section("tissue")
@dataclass
class TissueSection:
    """``[tissue]``: samples of other tissues than ``[run] primary_tissue`` (kidney, lung).

    ``analyse``: run the tissue stages when the sample sheet has such samples (tissue QC
    and annotation, integration of the lineages blood and tissue share, trajectory,
    cell-cell communication); ``false`` sets them aside. ``ambient``: remove the ambient
    RNA (SoupX's method, `sccohort.pp.remove_ambient`) from tissue samples whose raw
    droplets the sample sheet gives (``raw_path``); ``contamination``: its share of each
    cell's UMIs (unset: estimated per sample). ``max_blood_per_subset``: blood
    cells drawn per subset into the joint embedding; ``resolution``: Leiden resolution of
    the tissue's and the joint clusters. ``root``: the subset the trajectory starts from
    (unset: the blood subset most associated with a contrast whose lineage has tissue
    states); ``spline_df``: degrees of freedom of the genes' pseudotime splines.
    ``interaction_perm``: label permutations of the specificity p-values (pooled cells of a
    tissue, at most ``interaction_max_cells`` drawn); ``interaction_min_cells``: cells a
    group needs in a sample to be scored; ``interaction_min_fraction``: share of cells
    expressing the ligand (source) and the receptor (target) for a pair to count as
    expressed.
    """

    analyse: bool = True
    ambient: bool = True
    contamination: float | None = setting(between(0, 0.8), default=None)
    max_blood_per_subset: int = setting(at_least(10), default=500)
    resolution: float = setting(between(0.01, 50), default=1.0)
    root: str | None = None
    spline_df: int = setting(between(1, 20), default=4)
    interaction_perm: int = setting(between(0, MAX_INTERACTION_PERM), default=500)
    interaction_max_cells: int = setting(at_least(100), default=20_000)
    interaction_min_cells: int = setting(at_least(1), default=10)
    interaction_min_fraction: float = setting(PROBABILITY, default=0.1)

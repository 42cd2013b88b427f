"""``[spatial]``: the analyses of spatial slides (a section of the config).

Registered with :func:`~sccohort.config_checks.config_section` when :mod:`sccohort.config`
imports this module; kept apart so that each config module stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

from sccohort.config_checks import PROBABILITY, at_least, between, config_section, setting


@config_section("spatial")
@dataclass
class SpatialSection:
    """``[spatial]``: slides of imaging panels (format cosmx, xenium or spatial).

    ``analyse``: run the spatial stage when the sheet has slides. Panel QC: a cell needs
    ``min_counts`` UMIs and at most ``max_negative_share`` of its counts on the negative
    probes; cells whose area is more than ``max_area_fold`` times the slide's median are
    removed (merged segmentations). ``n_neighbors``: spatial neighbours per cell (with the
    cell, its neighbourhood); ``n_niches``: niches (0: chosen by silhouette, at most
    ``max_niches``); ``enrichment_perm``: label permutations per slide of the
    neighbourhood enrichment; ``min_confidence``: label transfer votes a cell's label needs
    (else ``unassigned``, left out of the niches).
    """

    analyse: bool = True
    min_counts: int = setting(at_least(1), default=20)
    max_negative_share: float = setting(PROBABILITY, default=0.1)
    max_area_fold: float = setting(at_least(1), default=5.0)
    n_neighbors: int = setting(between(3, 200), default=20)
    n_niches: int = setting(between(0, 50), default=0)
    max_niches: int = setting(between(3, 50), default=12)
    enrichment_perm: int = setting(between(10, 10_000), default=200)
    min_confidence: float = setting(PROBABILITY, default=0.5)

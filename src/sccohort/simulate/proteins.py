"""The simulated antibody panel (TotalSeq-style names) and its per-subset surface levels.

An antibody's level in a subset follows the mean expression of its target gene(s) in
that subset's profile (relative to the subset that expresses them most), times the
antibody's brightness. So a surface marker separates subsets exactly as far as its gene
does. The three PTPRC isoforms (CD45, CD45RA, CD45RO) cannot be told apart on RNA and
get fixed per-subset levels instead. Isotype controls have no target and measure only
the ambient background.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from sccohort.simulate.biology import SUBSETS, Biology

# (name, target genes, brightness = counts on the most positive subset; None = dim default)
_PANEL: tuple[tuple[str, tuple[str, ...], float | None], ...] = (
    ("CD3", ("CD3E", "CD3D", "CD3G"), 500),
    ("CD4", ("CD4",), 300),
    ("CD8", ("CD8A",), 500),
    ("CD8b", ("CD8B",), 150),
    ("CD14", ("CD14",), 700),
    ("CD16", ("FCGR3A",), 500),
    ("CD19", ("CD19",), 250),
    ("CD20", ("MS4A1",), 300),
    ("CD56", ("NCAM1",), 300),
    ("CD45", ("PTPRC",), 400),
    ("CD45RA", ("PTPRC",), 600),
    ("CD45RO", ("PTPRC",), 200),
    ("CD197", ("CCR7",), 80),
    ("CD27", ("CD27",), 150),
    ("CD127", ("IL7R",), 120),
    ("CD25", ("IL2RA",), 80),
    ("HLA-DR", ("HLA-DRA", "HLA-DRB1"), 500),
    ("CD11c", ("ITGAX",), 300),
    ("CD123", ("IL3RA",), 150),
    ("IgD", ("IGHD",), 300),
    ("IgM", ("IGHM",), 200),
    ("CD161", ("KLRB1",), 150),
    ("TCR Vd2", ("TRDV2",), 300),
    ("TCR Va7.2", ("TRAV1-2",), 200),
    ("TCR a/b", ("TRAC",), 200),
    ("TCR g/d", ("TRDC",), 250),
    ("CD34", ("CD34",), 80),
    ("CD1c", ("CD1C",), 150),
    ("CD141", ("THBD",), 80),
    ("CD38", ("CD38",), 200),
    ("CD24", ("CD24",), 150),
    ("CD57", ("B3GAT1",), 120),
    ("CD62L", ("SELL",), 150),
    ("CD95", ("FAS",), None),
    ("CD279", ("PDCD1",), None),
    ("CD183", ("CXCR3",), 100),
    ("CD191", ("CCR1",), 100),
    ("CD194", ("CCR4",), 80),
    ("CD196", ("CCR6",), 80),
    ("CD2", ("CD2",), 200),
    ("CD5", ("CD5",), 150),
    ("CD7", ("CD7",), 200),
    ("CD11b", ("ITGAM",), 200),
    ("CD33", ("CD33",), 120),
    ("CD64", ("FCGR1A",), 120),
    ("CD86", ("CD86",), 100),
    ("CD169", ("SIGLEC1",), 60),
    ("CD1d", ("CD1D",), None),
    ("CD303", ("CLEC4C",), 100),
    ("CD304", ("NRP1",), 60),
    ("FceRIa", ("FCER1A",), 100),
    ("CD32", ("FCGR2A",), 100),
    ("CD36", ("CD36",), 150),
    ("CD163", ("CD163",), 80),
    ("CD11a", ("ITGAL",), 150),
    ("CD18", ("ITGB2",), 150),
    ("CD29", ("ITGB1",), 80),
    ("CD44", ("CD44",), 200),
    ("CD49d", ("ITGA4",), 80),
    ("CD69", ("CD69",), 40),
    ("CD71", ("TFRC",), None),
    ("CD73", ("NT5E",), None),
    ("CD80", ("CD80",), None),
    ("CD81", ("CD81",), 80),
    ("CD88", ("C5AR1",), 100),
    ("CD94", ("KLRD1",), 150),
    ("CD96", ("CD96",), 60),
    ("CD99", ("CD99",), 60),
    ("CD101", ("CD101",), None),
    ("CD103", ("ITGAE",), None),
    ("CD107a", ("LAMP1",), None),
    ("CD112", ("NECTIN2",), None),
    ("CD122", ("IL2RB",), 80),
    ("CD134", ("TNFRSF4",), None),
    ("CD137", ("TNFRSF9",), None),
    ("CD152", ("CTLA4",), 40),
    ("CD154", ("CD40LG",), 40),
    ("CD155", ("PVR",), None),
    ("KIR2DL1", ("KIR2DL1",), 60),
    ("KIR2DL3", ("KIR2DL3",), 60),
    ("KIR3DL1", ("KIR3DL1",), 60),
    ("CD185", ("CXCR5",), None),
    ("CD186", ("CXCR6",), 40),
    ("CD192", ("CCR2",), 100),
    ("CD195", ("CCR5",), 60),
    ("CD226", ("CD226",), 60),
    ("CD244", ("CD244",), 80),
    ("CD223", ("LAG3",), None),
    ("CD272", ("BTLA",), None),
    ("CD274", ("CD274",), None),
    ("CD278", ("ICOS",), None),
    ("CD335", ("NCR1",), 80),
    ("CD337", ("NCR3",), 60),
    ("CD314", ("KLRK1",), 80),
    ("CD319", ("SLAMF7",), 80),
    ("CD328", ("SIGLEC7",), 60),
    ("CD39", ("ENTPD1",), None),
    ("CD40", ("CD40",), 80),
    ("CD41", ("ITGA2B",), 200),
    ("CD42b", ("GP1BA",), 100),
    ("CD61", ("ITGB3",), 150),
    ("CD62P", ("SELP",), 80),
    ("CD235a", ("GYPA",), 150),
    ("CD48", ("CD48",), 100),
    ("CD47", ("CD47",), 60),
    ("CD52", ("CD52",), 150),
    ("CD58", ("CD58",), 60),
    ("CD59", ("CD59",), 40),
    ("CD63", ("CD63",), 40),
    ("CD83", ("CD83",), None),
    ("CD85j", ("LILRB1",), 80),
    ("CD93", ("CD93",), 80),
    ("CD21", ("CR2",), 100),
    ("CD22", ("CD22",), 100),
    ("CD23", ("FCER2",), 100),
    ("CD26", ("DPP4",), 80),
    ("CD28", ("CD28",), 80),
    ("CD31", ("PECAM1",), 80),
    ("CD43", ("SPN",), 80),
    ("CD200", ("CD200",), 60),
    ("CD268", ("TNFRSF13C",), 60),
    ("CD357", ("TNFRSF18",), 40),
    ("KLRG1", ("KLRG1",), 80),
    ("CX3CR1", ("CX3CR1",), 100),
    ("TIGIT", ("TIGIT",), 60),
    ("HLA-A-B-C", ("HLA-A", "HLA-B", "HLA-C"), 300),
    ("CD13", ("ANPEP",), 80),
    ("CD300e", ("CD300E",), 60),
    ("CD370", ("CLEC9A",), 60),
    ("CD366", ("HAVCR2",), None),
    ("CD35", ("CR1",), None),
    ("CD49b", ("ITGA2",), None),
    ("Ig kappa", ("IGKC",), 150),
    ("Ig lambda", ("IGLC2",), 120),
    ("Mouse IgG1 isotype", (), None),
    ("Mouse IgG2a isotype", (), None),
    ("Mouse IgG2b isotype", (), None),
    ("Rat IgG2b isotype", (), None),
    ("Rat IgG1 isotype", (), None),
)

_PTPRC_ISOFORM = {
    # subset -> (CD45RA, CD45RO) relative levels; subsets absent use their l1 default below
    "CD4_Naive": (1.0, 0.08),
    "CD8_Naive": (1.0, 0.08),
    "CD8_CTL": (0.9, 0.3),
    "CD4_CTL": (0.6, 0.6),
    "Treg": (0.15, 1.0),
    "CD4_TCM": (0.1, 1.0),
    "CD4_TEM": (0.1, 1.0),
    "CD4_ISG": (0.2, 0.8),
    "CD8_TCM": (0.15, 1.0),
    "CD8_TEM": (0.3, 0.9),
    "CD8_TEM_T2ISG": (0.2, 1.0),
    "MAIT": (0.1, 1.0),
    "gdT": (0.5, 0.4),
    "dnT": (0.6, 0.3),
    "Plasmablast": (0.1, 0.3),
    "pDC": (0.8, 0.2),
    "ILC": (0.5, 0.4),
    "HSPC": (0.5, 0.2),
    "Proliferating": (0.3, 0.7),
    "Platelet": (0.0, 0.0),
    "Eryth": (0.0, 0.0),
}
_PTPRC_L1 = {"Mono": (0.15, 0.5), "DC": (0.2, 0.5), "B": (0.9, 0.1), "NK": (0.8, 0.1)}
#: Protein size of each subset relative to a lymphocyte (platelets and red cells are small).
_SIZE = {"Mono": 1.3, "DC": 1.2, "Platelet": 0.15, "Eryth": 0.25}
_DIM_SEED = 7
#: Global scale of specific antibody counts (sets the protein library size).
_BRIGHTNESS = 0.5


@cache
def protein_panel() -> pd.DataFrame:
    """The antibody panel.

    Returns
    -------
    DataFrame, one row per antibody (>= 100 rows), columns ``name`` (TotalSeq-style, e.g.
    ``CD3``, ``HLA-DR``, ``Mouse IgG1 isotype``), ``id`` (TotalSeq-C-like catalogue id,
    e.g. ``C0001``), ``target_genes`` (``;``-joined gene symbols, empty for isotypes) and
    ``isotype`` (bool).
    """
    rows = [
        (name, f"C{i + 1:04d}", ";".join(targets), not targets)
        for i, (name, targets, _) in enumerate(_PANEL)
    ]
    return pd.DataFrame(rows, columns=["name", "id", "target_genes", "isotype"])


def protein_targets() -> frozenset[str]:
    """Every gene symbol targeted by an antibody of the panel."""
    return frozenset(g for _, targets, _ in _PANEL for g in targets)


def protein_levels(bio: Biology, profiles: np.ndarray | None = None) -> np.ndarray:
    """Expected specific (non-ambient) antibody counts per subset.

    Parameters
    ----------
    bio
        The biology (subset order and gene index).
    profiles
        Optional (n_subsets, n_genes) profiles to follow instead of ``bio.profiles``, e.g.
        with a donor's program changes, so that surface levels follow them.

    Returns
    -------
    Array (n_subsets, n_antibodies), float64, counts of a typical-size cell of each subset.
    """
    prof = bio.profiles if profiles is None else profiles
    ref = bio.profiles
    dim_rng = np.random.default_rng(_DIM_SEED)
    levels = np.zeros((len(SUBSETS), len(_PANEL)))
    size = np.array([_SIZE.get(s.name, _SIZE.get(s.l1, 1.0)) for s in SUBSETS])
    for j, (name, targets, amp) in enumerate(_PANEL):
        if not targets:
            continue
        bright = float(amp) if amp is not None else float(dim_rng.uniform(5.0, 30.0))
        if name in ("CD45RA", "CD45RO"):
            k = 0 if name == "CD45RA" else 1
            rel = np.array(
                [_PTPRC_ISOFORM.get(s.name, _PTPRC_L1.get(s.l1, (0.5, 0.5)))[k] for s in SUBSETS]
            )
        else:
            cols = bio.idx(targets)
            expr = prof[:, cols].mean(axis=1)
            rel = (expr / ref[:, cols].mean(axis=1).max()) ** 0.8
        levels[:, j] = _BRIGHTNESS * bright * rel * size
    return levels


def ambient_levels() -> np.ndarray:
    """Ambient (free antibody) counts per droplet for each antibody, shape (n_antibodies,).

    Isotype controls get a few counts; other antibodies a little more the brighter they are.
    """
    rng = np.random.default_rng(_DIM_SEED + 1)
    amp = np.array([a if a is not None else 15.0 for _, _, a in _PANEL])
    ambient = 2.0 + 0.02 * amp * rng.uniform(0.5, 1.5, len(_PANEL))
    iso = np.array([not t for _, t, _ in _PANEL])
    ambient[iso] = rng.uniform(3.0, 6.0, iso.sum())
    return ambient

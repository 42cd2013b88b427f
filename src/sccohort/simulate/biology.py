"""PBMC biology of the simulator: the subset hierarchy, marker programs and gene profiles.

Every subset has an expression profile over the real human gene table: a shared
housekeeping background, a lineage (Azimuth l1) program of hundreds of genes, an l2
program of a few tens and a subset program of a few tens (named markers first). The
biology is fixed (its random parts use a constant seed), so marker genes are the same
for every simulated cohort; only the sampling depends on the user's seed.

Long: most of the module is data (the 60 subsets with their markers and programs, the
antibody panel's targets), kept beside the few functions that read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

#: Seed of the fixed, seed-independent parts of the biology (random program genes).
BIOLOGY_SEED = 20250601

#: Azimuth l1 vocabulary.
L1_LEVELS = ("Mono", "DC", "B", "CD4 T", "CD8 T", "other T", "NK", "other")


@dataclass(frozen=True)
class Subset:
    """One simulated cell subset.

    ``markers`` maps gene symbol -> expression level in counts per 10,000 UMIs (cp10k),
    most important first; ``library`` is the median UMIs per cell; ``contaminant`` is
    ``"platelet"``, ``"red_cell"`` or ``""``.
    """

    name: str
    l2: str
    l1: str
    share: float
    library: float
    markers: dict[str, float] = field(default_factory=dict)
    contaminant: str = ""


# Housekeeping levels (cp10k) shared by every cell; programs override them.
HOUSEKEEPING: dict[str, float] = {
    "MALAT1": 300,
    "B2M": 250,
    "TMSB4X": 250,
    "EEF1A1": 150,
    "TPT1": 100,
    "ACTB": 120,
    "FTL": 50,
    "FTH1": 80,
    "MYL6": 50,
    "TMSB10": 80,
    "HLA-A": 40,
    "HLA-B": 60,
    "HLA-C": 40,
    "HLA-E": 20,
    "GAPDH": 30,
    "PFN1": 30,
    "CFL1": 30,
    "PTPRC": 15,
    "CD52": 20,
    "CD99": 8,
    "ITGB2": 8,
    "CD44": 8,
    "CD47": 3,
    "CD48": 5,
    "CD55": 2,
    "CD46": 2,
    "CD81": 2,
    "CD63": 3,
    "LAMP1": 3,
    "CXCR4": 8,
    "CD37": 3,
    "NEAT1": 20,
    "ISG15": 2,
    "IFITM1": 3,
    "IFITM2": 3,
    "IFITM3": 3,
    "EGR1": 1,
    "FOS": 6,
    "JUN": 4,
    "DUSP1": 6,
    "KLF6": 4,
    "NFKBIA": 4,
    "IER2": 3,
    "HLA-DRA": 0.3,
    "CD74": 4,
    "CD59": 1,
    "ITGB1": 1,
    "CD58": 1,
    "ITGA4": 2,
    "SPN": 2,
    "BST2": 3,
    "CD82": 1,
    "CD320": 0.3,
    "PECAM1": 1,
    "ITGAL": 2,
    "CD53": 6,
}

_RIBOSOME = re.compile(r"^RP[LS]\d+[AX]?$|^RPLP[012]$|^RPSA$|^RPS4Y1$")
_MT_PROFILE = {
    "MT-CO1": 0.20,
    "MT-CO3": 0.15,
    "MT-ATP6": 0.15,
    "MT-CO2": 0.12,
    "MT-ND4": 0.10,
    "MT-CYB": 0.08,
    "MT-ND1": 0.05,
    "MT-ND2": 0.05,
    "MT-ND3": 0.04,
    "MT-ND5": 0.02,
    "MT-ATP8": 0.02,
    "MT-ND4L": 0.01,
    "MT-ND6": 0.01,
}

#: The EGR1 / NF-kB program of CD14_EGR1 monocytes (the study's markers, in order).
EGR1_PROGRAM = ("EGR1", "NFKBIA", "IER2", "SGK1", "CCR1", "IL1B")
#: The type II interferon program of CD8_TEM_T2ISG cells (the study's markers, in order).
T2ISG_PROGRAM = ("CCL5", "GBP5", "CXCR3", "COTL1", "HLA-DRB1", "CD74")

_MYELOID = {
    "LYZ": 300,
    "CST3": 60,
    "TYROBP": 50,
    "FCER1G": 40,
    "AIF1": 35,
    "LST1": 25,
    "CTSS": 30,
    "PSAP": 30,
    "FTL": 300,
    "SPI1": 8,
    "CD68": 12,
    "NEAT1": 60,
    "HLA-DRA": 30,
    "HLA-DRB1": 20,
    "CD74": 80,
    "HLA-DPA1": 12,
    "HLA-DPB1": 15,
    "ITGB2": 20,
    "CD44": 15,
}
_T_SHARED = {
    "CD3E": 20,
    "CD3D": 25,
    "CD3G": 10,
    "TRAC": 30,
    "TRBC1": 20,
    "TRBC2": 30,
    "CD2": 10,
    "CD5": 5,
    "CD7": 12,
    "CD247": 6,
    "IL32": 20,
    "LCK": 8,
    "CD6": 4,
    "CD28": 4,
    "LAT": 5,
    "CD27": 6,
    "CD96": 3,
    "ITK": 3,
    "BCL11B": 5,
    "ITGAL": 5,
    "PTPRC": 25,
    "CD52": 50,
    "LTB": 20,
    "CD69": 4,
}
_NAIVE = {"CCR7": 15, "LEF1": 10, "TCF7": 10, "SELL": 15, "NOSIP": 8, "LDHB": 20, "CD27": 10}
_CYTOTOXIC = {
    "NKG7": 60,
    "GNLY": 60,
    "GZMB": 30,
    "GZMH": 40,
    "PRF1": 15,
    "GZMA": 30,
    "FGFBP2": 15,
    "KLRD1": 10,
    "CST7": 10,
    "CCL5": 80,
    "CX3CR1": 5,
    "B3GAT1": 2,
    "KLRG1": 6,
    "ZEB2": 5,
    "TBX21": 3,
    "CCR7": 0.05,
    "SELL": 0.2,
    "LEF1": 0.3,
}

L1_PROGRAMS: dict[str, dict[str, float]] = {
    "Mono": {
        **_MYELOID,
        "LYZ": 400,
        "S100A8": 150,
        "S100A9": 250,
        "CD14": 15,
        "FCN1": 40,
        "VCAN": 15,
        "MNDA": 20,
        "CSF1R": 5,
        "ITGAM": 3,
        "CD33": 3,
        "CD36": 8,
        "CD4": 3,
        "FCGR1A": 2,
        "CD86": 3,
        "CD163": 3,
        "CCR2": 3,
        "CEBPD": 10,
        "ITGAX": 5,
        "FCGR2A": 8,
        "C5AR1": 5,
        "LILRB1": 2,
        "CD93": 3,
        "LGALS2": 10,
        "MS4A6A": 10,
        "SERPINA1": 20,
        "EGR1": 4,
        "NFKBIA": 10,
        "IER2": 6,
        "SGK1": 0.8,
        "CCR1": 1.5,
        "IL1B": 3,
        "CD300A": 2,
        "ANPEP": 3,
        "CLEC12A": 3,
        "LILRB2": 3,
        "CSF2RA": 2,
        "IL6R": 1,
    },
    "DC": {
        **_MYELOID,
        "LYZ": 40,
        "FTL": 120,
        "HLA-DRA": 100,
        "HLA-DRB1": 60,
        "CD74": 250,
        "HLA-DPA1": 60,
        "HLA-DPB1": 60,
        "HLA-DQA1": 10,
        "CD86": 2,
        "CD83": 2,
    },
    "B": {
        "MS4A1": 20,
        "CD79A": 40,
        "CD79B": 20,
        "CD19": 6,
        "CD22": 5,
        "BANK1": 8,
        "CD74": 150,
        "HLA-DRA": 80,
        "HLA-DRB1": 50,
        "HLA-DQA1": 15,
        "HLA-DPA1": 20,
        "HLA-DPB1": 25,
        "IGHM": 60,
        "IGKC": 100,
        "IGLC2": 40,
        "CD37": 20,
        "CR2": 3,
        "CD24": 4,
        "CD40": 3,
        "TNFRSF13C": 3,
        "CD72": 3,
        "BLK": 3,
        "PAX5": 4,
        "CD52": 30,
        "PTPRC": 20,
        "FCRL1": 2,
        "CD200": 2,
        "LY9": 2,
        "CD81": 6,
        "CD38": 1,
    },
    "CD4 T": {**_T_SHARED, "CD4": 5, "CD40LG": 4, "IL7R": 15, "LTB": 40, "MAL": 5, "TCF7": 6},
    "CD8 T": {**_T_SHARED, "CD8A": 20, "CD8B": 20},
    "other T": {**_T_SHARED, "KLRB1": 10},
    "NK": {
        "NKG7": 80,
        "GNLY": 100,
        "KLRD1": 20,
        "KLRF1": 10,
        "PRF1": 20,
        "GZMA": 20,
        "TYROBP": 40,
        "FCER1G": 20,
        "CD247": 8,
        "CTSW": 20,
        "KLRB1": 10,
        "NCR1": 4,
        "KIR2DL1": 2,
        "KIR2DL3": 2,
        "KIR3DL1": 2,
        "KLRC1": 5,
        "CD7": 15,
        "TXK": 3,
        "SH2D1B": 4,
        "IL2RB": 8,
        "CD2": 4,
        "CD96": 4,
        "NCAM1": 3,
        "CD244": 4,
        "SLAMF7": 4,
        "KLRK1": 5,
        "CD226": 2,
        "CD38": 5,
        "SIGLEC7": 3,
        "CD160": 2,
        "CD52": 30,
        "PTPRC": 20,
        "B3GAT1": 1,
        "CD58": 3,
    },
    "other": {},
}

L2_PROGRAMS: dict[str, dict[str, float]] = {
    "CD14 Mono": {"CD14": 25, "FCGR3A": 0.5, "S100A12": 30},
    "CD16 Mono": {
        "FCGR3A": 40,
        "CDKN1C": 15,
        "LYPD2": 5,
        "MS4A7": 20,
        "CX3CR1": 3,
        "CD14": 2,
        "S100A8": 20,
        "S100A9": 40,
        "LYZ": 150,
        "ITGAL": 5,
        "SIGLEC1": 0.5,
    },
    "CD4 Naive": dict(_NAIVE),
    "CD8 Naive": {**_NAIVE, "NELL2": 6, "CD8B": 30},
    "CD4 TCM": {"IL7R": 20, "LTB": 50, "AQP3": 10, "GPR183": 5, "CCR7": 5, "SELL": 6},
    "CD8 TCM": {"IL7R": 12, "LTB": 30, "GPR183": 4, "CCR7": 4, "SELL": 6, "GZMK": 4},
    "CD4 TEM": {"GZMK": 10, "CCL5": 20, "KLRB1": 10, "CCR6": 3, "CXCR3": 1.5, "IL7R": 12},
    "CD8 TEM": {
        "GZMK": 20,
        "EOMES": 3,
        "CCL5": 40,
        "NKG7": 15,
        "CST7": 8,
        "KLRG1": 5,
        "DUSP2": 10,
        "CCR5": 3,
        "CXCR3": 1,
        "CXCR6": 2,
        "CCR7": 0.2,
        "SELL": 0.5,
    },
    "CD4 CTL": {**_CYTOTOXIC, "GZMH": 20, "GNLY": 30, "NKG7": 30, "CCL5": 30},
    "B naive": {"TCL1A": 20, "IGHD": 15, "FCER2": 8, "IL4R": 6, "YBX3": 3, "IGHM": 80},
    "B intermediate": {"TNFRSF13B": 6, "IGHM": 60, "MS4A1": 30, "CD27": 2},
    "B memory": {"CD27": 8, "TNFRSF13B": 8, "IGHA1": 30, "IGHG1": 20, "AIM2": 4, "CD24": 6},
    "Plasmablast": {
        "JCHAIN": 200,
        "MZB1": 60,
        "IGHA1": 300,
        "IGHG1": 300,
        "IGKC": 1500,
        "TXNDC5": 20,
        "XBP1": 40,
        "PRDM1": 5,
        "SDC1": 5,
        "CD38": 30,
        "TNFRSF17": 10,
        "CD27": 20,
        "MS4A1": 1,
        "CD19": 2,
        "CD74": 60,
    },
    "NK": {
        "GZMB": 40,
        "PRF1": 30,
        "FCGR3A": 30,
        "FGFBP2": 20,
        "SPON2": 15,
        "B3GAT1": 3,
        "CX3CR1": 4,
        "GZMH": 10,
    },
    "NK_CD56bright": {
        "NCAM1": 15,
        "SELL": 15,
        "XCL1": 20,
        "XCL2": 10,
        "GZMK": 20,
        "KLRC1": 15,
        "IL7R": 3,
        "CD44": 15,
        "FCGR3A": 1,
        "GNLY": 60,
    },
}

_S = Subset
SUBSETS: tuple[Subset, ...] = (
    _S("CD14_VCAN", "CD14 Mono", "Mono", 0.070, 6000, {"VCAN": 40, "CD14": 30, "LYZ": 500}),
    _S("CD14_PLBD1", "CD14 Mono", "Mono", 0.050, 6000, {"S100A8": 300, "PLBD1": 8, "S100A12": 60}),
    _S(
        "CD14_ISG",
        "CD14 Mono",
        "Mono",
        0.020,
        6500,
        {
            "MX1": 10,
            "HERC5": 6,
            "ISG15": 40,
            "IFI44L": 10,
            "IFIT3": 15,
            "IFI6": 30,
            "RSAD2": 5,
            "IFIT1": 8,
            "SIGLEC1": 3,
        },
    ),
    _S(
        "CD14_HLA",
        "CD14 Mono",
        "Mono",
        0.035,
        6000,
        {
            "HLA-DRB1": 80,
            "HLA-DMA": 15,
            "HLA-DRA": 100,
            "CD74": 200,
            "HLA-DPA1": 40,
            "HLA-DPB1": 50,
            "HLA-DMB": 8,
        },
    ),
    _S(
        "CD14_EGR1",
        "CD14 Mono",
        "Mono",
        0.020,
        6000,
        {
            "EGR1": 40,
            "NFKBIA": 45,
            "IER2": 30,
            "SGK1": 6,
            "CCR1": 10,
            "IL1B": 20,
            "FOS": 40,
            "JUN": 20,
            "DUSP1": 30,
            "KLF6": 15,
            "TNFAIP3": 8,
            "PPP1R15A": 8,
        },
    ),
    _S(
        "Mono_intermediate",
        "CD16 Mono",
        "Mono",
        0.015,
        6000,
        {"APOBEC3A": 10, "PLAC8": 15, "CD14": 12, "FCGR3A": 15, "HLA-DRA": 60},
    ),
    _S("CD16_Mono", "CD16 Mono", "Mono", 0.025, 5500, {"CDKN1C": 20, "FCGR3A": 50, "LYPD2": 8}),
    _S(
        "CD16_ISG",
        "CD16 Mono",
        "Mono",
        0.006,
        5500,
        {"IFITM1": 40, "IFITM2": 60, "IFITM3": 60, "ISG15": 30, "IFI44L": 5},
    ),
    _S(
        "cDC1",
        "cDC1",
        "DC",
        0.001,
        5000,
        {"CLEC9A": 10, "IRF8": 15, "XCR1": 3, "THBD": 3, "IDO1": 5, "C1orf54": 5, "CADM1": 3},
    ),
    _S(
        "cDC2",
        "cDC2",
        "DC",
        0.010,
        5000,
        {"CD1C": 15, "FCER1A": 20, "CLEC10A": 15, "ITGAX": 8, "LYZ": 150, "CD33": 3, "CD86": 3},
    ),
    _S(
        "pDC",
        "pDC",
        "DC",
        0.005,
        4500,
        {
            "LILRA4": 20,
            "IRF7": 20,
            "TCF4": 20,
            "IL3RA": 8,
            "CLEC4C": 6,
            "PLD4": 20,
            "GZMB": 20,
            "ITM2C": 20,
            "SERPINF1": 10,
            "NRP1": 3,
            "JCHAIN": 15,
            "LYZ": 2,
        },
    ),
    _S(
        "ASDC",
        "ASDC",
        "DC",
        0.0005,
        5000,
        {"AXL": 5, "SIGLEC6": 5, "PPP1R14A": 8, "LILRA4": 6, "CD22": 3, "DAB2": 3, "IL3RA": 4},
    ),
    _S("CD8_Naive", "CD8 Naive", "CD8 T", 0.040, 3300, {"CCR7": 18, "LEF1": 12, "TCF7": 10}),
    _S("CD8_TCM", "CD8 TCM", "CD8 T", 0.020, 3300, {"IL7R": 15, "LTB": 35}),
    _S("CD8_TEM", "CD8 TEM", "CD8 T", 0.025, 3400, {"GZMK": 25, "EOMES": 4}),
    _S(
        "CD8_TEM_T2ISG",
        "CD8 TEM",
        "CD8 T",
        0.015,
        3500,
        {
            "CCL5": 120,
            "GBP5": 15,
            "CXCR3": 12,
            "COTL1": 25,
            "HLA-DRB1": 25,
            "CD74": 80,
            "HLA-DRA": 30,
            "GBP1": 10,
            "GBP4": 8,
            "STAT1": 12,
            "IFNG": 3,
            "CD38": 4,
        },
    ),
    _S("CD8_CTL", "CD8 TEM", "CD8 T", 0.020, 3500, dict(_CYTOTOXIC)),
    _S("CD4_Naive", "CD4 Naive", "CD4 T", 0.120, 3100, {"CCR7": 15, "SELL": 15}),
    _S("CD4_TCM", "CD4 TCM", "CD4 T", 0.090, 3200, {"IL7R": 22, "AQP3": 12, "CCR4": 2}),
    _S("CD4_TEM", "CD4 TEM", "CD4 T", 0.030, 3300, {"GZMK": 12, "CCL5": 25, "KLRB1": 12}),
    _S("CD4_CTL", "CD4 CTL", "CD4 T", 0.015, 3400, {"GZMH": 25, "GNLY": 35}),
    _S(
        "CD4_ISG",
        "CD4 TCM",
        "CD4 T",
        0.010,
        3300,
        {"ISG15": 30, "MX1": 8, "IFI6": 20, "IFI44L": 6, "IFIT3": 8},
    ),
    _S(
        "Treg",
        "Treg",
        "CD4 T",
        0.020,
        3200,
        {
            "FOXP3": 8,
            "CTLA4": 8,
            "IL2RA": 10,
            "RTKN2": 4,
            "IKZF2": 4,
            "TIGIT": 5,
            "BATF": 5,
            "CCR4": 3,
            "TNFRSF18": 3,
            "IL7R": 3,
        },
    ),
    _S(
        "MAIT",
        "MAIT",
        "other T",
        0.020,
        3300,
        {
            "SLC4A10": 6,
            "TRAV1-2": 15,
            "KLRB1": 40,
            "NCR3": 8,
            "IL7R": 20,
            "ZBTB16": 4,
            "CCR6": 4,
            "RORC": 3,
            "DPP4": 8,
            "CXCR6": 5,
            "GZMK": 15,
            "CD8A": 8,
            "IL18R1": 3,
        },
    ),
    _S(
        "gdT",
        "gdT",
        "other T",
        0.020,
        3300,
        {
            "TRDC": 30,
            "TRGC1": 15,
            "TRGC2": 10,
            "TRDV2": 15,
            "TRGV9": 10,
            "KLRD1": 10,
            "NKG7": 20,
            "GZMK": 8,
            "CCL5": 30,
            "TRAC": 1,
            "TRBC1": 1,
            "TRBC2": 1,
        },
    ),
    _S("dnT", "dnT", "other T", 0.006, 3200, {"PTPN3": 3, "GPR183": 4, "LEF1": 3}),
    _S("B_naive", "B naive", "B", 0.060, 3500, {"TCL1A": 25, "IGHD": 18}),
    _S("B_intermediate", "B intermediate", "B", 0.015, 3500, {"TNFRSF13B": 8, "FCRL5": 1}),
    _S("B_memory", "B memory", "B", 0.020, 3600, {"CD27": 10, "IGHA1": 40, "IGHG1": 30}),
    _S(
        "B_ABC",
        "B memory",
        "B",
        0.006,
        3600,
        {"ITGAX": 8, "TBX21": 5, "FCRL5": 5, "ZEB2": 4, "FGR": 4, "CD19": 8, "CR2": 0.1},
    ),
    _S("Plasmablast", "Plasmablast", "B", 0.003, 8000, {}),
    _S("NK_bright", "NK_CD56bright", "NK", 0.007, 3500, {}),
    _S("NK_dim", "NK", "NK", 0.090, 3500, {}),
    _S(
        "ILC",
        "ILC",
        "other",
        0.003,
        3000,
        {
            "KIT": 5,
            "IL7R": 20,
            "KLRB1": 30,
            "IL1R1": 4,
            "SOX4": 5,
            "TNFRSF18": 2,
            "CD7": 10,
            "TRDC": 3,
            "PTPRC": 20,
            "CD52": 20,
        },
    ),
    _S(
        "Proliferating",
        "Proliferating",
        "other",
        0.005,
        6000,
        {
            "MKI67": 10,
            "TOP2A": 15,
            "STMN1": 30,
            "TUBA1B": 40,
            "TYMS": 10,
            "PCLAF": 10,
            "CD3E": 5,
            "NKG7": 10,
        },
    ),
    _S(
        "HSPC",
        "HSPC",
        "other",
        0.0015,
        5000,
        {
            "CD34": 10,
            "PRSS57": 8,
            "SOX4": 15,
            "SPINK2": 10,
            "CRHBP": 5,
            "MYB": 4,
            "CYTL1": 5,
            "EGFL7": 3,
            "SMIM24": 6,
            "KIT": 3,
        },
    ),
    _S(
        "Platelet",
        "Platelet",
        "other",
        0.008,
        400,
        {
            "PPBP": 1000,
            "PF4": 500,
            "GNG11": 80,
            "SPARC": 50,
            "TUBB1": 60,
            "NRGN": 80,
            "CAVIN2": 40,
            "GP9": 30,
            "ITGA2B": 20,
            "CLU": 30,
            "TREML1": 10,
            "GP1BA": 5,
            "ITGB3": 5,
            "SELP": 5,
        },
        "platelet",
    ),
    _S(
        "Eryth",
        "Eryth",
        "other",
        0.003,
        700,
        {
            "HBB": 5000,
            "HBA2": 2000,
            "HBA1": 1500,
            "ALAS2": 50,
            "CA1": 30,
            "SLC4A1": 20,
            "GYPA": 10,
            "HBD": 30,
            "AHSP": 20,
        },
        "red_cell",
    ),
)
del _S

#: Fraction of a contaminant's UMIs that come from its signature genes.
_CONTAMINANT_WEIGHT = {"platelet": 0.6, "red_cell": 0.85}
#: Scale of ribosomal genes per l1 (monocytes carry fewer ribosomal reads than lymphocytes).
_RIBOSOME_SCALE = {"Mono": 0.5, "DC": 0.6, "other": 0.9}
#: Number of random program genes per level: (up, down) per l1, up per l2, up per subset.
_N_L1_UP, _N_L1_DOWN, _N_L2_UP, _N_SUBSET_UP = 200, 60, 30, 15
#: Number of genes sampled densely (with per-cell gamma noise) rather than by index.
N_HIGH_GENES = 1024


@cache
def load_genes() -> pd.DataFrame:
    """The shipped human gene table, one row per unique Ensembl id.

    Returns
    -------
    DataFrame with columns ``symbol``, ``gene_id``, ``kind`` (n_genes rows, ~19.4k);
    of rows sharing an Ensembl id (read-through loci) only the plain gene is kept, so that
    feature ids are unique, as in Cell Ranger's references.
    """
    path = resources.files("sccohort") / "resources" / "genes_human.tsv.gz"
    with resources.as_file(path) as p:
        genes = pd.read_csv(p, sep="\t", dtype=str)
    # the core genes only (CORE_KINDS of scripts/make_gene_table.py); the others map ids
    core = genes["kind"].isin(["protein_coding", "MT", "TR_IG", "lncRNA"])
    genes = genes.loc[core, ["symbol", "gene_id", "kind"]].reset_index(drop=True)
    # Among rows sharing an id keep the plain gene (TRGC1 over TARP, KLRK1 over KLRC4-KLRK1).
    readthrough = genes["symbol"].str.contains("-") & ~genes["kind"].isin(["MT", "TR_IG"])
    rank = np.where(genes["kind"] == "TR_IG", 0, np.where(readthrough, 2, 1))
    rank = np.where(genes["symbol"].str.startswith("LOC"), 3, rank)
    keep = (
        genes.assign(_rank=rank, _pos=np.arange(len(genes)))
        .sort_values(["_rank", "_pos"], kind="stable")
        .drop_duplicates("gene_id", keep="first")["_pos"]
    )
    return genes.iloc[np.sort(keep.to_numpy())].reset_index(drop=True)


def subset_table() -> pd.DataFrame:
    """The subset hierarchy with markers, one row per subset.

    Returns
    -------
    DataFrame with columns ``subset``, ``l2``, ``l1``, ``markers`` (list of the most
    distinctive named genes, most important first), ``base_share`` (expected share of all
    cells before donor variation) and ``contaminant``.
    """
    rows = []
    for s in SUBSETS:
        named = list(s.markers) or list(L2_PROGRAMS.get(s.l2, {}))
        named = [g for g in named if s.markers.get(g, L2_PROGRAMS.get(s.l2, {}).get(g, 1)) >= 1]
        rows.append((s.name, s.l2, s.l1, named[:8], s.share, s.contaminant))
    return pd.DataFrame(
        rows, columns=["subset", "l2", "l1", "markers", "base_share", "contaminant"]
    )


@dataclass(frozen=True)
class Biology:
    """Expression profiles of every subset over the gene table.

    Attributes
    ----------
    genes
        Gene table (n_genes rows).
    profiles
        Array (n_subsets, n_genes), float64: per-subset probability of a non-mitochondrial
        UMI falling on each gene (rows sum to 1; mitochondrial columns are 0).
    mt_index, mt_profile
        Column indices of the 13 MT- genes and the probability of each within MT UMIs.
    high_index, low_index
        Genes sampled densely with per-cell noise (the most expressed) and the rest.
    program_genes
        Per subset, the set of gene indices whose level differs from its l1 background.
    """

    genes: pd.DataFrame
    profiles: np.ndarray
    mt_index: np.ndarray
    mt_profile: np.ndarray
    high_index: np.ndarray
    low_index: np.ndarray
    dispersion: np.ndarray
    symbol_index: dict[str, int]

    @property
    def subsets(self) -> tuple[Subset, ...]:
        """The simulated subsets, in the row order of ``profiles``."""
        return SUBSETS

    def idx(self, symbols: list[str] | tuple[str, ...]) -> np.ndarray:
        """Column indices of gene symbols (shape ``(len(symbols),)``)."""
        return np.array([self.symbol_index[g] for g in symbols], dtype=np.int64)


def _named_genes() -> set[str]:
    named = set(HOUSEKEEPING)
    for prog in (*L1_PROGRAMS.values(), *L2_PROGRAMS.values()):
        named |= set(prog)
    for s in SUBSETS:
        named |= set(s.markers)
    return named


@cache
def build_biology(protected: frozenset[str] = frozenset()) -> Biology:
    """Build the fixed expression profiles of all subsets.

    Parameters
    ----------
    protected
        Extra gene symbols (e.g. antibody targets) kept out of the random programs, so
        that they change only where a named program says so.

    Returns
    -------
    Biology
    """
    genes = load_genes()
    sym = genes["symbol"].to_numpy()
    index = {s: i for i, s in enumerate(sym)}
    n = len(sym)
    rng = np.random.default_rng(BIOLOGY_SEED)
    kind = genes["kind"].to_numpy()
    is_mt = kind == "MT"
    is_rib = np.array([bool(_RIBOSOME.match(s)) for s in sym])

    # Long-tailed background: most genes rarely detected, a few thousand commonly.
    log10 = rng.normal(-1.3, 0.7, n)
    log10[kind == "TR_IG"] = -2.5
    log10[kind == "lncRNA"] = -1.0
    base = 10.0**log10
    named = _named_genes()
    for g in named:
        base[index[g]] = 0.05
    for g, v in HOUSEKEEPING.items():
        base[index[g]] = v
    base[is_rib] = rng.lognormal(np.log(35.0), 0.35, is_rib.sum())
    base[is_mt] = 0.0

    pool_mask = ~is_mt & ~is_rib & (kind == "protein_coding") & (base > 0.1) & (base < 20)
    blocked = named | set(protected)
    pool_mask &= ~np.isin(sym, list(blocked))
    pool = np.flatnonzero(pool_mask)

    def random_up(k: int, lo: float, hi: float) -> dict[int, float]:
        chosen = rng.choice(pool, size=k, replace=False)
        return dict(zip(chosen.tolist(), (2.0 ** rng.uniform(lo, hi, k)).tolist(), strict=True))

    l1_random: dict[str, dict[int, float]] = {}
    for l1 in L1_LEVELS:
        up = random_up(_N_L1_UP, 1.0, 3.0)
        down = rng.choice(pool, size=_N_L1_DOWN, replace=False)
        up.update({int(g): float(2.0 ** -rng.uniform(1.0, 3.0)) for g in down if g not in up})
        l1_random[l1] = up
    l2_random = {s.l2: random_up(_N_L2_UP, 0.8, 2.0) for s in SUBSETS if not s.contaminant}
    l2_random = {k: l2_random[k] for k in sorted(l2_random)}

    profiles = np.zeros((len(SUBSETS), n))
    for i, s in enumerate(SUBSETS):
        expr = base.copy()
        expr[is_rib] *= _RIBOSOME_SCALE.get(s.l1, 1.0)
        if s.contaminant:
            sig = np.zeros(n)
            for g, v in s.markers.items():
                sig[index[g]] = v
            expr /= expr.sum()
            w = _CONTAMINANT_WEIGHT[s.contaminant]
            profiles[i] = (1 - w) * expr + w * sig / sig.sum()
            continue
        for gi, f in l1_random[s.l1].items():
            expr[gi] *= f
        for gi, f in l2_random[s.l2].items():
            expr[gi] *= f
        for gi, f in random_up(_N_SUBSET_UP, 0.8, 1.8).items():
            expr[gi] *= f
        for prog in (L1_PROGRAMS[s.l1], L2_PROGRAMS.get(s.l2, {}), s.markers):
            for g, v in prog.items():
                expr[index[g]] = v
        expr[is_mt] = 0.0
        profiles[i] = expr / expr.sum()

    mt_index = np.array([index[g] for g in _MT_PROFILE], dtype=np.int64)
    mt_profile = np.array(list(_MT_PROFILE.values()))
    mt_profile /= mt_profile.sum()
    order = np.argsort(-profiles.max(axis=0), kind="stable")
    order = order[~is_mt[order]]
    high = np.sort(order[:N_HIGH_GENES])
    low = np.sort(order[N_HIGH_GENES:])
    # Gene-wise NB dispersion of the densely sampled genes (biological cell-to-cell noise).
    dispersion = rng.lognormal(np.log(0.15), 0.5, high.size)
    return Biology(genes, profiles, mt_index, mt_profile, high, low, dispersion, index)
